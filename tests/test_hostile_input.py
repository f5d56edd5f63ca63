"""Hostile input: every malformed study file and bad flag is one line, exit code 2, no traceback, before the expensive work."""

import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from
# slow: hundreds of subprocesses (each command's own start-up); under `-n 2 --dist loadgroup` one worker runs
# the whole module, so its module fixtures run once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hostile_input")]


GOOD = textwrap.dedent("""\
    name: ok
    description: a valid study the cases below break one way each
    base: model_4
    fixed: {dataset: mnist-5k, max_train_samples: 300}
    parameters:
      grey_weight: {distribution: log_uniform, low: 0.01, high: 3.0}
      latent_dim: {distribution: int, low: 2, high: 64, log: true}
      condition_mode: {values: [global, per_class]}
    objective: {metric: fid, mode: min}
    search: {algorithm: optuna, sampler: tpe, seed: 0, num_samples: 2, max_concurrent: 2}
    scheduler: {type: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}
""")
GRID = textwrap.dedent("""\
    name: grid
    base: model_4
    parameters:
      preset: {values: [model_1, model_2]}
    search: {algorithm: grid, repeats: 2, max_concurrent: 2}
    scheduler: {type: fifo}
""")


def swap(old, new, text=GOOD):
    assert old in text, old
    return text.replace(old, new, 1)


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))

# name -> (file contents, a word the one-line message must contain)
STUDY_FILES = {
    "parameters as a list": (GOOD.replace("\n  grey_weight:", "\n  - grey_weight:").replace(
        "\n  latent_dim:", "\n  - latent_dim:").replace("\n  condition_mode:", "\n  - condition_mode:"), "parameters"),
    "metric empty list": (swap("metric: fid,", "metric: [],"), "metric"),
    "step not a number": (swap("low: 0.01, high: 3.0}", "low: 0.01, high: 3.0, step: x}"), "step"),
    "binary file": (bytes(range(256)) * 4, "binary"),
    "duplicate objective": (GOOD + "objective: {metric: loss, mode: min}\n", "duplicate key"),
    "duplicate nested key": (swap("seed: 0,", "seed: 0, seed: 1,"), "duplicate key"),
    "log as string": (swap("log: true", "log: 'false'"), "log"),
    "step zero": (swap("high: 64, log: true}", "high: 64, step: 0}"), "step"),
    "float step not dividing": (swap("grey_weight: {distribution: log_uniform, low: 0.01, high: 3.0}",
                                     "grey_weight: {distribution: uniform, low: 0.0, high: 1.0, step: 0.3}"), "step"),
    "step with log scale": (swap("log: true}", "log: true, step: 2}"), "step"),
    "description mapping": (swap("description: a valid", "description: {a: valid}\nx_description: a"), "description"),
    "grid repeats billion": (swap("repeats: 2", "repeats: 1000000000", GRID), "repeats"),
    "grid too large": (swap("preset: {values: [model_1, model_2]}",
                            "latent_dim: {values: [" + ", ".join(map(str, range(1, 1001))) + "]}\n"
                            "  seed: {values: [" + ", ".join(map(str, range(100))) + "]}", GRID), "grid"),
    "billion laughs": ("name: x\ndescription: *i\n" + LAUGHS, "alias"),
    "anchor alone": (swap("fixed: {", "fixed: &f {"), "anchor"),
    "merge key": ("base_fixed: &b {dataset: mnist-5k}\n" + swap("fixed: {dataset: mnist-5k, max_train_samples: 300}",
                                                                 "fixed: {<<: *b}"), "anchor"),
    "empty name": (swap("name: ok", "name: ''"), "name"),
    "dot name": (swap("name: ok", "name: '..'"), "name"),
    "slash name": (swap("name: ok", "name: a/b"), "name"),
    "numeric name": (swap("name: ok", "name: 123"), "name"),
    "long name": (swap("name: ok", "name: " + "a" * 200), "name"),
    "missing name": (swap("name: ok\n", ""), "name"),
    "top-level list": ("- name: ok\n", "mapping"),
    "empty file": ("", "mapping"),
    "comments only": ("# nothing here\n", "mapping"),
    "latin-1 bytes": (GOOD.replace("valid", "v\xe9lid").encode("latin-1"), "UTF-8"),
    "unknown top key": (GOOD + "priority: high\n", "unknown key"),
    "unknown search key": (swap("sampler: tpe,", "algo: tpe,"), "unknown key"),
    "objective string": (swap("objective: {metric: fid, mode: min}", "objective: fid"), "objective"),
    "search list": (swap("search: {algorithm: optuna", "search: [algorithm: optuna").replace(
        "max_concurrent: 2}", "max_concurrent: 2]", 1), "search"),
    "num_samples zero": (swap("num_samples: 2", "num_samples: 0"), "num_samples"),
    "num_samples negative": (swap("num_samples: 2", "num_samples: -5"), "num_samples"),
    "num_samples huge float": (swap("num_samples: 2", "num_samples: 1e9"), "num_samples"),
    "num_samples string": (swap("num_samples: 2", "num_samples: '8'"), "num_samples"),
    "num_samples bool": (swap("num_samples: 2", "num_samples: true"), "num_samples"),
    "max_concurrent zero": (swap("max_concurrent: 2", "max_concurrent: 0"), "max_concurrent"),
    "max_concurrent huge": (swap("max_concurrent: 2", "max_concurrent: 100000"), "max_concurrent"),
    "seed negative": (swap("seed: 0", "seed: -1"), "seed"),
    "seed fraction": (swap("seed: 0", "seed: 1.5"), "seed"),
    "scheduler unknown": (swap("type: asha", "type: hyperband"), "hyperband"),
    "max_epochs zero": (swap("max_epochs: 4", "max_epochs: 0"), "max_epochs"),
    "max_epochs huge": (swap("max_epochs: 4", "max_epochs: 1000000"), "max_epochs"),
    "grace_period zero": (swap("grace_period: 1", "grace_period: 0"), "grace_period"),
    "reduction_factor one": (swap("reduction_factor: 2", "reduction_factor: 1"), "reduction_factor"),
    "cpu zero": (swap("cpu: 1", "cpu: 0"), "cpu"),
    "cpu negative": (swap("cpu: 1", "cpu: -1"), "cpu"),
    "cpu nan": (swap("cpu: 1", "cpu: .nan"), "cpu"),
    "gpu string": (swap("gpu: 0", "gpu: a"), "gpu"),
    "distribution missing": (swap("distribution: log_uniform, ", ""), "distribution"),
    "low missing": (swap("low: 0.01, ", ""), "low"),
    "low above high": (swap("low: 0.01, high: 3.0", "low: 3.0, high: 0.01"), "low"),
    "infinite bound": (swap("high: 3.0}", "high: .inf}"), "high"),
    "log_uniform from zero": (swap("low: 0.01", "low: 0.0"), "log"),
    "int with fractional bound": (swap("low: 2, high: 64", "low: 2.5, high: 64"), "int"),
    "values empty": (swap("values: [global, per_class]", "values: []"), "values"),
    "values scalar": (swap("values: [global, per_class]", "values: global"), "values"),
    "values nested": (swap("values: [global, per_class]", "values: [[global], per_class]"), "values"),
    "values repeated": (swap("values: [global, per_class]", "values: [global, global]"), "distinct"),
    "values booleans": (swap("condition_mode: {values: [global, per_class]}", "dropout: {values: [true, false]}"),
                        "values"),
    "value not allowed": (swap("values: [global, per_class]", "values: [global, both]"), "condition_mode"),
    "values with bounds": (swap("values: [global, per_class]", "values: [global, per_class], low: 0"), "values"),
    "preset in optuna study": (GOOD.replace("parameters:\n", "parameters:\n  preset: {values: [model_1]}\n"), "preset"),
    "distribution in grid": (swap("preset: {values: [model_1, model_2]}",
                                  "grey_weight: {distribution: uniform, low: 0, high: 1}", GRID), "grid"),
    "multi-objective with asha": (swap("metric: fid, mode: min", "metric: [fid, grey_fraction], mode: [min, min]"),
                                  "asha"),
    "metric unknown": (swap("metric: fid", "metric: fidd"), "fidd"),
    "mode unknown": (swap("mode: min}", "mode: minimize}"), "mode"),
    "mode count mismatch": (swap("metric: fid, mode: min}\n", "metric: [fid, val_elbo], mode: [min]}\n").replace(
        "type: asha", "type: fifo"), "mode"),
    "fixed epochs zero": (swap("max_train_samples: 300}", "max_train_samples: 300, epochs: 0}"), "epochs"),
    "fixed epochs astronomic": (swap("max_train_samples: 300}", "max_train_samples: 300, epochs: 1e12}"), "epochs"),
    "fixed eval samples huge": (swap("max_train_samples: 300}", "max_train_samples: 300, eval_samples: 100000000}"),
                                "eval_samples"),
    "fixed bool for float": (swap("max_train_samples: 300}", "max_train_samples: 300, grey_weight: true}"),
                             "grey_weight"),
    "fixed unknown field": (swap("max_train_samples: 300}", "max_train_samples: 300, lr: 0.1}"), "lr"),
    "fixed list": (swap("fixed: {dataset: mnist-5k, max_train_samples: 300}", "fixed: [dataset]"), "fixed"),
    "deep nesting": ("name: x\ndescription: " + "[" * 20000 + "]" * 20000 + "\n", "nested"),
    "huge file": ("name: x\n" + "# padding\n" * 40000, "large"),
    "tab indentation": (swap("  grey_weight:", "\tgrey_weight:"), "YAML"),
    "complex key": (GOOD + "? [a, b]\n: 1\n", "key"),
    "parameter not a field": (swap("grey_weight: {", "grey_wieght: {"), "grey_wieght"),
    "base unknown": (swap("base: model_4", "base: model_6"), "model_6"),
    "sampler list": (swap("sampler: tpe", "sampler: [tpe]"), "sampler"),
    # A key with no value is YAML null (and {} / [] hold nothing): refused by name, never read as "defaults".
    "search null": (swap("search: {algorithm: optuna, sampler: tpe, seed: 0, num_samples: 2, max_concurrent: 2}",
                         "search:"), "search is empty (null)"),
    "search empty mapping": (swap("search: {algorithm: optuna, sampler: tpe, seed: 0, num_samples: 2, "
                                  "max_concurrent: 2}", "search: {}"), "search is empty"),
    "fixed null": (swap("fixed: {dataset: mnist-5k, max_train_samples: 300}", "fixed:"), "fixed is empty"),
    "parameters null": (swap("  condition_mode: {values: [global, per_class]}\n", "").replace(
        "  grey_weight: {distribution: log_uniform, low: 0.01, high: 3.0}\n", "").replace(
        "  latent_dim: {distribution: int, low: 2, high: 64, log: true}\n", ""), "parameters is empty"),
    "objective null": (swap("objective: {metric: fid, mode: min}", "objective:"), "objective is empty"),
    "scheduler null": (swap("scheduler: {type: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}",
                            "scheduler:"), "scheduler is empty"),
    "resources null": (swap("resources: {cpu: 1, gpu: 0}", "resources:"), "resources is empty"),
    "description null": (swap("description: a valid study the cases below break one way each", "description:"),
                         "description is empty"),
    "base null": (swap("base: model_4", "base:"), "base is empty"),
    "num_samples null": (swap("num_samples: 2", "num_samples: "), "search.num_samples is empty"),
    "max_epochs null": (swap("max_epochs: 4", "max_epochs: null"), "scheduler.max_epochs is empty"),
    "cpu null": (swap("cpu: 1", "cpu: ~"), "resources.cpu is empty"),
    "fixed field null": (swap("max_train_samples: 300}", "max_train_samples: }"), "fixed.max_train_samples"),
    "parameter body null": (swap("grey_weight: {distribution: log_uniform, low: 0.01, high: 3.0}", "grey_weight:"),
                            "parameters.grey_weight is empty"),
    "low null": (swap("low: 0.01", "low: null"), "parameters.grey_weight.low is empty"),
    "values with a null": (swap("values: [global, per_class]", "values: [global, null]"), "null"),
    # What this machine cannot serve is refused before Ray starts (and before any classifier trains).
    "cpu beyond the machine": (swap("cpu: 1", "cpu: 1000"), "this machine has"),
    "gpu beyond the machine": (swap("gpu: 0", "gpu: 64"), "this machine has"),
}
CHEAP = {name for name in STUDY_FILES if "null" in name or "beyond the machine" in name or name.endswith("empty mapping")}


def run_cli(args, cwd=REPO, env=None):
    """The command's result and the CPU seconds it used: work done, which a busy machine does not inflate the way
    it stretches wall time (three of these run at once on two cores)."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, stdout=stdout, stderr=stderr,
                                   text=True, stdin=subprocess.DEVNULL, env=env)
        guard = threading.Timer(120, process.kill)  # a hang guard, not a measurement
        guard.start()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own CPU time
        guard.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0), stderr.seek(0)
        result = subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), stdout.read(), stderr.read())
    return result, usage.ru_utime + usage.ru_stime


def assert_refused(result, cpu_seconds, word, limit_s=30):
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output[-2000:]
    assert "Traceback" not in output and len(output.splitlines()) == 1, output[-2000:]
    assert word.lower() in output.lower(), output
    assert cpu_seconds < limit_s  # refused before the expensive work (Ray, TensorFlow, a classifier's training)


def run_all(cases, env=None):
    with ThreadPoolExecutor(max_workers=3) as pool:  # subprocesses: mostly waiting on imports
        return dict(zip(cases, pool.map(lambda args: run_cli(args, env=env), cases.values())))


@pytest.fixture(scope="module")
def study_file_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-files")
    cases = {}
    for index, (name, (contents, _)) in enumerate(STUDY_FILES.items()):
        path = folder / f"case{index}.yaml"
        path.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
        # an empty classifier cache: every refusal must come before a classifier would be trained
        cases[name] = ["study/run.py", "--space", path, "--results-dir", folder / f"results-{index}"]
    return run_all(cases, env={**os.environ, "CVAE_CACHE_DIR": str(folder / "cold-cache")})


def test_there_are_at_least_60_malformed_study_files():
    assert len(STUDY_FILES) >= 60 and len(CHEAP) >= 18


@pytest.mark.parametrize("name", list(STUDY_FILES))
def test_malformed_study_file_is_refused_in_one_line(study_file_results, name):
    result, seconds = study_file_results[name]
    assert_refused(result, seconds, STUDY_FILES[name][1], limit_s=10 if name in CHEAP else 30)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-flags")
    (folder / "a_file").write_text("not a folder")
    (folder / "empty").mkdir()
    (folder / "not_png").mkdir()
    return folder


def flag_cases(places):
    run = ["study/run.py", "--space", "smoke.yaml", "--results-dir", places / "results"]
    sample = ["-m", "cvae.sample", places / "empty"]
    return {
        "empty name": ([*run, "--name", ""], "name"),
        "dot-dot name": ([*run, "--name", ".."], "name"),
        "separator in name": ([*run, "--name", "a/b"], "name"),
        "num-samples not a number": ([*run, "--num-samples", "x"], "num-samples"),
        "num-samples zero": ([*run, "--num-samples", "0"], "num-samples"),
        "num-samples huge": ([*run, "--num-samples", "100000000"], "num-samples"),
        "max-epochs zero": ([*run, "--max-epochs", "0"], "max-epochs"),
        "max-epochs negative": ([*run, "--max-epochs", "-3"], "max-epochs"),
        "max-concurrent zero": ([*run, "--max-concurrent", "0"], "max-concurrent"),
        "max-train-samples negative": ([*run, "--max-train-samples", "-1"], "max-train-samples"),
        "cpus zero": ([*run, "--cpus-per-trial", "0"], "cpu"),
        "cpus nan": ([*run, "--cpus-per-trial", "nan"], "cpu"),
        "gpus negative": ([*run, "--gpus-per-trial", "-1"], "gpu"),
        "cpus beyond the machine": ([*run, "--cpus-per-trial", "64"], "64 CPUs but this machine has"),
        "gpus beyond the machine": ([*run, "--gpus-per-trial", "64"], "64 GPUs but this machine has"),
        "dataset unknown": ([*run, "--dataset", "cifar"], "dataset"),
        "address not an address": ([*run, "--address", "notanaddress"], "address"),
        "address nobody listens": ([*run, "--address", "127.0.0.1:1"], "no Ray head"),
        "address port out of range": ([*run, "--address", "127.0.0.1:99999"], "address"),
        "results-dir is a file": (["study/run.py", "--space", "smoke.yaml", "--results-dir", places / "a_file"],
                                  "is a file"),
        "results-dir under /proc": (["study/run.py", "--space", "smoke.yaml", "--results-dir", "/proc/cvae-nope"],
                                    "results-dir"),
        "storage not a URL": ([*run, "--optuna-storage", "results/x.db"], "database URL"),
        "storage-path is a file": ([*run, "--storage-path", places / "a_file"], "is a file"),
        "storage-path unknown scheme": ([*run, "--storage-path", "nosuch://bucket/x"], "cannot write there"),
        "storage-path store not answering": (
            [*run, "--storage-path", "s3://cvae/x?endpoint_override=127.0.0.1:9&scheme=http"], "cannot write there"),
        "best of a URI holding no study": (["study/best.py", "s3://cvae/none?endpoint_override=127.0.0.1:9&scheme=http"],
                                           "cannot read the study's tables"),
        "space missing": (["study/run.py", "--space", "nope.yaml"], "no such study file"),
        "space is a folder": (["study/run.py", "--space", places / "empty"], "no such study file"),
        "no space": (["study/run.py"], "--space"),
        "unknown flag": ([*run, "--epochz", "3"], "unrecognized"),
        "data-path empty folder": ([*run, "--data-path", places / "empty", "--dataset", "mnist"], "lacks"),
        "data-path missing": ([*run, "--data-path", places / "missing.npz", "--dataset", "mnist"], "data_path"),
        "resume without a study": ([*run, "--resume"], "no study to continue"),
        "sample out not png": ([*sample, "--out", places / "x.txt"], ".png"),
        "sample out is a folder": ([*sample, "--out", places / "not_png" / ".."], ".png"),
        "sample scale huge": ([*sample, "--scale", "1000"], "scale"),
        "sample samples huge": ([*sample, "--samples", "200000"], "samples"),
        "sample digit 11": ([*sample, "--digits", "11"], "digit"),
        "sample thickness 2": ([*sample, "--thickness", "2"], "thickness"),
        "sample seed negative": ([*sample, "--seed", "-1"], "seed"),
        "sample no checkpoint": ([*sample, "--out", places / "x.png"], "checkpoint"),
        "study sample no study": (["study/sample.py", places / "empty"], "not a study results folder"),
        "study sample bad option": (["study/sample.py", places / "empty", "--scale", "0"], "scale"),
        "best no study": (["study/best.py", places / "missing"], "not a study results folder"),
        "best on a file": (["study/best.py", places / "a_file"], "not a study results folder"),
        "report dpi zero": (["study/report.py", places / "empty", "--dpi", "0"], "dpi"),
        "report no study": (["study/report.py", places / "missing"], "not a study results folder"),
        "train epochs zero": (["-m", "cvae.train", "--epochs", "0", "--out", places / "run"], "epochs"),
        "train set without value": (["-m", "cvae.train", "--set", "latent_dim", "--out", places / "run"], "KEY=VALUE"),
        "train set unknown key": (["-m", "cvae.train", "--set", "nope=1", "--out", places / "run"], "nope"),
        "train unknown preset": (["-m", "cvae.train", "--preset", "model_9", "--out", places / "run"], "preset"),
    }


@pytest.fixture(scope="module")
def flag_results(places):
    cases = flag_cases(places)

    def isolated(args, index):  # cases run three at a time: none shares a study folder (or its lock) with another
        return [places / f"results-{index}" if arg == places / "results" else arg for arg in args]

    return run_all({name: isolated(args, index) for index, (name, (args, _)) in enumerate(cases.items())})


def test_there_are_at_least_30_bad_flags(places):
    assert len(flag_cases(places)) >= 30


@pytest.mark.parametrize("name", list(flag_cases(REPO)))
def test_bad_flag_is_refused_in_one_line(flag_results, places, name):
    result, seconds = flag_results[name]
    assert_refused(result, seconds, flag_cases(places)[name][1])
