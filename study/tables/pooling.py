"""Pool grid studies of the same design into one results folder, so more seeds never mean rerunning what exists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cvae.metrics import FID_SAMPLES
from study.tables.records import DETAILS_FILE, EPOCHS_FILE, SAMPLES_FILE, SEED_PARAMETER, SPEC_FILE, TRIALS_FILE, label_models
from study.tables.selection import incomplete_note
from study.tables.table_files import load_details, load_results, replace_atomically, resolve_path
from study.store.storage import is_uri

# What two studies must share to be one experiment: the design, the objective, the schedule and the classifier
# that measured them. What may differ: which grid values each ran (a subset of models), its seeds and its name.
SAME_DESIGN = ("algorithm", "base", "fixed", "metrics", "modes", "scheduler", "max_epochs", "grace_period",
               "reduction_factor", "classifier_accuracy")
POOLED_KEY = "pooled_from"  # study.json of a pooled folder: the studies it holds


def check_poolable(specs: dict[str, dict], trials: dict[str, pd.DataFrame]) -> None:
    """Refuse, naming the difference, studies that are not the same experiment or that repeat a trial.

    Args:
        specs, trials: study folder name -> its study.json and trials.csv.
    Raises:
        ValueError naming the first difference (key, study and both values) or the repeated (model, seed).
    """
    (first, spec), *others = specs.items()
    for name, other in others:
        for key in SAME_DESIGN:
            if spec.get(key) != other.get(key):
                raise ValueError(f"cannot pool {name} with {first}: {key} is {other.get(key)!r} there, "
                                 f"{spec.get(key)!r} in {first}; only studies of the same design pool")
        if [p["name"] for p in other["parameters"]] != [p["name"] for p in spec["parameters"]]:
            raise ValueError(f"cannot pool {name} with {first}: it varies "
                             f"{', '.join(p['name'] for p in other['parameters'])}, {first} varies "
                             f"{', '.join(p['name'] for p in spec['parameters'])}")
    if any(spec.get("algorithm") != "grid" for spec in specs.values()):
        raise ValueError("only grid studies pool (a search's trials depend on the order its searcher saw them)")
    for name, table in trials.items():
        if note := incomplete_note(table, specs[name]):
            raise ValueError(f"cannot pool {name}: it is {note.split(' — ')[0]}; finish it first")
    sources = {name: set(table["dataset_source"].dropna().astype(str)) for name, table in trials.items()
               if "dataset_source" in table}
    if len({frozenset(value) for value in sources.values()}) > 1:
        raise ValueError("cannot pool studies trained on different data: "
                         + "; ".join(f"{name}: {', '.join(sorted(value))}" for name, value in sources.items()))
    sizes = {name: set(table[FID_SAMPLES].dropna().astype(int)) if FID_SAMPLES in table else set()
             for name, table in trials.items()}
    if len({frozenset(value) for value in sizes.values()}) > 1:  # FID's bias depends on N: pooled fids must share it
        raise ValueError("cannot pool studies whose fid compared different numbers of samples: "
                         + "; ".join(f"{name}: N = {', '.join(map(str, sorted(value))) or 'not recorded'}"
                                     for name, value in sizes.items()))
    seen: dict[tuple, str] = {}
    for name, table in trials.items():
        for model, seed in sorted(zip(label_models(table), table[SEED_PARAMETER])):  # the first repeat, by name
            if (model, seed) in seen:
                raise ValueError(f"cannot pool {name} with {seen[(model, seed)]}: both ran {model} with seed "
                                 f"{seed}; pooled seeds must be new ones (run the extra seeds with --first-seed)")
            seen[(model, seed)] = name


def pool(folders: list[Path], out: Path) -> None:
    """Write one results folder holding every trial of `folders` (trials.csv, epochs.csv, study.json, and the
    details.csv / samples.npz that study/report.py drew), each trial keeping its own id and checkpoint.

    Raises:
        ValueError if the studies cannot be pooled (check_poolable) or a folder is not a study.
    """
    loaded = {Path(folder).name: (Path(folder), *load_results(folder)) for folder in folders}
    if len(loaded) != len(folders):
        raise ValueError("the studies to pool must have different folder names")
    check_poolable({name: spec for name, (_, _, _, spec) in loaded.items()},
                   {name: trials for name, (_, trials, _, _) in loaded.items()})
    if (out / SPEC_FILE).is_file() and POOLED_KEY not in json.loads((out / SPEC_FILE).read_text() or "{}"):
        raise ValueError(f"{out} holds a study of its own; name a new folder for the pooled one")
    out.mkdir(parents=True, exist_ok=True)
    trials, epochs, details, grids = [], [], [], {}
    for name, (folder, table, log, _) in loaded.items():
        table = table.copy()
        table["study"] = name
        table["checkpoint"] = [_relative(resolve_path(folder, path), out) if isinstance(path, str) else path
                               for path in table["checkpoint"]]
        trials.append(table)
        epochs.append(log.assign(study=name))
        drawn, stored = load_details(folder)  # checked like any received folder's
        details.append(drawn)
        grids.update(stored)
    first_folder, _, _, spec = next(iter(loaded.values()))
    spec = {**spec, "name": out.name, POOLED_KEY: list(loaded),
            "description": f"{spec.get('description', '')} Pooled: {', '.join(loaded)}.".strip(),
            "path": _relative(resolve_path(first_folder, spec["path"]), out)}
    replace_atomically(pd.concat(trials, ignore_index=True), out / TRIALS_FILE)
    replace_atomically(pd.concat(epochs, ignore_index=True), out / EPOCHS_FILE)
    replace_atomically(json.dumps(spec, indent=1), out / SPEC_FILE)
    if drawn := [frame for frame in details if not frame.empty]:
        replace_atomically(pd.concat(drawn, ignore_index=True), out / DETAILS_FILE)
    if grids:
        np.savez_compressed(out / SAMPLES_FILE, **grids)


def _relative(path: str | Path, folder: Path) -> str:
    """`path` as seen from `folder` (results folders hold no machine's absolute paths); a URI stays as it is."""
    text = str(path)
    if is_uri(text):
        return text
    return os.path.relpath(Path(text).resolve(), folder.resolve())
