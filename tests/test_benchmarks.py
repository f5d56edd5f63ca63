"""The benchmarks' own arithmetic, on tables made here (the benchmarks themselves are run by hand)."""

import importlib.util
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from



def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_efficiency_counts_epochs_until_within_five_percent():
    search = load("search_efficiency")
    # two trials reported interleaved; timestamps give the order the epochs were trained in
    epochs = pd.DataFrame({"trial_id": ["a", "b", "a", "b", "a"], "epoch": [1, 1, 2, 2, 3],
                           "timestamp": [10, 11, 20, 21, 30], "fid": [90.0, 80.0, 60.0, 52.0, 50.0]})
    assert search.best_value(epochs) == 50.0  # the trials' last epochs: a ends at 50, b at 52
    assert search.epochs_to_reach(epochs, 50.0) == 4  # 52 <= 52.5 is the 4th epoch trained
    assert search.epochs_to_reach(epochs, 40.0) is None  # never within 42
    shuffled = epochs.sample(frac=1, random_state=0)
    assert search.epochs_to_reach(shuffled, 50.0) == 4  # row order in the file does not matter
    maximise = epochs.assign(fid=[0.1, 0.5, 0.9, 0.95, 1.0])
    assert search.epochs_to_reach(maximise, 1.0, mode="max") == 4  # 0.95 >= 0.95
    assert search.summary_line(40, [10, 20, 14]) == \
        "ASHA+TPE: within 5 % of the best after 35 % of the baseline's epochs"
    assert search.summary_line(40, [10, None]).endswith("(1 of 2 runs never got there)")
    assert search.summary_line(40, [None]).startswith("ASHA+TPE: never within 5 %")


def test_gpu_throughput_adds_concurrent_trials_and_compares_with_one_alone():
    gpu = load("gpu_throughput")
    results = [{"backend": "jax", "precision": "float32", "xla": True, "loop": "epoch", "images_per_s": rate,
                "ready_s": ready, "first_timed_loss": loss, "peak_memory_mb": 442.0}
               for rate, ready, loss in ((1000.0, 12.0, 55.1), (3000.0, 19.5, 55.3))]
    line = gpu.summary_line(results, alone=2000.0)
    assert "trials=2: 4,000 images/s (2,000 per trial, 2.00x one trial)" in line
    assert "ready after 20 s" in line and "first timed loss 55.1-55.3" in line and "442 MB per trial" in line
    assert "x one trial" not in gpu.summary_line(results[:1], alone=None)


def test_gpu_throughput_refuses_unknown_backends_in_one_line():
    import subprocess
    import sys

    for flags in (["--backends", "mxnet"], ["--precisions", "float8"], ["--trials", "0"], ["--trials", "two"],
                  ["--seconds", "0"]):
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), *flags],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, flags
        assert done.stderr.count("\n") == 1 and "backends: tensorflow, jax, torch" in done.stderr, done.stderr
        assert flags[1] in done.stderr or "positive" in done.stderr


def test_epoch_throughput_counts_the_reference_models_flops_by_hand():
    """model_4's conv/dense FLOPs per image, counted here layer by layer (multiply-add = 2)."""
    from types import SimpleNamespace

    from cvae.classifier import build_classifier
    from cvae.config import TrialConfig
    from cvae.model import build_cvae

    throughput = load("epoch_throughput")
    encoder = (2 * 14 * 14 * 9 * 1 * 32 + 2 * 7 * 7 * 9 * 32 * 64 + 2 * 7 * 7 * 9 * 64 * 128  # three convs
               + 2 * (7 * 7 * 128 + 11) * 256 + 2 * 784 * 64 + 2 * 2 * 320 * 40)  # dense, shortcut, mean, log_var
    decoder = (2 * 51 * 320 + 2 * 320 * 7 * 7 * 160  # two dense layers
               + 2 * 7 * 7 * 9 * 160 * 80 + 2 * 14 * 14 * 9 * 80 * 40 + 2 * 28 * 28 * 9 * 40 * 1)  # three deconvs
    model = build_cvae(TrialConfig())
    forward, training = throughput.model_flops(model)
    assert forward == encoder + decoder
    # the first conv and the image shortcut read only the input: no input gradient (2x, not 3x)
    assert training == 3 * forward - 2 * 14 * 14 * 9 * 1 * 32 - 2 * 784 * 64
    classifier = SimpleNamespace(model=build_classifier())
    network = sum(throughput.layer_flops(layer) for layer in classifier.model.layers)
    evaluation = SimpleNamespace(latents=[0] * 500, sweep_latents=[0] * 720)
    assert network > 0
    assert throughput.evaluation_flops(model, classifier, evaluation, 500) == (
        1220 * decoder + 500 * network + 500 * forward)
