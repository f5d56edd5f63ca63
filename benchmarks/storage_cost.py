"""What an object store costs a study: seconds per checkpoint upload and per trial epoch, local folder vs an
S3-compatible store (SeaweedFS's `weed mini`, started here on 127.0.0.1 with free ports, stopped at the end).

1. One real model_4 checkpoint (one tiny training epoch, cvae.train) is copied `--rounds` times with
   pyarrow.fs.copy_files, as Tune persists a trial's checkpoint: into a local folder through the atomic local file
   system the study uses, and into the store.
2. The same tiny study (`--trials` grid trials x `--epochs` epochs, embedded digits) runs twice through
   study/run.py, once with local Tune storage and once with `--storage-path s3://…`; the figure is the median of
   Tune's time_this_iter_s (an epoch from one report to the next, checkpoint upload included) and the wall time.

    python benchmarks/storage_cost.py            # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def checkpoint_uploads(scratch: Path, store: str, rounds: int) -> dict:
    import pyarrow.fs

    from cvae.config import preset
    from cvae.train import train
    from study.store.storage import filesystem_of, join, tune_storage

    config = preset("model_4").replace(dataset="mnist-5k", epochs=1, max_train_samples=300, eval_samples=256, cas_samples=200, cas_epochs=1,
                                       sweep_latents=2)
    checkpoint = Path(train(config, checkpoint_dir=scratch / "trained")["checkpoint"])
    size = sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file())
    seconds = {"local folder": [], "object store": []}
    for round_ in range(rounds):
        for kind in seconds:
            if kind == "local folder":
                folder = scratch / "local" / f"checkpoint_{round_:06d}"
                folder.mkdir(parents=True)  # Tune makes the folder, then copies into it
                target, filesystem = str(folder), tune_storage(str(scratch))[1]
            else:
                filesystem, target = filesystem_of(join(store, f"checkpoint_{round_:06d}"))
            started = time.perf_counter()
            pyarrow.fs.copy_files(str(checkpoint), target, destination_filesystem=filesystem)
            seconds[kind].append(time.perf_counter() - started)
    return {"bytes": size, **{kind: statistics.median(values) for kind, values in seconds.items()}}


def study_epochs(scratch: Path, store: str, trials: int, epochs: int) -> dict:
    import pandas as pd

    values = ", ".join(f"{0.1 * (n + 1):.1f}" for n in range(trials))
    space = scratch / "storage_cost.yaml"
    space.write_text(textwrap.dedent(f"""
        name: storage_cost
        base: model_4
        fixed: {{dataset: mnist-5k, max_train_samples: 1000, eval_samples: 256, cas_samples: 200, cas_epochs: 1, sweep_latents: 2}}
        parameters:
          grey_weight: {{values: [{values}]}}
        search: {{algorithm: grid, repeats: 1, max_concurrent: 2}}
        scheduler: {{type: fifo, max_epochs: {epochs}}}
    """))
    figures = {}
    for kind, extra in (("local folder", []), ("object store", ["--storage-path", store])):
        results = scratch / kind.replace(" ", "-")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "study/run.py", "--space", str(space), "--results-dir", str(results),
                               *extra], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"the {kind} study failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        table = pd.read_csv(results / "storage_cost" / "epochs.csv")
        figures[kind] = {"epoch": float(table["time_this_iter_s"].median()), "wall": wall}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="checkpoint copies per destination (median shown)")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    from study.store.loopback_store import LocalObjectStore

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "cvae-benchmark")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "cvae-benchmark-secret")
    with tempfile.TemporaryDirectory(prefix="storage-cost-") as folder:
        scratch = Path(folder)
        with LocalObjectStore(scratch / "weed") as local_store:
            store = local_store.uri("benchmark")
            uploads = checkpoint_uploads(scratch, store, args.rounds)
            print(f"checkpoint upload ({uploads['bytes'] / 1e6:.1f} MB, median of {args.rounds}): local folder "
                  f"{uploads['local folder']:.3f} s, object store {uploads['object store']:.3f} s "
                  f"({uploads['object store'] / uploads['local folder']:.1f}x)", flush=True)
            study = study_epochs(scratch, store, args.trials, args.epochs)
            local, remote = study["local folder"], study["object store"]
            print(f"trial epoch ({args.trials} trials x {args.epochs} epochs, median time_this_iter_s): local folder "
                  f"{local['epoch']:.2f} s, object store {remote['epoch']:.2f} s "
                  f"({(remote['epoch'] / local['epoch'] - 1) * 100:+.1f} %); study wall {local['wall']:.0f} s vs "
                  f"{remote['wall']:.0f} s")


if __name__ == "__main__":
    main()
