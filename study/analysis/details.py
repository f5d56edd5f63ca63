"""What a study's checkpoints draw beyond its tables, saved once so the report needs no checkpoints later: each
finished trial's per-class thickness sweep (details.csv) and sample grids (samples.npz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from study.tables.records import DETAILS_FILE, FINISHED, SAMPLES_FILE
from study.tables.selection import best_trial
from study.tables.table_files import checkpoint_within, load_details


FINAL, BEST = "final", "best"  # samples.npz keys: "<kind>__<trial_id>"


def final_checkpoint(best_checkpoint: Path) -> Path | None:
    """The newest checkpoint of the trial that wrote `best_checkpoint` (Tune keeps the best and the newest)."""
    path = Path(best_checkpoint)
    trial_dir = next((p.parent for p in (path, *path.parents) if p.name.startswith("checkpoint_")), None)
    if trial_dir is None or not trial_dir.is_dir():
        return path if (path / "decoder.keras").is_file() else None
    candidates = sorted(trial_dir.glob("checkpoint_[0-9]*"))
    return _model_folder(candidates[-1]) if candidates else None


def _model_folder(checkpoint: Path) -> Path | None:
    found = sorted(Path(checkpoint).rglob("decoder.keras"))
    return found[-1].parent if found else None


def sample_key(kind: str, trial_id: str) -> str:
    return f"{kind}__{trial_id}"


def collect_details(folder: Path, trials: pd.DataFrame, spec: dict, refresh: bool = False, log=print,
                    verbose: bool = False):
    """Sweep profiles and sample grids from the trials' checkpoints, saved so the results need no checkpoints later.

    Trials already in details.csv are kept unless `refresh`; a trial whose checkpoint is gone is skipped (said so).
    """
    folder = Path(folder)
    details, grids = (pd.DataFrame(), {}) if refresh else load_details(folder)
    done = set(details["trial_id"]) if not details.empty else set()
    finished = trials[trials["status"].isin(FINISHED) & trials["checkpoint"].notna() & ~trials["trial_id"].isin(done)]
    todo, missing = [], []
    for _, trial in finished.iterrows():
        checkpoint = final_checkpoint(checkpoint_within(folder, trial["checkpoint"], spec))
        if checkpoint is None:
            missing.append(trial["trial_id"])
        else:
            todo.append((trial["trial_id"], checkpoint))
    if missing:
        log(f"no checkpoint on disk for {len(missing)} trial(s) ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); their sweeps and samples are left out")
    try:
        best = best_trial(trials, tuple(spec["metrics"]), tuple(spec["modes"]))
        best_folder = (None if sample_key(BEST, best["trial_id"]) in grids
                       else _model_folder(checkpoint_within(folder, best["checkpoint"], spec)))
    except (ValueError, TypeError):  # no finished trial yet, or no checkpoint recorded
        best_folder = None
    if not todo and best_folder is None:
        return details, grids
    from cvae.runtime import import_tensorflow_quietly, warnings_as_notes

    import_tensorflow_quietly(verbose)  # TensorFlow: only when there is something to draw
    from cvae.diagnostics import describe_checkpoint

    rows = []
    with warnings_as_notes(log):  # e.g. the data's fallback, met once per checkpoint
        for number, (trial_id, checkpoint) in enumerate(todo, 1):
            log(f"[{number}/{len(todo)}] {trial_id}: sweep and samples")  # its checkpoint is in trials.csv
            profile, grid = describe_checkpoint(checkpoint)
            rows += [{"trial_id": trial_id, "checkpoint_epoch": _epoch_of(checkpoint), **row} for row in profile]
            grids[sample_key(FINAL, trial_id)] = grid
        if best_folder is not None:
            log(f"best trial {best['trial_id']}: samples from its best checkpoint")
            grids[sample_key(BEST, best["trial_id"])] = describe_checkpoint(best_folder)[1]
    if rows:
        details = pd.concat([details, pd.DataFrame(rows)], ignore_index=True)
    details.to_csv(folder / DETAILS_FILE, index=False)
    np.savez_compressed(folder / SAMPLES_FILE, **grids)
    return details, grids


def _epoch_of(checkpoint: Path) -> int | None:
    name = Path(checkpoint).name
    return int(name.split("_")[-1]) if name.startswith("epoch_") else None


