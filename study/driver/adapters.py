"""The Ray Tune and Optuna internals this project relies on (checked with Ray 2.60 and Optuna 5.x), in one place:
tests/test_adapters.py holds one test per behaviour, so an upgrade that changes one fails that test by name."""

from __future__ import annotations

from pathlib import Path

from cvae.runtime import error_cause


def searcher_trial(searcher, trial_id: str):
    """The Optuna trial Ray's OptunaSearch asked for a Tune trial (None if it did not), from OptunaSearch._ot_trials."""
    return searcher._ot_trials.get(trial_id)


def searcher_has_finished(searcher, trial_id: str) -> bool:
    """Whether OptunaSearch has already told Optuna how a Tune trial ended (OptunaSearch._completed_trials)."""
    return trial_id in searcher._completed_trials


def tell_searcher(searcher, trial_id: str, state) -> None:
    """Tell Optuna a Tune trial ended in `state` (an optuna TrialState) without a value, and mark it finished in
    OptunaSearch, which otherwise records an ASHA-stopped trial as COMPLETE (OptunaSearch._ot_study)."""
    searcher._ot_study.tell(searcher._ot_trials[trial_id], None, state=state)
    searcher._completed_trials.add(trial_id)


def enqueue_partial(searcher, params: dict) -> None:
    """Make Optuna's next trial take `params` and sample the rest (Optuna's enqueue_trial with some of the
    parameters; OptunaSearch asks its study for each new trial: OptunaSearch._ot_study)."""
    searcher._ot_study.enqueue_trial(params, skip_if_exists=False)


def run_config_of(tuner):
    """The RunConfig a Tuner (built or restored) will run with: Tuner.restore takes no callbacks, so the study sets
    its own on this object (Tuner._local_tuner._run_config)."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    if config is None:
        raise RuntimeError("this Ray version keeps a Tuner's run configuration elsewhere; see study/driver/adapters.py")
    return config


# What Ray writes when a trial's actor is gone (ray/_private and ray/exceptions.py in Ray 2.60): its node died, or
# its worker process died while the node lived on. Kept as text: the exception reaches Tune's error file as text.
NODE_LOST = ("its node has died", "NodeDiedError", "node died", "because its node")


WORKER_LOST = ("its worker process has died", "Worker unexpectedly exits", "ActorDiedError", "died unexpectedly")
PROGRAM_LOST = "its fused program was lost"  # how a fused member's error begins when its program actor died
WORKER_DIED_NOTICE = "A worker died or was killed while executing a task"  # the raylet's, sent to the driver


def hide_worker_death_notices() -> None:
    """Keep the raylet's notice of a dead worker (a paragraph of causes) off the driver's console: the study says
    it in one line of its own, with the trial and what happens next. Ray's driver prints the errors the raylet
    sends through ray._private.worker.print_to_stdstream (listen_error_messages, pid "raylet"); every other line
    goes through unchanged."""
    from ray._private import worker

    printing = worker.print_to_stdstream
    if getattr(printing, "hides_worker_deaths", False):
        return

    def print_to_stdstream(data, ignore_prefix: bool):
        if data.get("pid") == "raylet":
            data = {**data, "lines": [line for line in data.get("lines", []) if WORKER_DIED_NOTICE not in line]}
            if not data["lines"]:
                return
        printing(data, ignore_prefix)

    print_to_stdstream.hides_worker_deaths = True
    worker.print_to_stdstream = print_to_stdstream


def worker_loss_cause(text: str) -> str | None:
    """What a lost worker's error means to a user (None if the text is not about a lost worker or node).

    A worker process that dies while its node lives on was, most often, killed by the kernel's out-of-memory
    killer (signal 9), or by hand; a lost node takes its workers with it. A fused member whose program died says
    so: its own worker lived, the program's did not.
    """
    text = text or ""
    program = PROGRAM_LOST in text
    if any(marker in text for marker in NODE_LOST):
        return "fused program's node lost" if program else "node lost"
    if any(marker in text for marker in WORKER_LOST):
        return f"{'fused program' if program else 'worker'} killed (signal 9; out of memory?)"
    return None


def error_text(trial) -> str:
    """Tune's error file of a trial (one `Failure # N` block per failure), or its error message, or ""."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        text = ""
    return text or str(getattr(trial, "error_msg", "") or "")


def last_failure(trial) -> str:
    """The newest failure's whole text in Tune's error file."""
    return error_text(trial).rsplit("Failure # ", 1)[-1]


def error_message(trial) -> str:
    """`ExceptionType: message` of a failed trial, from Tune's error file (no colour codes, no pid/ip noise)."""
    return error_cause(error_text(trial), "unknown error (see the trial's error.txt under tune/)")


def point_trials_at_kept_checkpoints(experiment: str, filesystem) -> list[str]:
    """Make every unfinished trial of Tune's newest experiment state resume from a checkpoint that exists.

    Tune deletes a trial's older checkpoint as soon as it registers a newer one (CheckpointConfig.num_to_keep), and
    uploads the experiment state naming the newer one a moment later, in the background (on a busy machine, seconds
    later). A driver killed in between leaves a state that names a deleted checkpoint, and its resumed trial fails
    three times with "Could not recover from checkpoint as it does not exist on storage anymore". Such a trial is
    pointed at its newest whole checkpoint (the newer one: its epoch is already in the tables), or restarts if it
    has none. (A checkpoint only half deleted gets past Tune's check; the trainable then continues from the newer
    one itself: trainable.download_whole_checkpoint.) `experiment` is the experiment's path on `filesystem`
    (study.store.storage.tune_storage). Returns a line per trial changed. Ray 2.60: a trial's run metadata holds
    its _CheckpointManager, cloudpickled.
    """
    import json

    import cloudpickle
    import pyarrow.fs
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    from cvae.checkpoint import RESUME_FILES, STATE_FILE

    state_path = _find_newest_experiment_checkpoint(experiment, filesystem)
    if state_path is None:
        return []
    with filesystem.open_input_stream(state_path) as stream:
        state = json.loads(stream.read())
    changed = []
    for entry in state.get("trial_data", []):
        trial, metadata = json.loads(entry[0]), json.loads(entry[1])
        pickled = metadata.get("checkpoint_manager") or {}
        if trial.get("status") == "TERMINATED" or "value" not in pickled:
            continue
        manager = cloudpickle.loads(bytes.fromhex(pickled["value"]))
        latest = manager._latest_checkpoint_result
        if latest is None:
            continue
        folder = f"{experiment.rstrip('/')}/{trial['relative_logdir']}"  # where it is now (the study may have moved)
        named = Path(latest.checkpoint.path).name
        if filesystem.get_file_info(f"{folder}/{named}").type != pyarrow.fs.FileType.NotFound:
            continue
        kept = _newest_whole_checkpoint(filesystem, folder, after=named, needs=RESUME_FILES)
        if kept is None:
            manager._latest_checkpoint_result, manager._checkpoint_results = None, []
            changed.append(f"trial {trial['trial_id']}: its checkpoint {named} was deleted and no newer one is whole; "
                           f"it starts again")
        else:
            with filesystem.open_input_stream(f"{folder}/{kept}/{STATE_FILE}") as stream:
                epoch = json.loads(stream.read())["epoch"]
            checkpoint = Checkpoint(path=str(Path(latest.checkpoint.path).with_name(kept)),
                                    filesystem=latest.checkpoint.filesystem)
            result = _TrainingResult(checkpoint=checkpoint, metrics={**latest.metrics, "training_iteration": epoch,
                                                                     "epoch": epoch, "checkpoint_dir_name": kept})
            manager._latest_checkpoint_result, manager._checkpoint_results = result, [result]
            changed.append(f"trial {trial['trial_id']}: its checkpoint {named} was deleted; it resumes from {kept} "
                           f"(epoch {epoch})")
        pickled["value"] = cloudpickle.dumps(manager).hex()
        entry[1] = json.dumps(metadata, indent=2)
    if changed:
        with filesystem.open_output_stream(state_path) as stream:
            stream.write(json.dumps(state, indent=2).encode())
    return changed


def _newest_whole_checkpoint(filesystem, folder: str, after: str, needs: tuple) -> str | None:
    """The name of the newest checkpoint_NNNNNN folder in `folder` newer than `after` holding every file of
    `needs` (one a killed worker was still uploading is not), or None."""
    import pyarrow.fs

    from study.store.storage import checkpoints_beside

    for name in reversed(checkpoints_beside(filesystem, f"{folder}/{after}")):  # newest first
        if name <= after:
            return None
        inside = filesystem.get_file_info(pyarrow.fs.FileSelector(f"{folder}/{name}", allow_not_found=True))
        if set(needs) <= {info.base_name for info in inside}:
            return name
    return None
