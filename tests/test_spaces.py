"""Every study file validates; every mistake is one clear line with exit code 2 and no Ray started."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from study.spec.study_file import SPACES_DIR, SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from

GOOD = textwrap.dedent("""
    name: ok
    base: model_4
    fixed: {dataset: mnist-5k}
    parameters:
      grey_weight: {distribution: log_uniform, low: 0.01, high: 3.0}
    objective: {metric: fid, mode: min}
    search: {algorithm: optuna, sampler: tpe, seed: 0, num_samples: 2, max_concurrent: 2}
    scheduler: {type: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}
""")


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_file_validates(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    config = spec.trial_config(spec.grid()[0] if spec.algorithm == "grid" else {})
    assert config.epochs >= 1


def test_required_study_files_exist():
    names = {p.name for p in SPACES_DIR.glob("*.yaml")}
    assert {"grey_loss.yaml", "models_1_to_5.yaml", "latent_dim.yaml", "condition_mode.yaml", "smoke.yaml"} <= names


def test_models_grid_is_five_presets_three_seeds():
    spec = load_spec("models_1_to_5.yaml")
    points = spec.grid()
    assert len(points) == 15 and {p["seed"] for p in points} == {0, 1, 2}
    epochs = {p["preset"]: spec.trial_config(p).epochs for p in points}
    assert epochs == {"model_1": 8, "model_2": 8, "model_3": 40, "model_4": 9, "model_5": 41}


def test_base_preset_is_the_warm_start_point():
    spec = load_spec("grey_loss.yaml")
    assert spec.base_point() == {"grey_weight": 0.32, "grey_threshold": 0.0, "warmup_epochs": 1,
                                 "condition_mode": "per_class", "latent_dim": 40}


def test_overrides_cap_epochs_and_set_dataset():
    spec = load_spec("grey_loss.yaml").with_overrides(max_epochs=2, dataset="mnist-5k", max_train_samples=300)
    config = spec.trial_config({"grey_weight": 1.0})
    assert (config.epochs, config.dataset, config.max_train_samples, config.grey_weight) == (2, "mnist-5k", 300, 1.0)


def _variant(tmp_path, old, new):
    text = GOOD.replace(old, new)
    assert text != GOOD
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


BAD = [
    ("search:", "serch:", "bad.yaml: unknown key 'serch'; allowed: name, description, base"),
    ("grey_weight: {", "grey_wieght: {", "parameters.grey_wieght: 'grey_wieght' is not a TrialConfig field; allowed:"),
    ("low: 0.01, high: 3.0", "low: 3.0, high: 0.01", "parameters.grey_weight: low (3.0) must be < high (0.01)"),
    ("distribution: log_uniform", "distribution: loguniform",
     "distribution 'loguniform' is unknown; allowed: uniform, log_uniform, int, categorical"),
    ("metric: fid, mode: min", "metric: [fid, grey_fraction], mode: [min, min]",
     "multi-objective) cannot be used with scheduler type asha"),
    ("base: model_4", "base: model_6", "base: unknown preset 'model_6'; allowed: model_1"),
    ("sampler: tpe", "sampler: bayes", "sampler 'bayes' is unknown; allowed: tpe, random, cmaes, gp, nsga2"),
    ("metric: fid", "metric: fidd", "metric 'fidd' is unknown; allowed: reconstruction"),
    ("metric: fid", "metric: val_loss", "val_loss adds each trial's own grey weight and L2 penalty"),
    ("metric: fid", "metric: loss", "loss adds each trial's own grey weight"),
    ("metric: fid", "metric: test_fid", "test_fid is measured on the test split, which no selection may see"),
    ("base: model_4", "base: model_4\nallow_weak_classifier: 1", "allow_weak_classifier must be true or false"),
    ("fixed: {dataset: mnist-5k}", "fixed: {dataset: cifar}", "fixed: dataset='cifar'; allowed: mnist"),
    ("high: 3.0}", "high: 3.0, bins: 4}", "parameters.grey_weight: unknown key 'bins'"),
    ("gpu: 0}", "gpu: 0, fuse: 0}", "fuse must be an integer in [1, 64], got 0"),
    ("gpu: 0}", "gpu: 0, fuse: 2.5}", "fuse must be an integer in [1, 64], got 2.5"),
    ("cpu: 1, gpu: 0}", "cpu: 0.5, gpu: 0, fuse: 32}", "cpu 0.5 is too little for fuse 32 (each member takes 0.01 CPU"),
]


@pytest.mark.parametrize("old, new, message", BAD, ids=[b[2][:30] for b in BAD])
def test_spec_errors_name_file_key_and_allowed(tmp_path, old, new, message):
    with pytest.raises(SpecError) as error:
        load_spec(_variant(tmp_path, old, new))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml: line .* is not valid YAML"):
        load_spec(path)


@pytest.mark.parametrize("args, message", [
    (["--space", "BAD"], "multi-objective) cannot be used with scheduler type asha"),
    (["--space", "nope.yaml"], "nope.yaml: no such study file (looked in . and search_spaces/); available:"),
    (["--space", "smoke.yaml", "--num-samples", "0"], "--num-samples must be in [1, 10000], got 0"),
    (["--space", "smoke.yaml", "--storage", "results/x.db"], "must be a database URL such as sqlite:///"),
])
def test_cli_errors_exit_2_before_ray(tmp_path, args, message):
    args = [str(_variant(tmp_path, "metric: fid, mode: min", "metric: [fid, grey_fraction], mode: [min, min]"))
            if a == "BAD" else a for a in args]
    result = subprocess.run([sys.executable, "study/run.py", *args, "--results-dir", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Ray:" not in result.stdout  # validation happens before Ray starts


def test_cli_help_is_quick_and_explains():
    result = subprocess.run([sys.executable, "study/run.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--resume" in result.stdout and "--address" in result.stdout
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.argv=['x','--help']\n"
                            "import runpy\ntry: runpy.run_path('study/run.py', run_name='__main__')\n"
                            "except SystemExit: pass\nprint('tensorflow' in sys.modules, 'ray' in sys.modules)"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "nsga2"])
def test_samplers_are_seeded(sampler):
    import optuna

    from study.driver.search import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec("grey_loss.yaml")
    first_points = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler(sampler, seed=7))
        trial = study.ask(spec.optuna_distributions())
        first_points.append(trial.params)
    assert first_points[0] == first_points[1]


def test_a_fused_search_proposes_shapes_in_blocks_that_fill_a_program():
    """fuse 4 on grey_loss (latent_dim fixes a program's shape): the three trials that follow one of a freely chosen
    shape take its latent_dim (a program's four slots); a trial that ends frees a slot, and once a block is full
    the next trial opens a new block rather than repeating the shape."""
    import optuna

    from study.driver.search import make_searcher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec("grey_loss.yaml").with_overrides(fuse=4, max_concurrent=2)
    searcher = make_searcher(spec, None)  # a ConcurrencyLimiter of 8 (2 programs of 4) around the StudySearch
    searcher.set_search_properties(metric="fid", mode="min", config={})
    suggested = [searcher.suggest(str(index)) for index in range(8)]
    latent = [params["latent_dim"] for params in suggested]
    assert len(set(latent[:4])) == 1 and len(set(latent[4:])) == 1, latent  # the base point's program, then one more
    assert len({params["grey_weight"] for params in suggested}) == 8  # the other parameters are still searched
    searcher.on_trial_complete("5", {"fid": 1.0, "status": "completed"})
    searcher.on_trial_complete("6", {"fid": 1.0, "status": "completed"})
    block = [searcher.suggest(str(index))["latent_dim"] for index in (8, 9)]
    assert block[0] == block[1]  # the freed slots hold a new block: its first trial's shape, then the same
    searcher.on_trial_complete("8", {"fid": 1.0, "status": "completed"})
    assert searcher.suggest("10")["latent_dim"] == block[0]  # the block is not full until four trials took it


def test_gp_sampler_without_torch_is_a_clear_error(tmp_path):
    import importlib.util

    path = _variant(tmp_path, "sampler: tpe", "sampler: gp")
    result = subprocess.run([sys.executable, "study/run.py", "--space", str(path), "--results-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    if importlib.util.find_spec("torch") is None:
        assert result.returncode == 2 and "sampler gp needs PyTorch" in result.stderr
    else:  # with torch installed the file is valid; Ray would start, so only validation is checked here
        assert "sampler gp needs PyTorch" not in result.stderr


def test_a_grid_runs_its_seeds_from_first_seed():
    """More seeds for an earlier study are a new study starting where it stopped (pooled by report.py --pool)."""
    from study.driver.search import param_space

    spec = load_spec("models_1_2_seeds.yaml")
    assert spec.first_seed == 3 and spec.repeats == 7
    assert sorted({point["seed"] for point in spec.grid()}) == list(range(3, 10))
    assert param_space(spec)["seed"] == {"grid_search": list(range(3, 10))}  # what Tune runs
    assert param_space(spec.with_overrides(first_seed=0, repeats=2))["seed"] == {"grid_search": [0, 1]}
