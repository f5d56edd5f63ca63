"""Where a study's trials and checkpoints live: a local folder or a storage URI (s3://, gs://, any pyarrow file
system), and the local folder written so that a killed driver never leaves a torn file behind.

This is the one module that tells a URI from a local path (is_uri); everything else asks it."""

import contextlib
import errno
import json
import os
import pickletools
import re
import hashlib
import shutil
import urllib.parse
import uuid
from pathlib import Path

import pyarrow.fs

from cvae.environment import ENDPOINT_ENV
from study.store.patient_store import patient

PARTIAL_SUFFIX = ".partial"  # a file still being written; never read, removed when a study resumes
TUNER_STATE = "tuner.pkl"  # Tune's Tuner as built; the same study file and flags build it again
SESSION_STAMP = re.compile(r"-\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")  # Tune names each driver session's state files


class _PublishOnClose:
    """A new file written under a hidden temporary name and renamed over `path` by close().

    Readers see the old file or the whole new one. A file dropped without close() (its copy failed, or the
    process died) never replaces anything; os.replace is atomic within a folder, and a killed process loses
    nothing the kernel already holds, so no fsync is needed for that (only for a power cut).
    """

    def __init__(self, path: str):
        folder, name = os.path.split(path)
        self.path = path
        self.partial = os.path.join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
        self.file = open(self.partial, "xb")  # noqa: SIM115 (closed by close() or __del__)

    @property
    def closed(self) -> bool:
        return self.file.closed

    def write(self, data) -> int:
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
            os.replace(self.partial, self.path)

    def __del__(self):
        if hasattr(self, "file") and not self.file.closed:  # never published: its writer gave up
            self.file.close()
            Path(self.partial).unlink(missing_ok=True)


class AtomicLocalFiles(pyarrow.fs.FileSystemHandler):
    """pyarrow's local file system, except that every file written replaces its old version in one step.

    Tune rewrites tuner.pkl, experiment_state-*.json and the searcher's state in the storage folder after every
    checkpoint (pyarrow.fs.copy_files truncates, then writes). A driver killed in that moment left an empty
    tuner.pkl, and `--resume` then failed inside Tune with "EOFError: Ran out of input".
    """

    def __init__(self):
        self.local = pyarrow.fs.LocalFileSystem()

    def __eq__(self, other):
        return isinstance(other, AtomicLocalFiles)

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return "local-atomic"

    def normalize_path(self, path):
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise PermissionError("refusing to delete the contents of the root folder")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        with self.local.open_input_stream(src) as source:
            target = _PublishOnClose(dest)
            while chunk := source.read(1 << 24):
                target.write(chunk)
            target.close()  # only a whole copy replaces `dest`

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return pyarrow.PythonFile(_PublishOnClose(path), mode="w")

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path)  # appending cannot be atomic; Tune does not append here


def is_uri(location) -> bool:
    """Whether a storage location is a URI (s3://bucket/path?endpoint_override=…) rather than a local path."""
    return isinstance(location, str) and "://" in location


def join(location: str, *names: str) -> str:
    """`location`/name/…: for a URI the names go into its path, before any ?query (which is kept)."""
    if not is_uri(location):
        return str(Path(location, *names))
    parts = urllib.parse.urlsplit(location)
    path = "/".join([parts.path.rstrip("/"), *names])
    return urllib.parse.urlunsplit(parts._replace(path=path))


def filesystem_of(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow file system of a location and the location's path within it (the same pair Tune uses).

    For S3-compatible stores the endpoint comes from the URI's ?endpoint_override=…&scheme=http or, without
    them, from AWS_ENDPOINT_URL; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    """
    if not is_uri(location):
        return pyarrow.fs.LocalFileSystem(), str(Path(location).resolve())
    filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    parts = urllib.parse.urlsplit(location)  # the store: its scheme, bucket and address options, not the path
    return patient(filesystem, f"{parts.scheme}://{parts.netloc}?{parts.query}"), path  # outages waited out


def uri_of(storage_path: str, filesystem_path: str) -> str:
    """The full URI of a path Tune reports within a URI storage's file system (for s3, "bucket/key…"): what a
    table records, so that any machine reaches the same object. A local storage path is kept as it is."""
    if not is_uri(storage_path) or is_uri(filesystem_path):
        return filesystem_path
    parts = urllib.parse.urlsplit(storage_path)
    bucket, _, key = filesystem_path.lstrip("/").partition("/")
    return urllib.parse.urlunsplit(parts._replace(netloc=bucket, path="/" + key))


def display(location: str) -> str:
    """A location as printed: a URI without its query (endpoint and scheme options)."""
    return urllib.parse.urlsplit(location)._replace(query="").geturl() if is_uri(location) else str(location)


def within(location: str, root: str) -> bool:
    """Whether a URI lies under another (same scheme, bucket and query; path below): a received table's
    remote checkpoint must lie in the study's own storage."""
    one, other = urllib.parse.urlsplit(location), urllib.parse.urlsplit(root)
    path, base = Path("/" + one.path.lstrip("/")), Path("/" + other.path.lstrip("/"))
    if ".." in path.parts:
        return False
    return (one.scheme, one.netloc, one.query) == (other.scheme, other.netloc, other.query) and (
        path == base or base in path.parents)


def reached_through(uri: str, storage: str | None) -> str:
    """A recorded URI as this reader reaches it: with the query (endpoint, scheme) of the storage URI the reader was
    given, or, given none, without a recorded endpoint_override when AWS_ENDPOINT_URL names the store. A loopback
    store restarted on new ports, or a store moved behind another address, keeps its studies readable."""
    parts = urllib.parse.urlsplit(uri)
    if storage and is_uri(storage):
        given = urllib.parse.urlsplit(storage)
        return urllib.parse.urlunsplit(parts._replace(query=given.query)) if given.scheme == parts.scheme else uri
    if os.environ.get(ENDPOINT_ENV):
        kept = [(key, value) for key, value in urllib.parse.parse_qsl(parts.query)
                if key not in ("endpoint_override", "scheme")]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
    return uri


def check_writable(location: str) -> str | None:
    """Why a storage location cannot take a study (unknown scheme, no such store, refused credentials), or None:
    a probe object written and deleted, in seconds, before anything else starts."""
    try:
        filesystem, path = filesystem_of(location)
        probe = f"{path.rstrip('/')}/.write-test-{os.getpid()}"
        with filesystem.open_output_stream(probe) as handle:
            handle.write(b"")
        filesystem.delete_file(probe)
    except (OSError, ValueError, pyarrow.ArrowException) as error:
        text = " ".join(str(error).split())  # one line of the store's own words, without pyarrow's context
        return text.split("; Details:")[0].split(" operation: ")[-1][:200]
    return None


def beside(location: str, name: str) -> str:
    """The location of `name` in the same folder as `location`."""
    if not is_uri(location):
        return str(Path(location).parent / name)
    parts = urllib.parse.urlsplit(location)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/").rpartition("/")[0] + "/" + name))


def checkpoints_beside(filesystem: pyarrow.fs.FileSystem, path: str) -> list[str]:
    """The names of the checkpoint_* folders in the folder that holds `path` (a path within `filesystem`), sorted:
    oldest first (Tune numbers them with zero-padded epochs)."""
    parent = path.rstrip("/").rpartition("/")[0]
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
    return sorted(info.base_name for info in found
                  if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"))


def kept_checkpoints(checkpoint: str) -> list[str]:
    """Every checkpoint_* folder beside a trial's chosen one (--keep-checkpoints keeps several), local or remote."""
    return [beside(checkpoint, name) for name in checkpoints_beside(*filesystem_of(checkpoint))]


def strip_training_state_at(checkpoint: str) -> int:
    """cvae.checkpoint.strip_training_state for a checkpoint at any location; returns the bytes freed."""
    from cvae.checkpoint import ARRAYS_FILE, STATE_FILE, strip_training_state, weights_only

    if not is_uri(checkpoint):
        return strip_training_state(checkpoint)
    filesystem, path = filesystem_of(checkpoint)
    arrays = filesystem.get_file_info(f"{path}/{ARRAYS_FILE}")
    if arrays.type != pyarrow.fs.FileType.File:
        return 0  # already weights-only
    try:
        with filesystem.open_input_stream(f"{path}/{STATE_FILE}") as handle:
            state = json.loads(handle.read())
    except (OSError, ValueError):
        return 0  # not a checkpoint of ours
    with filesystem.open_output_stream(f"{path}/{STATE_FILE}") as handle:  # an object is replaced whole
        handle.write(json.dumps(weights_only(state), indent=1, default=float).encode())
    filesystem.delete_file(f"{path}/{ARRAYS_FILE}")
    return arrays.size or 0


def write_bytes(location: str, data: bytes) -> None:
    """Put a whole file at a location: an object replaced in one request, or a local file renamed into place."""
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        target = _PublishOnClose(str(location))
        target.write(data)
        target.close()
        return
    filesystem, path = filesystem_of(location)
    with filesystem.open_output_stream(path) as handle:
        handle.write(data)


def read_bytes(location: str) -> bytes:
    """A whole file from a location. Raises FileNotFoundError when there is none."""
    filesystem, path = filesystem_of(location)
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(display(location))
    with filesystem.open_input_stream(path) as handle:
        return handle.read()


def list_names(location: str) -> list[str]:
    """The names of the files in a folder at a location, sorted ([] when there is no such folder)."""
    filesystem, path = filesystem_of(location)
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in found if info.type == pyarrow.fs.FileType.File)


def exists(location: str) -> bool:
    """Whether a file or folder is at a location, local or remote."""
    filesystem, path = filesystem_of(location)
    return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def fetch_folder(uri: str, cache: Path) -> Path:
    """A remote folder (a checkpoint) copied once into `cache` (under a name made from its URI) and returned as a
    local folder; a copy cut short is never used (it is published by a rename when whole)."""
    local = Path(cache) / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if local.is_dir():
        return local
    filesystem, path = filesystem_of(uri)
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        raise FileNotFoundError(f"{display(uri)} is not a folder in its store")
    scratch = local.with_name(f".{local.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    pyarrow.fs.copy_files(path, str(scratch), source_filesystem=filesystem,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())
    try:
        scratch.rename(local)
    except OSError:  # another reader published it first
        shutil.rmtree(scratch, ignore_errors=True)
    return local


def folder_bytes(location: str) -> int:
    """Bytes of every file under a location, local or remote."""
    filesystem, path = filesystem_of(location)
    selector = pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True)
    return sum(info.size or 0 for info in filesystem.get_file_info(selector) if info.type == pyarrow.fs.FileType.File)


def tune_storage(storage_path: str) -> tuple[str, pyarrow.fs.FileSystem]:
    """The path and file system Tune writes `storage_path` through: atomic files on a local disk (or a mounted
    shared one), so a killed driver leaves no torn state file; for a URI such as s3://, the store pyarrow picks,
    reached patiently (its checkpoints and state wait out an outage), and the path within it (bucket/key)."""
    if is_uri(storage_path):
        filesystem, path = filesystem_of(storage_path)
        return path, filesystem
    return storage_path, pyarrow.fs.PyFileSystem(AtomicLocalFiles())


def remove_partial_files(folder: str) -> int:
    """Delete what a killed writer left under `folder` (local only); returns how many files went."""
    if is_uri(folder):
        return 0
    removed = 0
    for path in Path(folder).rglob(f".*{PARTIAL_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def damaged_state_files(experiment: str) -> list[str]:
    """Names of the state files Tune's resume would read in `experiment` (the newest of each kind) that are cut
    short or empty: what a driver killed mid-write left before this module wrote them atomically."""
    if is_uri(experiment):
        return []
    newest = {}
    for path in Path(experiment).glob("*"):
        if path.suffix in (".json", ".pkl") and path.is_file():
            kind = SESSION_STAMP.sub("", path.name)
            if kind not in newest or path.name > newest[kind].name:
                newest[kind] = path
    return sorted(path.name for path in newest.values() if not _whole(path))


def _whole(path: Path) -> bool:
    """A pickle whose opcodes run to STOP (read, not run), or a JSON text that parses. Tune writes pickles under
    both suffixes (basic-variant-state-*.json is one); protocol 2 and later pickles start with 0x80."""
    try:
        data = path.read_bytes()
        if data[:1] == b"\x80":
            for _ in pickletools.genops(data):
                pass
        else:
            json.loads(data)
        return bool(data)
    except (OSError, ValueError):  # JSONDecodeError, "pickle exhausted before seeing STOP"
        return False


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left, or over a quota: the same to a study
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")  # the same, as it reads in Tune's error file


class DiskFull(OSError):
    """A study's folder (or its Tune storage) ran out of space: the study stops, resumable once space is freed."""


def is_disk_full(error: BaseException | str | None) -> bool:
    """Whether an exception (or anything in its chain), or an error text, is a full disk."""
    if isinstance(error, str):
        return any(text in error for text in DISK_FULL_TEXT)
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFull) or (isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS):
            return True
        if any(text in str(error) for text in DISK_FULL_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


RESERVE_FILE = ".disk_reserve"  # space held back while a study runs, so a full disk still takes the last rewrite
RESERVE_BYTES = 4 << 20  # trials.csv of a few thousand trials, with room to spare


@contextlib.contextmanager
def disk_reserve(folder: Path):
    """Hold RESERVE_BYTES of `folder`'s disk while the block runs; yields a function that gives them back.

    When the disk fills, the study gives the reserve back and then marks its running trials interrupted: a
    rewrite of trials.csv needs space that a full disk no longer has. A disk already too full starts the study
    without a reserve (the warning before the start says so).
    """
    path = Path(folder) / RESERVE_FILE
    try:
        with open(path, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, RESERVE_BYTES)  # blocks on disk, not a sparse file
    except OSError:
        path.unlink(missing_ok=True)
    try:
        yield lambda: path.unlink(missing_ok=True)
    finally:
        path.unlink(missing_ok=True)
