"""Fused trials in a study: each Tune trial is one member of a shared program actor of its shape (cvae/fused.py)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import threading
import time

import ray
from ray import tune

from cvae.environment import KERAS_BACKEND_ENV, VERBOSE_ENV
from cvae.fused import FUSED_BACKEND, FusedGroup, Member, shape_key
from cvae.metrics import CHECKPOINT_KEY
from study.spec.study_file import FUSED_MEMBER_CPU

GROUP_PREFIX = "cvae-fused-"  # a program actor's name: GROUP_PREFIX + study + shape + index (Ray's named actors)
NAMESPACE = "cvae-study"  # the program actors' Ray namespace: detached actors need a named one to be found again
GATHER_SECONDS = 60.0  # how long a program waits for a member that has not asked for its next epoch (its worker died)
EMPTY_SECONDS = 30.0  # a program with no members this long ends (its resources go to a program of another shape)
FUSED_SLOT_KEY, FUSED_GROUP_KEY = "fused_slot", "fused_group"  # in each epoch's result: where the member trained


def pack_folder(folder: str) -> bytes:
    """A checkpoint folder as tar bytes (it travels between a program actor and its member's trial)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(folder, arcname=".")
    return buffer.getvalue()


def unpack_folder(data: bytes, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        archive.extractall(folder, filter="data")  # refuses links and paths out of the folder
    return folder


class MemberFailure(Exception):
    """What ended a member inside its program ("ValueError: ..."), reported as the trial's error."""


class ProgramLost(RuntimeError):
    """A member's program actor died (its process killed, its node lost): raised out of the trial, so Tune retries
    it from its checkpoint into a new program. Its message begins with adapters.PROGRAM_LOST."""


class ProgramActor:
    """One fused program on one node (a threaded Ray actor): members join, ask for each epoch, and leave.

    An epoch runs when every member has asked for it (or GATHER_SECONDS after the first asked: a member whose
    worker died must not stall the rest); a member that left (its scheduler stopped it, its trial ended) frees its
    slot for the next trial of this shape, which trains beside the others from its own first epoch.
    """

    def __init__(self, slots: int, inputs, name: str, verbose: bool):
        from cvae.runtime import native_stderr_to

        self.scratch = tempfile.mkdtemp(prefix="cvae-program-")
        with native_stderr_to(os.path.join(self.scratch, "startup.log"), verbose):
            import keras  # noqa: F401  (JAX, from the actor's environment; TensorFlow still reads the data)
            import tensorflow  # noqa: F401

        self.name, self.group = name, FusedGroup(slots, inputs)
        self.slots_of: dict[str, int] = {}  # trial id -> slot
        self.ready: set[str] = set()  # members that asked for their next epoch
        self.answers: dict[str, dict] = {}
        self.condition = threading.Condition()
        self.empty_since = time.monotonic()
        threading.Thread(target=self._end_when_empty, daemon=True).start()

    def join(self, trial_id: str, config, checkpoint: bytes | None) -> dict:
        """Takes the trial into a free slot (again, if it was here before: it restarts from `checkpoint`);
        {"joined": bool} or {"error": message}."""
        with self.condition:
            self._leave(trial_id)
            if self.group.free_slot() is None:
                return {"joined": False}
            folder = os.path.join(self.scratch, trial_id)
            shutil.rmtree(folder, ignore_errors=True)
            resume = unpack_folder(checkpoint, os.path.join(folder, "restored")) if checkpoint else None
            member = Member(config, report=self._answer_for(trial_id), checkpoint=resume,
                            checkpoint_dir=os.path.join(folder, "checkpoints"))
            try:
                ended_at_once = self.group.add(member)
            except Exception as error:  # noqa: BLE001 (the member's trial ends as `error`, named)
                return {"error": f"{type(error).__name__}: {error}"}
            if not ended_at_once:  # (resumed after its last epoch, it has nothing to train)
                self.slots_of[trial_id] = next(slot for slot, held in enumerate(self.group.members) if held is member)
                self.empty_since = None
            return {"joined": True, "ended": ended_at_once}

    def next_epoch(self, trial_id: str) -> dict:
        """Waits for the member's next epoch: {"metrics", "checkpoint" (tar bytes), "ended"}, {"left": True} if
        it is no longer here, or {"error": message}."""
        with self.condition:
            self.ready.add(trial_id)
            self.condition.notify_all()
            deadline = time.monotonic() + GATHER_SECONDS
            while trial_id not in self.answers:
                if trial_id not in self.slots_of:
                    self.ready.discard(trial_id)
                    return {"left": True}
                if set(self.slots_of) <= self.ready or time.monotonic() >= deadline:
                    self._run_epoch()
                    continue
                self.condition.wait(timeout=max(0.0, deadline - time.monotonic()))
            return self.answers.pop(trial_id)

    def leave(self, trial_id: str) -> None:
        """The member's trial ended (stopped by its scheduler, or done): its slot is free."""
        with self.condition:
            self._leave(trial_id)
            self.condition.notify_all()

    def _leave(self, trial_id: str, answered: bool = False) -> None:
        """Frees the trial's slot; its answer goes too unless `answered` (its last epoch's, not yet collected)."""
        slot = self.slots_of.pop(trial_id, None)
        self.ready.discard(trial_id)
        if not answered:
            self.answers.pop(trial_id, None)
        if slot is not None and self.group.members[slot] is not None:
            self.group.end(slot)
        if not self.slots_of and self.empty_since is None:
            self.empty_since = time.monotonic()

    def _run_epoch(self) -> None:
        """One fused epoch of the members that asked (the caller holds the condition); their answers set."""
        trial_of = {slot: trial_id for trial_id, slot in self.slots_of.items() if trial_id in self.ready}
        try:
            self.group.run_epoch(set(trial_of))
        except Exception as error:  # noqa: BLE001 (every member of the epoch ends as `error`, named)
            for trial_id in trial_of.values():
                self.answers[trial_id] = {"error": f"{type(error).__name__}: {error}"}
                self._leave(trial_id, answered=True)
        for slot, trial_id in trial_of.items():
            self.ready.discard(trial_id)
            if self.group.members[slot] is None and trial_id in self.answers:  # it ended with this epoch
                self.answers[trial_id]["ended"] = True
                self._leave(trial_id, answered=True)
        self.condition.notify_all()

    def _answer_for(self, trial_id: str):
        def report(metrics: dict) -> None:  # EpochEnd's report, inside _run_epoch
            metrics = dict(metrics)
            folder = metrics.pop(CHECKPOINT_KEY, None)
            slot = self.slots_of[trial_id]
            self.answers[trial_id] = {
                "metrics": {**metrics, FUSED_GROUP_KEY: self.name, FUSED_SLOT_KEY: slot},
                "checkpoint": pack_folder(folder) if folder else None, "ended": False}

        return report

    def _end_when_empty(self) -> None:
        while True:
            time.sleep(1.0)
            with self.condition:
                if self.empty_since is not None and time.monotonic() - self.empty_since > EMPTY_SECONDS:
                    shutil.rmtree(self.scratch, ignore_errors=True)
                    ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                    return


def program_name(study: str, config, index: int) -> str:
    shape = hashlib.sha256(repr(shape_key(config)).encode()).hexdigest()[:12]
    return f"{GROUP_PREFIX}{study}-{shape}-{index}"


def join_program(spec, config, trial_id: str, checkpoint: bytes | None, inputs):
    """The program actor this trial joined: the first of its shape with a free slot, a new one if none has
    (a program that ended a moment ago is made again). Raises MemberFailure when the member could not start."""
    remote = ray.remote(ProgramActor)
    index = attempts = 0
    while True:
        name = program_name(spec.name, config, index)
        actor = remote.options(
            name=name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached", num_gpus=spec.gpu,
            num_cpus=spec.cpu - spec.fuse * FUSED_MEMBER_CPU,  # with its members' own, the study's cpu
            max_concurrency=spec.fuse + 4, scheduling_strategy="DEFAULT",  # not inside the member's placement group
            runtime_env={"env_vars": {KERAS_BACKEND_ENV: FUSED_BACKEND}},
        ).remote(spec.fuse, inputs, name, os.environ.get(VERBOSE_ENV) == "1")
        try:
            answer = ray.get(actor.join.remote(trial_id, config, checkpoint))
        except ray.exceptions.RayActorError:  # it ended (empty) as we came: make it again
            attempts += 1
            if attempts > 5:
                raise
            continue
        if "error" in answer:
            raise MemberFailure(answer["error"])
        if answer["joined"]:
            return actor, answer.get("ended", False)
        index += 1


def leave_programs(study: str, trial_id: str) -> None:
    """Tell every program of the study that a trial ended (only the one holding it frees a slot)."""
    for name in program_names(study):
        try:
            ray.get_actor(name, namespace=NAMESPACE).leave.remote(trial_id)
        except ValueError:  # it ended meanwhile
            pass


def program_names(study: str) -> list[str]:
    from ray.util import list_named_actors

    return [actor["name"] for actor in list_named_actors(all_namespaces=True)
            if actor["namespace"] == NAMESPACE and actor["name"].startswith(f"{GROUP_PREFIX}{study}-")]


def stop_programs(study: str) -> None:
    """End the study's program actors (they are detached: they outlive the trials that made them)."""
    for name in program_names(study):
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass


class FusedPrograms(tune.Callback):
    """The driver's side: a trial that ended (a scheduler stopped it, or it failed) leaves its program at once;
    the programs end with the study."""

    def __init__(self, study: str):
        self.study = study

    def on_trial_complete(self, iteration, trials, trial, **info):
        leave_programs(self.study, trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        leave_programs(self.study, trial.trial_id)

    def finish(self, records, folder) -> None:
        stop_programs(self.study)
