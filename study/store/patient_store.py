"""An object store reached patiently: every request retried with backoff while the store does not answer, so a study
rides through an outage of minutes instead of failing a trial or its tables."""

from __future__ import annotations

import io
import sys
import threading
import time

import pyarrow
import pyarrow.fs

# How long a request keeps retrying a store that does not answer before the error stands (then the study fails
# as it would without retries: a store gone for good is not waited for all night).
OUTAGE_LIMIT_S = 600.0
# A store this process has never reached is not having an outage: it is misnamed, down or refusing, and says so
# within seconds (a study's probe at start, a reader given an old endpoint).
FIRST_CONTACT_LIMIT_S = 5.0
_REACHED: set[str] = set()  # the stores (scheme, address, options) that answered this process
# The study's fence (study.store.lease.Fence) while this process's driver holds its lease: every PatientFiles made
# after carries it, to the trials too, and checks it before each write.
FENCE = None
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 10.0
# A connection attempt gives up after CONNECT_TIMEOUT_S and is retried. pyarrow applies the request timeout as a
# socket read timeout on Windows and macOS only: on Linux a request to a store gone silent waits until it answers
# (StoreWatch says so on the console).
CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S = 5.0, 30.0
# pyarrow's S3 errors when the store does not answer, or answers that it is busy or broken for now. A missing
# object or a refused credential is an answer: never retried.
TRANSIENT = ("NETWORK_CONNECTION", "couldn't connect", "connection refused", "connection reset", "timed out",
             "timeout", "curlcode", "slow_down", "service_unavailable", "internal_failure", "throttl",
             "when completing multiple part upload", "when uploading part", "broken pipe", "503", "502", "500")


def is_transient(error: BaseException) -> bool:
    """Whether a store's error means "not now" rather than "no" (not found, denied, bad request)."""
    if isinstance(error, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)):
        return False
    text = str(error).lower()
    return isinstance(error, OSError) and any(marker.lower() in text for marker in TRANSIENT)


class Outages:
    """What this process saw of its store being away: the longest wait and the retried requests (one per process;
    the driver prints it, a trial worker's retries only make that trial slower)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.longest_s, self.retried, self.given_up = 0.0, 0, 0
        self.console = False  # the study's driver turns it on; a trial worker's retries are silent (only slower)

    def waited(self, seconds: float) -> None:
        with self.lock:
            self.longest_s = max(self.longest_s, seconds)
            self.retried += 1

    def summary(self) -> str | None:
        """One line for the console, or None when the store always answered."""
        if not self.retried:
            return None
        return (f"storage: the store was away for up to {self.longest_s:.0f} s ({self.retried} time(s)); "
                + (f"{self.given_up} request(s) gave up after {OUTAGE_LIMIT_S:.0f} s" if self.given_up else
                   "every request waited or was retried until it went through"))


OUTAGES = Outages()


class StoreWatch:
    """While a study runs, ask its store every `every_s` whether it answers (one small request), and say on the
    console when it stops and when it is back: the trials that wait on it do so silently, in their own processes.
    A store that does not answer may refuse connections (an error at once) or leave them hanging (a request that
    returns only when the store is back): a probe unanswered for `slow_s` counts as the store being away.

    A context manager: `with StoreWatch(filesystem, path): tuner.fit()`.
    """

    def __init__(self, filesystem: pyarrow.fs.FileSystem, path: str, every_s: float = 5.0, slow_s: float = 10.0):
        handler = getattr(filesystem, "handler", None)
        self.base = handler.base if isinstance(handler, PatientFiles) else filesystem  # asked directly: no retries
        self.path, self.every_s, self.slow_s = path, every_s, slow_s
        self.stop = threading.Event()
        self.away_since: float | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._watch, name="store-watch", daemon=True)

    def __enter__(self) -> "StoreWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=self.every_s + CONNECT_TIMEOUT_S)  # a probe still hanging is left to its daemon

    def _away(self, why: str) -> None:
        with self.lock:
            if self.away_since is None:
                self.away_since = time.monotonic() - (self.slow_s if why == "no answer" else 0.0)
                print(f"storage: the store stopped answering ({why}); the trials wait and retry", file=sys.stderr,
                      flush=True)

    def _back(self) -> None:
        with self.lock:
            if self.away_since is not None:
                away = time.monotonic() - self.away_since
                OUTAGES.waited(away)
                print(f"storage: the store answers again after {away:.0f} s", file=sys.stderr, flush=True)
                self.away_since = None

    def _watch(self) -> None:
        while not self.stop.wait(self.every_s):
            slow = threading.Timer(self.slow_s, self._away, ("no answer",))
            slow.daemon = True
            slow.start()
            try:
                self.base.get_file_info(self.path)
            except Exception as error:  # noqa: BLE001 (any failure to answer)
                if is_transient(error):
                    self._away(" ".join(str(error).split())[:100])
                    continue
            finally:
                slow.cancel()
            self._back()


def patiently(call, what: str, limit_s: float | None = None, announce: bool = True):
    """call() until it returns, retrying transient errors with doubling delays for up to `limit_s` (default
    OUTAGE_LIMIT_S); with `announce`, the first failure and the recovery are one line each on stderr."""
    limit_s = OUTAGE_LIMIT_S if limit_s is None else limit_s
    started, delay, announced = time.monotonic(), FIRST_DELAY_S, False
    while True:
        try:
            result = call()
        except Exception as error:  # noqa: BLE001 (pyarrow raises OSError subclasses and ArrowException)
            waited = time.monotonic() - started
            if not is_transient(error) or waited + delay > limit_s:
                if is_transient(error) and announce:  # an outage outlasted (not a store never reached)
                    OUTAGES.given_up += 1
                raise
            if announce and OUTAGES.console and not announced:
                print(f"storage: no answer to {what} ({' '.join(str(error).split())[:120]}); retrying for up to "
                      f"{limit_s:.0f} s", file=sys.stderr, flush=True)
                announced = True
            time.sleep(delay)
            delay = min(MAX_DELAY_S, delay * 2)
            continue
        if delay > FIRST_DELAY_S:  # it had to be retried
            waited = time.monotonic() - started
            OUTAGES.waited(waited)
            if announced:
                print(f"storage: {what} went through after {waited:.0f} s", file=sys.stderr, flush=True)
        return result


class _UploadOnClose(io.RawIOBase):
    """An object written in memory and stored whole by close(), retried as one request: a multipart upload cut by
    an outage cannot be resumed part by part, but the whole object can be sent again (objects here are MBs)."""

    def __init__(self, files: "PatientFiles", path: str, metadata):
        super().__init__()
        self.files, self.path, self.metadata, self.buffer = files, path, metadata, io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self.buffer.write(data)

    def tell(self) -> int:
        return self.buffer.tell()

    def close(self) -> None:
        if self.closed:
            return
        data = self.buffer.getvalue()

        def upload():
            with self.files.base.open_output_stream(self.path, metadata=self.metadata) as stream:
                stream.write(data)

        try:
            self.files._change(upload, f"writing {self.path}")
        finally:
            super().close()  # once: a write that gave up raises here, not again when collected


class PatientFiles(pyarrow.fs.FileSystemHandler):
    """A pyarrow file system (an S3 store) whose every request waits out an outage (patiently) once the store has
    answered this process (or the process that made this one: it travels pickled to Ray's workers). Reads are
    whole objects in memory, writes are stored whole at close, so a retry never leaves half an object."""

    def __init__(self, base: pyarrow.fs.FileSystem, store: str):
        self.base, self.store = base, store
        self.reached = store in _REACHED
        self.fence = FENCE

    def _check_fence(self, what: str) -> None:
        """A write goes ahead only while the study's driver holds its lease (study.store.lease.Fence)."""
        fence = FENCE if FENCE is not None else self.fence
        if fence is not None:
            fence.check(self.base, what)

    def __getstate__(self):
        # A file system pickled into Tune's state by an earlier driver comes back with that driver's fence: this
        # process's own, when it holds the lease, is what it hands to its trials.
        return {**self.__dict__, "fence": FENCE if FENCE is not None else self.fence}

    def _change(self, call, what: str):
        """A request that changes the store: each attempt made only while the study's driver holds its lease (a
        retry after a long outage checks again)."""
        def fenced():
            self._check_fence(what)
            return call()

        return self._patiently(fenced, what)

    def _patiently(self, call, what: str):
        known = self.reached or self.store in _REACHED
        try:
            result = patiently(call, what, OUTAGE_LIMIT_S if known else FIRST_CONTACT_LIMIT_S, announce=known)
        except Exception as error:
            if not is_transient(error):
                self._answered()  # "not found" or "denied" is an answer too
            raise
        self._answered()
        return result

    def _answered(self) -> None:
        self.reached = True
        _REACHED.add(self.store)

    def __eq__(self, other):
        return isinstance(other, PatientFiles) and self.base.equals(other.base)

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return "patient-" + self.base.type_name

    def normalize_path(self, path):
        return self.base.normalize_path(path)

    def get_file_info(self, paths):
        return self._patiently(lambda: self.base.get_file_info(paths), "a listing")

    def get_file_info_selector(self, selector):
        return self._patiently(lambda: self.base.get_file_info(selector), f"listing {selector.base_dir}")

    def create_dir(self, path, recursive):
        self._change(lambda: self.base.create_dir(path, recursive=recursive), f"creating {path}")

    def delete_dir(self, path):
        self._change(lambda: self.base.delete_dir(path), f"deleting {path}")

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._change(lambda: self.base.delete_dir_contents(path, missing_dir_ok=missing_dir_ok), f"emptying {path}")

    def delete_root_dir_contents(self):
        raise PermissionError("refusing to delete the contents of the store's root")

    def delete_file(self, path):
        self._change(lambda: self.base.delete_file(path), f"deleting {path}")

    def move(self, src, dest):
        self._change(lambda: self.base.move(src, dest), f"moving {src}")

    def copy_file(self, src, dest):
        self._change(lambda: self.base.copy_file(src, dest), f"copying {src}")

    def _read(self, path) -> pyarrow.BufferReader:
        def read():
            with self.base.open_input_stream(path) as stream:
                return stream.read()

        return pyarrow.BufferReader(self._patiently(read, f"reading {path}"))

    def open_input_stream(self, path):
        return self._read(path)

    def open_input_file(self, path):
        return self._read(path)

    def open_output_stream(self, path, metadata):
        return pyarrow.PythonFile(_UploadOnClose(self, path, metadata), mode="w")

    def open_append_stream(self, path, metadata):
        raise OSError("an object store cannot append")


def patient(filesystem: pyarrow.fs.FileSystem, store: str) -> pyarrow.fs.FileSystem:
    """`filesystem` with every request waiting out an outage (a local one is returned as it is); `store` names the
    store (scheme, address and options of its URI) so that every file system of it knows it once answered.

    An S3 store is rebuilt with timeouts (a connection the store stopped answering would otherwise hang for good)
    and without background writes: uploads run in the thread that closes the object, because pyarrow's copy tasks
    that call into this handler already hold the I/O threads a background write would wait for (a deadlock, seen).
    """
    if isinstance(filesystem, (pyarrow.fs.LocalFileSystem, pyarrow.fs.PyFileSystem)):
        return filesystem
    if isinstance(filesystem, pyarrow.fs.S3FileSystem):
        rebuild, (options,) = filesystem.__reduce__()
        filesystem = rebuild({**options, "connect_timeout": CONNECT_TIMEOUT_S, "request_timeout": REQUEST_TIMEOUT_S,
                              "background_writes": False})
    return pyarrow.fs.PyFileSystem(PatientFiles(filesystem, store))
