"""Data-parallel training with torch.distributed: one process per GPU (Kaggle's T4 x2).

Semantics (README, "Several GPUs"): `batch_size` is the *global* batch. Each of N processes
takes a consecutive 1/N slice of every global batch; DistributedDataParallel averages the
gradients, and the loss is scaled so that the average is the mean over the global batch.
The optimisation is therefore the single-device one whatever N is, up to float summation
order (and BatchNorm: trainable BatchNorm layers are made SyncBatchNorm on GPUs, so their
statistics are global batch statistics too). That is also what makes a checkpoint written by
a 2-GPU run resumable on one device and the reverse.

Launch: the CLI re-runs itself under torchrun (`python -m torch.distributed.run`); notebooks
call `train.launch_train(cfg)`, which spawns them (`spawn`). Only rank 0 writes files.
Both pick their rendezvous port so that an earlier run still holding one (a notebook cell
run again) cannot collide, pass an interrupt on to the processes as "checkpoint and stop",
and leave no process behind whatever ends the launch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

from .config import Config

log = logging.getLogger("pixelplay")

T = TypeVar("T")


def world_size_for(devices: str) -> int:
    """auto: every visible GPU; cpu: one process; N: N processes (on CPU: gloo, for tests)."""
    if devices == "cpu":
        return 1
    if devices == "auto":
        return max(1, torch.cuda.device_count())
    try:
        return max(1, int(devices))
    except ValueError:
        raise ValueError(f"devices={devices!r}: auto, cpu or a number") from None


def in_launched_process() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(cfg: Config) -> tuple[int, int, int]:
    """(rank, world, local_rank); joins the process group when launched with several."""
    if not in_launched_process():
        return 0, 1, 0
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and cfg.devices != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, local_rank


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def main_process_first(is_main: bool, make: Callable[[], T]) -> T:
    """Rank 0 runs make() first (say, decodes the image cache), then the others (reuse it)."""
    if not is_main:
        barrier()
    result = make()
    if is_main:
        barrier()
    return result


def wrap(net: nn.Module, device: torch.device, world: int) -> nn.Module:
    """DDP over the trainable parameters only (frozen ones have no gradient to sync)."""
    if world <= 1:
        return net
    if device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    # Frozen BatchNorm buffers never change and are identical on every rank: no broadcast.
    return nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False)


def sum_across(values: list[float], device: torch.device) -> list[float]:
    """Sum small numbers over all processes (one collective)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def torchrun_command(world: int, argv: list[str]) -> list[str]:
    # --standalone: the rendezvous store listens on a port the OS assigns (localhost:0) and
    # the workers share it (torch >= 2.3), so no port is checked and then taken: nothing to
    # collide with, whatever MASTER_PORT or an earlier run holds.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={world}", "-m", "pixelplay_lib", *argv]


def relaunch_with_torchrun(world: int, argv: list[str], grace_s: float = 60.0) -> int:
    """The CLI's way: the same command, once per device, under torchrun; returns its exit
    code (130 when stopped at once by a second interrupt).

    The agent and its workers run in sessions of their own, so a terminal's Ctrl-C reaches
    this process only, which passes it on: the first SIGINT or SIGTERM goes to the workers
    (training saves a checkpoint at its next step and stops, exit 0); a second SIGINT, or
    grace_s seconds after the first, kills the agent and every worker at once. Should this
    process die anyway (SIGKILL), the agent gets SIGTERM (Linux PR_SET_PDEATHSIG) and stops
    its workers. Signal handlers need the main thread; elsewhere only the final cleanup
    applies."""
    proc = subprocess.Popen(torchrun_command(world, argv), start_new_session=True,
                            preexec_fn=_terminate_with_parent if _LINUX else None)
    first: list[float] = []  # when the first stop request came
    killed = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal killed
        workers = _children(proc.pid)
        if first and signum == signal.SIGINT or not workers:
            killed = True
            _kill_tree(proc.pid)
            return
        if not first:
            first.append(time.monotonic())
            print(f"{signal.Signals(signum).name}: the {len(workers)} workers save a checkpoint "
                  f"at their next step and stop (waiting up to {grace_s:.0f} s); Ctrl-C again "
                  "stops them at once", file=sys.stderr, flush=True)
        for pid in workers:
            _send(pid, signum)

    with _handling((signal.SIGINT, signal.SIGTERM), forward):
        try:
            while True:
                try:
                    code = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if first and time.monotonic() - first[0] > grace_s:
                        killed = True
                        _kill_tree(proc.pid)
        finally:
            if proc.poll() is None:  # an exception in this process: leave nothing behind
                _kill_tree(proc.pid)
                proc.wait()
    return 130 if killed else code


_LINUX = sys.platform.startswith("linux")


def _terminate_with_parent() -> None:
    """In the torchrun agent, before exec: SIGTERM when the CLI process dies (prctl(2)
    PR_SET_PDEATHSIG = 1), on which the agent stops its workers."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _children(pid: int) -> list[int]:
    """The direct children of process `pid` (Linux: /proc; elsewhere none are known)."""
    return [child for child, parent in _parents().items() if parent == pid]


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc/<pid>/stat; {} without /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the command name (2nd field) may hold spaces and ")": split after the last ")"
            found[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    return found


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren ... of `pid`, collected before any is killed (an orphan is
    re-parented and would be lost)."""
    parents = _parents()
    found, todo = [], [pid]
    while todo:
        todo = [child for child, parent in parents.items() if parent in todo]
        found += todo
    return found


def _send(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process below it."""
    for each in [pid, *_descendants(pid)]:
        _send(each, signal.SIGKILL)


@contextlib.contextmanager
def _handling(signums: tuple[int, ...], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """`handler` for `signums` inside the block, the previous handlers after it. Python lets
    only the main thread install handlers: elsewhere the block runs without them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():  # None: installed outside Python; default then
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def port_is_free(port: int) -> bool:
    """Whether a TCP server could listen on `port` on every IPv4 address now: what the
    rendezvous store of torch.distributed does, and it fails with EADDRINUSE otherwise
    (a listener on 127.0.0.1 alone blocks it too). No SO_REUSEADDR: a port in TIME_WAIT
    counts as taken, to be safe."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def rendezvous_port(preferred: int | None = None) -> int:
    """`preferred` (a MASTER_PORT the user set) when it is free, else a port the OS hands
    out (free when handed out). Checked right before use; a port taken in the second before
    the processes listen on it is retried by spawn."""
    if preferred and port_is_free(preferred):
        return preferred
    if preferred:
        log.warning("MASTER_PORT=%d is in use (an earlier run's processes?): using a free port "
                    "instead", preferred)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, fn: Callable[[Config], Any], cfg: Config, world: int,
             port: int) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    fn(cfg)


def spawn(fn: Callable[[Config], Any], cfg: Config, world: int, grace_s: float = 60.0,
          attempts: int = 3) -> None:
    """Run fn(cfg) in `world` new processes (ranks 0..world-1) and wait for them: the way
    from a notebook, where torchrun cannot relaunch the kernel. `fn` must be importable
    (a module-level function), as torch.multiprocessing pickles it.

    Rendezvous: on a port checked free right before the start (MASTER_PORT when set and
    free); when it is taken before rank 0 listens (EADDRINUSE), the processes are stopped
    and started again on another port, up to `attempts` times.
    Stopping: a crashed process stops the others (torch: SIGTERM, SIGKILL 30 s later) and
    its error is raised here. An interrupt (Jupyter's Interrupt button: KeyboardInterrupt)
    asks every process to stop (SIGTERM: training checkpoints at its next step) and waits
    up to grace_s seconds; then, or at a second interrupt, they are killed and
    KeyboardInterrupt is raised. Whatever ends this call, no process it started survives.
    """
    preferred = int(os.environ["MASTER_PORT"]) if os.environ.get("MASTER_PORT") else None
    for attempt in range(1, attempts + 1):
        port = rendezvous_port(preferred if attempt == 1 else None)
        log.info("starting %d processes, rendezvous on 127.0.0.1:%d", world, port)
        try:
            _run_processes(fn, cfg, world, port, grace_s)
            return
        except ProcessRaisedException as e:
            if attempt == attempts or "EADDRINUSE" not in str(e):
                raise
            log.warning("port %d was taken between its check and the rendezvous "
                        "(EADDRINUSE): starting again on another port", port)


def _run_processes(fn: Callable[[Config], Any], cfg: Config, world: int, port: int,
                   grace_s: float) -> None:
    """One start of the `world` processes, joined (see spawn for what stops them)."""
    context = torch.multiprocessing.start_processes(
        _spawned, args=(fn, cfg, world, port), nprocs=world, join=False, start_method="spawn")
    interrupted: float | None = None  # when the first interrupt came
    try:
        while True:
            try:
                if context.join(timeout=0.5):
                    return
            except KeyboardInterrupt:
                if interrupted is not None:
                    raise
                interrupted = time.monotonic()
                log.warning("interrupted: the %d processes save a checkpoint at their next "
                            "step and stop (waiting up to %.0f s); interrupt again to kill "
                            "them now", world, grace_s)
                for process in context.processes:
                    if process.is_alive():
                        _send(process.pid, signal.SIGTERM)
            except ProcessExitedException:
                if interrupted is not None:  # ended by the SIGTERM above: still an interrupt
                    raise KeyboardInterrupt from None
                raise
            if interrupted is not None and time.monotonic() - interrupted > grace_s:
                raise KeyboardInterrupt
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
