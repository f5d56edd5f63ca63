"""Tune's storage folder on a local disk, written so that a killed driver never leaves a torn file behind."""

import errno
import json
import os
import pickletools
import re
import uuid
from pathlib import Path

import pyarrow.fs

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


def storage_filesystem(storage_path: str) -> pyarrow.fs.FileSystem | None:
    """The file system Tune writes `storage_path` through: atomic files on a local disk (or a mounted shared
    one); None for a URI such as s3://, whose store pyarrow picks and which replaces objects whole anyway."""
    return None if "://" in storage_path else pyarrow.fs.PyFileSystem(AtomicLocalFiles())


def remove_partial_files(folder: str) -> int:
    """Delete what a killed writer left under `folder` (local only); returns how many files went."""
    if "://" in folder:
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
    if "://" in experiment:
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
