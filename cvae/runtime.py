"""Process set-up shared by the commands and the Ray trainable: TensorFlow's start-up lines kept off the console,
and a failure's cause in one line."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys

from cvae.environment import TF_LOG_LEVEL_ENV, cache_dir



@contextlib.contextmanager
def native_stderr_to(path: str | os.PathLike, verbose: bool = False):
    """Send the process's file descriptor 2 to `path` for a while (unless verbose).

    TensorFlow's C++ start-up lines (oneDNN, CUDA probing, absl) are written there before any log level
    applies, so no environment variable silences them; they are kept in the file instead of the console.
    """
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as target:
            os.dup2(target.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


TENSORFLOW_STARTUP_LOG = "tensorflow_startup.log"  # a command's TensorFlow start-up lines, in the cache folder


@contextlib.contextmanager
def warnings_as_notes(log=print):
    """Warnings raised inside (e.g. the data's fallback to the embedded sample) said after it, each once, as a
    `note:` line of the command's own (its first sentence), not as Python's two-line warning with a source line."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for message in dict.fromkeys(str(warning.message).split(". ")[0] for warning in caught):
        log(f"note: {message}")


def import_tensorflow_quietly(verbose: bool = False) -> None:
    """Import TensorFlow and let it probe its devices with its start-up lines sent to the cache folder's
    tensorflow_startup.log (on the console when verbose): oneDNN, CUDA and absl notices, and `failed call to
    cuInit` on a machine without a GPU, are written before any log level applies and mean nothing to a user."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(TF_LOG_LEVEL_ENV, "2")  # TensorFlow reads it at import
    with native_stderr_to(folder / TENSORFLOW_STARTUP_LOG, verbose):
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA is probed here, not at import
    if not verbose:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\w*(: .*)?$")
MAX_CAUSE = 300  # characters of a cause kept in a table cell or a one-line message


def error_cause(text: str, default: str) -> str:
    """The line of a traceback or log that names the cause (`ValueError: ...`, the last such line), without
    colour codes; else the text's last line; else `default`."""
    lines = [line.strip() for line in ANSI_CODES.sub("", text or "").splitlines() if line.strip()]
    causes = [line for line in lines if EXCEPTION_LINE.match(line)]
    return ((causes or lines or [default])[-1])[:MAX_CAUSE]
