"""Every environment variable the project reads or sets, in one place: settings that cross a process boundary (the
user's shell, a Ray worker, a child process) or that TensorFlow and Ray read themselves. Within one process,
settings travel as arguments."""

import os
from pathlib import Path

# The project's own: set by the user, or by the study driver for its trial workers and child processes.
CACHE_DIR_ENV = "CVAE_CACHE_DIR"  # reference classifiers, parsed digits, fetched checkpoints (~/.cache/cvae-study)
OFFLINE_ENV = "CVAE_OFFLINE"  # "1": skip the keras download attempt (the study driver sets it once it failed)
FALLBACK_NOTED_ENV = "CVAE_FALLBACK_NOTED"  # "1": the study driver already told the user about the data's fallback
VERBOSE_ENV = "CVAE_VERBOSE"  # "1" in a trial worker's environment: the study runs with --verbose
LEASE_ENV = "CVAE_LEASE_SECONDS"  # how long a storage study's driver lease lasts unrenewed (study/store/lease.py)

# TensorFlow's and Keras'.
TF_LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"  # TensorFlow's C++ log level: 2 hides its info and warning lines
KERAS_HOME_ENV = "KERAS_HOME"  # keras' cache folder (~/.keras): full MNIST is looked for in datasets/mnist.npz
KERAS_BACKEND_ENV = "KERAS_BACKEND"  # read at Keras' import: tensorflow (trials), jax (fused trials, cvae/fused.py)

# Ray's: read by Ray when it is imported or starts, so the driver sets them before that.
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local Ray binds and advertises 127.0.0.1 only
RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"  # "token": send RAY_AUTH_TOKEN to the cluster
RAY_AUTH_TOKEN_ENVS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # a token-authenticated cluster's token (or its file)
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # the cluster to join, as --address
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor in a job's driver (ray job submit)
TUNE_NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"  # "0" with verbose=0: no tables, hints or boxes from Tune
TUNE_TRIAL_ERRORS_ENV = "TUNE_PRINT_ALL_TRIAL_ERRORS"  # "0": a failed trial is one line of ours, not Tune's traceback

# An S3-compatible store's address when a URI does not carry one (?endpoint_override=…), as pyarrow and boto3 read it.
ENDPOINT_ENV = "AWS_ENDPOINT_URL"

# The code's path and the GPUs, as every Python and CUDA process reads them.
PYTHONPATH_ENV = "PYTHONPATH"
CUDA_DEVICES_ENV = "CUDA_VISIBLE_DEVICES"


def cache_dir() -> Path:
    """CVAE_CACHE_DIR, else ~/.cache/cvae-study (classifiers, parsed embedded sample, fetched checkpoints)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "cvae-study")
