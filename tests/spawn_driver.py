"""The parent process of tests/test_distributed.py's spawn tests, and process helpers.

`python tests/spawn_driver.py MODE OUT` calls distributed.spawn with 2 CPU (gloo) ranks the
way a notebook does, in a process the test can interrupt or make fail; each rank writes
OUT/rank<r>.json (its pid, the port it met the others on, the sum of an all_reduce).
MODE:
  held       MASTER_PORT names a port this process holds with a listening socket
  race       the port spawn checked is taken right after its check (before rank 0 listens)
  interrupt  ranks ignore SIGTERM and never end; the test sends SIGINT here (grace 2 s)
  raise      ranks never end; the test sends SIGUSR1 here, whose handler raises
  crash      rank 1 raises, rank 0 waits forever
The rank functions are module-level: torch.multiprocessing pickles them by name.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pixelplay_lib import distributed
from pixelplay_lib.config import make_config


def write(cfg, rank: int, **values) -> None:
    path = Path(cfg.output_dir) / f"rank{rank}.json"
    path.write_text(json.dumps({"pid": os.getpid(), **values}))


def rendezvous(cfg) -> None:
    rank, _, _ = distributed.setup(cfg)
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    write(cfg, rank, port=int(os.environ["MASTER_PORT"]), sum=total.item())
    distributed.teardown()


def forever(cfg) -> None:
    rank = int(os.environ["RANK"])
    if os.environ.get("IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    write(cfg, rank)
    while True:
        time.sleep(0.1)


def crash(cfg) -> None:
    rank = int(os.environ["RANK"])
    write(cfg, rank)
    if rank == 1:
        time.sleep(1.0)
        raise RuntimeError("rank 1 crashed on purpose")
    while True:
        time.sleep(0.1)


class TakePortWhenAnnounced(logging.Handler):
    """On spawn's "rendezvous on 127.0.0.1:<port>" (logged right after its free-port
    check), listen on that port: the port is taken before the ranks get to it."""

    def __init__(self):
        super().__init__()
        self.taken: list[socket.socket] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "rendezvous on" in record.getMessage() and not self.taken:
            port = record.args[-1]
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            s.listen()
            self.taken.append(s)
            print(f"took port {port}", flush=True)


def main(mode: str, out: str) -> None:
    log = logging.getLogger("pixelplay")
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler(sys.stdout))
    cfg = make_config(output_dir=out, devices="cpu")
    if mode == "held":
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        os.environ["MASTER_PORT"] = str(holder.getsockname()[1])
        print(f"holding port {os.environ['MASTER_PORT']}", flush=True)
        distributed.spawn(rendezvous, cfg, 2)
    elif mode == "race":
        os.environ.pop("MASTER_PORT", None)
        log.addHandler(TakePortWhenAnnounced())
        distributed.spawn(rendezvous, cfg, 2)
    elif mode == "interrupt":
        os.environ["IGNORE_SIGTERM"] = "1"
        distributed.spawn(forever, cfg, 2, grace_s=2.0)
    elif mode == "raise":
        def fail(signum, frame):
            raise RuntimeError("the parent failed while its ranks ran")

        signal.signal(signal.SIGUSR1, fail)
        distributed.spawn(forever, cfg, 2)
    elif mode == "crash":
        distributed.spawn(crash, cfg, 2)
    print("spawn returned", flush=True)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        import psutil
    except ImportError:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren ...)."""
    try:
        import psutil
    except ImportError:
        parents = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        found, todo = [], [pid]
        while todo:
            todo = [c for c, p in parents.items() if p in todo]
            found += todo
        return found
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def wait_until(condition, timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


if __name__ == "__main__":
    main(*sys.argv[1:3])
