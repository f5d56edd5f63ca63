"""One driver per study folder: an exclusive lock that names its holder and dies with it."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class StudyLocked(RuntimeError):
    """Another driver holds the study folder; the message names it."""


class StudyLock:
    """An exclusive flock on `<study folder>/.driver.lock` holding the driver's pid, host and start time.

    The kernel drops the lock when its process ends, however it ends (Ctrl-C, SIGKILL, a crash), so a lock left
    by a dead driver is taken over without asking; the file's contents only say who holds a live one.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.descriptor: int | None = None

    def acquire(self) -> "StudyLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder()
            os.close(descriptor)
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
                   if holder else "another process")
            raise StudyLocked(f"study folder {self.path.parent} is in use by a running driver ({who}); "
                              "wait for it, stop it, or pass --name NEW") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(descriptor)
        self.descriptor = descriptor
        return self

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing the descriptor drops the flock
            self.descriptor = None

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
