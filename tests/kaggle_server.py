"""A fake Kaggle API on 127.0.0.1 for offline tests of the real `kaggle` CLI.

The CLI is pointed at it with ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` (endpoint
``http://localhost``) and ``HTTP_PROXY=http://127.0.0.1:PORT``: every request then
reaches this server as a proxy request whose request line carries the full URL.
Each request is recorded (method, path, JSON body or raw bytes); answers come from
``routes`` (keyed by the last two path parts, e.g.
``"kernels.KernelsApiService/SaveKernel"``) and can be changed per test.

Nothing here talks to the network: the server binds loopback only, port 0.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

ENDPOINT = "http://localhost"  # what KAGGLE_API_ENVIRONMENT=LOCALHOST talks to


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def rpc(self) -> str:
        """``service/method`` for API calls, e.g. ``blobs.BlobApiService/StartBlobUpload``."""
        return "/".join(self.path.rstrip("/").split("/")[-2:])

    @property
    def json(self) -> Any:
        return json.loads(self.raw or b"{}")


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=dict)  # dict/list -> JSON, bytes -> raw

    def encode(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        return json.dumps(self.body).encode(), "application/json"


def not_found(message: str = "Not found") -> Answer:
    return Answer(404, {"code": 404, "message": message})


DATASET_STATUS = "datasets.DatasetApiService/GetDatasetStatus"


def dataset_status(status: str) -> Answer:
    """A GetDatasetStatus answer: a DatabundleVersionStatus name (READY, BLOBS_RECEIVED,
    FAILED, ...), which `kaggle datasets status` prints in lower case."""
    return Answer(body={"status": status})


def new_dataset_processed() -> list[Answer]:
    """`datasets create` of a new dataset (its first status call: not found), then
    processing that ends ready: pending twice, then READY."""
    return [not_found("Dataset not found"), dataset_status("BLOBS_RECEIVED"),
            dataset_status("BLOBS_DECOMPRESSED"), dataset_status("READY")]


def new_version_failed() -> list[Answer]:
    """`datasets version` of an existing dataset (ready), then processing that fails."""
    return [dataset_status("READY"), dataset_status("NOT_YET_PERSISTED"),
            dataset_status("FAILED")]


def default_routes() -> dict[str, Answer]:
    user = "tester"
    return {
        "kernels.KernelsApiService/SaveKernel": Answer(
            body={
                "ref": f"/code/{user}/pixelplay-train",
                "url": f"https://www.kaggle.com/code/{user}/pixelplay-train",
                "versionNumber": 2,
            }
        ),
        "kernels.KernelsApiService/GetKernelSessionStatus": Answer(body={"status": "COMPLETE"}),
        "kernels.KernelsApiService/ListKernelSessionOutput": Answer(
            body={
                "files": [
                    {"fileName": "submission.csv", "url": f"{ENDPOINT}/files/submission.csv"},
                    {"fileName": "metrics.json", "url": f"{ENDPOINT}/files/metrics.json"},
                ],
                "log": "[]",
            }
        ),
        # <user>/pixelplay-lib exists and is ready (push-kernel asks before pushing)
        DATASET_STATUS: dataset_status("READY"),
        "blobs.BlobApiService/StartBlobUpload": Answer(
            body={"token": "blob-token-1", "createUrl": f"{ENDPOINT}/upload/blob-token-1"}
        ),
        "datasets.DatasetApiService/CreateDataset": Answer(
            body={
                "ref": f"{user}/pixelplay-lib",
                "url": f"https://www.kaggle.com/datasets/{user}/pixelplay-lib",
                "status": "ok",
            }
        ),
        "datasets.DatasetApiService/CreateDatasetVersion": Answer(
            body={
                "ref": f"{user}/pixelplay-lib",
                "url": f"https://www.kaggle.com/datasets/{user}/pixelplay-lib",
                "status": "ok",
            }
        ),
        "competitions.CompetitionApiService/StartSubmissionUpload": Answer(
            body={"token": "sub-token-1", "createUrl": f"{ENDPOINT}/upload/sub-token-1"}
        ),
        "competitions.CompetitionApiService/CreateSubmission": Answer(
            body={"message": "Successfully submitted to Pixel Play", "ref": 77}
        ),
        "files/submission.csv": Answer(body=b"image_id,class\n00001.jpg,blue+whale\n"),
        "files/metrics.json": Answer(body=b'{"val_acc": 0.9}'),
    }


class FakeKaggle:
    """Threaded fake server; use as a context manager (starts and stops it)."""

    def __init__(self) -> None:
        # rpc -> an Answer, or a list of Answers given out in turn (the last one repeats)
        self.routes: dict[str, Answer | list[Answer]] = dict(default_routes())
        self.requests: list[Request] = []
        self.uploads: dict[str, bytes] = {}  # upload path -> bytes PUT there
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def __enter__(self) -> FakeKaggle:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def env(self) -> dict[str, str]:
        """Environment that sends the CLI's requests (http and https) to this server."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {
            "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
            "HTTP_PROXY": proxy,
            "http_proxy": proxy,
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "ALL_PROXY": "",
            "all_proxy": "",
            "NO_PROXY": "",
            "no_proxy": "",
        }

    # -- inspection -------------------------------------------------------
    def calls(self) -> list[str]:
        """The sequence of requests, as ``rpc`` names (``PUT upload/...`` for uploads)."""
        with self._lock:
            return [r.rpc if r.method == "POST" else f"{r.method} {r.rpc}" for r in self.requests]

    def find(self, rpc: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.rpc == rpc]

    def one(self, rpc: str) -> Request:
        found = self.find(rpc)
        assert len(found) == 1, f"expected one {rpc}, got {len(found)}: {self.calls()}"
        return found[0]

    def _answer(self, rpc: str, path: str) -> Answer:
        route = self.routes.get(rpc)
        if route is None:
            return not_found(f"no route {path}")
        if isinstance(route, list):
            return route.pop(0) if len(route) > 1 else route[0]
        return route

    # -- handler ----------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep test output clean

            def _read_body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    return self.rfile.read(length)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return b""

            def _handle(self) -> None:
                path = urlsplit(self.path).path
                raw = self._read_body()
                request = Request(self.command, path, dict(self.headers.items()), raw)
                with fake._lock:
                    fake.requests.append(request)
                    if self.command == "PUT":
                        fake.uploads[path] = raw
                        answer = Answer(200, {})
                    else:
                        answer = fake._answer(request.rpc, path)
                body, ctype = answer.encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _handle
            do_POST = _handle
            do_PUT = _handle

            def do_CONNECT(self) -> None:  # an https request: refuse, never tunnel out
                with fake._lock:
                    fake.requests.append(Request("CONNECT", self.path, {}, b""))
                self.send_response(405)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
