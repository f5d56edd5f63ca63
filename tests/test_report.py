"""study/report.py and analysis.ipynb on two tiny real studies (a preset grid and a grey-loss search)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from


# slow; under `-n 2 --dist loadgroup` one worker runs the whole module, so its module fixtures run once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("report")]


@pytest.fixture(scope="module")
def tiny_studies(tmp_path_factory, studies_at_once, write_space, tiny_fixed):
    """{name: (folder, driver's stdout)} of five tiny real Ray + Optuna + TF studies, run at once: a preset grid, a
    grey-loss search, the grid's seed 2 as a study of its own and the grid with seeds 0-2 at once, and (in a root of
    its own) a multi-objective search of the shipped pareto.yaml's kind."""
    root, pareto_root = tmp_path_factory.mktemp("studies"), tmp_path_factory.mktemp("pareto")
    grid = """
        name: {name}
        fixed: {tiny_fixed}
        parameters:
          preset: {{values: [model_1, model_2]}}
        search: {{algorithm: grid, {seeds}, max_concurrent: 2}}
        scheduler: {{type: fifo, max_epochs: 1}}
    """
    bodies = {
        "tiny_models": (root, grid.format(name="tiny_models", tiny_fixed=tiny_fixed, seeds="repeats: 2")),
        "tiny_grey": (root, f"""
            name: tiny_grey
            base: model_4
            fixed: {tiny_fixed}
            parameters:
              grey_weight: {{distribution: log_uniform, low: 0.1, high: 3.0}}
              warmup_epochs: {{distribution: int, low: 0, high: 1}}
              condition_mode: {{values: [global, per_class]}}
            search: {{algorithm: optuna, sampler: random, seed: 0, num_samples: 3, max_concurrent: 2}}
            scheduler: {{type: fifo, max_epochs: 2}}
        """),
        "tiny_more": (root, grid.format(name="tiny_more", tiny_fixed=tiny_fixed, seeds="repeats: 1, first_seed: 2")),
        "tiny_all": (root, grid.format(name="tiny_all", tiny_fixed=tiny_fixed, seeds="repeats: 3")),
        "tiny_pareto": (pareto_root, f"""
            name: tiny_pareto
            base: model_4
            fixed: {tiny_fixed}
            parameters:
              grey_weight: {{distribution: log_uniform, low: 0.05, high: 1.0}}
              condition_mode: {{values: [global, per_class]}}
            objective: {{metric: [fid, grey_fraction, thickness_mae], mode: [min, min, min]}}
            search: {{algorithm: optuna, sampler: tpe, seed: 0, num_samples: 3, max_concurrent: 2}}
            scheduler: {{type: fifo, max_epochs: 1}}
        """),
    }
    jobs = [(write_space(folder, name, body), folder) for name, (folder, body) in bodies.items()]
    results = studies_at_once(*jobs)
    for (space, _), result in zip(jobs, results):
        assert result.returncode == 0, (space.name, result.stdout[-3000:] + result.stderr[-3000:])
    return {name: (folder / name, result.stdout) for (name, (folder, _)), result in zip(bodies.items(), results)}


@pytest.fixture(scope="module")
def studies(tiny_studies):
    """(models folder, grey folder): a preset grid (2 presets x 2 seeds, 1 epoch) and a grey-loss search (3, 2)."""
    return tiny_studies["tiny_models"][0], tiny_studies["tiny_grey"][0]


def report(folder, *args):
    return subprocess.run([sys.executable, "study/report.py", str(folder), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_report_writes_figures_summary_and_details(studies):
    models, grey = studies
    for folder, expected in ((models, {"model_metrics", "epoch_curves", "sample_grids", "thickness_sweeps",
                                       "class_parity"}),
                             (grey, {"objective_history", "parameter_importance", "parallel_coordinates",
                                     "grey_effects", "pareto_fid_grey", "best_samples", "thickness_sweeps",
                                     "class_parity"})):
        result = report(folder)
        assert result.returncode == 0, result.stderr[-3000:]
        assert {p.stem for p in (folder / "figures").glob("*.png")} == expected
        summary = (folder / "summary.md").read_text()
        for claim in "abcde":
            assert f"- ({claim}) " in summary
        details = pd.read_csv(folder / "details.csv")
        trials = pd.read_csv(folder / "trials.csv")
        assert set(details["trial_id"]) == set(trials["trial_id"])
        assert len(details) == len(trials) * 10 * 9  # every digit at every sweep thickness
    assert "| metric | model_1 | model_2 |" in (models / "summary.md").read_text()
    assert "## Best trial" in (grey / "summary.md").read_text()


def test_report_works_without_checkpoints_once_details_exist(studies, tmp_path):
    models, _ = studies
    assert report(models).returncode == 0  # details collected (again a no-op if the other test ran first)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("trials.csv", "epochs.csv", "study.json", "details.csv", "samples.npz"):
        (copy / name).write_bytes((models / name).read_bytes())
    trials = pd.read_csv(copy / "trials.csv")
    trials["checkpoint"] = "/nonexistent/" + trials["trial_id"]  # as after deleting the checkpoints
    trials.to_csv(copy / "trials.csv", index=False)
    result = report(copy, "--no-details")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (copy / "figures" / "sample_grids.png").is_file()


def test_report_rejects_a_folder_that_is_not_a_study(tmp_path):
    result = report(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "not a study results folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_notebook_runs_headless_on_the_tiny_studies(studies, pareto_study):
    import nbformat
    from nbclient import NotebookClient

    models, grey = studies
    for folder in studies:
        assert report(folder).returncode == 0
    notebook = nbformat.read(REPO / "analysis.ipynb", as_version=4)
    pareto = pareto_study[0]
    assert report(pareto).returncode == 0
    # the tiny preset grid stands in for both datasets' Model 1-5 studies
    environment = {"CVAE_MODELS_STUDY": str(models), "CVAE_GREY_STUDY": str(grey), "CVAE_WARMUP_STUDY": str(grey),
                   "CVAE_FASHION_STUDY": str(models), "CVAE_PARETO_STUDY": str(pareto),
                   "CVAE_FASHION_WARMUP_STUDY": str(grey)}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # the kernel inherits the environment
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert len(images) >= 10
    text = "".join(str(output.get("data", {}).get("text/markdown", "")) for cell in notebook.cells
                   if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "(a) the thickness condition is respected" in text and "(e) grey loss from epoch 1" in text
    html = "".join(str(output.get("data", {}).get("text/html", "")) for cell in notebook.cells
                   if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "generalises" in html and "non-dominated" in text  # MNIST vs Fashion-MNIST, and the Pareto front


def test_a_moved_study_folder_keeps_working(studies, tmp_path):
    import json
    import shutil

    _, grey = studies
    moved = shutil.copytree(grey, tmp_path / "elsewhere" / "tiny_grey")
    trials = pd.read_csv(moved / "trials.csv")
    assert trials["checkpoint"].notna().all() and not trials["checkpoint"].str.startswith("/").any()
    assert not json.loads((moved / "study.json").read_text())["path"].startswith("/")
    best = subprocess.run([sys.executable, "study/best.py", str(moved)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert best.returncode == 0, best.stderr
    checkpoint = best.stdout.split("checkpoint: ")[1].strip()
    assert checkpoint.startswith(str(moved)) and (Path(checkpoint) / "decoder.keras").is_file()
    out = tmp_path / "moved.png"
    sample = subprocess.run([sys.executable, "study/sample.py", str(moved), "--out", str(out), "--digits", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0 and out.is_file(), sample.stderr[-2000:]


@pytest.fixture(scope="module")
def pareto_study(tiny_studies):
    """(folder, driver's stdout) of a tiny real study of the shipped pareto.yaml's kind."""
    return tiny_studies["tiny_pareto"]


def test_multi_objective_study_reports_its_front(pareto_study):
    """The front in summary.md, one figure per pair of objectives with real data marked, samples from front
    members, and ended trials keep weights only."""
    folder, stdout = pareto_study
    assert re.search(r"disk: \d+ MB of checkpoints and logs in .*\(\d+ MB of ended trials' optimizer state removed\)",
                     stdout), stdout[-2000:]
    assert not list((folder / "tune").rglob("training_state.npz"))  # every trial ended: weights only
    assert len(list((folder / "tune").rglob("decoder.keras"))) == 3
    assert report(folder).returncode == 0
    figures = {p.stem for p in (folder / "figures").glob("*.png")}
    assert {"pareto_fid_grey_fraction", "pareto_fid_thickness_mae", "pareto_grey_fraction_thickness_mae",
            "front_samples"} <= figures
    summary = (folder / "summary.md").read_text()
    trials = pd.read_csv(folder / "trials.csv")
    assert trials["real_grey_fraction"].between(0.3, 0.7).all()
    assert re.search(r"## Pareto front: [123] of 3 completed trials are non-dominated", summary)
    assert f"Real data: grey_fraction {trials['real_grey_fraction'].median():.3g}" in summary
    assert "grey vs real" in summary and "test_fid" in summary
    assert re.search(r"Samples from `\w+` \(best fid\).* are in the `front_samples` figure", summary)


def test_front_examples_show_the_trade_off():
    from study.analysis.figures import front_examples

    trials = pd.DataFrame({"trial_id": ["sharp", "real", "blurry", "dominated", "pruned"],
                           "status": ["completed"] * 4 + ["pruned"],
                           "fid": [30.0, 18.0, 15.0, 40.0, 1.0], "grey_fraction": [0.1, 0.6, 0.9, 0.95, 0.0],
                           "thickness_mae": [0.2, 0.1, 0.3, 0.4, 0.0], "ink_w1": [0.2, 0.04, 0.1, 0.3, 0.0]})
    spec = {"metrics": ["fid", "grey_fraction", "thickness_mae"], "modes": ["min", "min", "min"]}
    picked = [(reason, row["trial_id"]) for reason, row in front_examples(trials, spec)]
    assert picked == [("best fid", "blurry"), ("best grey_fraction", "sharp"), ("closest to real ink", "real")]
    assert front_examples(trials, {"metrics": ["fid"], "modes": ["min"]}) == []
    assert [r for r, _ in front_examples(trials.drop(columns="ink_w1"), spec)][-1] == "best thickness_mae"


@pytest.fixture(scope="module")
def seed_studies(tiny_studies):
    """(seed 2 of the tiny preset grid as a study of its own, the same grid run with seeds 0-2 at once)."""
    return tiny_studies["tiny_more"][0], tiny_studies["tiny_all"][0]


def test_pooled_seeds_equal_one_study_with_all_the_seeds(studies, seed_studies, tmp_path):
    models, _ = studies
    more, everything = seed_studies
    pooled = tmp_path / "pooled"
    for folder in (models, more, everything):  # each study's sweeps and samples, drawn from its checkpoints
        assert report(folder).returncode == 0
    result = report(models, "--pool", more, "--out", pooled, "--no-details")
    assert result.returncode == 0, result.stderr[-3000:]
    assert report(pooled, "--no-details").returncode == 0  # a pooled folder is a results folder like any other
    columns = ["param_preset", "param_seed", "test_fid", "test_class_parity", "test_grey_gap", "val_elbo"]
    one, two = (pd.read_csv(folder / "trials.csv").sort_values(columns[:2])[columns].reset_index(drop=True)
                for folder in (pooled, everything))
    pd.testing.assert_frame_equal(one, two)  # one seed fixes everything: the same trials, bitwise
    assert set(pd.read_csv(pooled / "trials.csv")["study"]) == {"tiny_models", "tiny_more"}

    pool_note = re.compile(r"; a pool of 2 studies \(tiny_models, tiny_more\), each added after the verdicts on "
                           r"the ones before: every test at α/2 = 0\.025 \(Bonferroni over the looks\)")

    def decided(folder):  # the model table and the verdicts, without what names the study (its trial ids)
        lines = (folder / "summary.md").read_text().splitlines()
        return [re.sub(r"collapsed left out \([^)]*\)", "collapsed left out", pool_note.sub("", line))
                for line in lines if line.startswith(("| ", "- ("))]

    # the same numbers and verdicts; the pool says its tests ran at α/2 (a second look at the same claims)
    assert decided(pooled) == decided(everything) and any("seeds" in line for line in decided(pooled))
    assert pool_note.search((pooled / "summary.md").read_text())


def test_pooling_studies_of_another_design_is_refused(studies, seed_studies, tmp_path):
    import json
    import shutil

    models, grey = studies
    more, _ = seed_studies
    other = shutil.copytree(more, tmp_path / "other_data")
    spec = json.loads((other / "study.json").read_text())
    spec["fixed"]["max_train_samples"] = 500  # trained on other digits: not the same experiment
    (other / "study.json").write_text(json.dumps(spec))
    other_size = shutil.copytree(more, tmp_path / "other_size")
    table = pd.read_csv(other_size / "trials.csv")
    assert (table["fid_samples"] == 256).all()  # recorded by every trial
    table["fid_samples"] = 300  # fid measured on another N: its bias differs, so the fids do not pool
    table.to_csv(other_size / "trials.csv", index=False)
    for extra, message in ((other, "fixed is"), (other_size, "fid compared different numbers of samples"), (grey, "cannot pool tiny_grey"), (models, "different folder names")):
        result = report(models, "--pool", extra, "--out", tmp_path / "pooled", "--no-details")
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    repeated = shutil.copytree(models, tmp_path / "same_seeds")
    result = report(models, "--pool", repeated, "--out", tmp_path / "pooled", "--no-details")
    assert result.returncode == 2 and "both ran model_1 with seed 0" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "pooled" / "trials.csv").exists()


def test_every_command_is_quiet(studies, tmp_path, noise_in):
    """--help and a real run of each command: no library start-up line, warning or traceback on the console."""
    _, grey = studies
    helps = [[*command, "--help"] for command in (["study/run.py"], ["study/best.py"], ["study/sample.py"],
                                                 ["study/report.py"], ["-m", "cvae.train"], ["-m", "cvae.sample"],
                                                 ["-m", "study.commands"])]
    runs = [["study/best.py", grey], ["study/sample.py", grey, "--out", tmp_path / "best.png"],
            ["study/report.py", grey, "--refresh-details"],
            ["-m", "cvae.train", "--dataset", "mnist-5k", "--max-train-samples", "300", "--epochs", "1", "--quiet",
             "--set", "eval_samples=256", "--set", "cas_samples=200", "--set", "cas_epochs=1", "--set", "sweep_latents=2", "--set", "width=0.5", "--set", "latent_dim=8",
             "--out", tmp_path / "run"]]
    for command in helps + runs:
        result = subprocess.run([sys.executable, *map(str, command)], cwd=REPO, capture_output=True, text=True,
                                timeout=600, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        assert result.stdout.strip() and not noise_in(result.stdout + result.stderr), (command, result.stderr[-3000:])
    # a reader that goes away (`cvae-study best ... | head`): a quiet exit with the shell's code for it
    reader_gone = subprocess.Popen([sys.executable, "-m", "study.commands", "best", str(grey)], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader_gone.stdout.close()
    assert reader_gone.wait(timeout=60) == 141 and not reader_gone.stderr.read()
