"""Fused trials: K training runs of one shape as one JAX program (stacked state, one vmapped step), each still a run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cvae.command_line import (DATA_FLAGS, ArgumentParser, add_config_flags, add_verbose_flag, config_overrides,
                               exit_with)
from cvae.config import PRESETS, TrialConfig, preset
from cvae.data import EVALUATION_BATCH
from cvae.environment import KERAS_BACKEND_ENV
from cvae.metrics import STATUS_COMPLETED, STATUS_DIVERGED, TRAIN_METRICS, VALIDATION_PREFIX
from cvae.train import parse_assignment

# Keras (cvae.model, cvae.losses) is imported on first use, not here: `python -m cvae.fused` chooses its backend first.

FUSED_BACKEND = "jax"  # Keras 3's backend for fused programs: jax.vmap turns K models' convolutions into grouped ones
# The fields that fix a program's shapes or are constants compiled into it (Dropout's rate, the L2 factor, the output
# activation, the training set): members of one program share them. Every other field is a value each member carries
# (seed, learning rate, grey weight/threshold/warm-up, condition mode, epochs, the evaluation settings).
SHAPE_FIELDS = ("dataset", "data_path", "max_train_samples", "validation_fraction", "test_fraction", "latent_dim",
                "width", "dropout", "l2", "output_activation", "batch_size")


class StopMember(Exception):
    """Raised by a member's report to end that member after this epoch (its scheduler stopped it); the rest go on."""


@dataclass
class Member:
    """One training run inside a fused program: what train() takes, and (once it ended) what train() returns."""

    config: TrialConfig
    report: Callable[[dict], None] | None = None  # as train()'s; may raise StopMember
    checkpoint: str | None = None  # a checkpoint folder to resume from
    checkpoint_dir: str | None = None  # where each epoch's checkpoint goes
    run: Any = None  # its cvae.train.TrainingRun, once prepared
    outcome: dict | None = None  # train()'s return value, once it ended
    stopped: bool = False  # its report raised StopMember


def shape_key(config: TrialConfig) -> tuple:
    """Configurations with equal keys can share one fused program."""
    return tuple(getattr(config, name) for name in SHAPE_FIELDS)


def check_fusable(configs: list[TrialConfig]) -> None:
    """Raises ValueError naming the shape fields in which `configs` differ (they cannot share a program)."""
    differing = [name for name in SHAPE_FIELDS if len({getattr(config, name) for config in configs}) > 1]
    if differing:
        raise ValueError(f"configurations differ in {', '.join(differing)}, which fix a fused program's shapes; "
                         f"members of one program may differ in any field but {', '.join(SHAPE_FIELDS)}")


def member_batches(seed: int, epoch: int, count: int, batch_size: int) -> np.ndarray:
    """The training-image indices of a member's 1-based `epoch` as (steps, batch_size): a function of (seed, epoch)
    alone, so a resumed member sees the batches it would have seen. The ragged tail of each epoch is left out (every
    step of one program has one shape); each epoch's order differs, so every image is still trained on."""
    steps = count // batch_size
    order = np.random.default_rng((seed, epoch)).permutation(count)[:steps * batch_size]
    return order.reshape(steps, batch_size).astype(np.int32)


class FusedProgram:
    """The compiled epoch of `slots` members of one shape: weights, optimizer and RNG state stacked on a leading axis.

    A slot whose `active` flag is off keeps its state unchanged (its scheduler stopped it, or it waits to be
    refilled); loading a model into a slot and storing a slot into a model move state between the program and a
    member's own keras model, which measures, checkpoints and reports as a trial alone does.
    """

    def __init__(self, template, slots: int):
        import jax
        import keras

        from cvae.model import SAMPLING_LAYER

        self.slots = slots
        trainable, non_trainable = template.trainable_variables, template.non_trainable_variables
        template.optimizer.build(trainable)
        self.groups = (trainable, non_trainable, template.optimizer.variables)
        self.state = [[jax.numpy.stack([variable.value] * slots) for variable in group] for group in self.groups]
        self.evaluation_seeds = np.zeros((slots, 2), np.uint32)  # each slot's Sampling seed, as keras draws an int seed

        def member_terms(trainable_values, non_trainable_values, images, conditions, grey_weight, grey_threshold,
                         training):
            mapping = list(zip(trainable, trainable_values)) + list(zip(non_trainable, non_trainable_values))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                terms = template.compute_losses(images, conditions, training=training, grey_weight=grey_weight,
                                                grey_threshold=grey_threshold)
            moved = [scope.get_current_value(variable) for variable in non_trainable]  # RNG states move on
            return terms["loss"], (jax.numpy.stack([terms[name] for name in TRAIN_METRICS]), moved)

        gradient_of = jax.value_and_grad(member_terms, has_aux=True)

        def member_step(state, images, order, conditions, grey_weight, grey_threshold, active):
            trainable_values, non_trainable_values, optimizer_values = state
            (_, (terms, moved)), gradients = gradient_of(trainable_values, non_trainable_values, images[order],
                                                         conditions[order], grey_weight, grey_threshold, True)
            trainable_values, optimizer_values = template.optimizer.stateless_apply(optimizer_values, gradients,
                                                                                    trainable_values)
            stepped = [trainable_values, moved, optimizer_values]
            return jax.tree.map(lambda new, old: jax.numpy.where(active, new, old), stepped, state), terms

        def epoch(state, images, conditions, orders, grey_weights, grey_thresholds, active):
            def step(state, order):  # order: (slots, batch)
                return jax.vmap(member_step, in_axes=(0, None, 0, 0, 0, 0, 0))(
                    state, images, order, conditions, grey_weights, grey_thresholds, active)

            state, terms = jax.lax.scan(step, state, jax.numpy.swapaxes(orders, 0, 1))
            return state, terms.mean(axis=0)  # (slots, terms): each term's mean over the epoch's steps, as fit's

        sampling = template.encoder.get_layer(SAMPLING_LAYER)

        def validate(state, images, conditions, grey_weights, grey_thresholds, evaluation_seeds):
            def one(state, conditions, grey_weight, grey_threshold, evaluation_seed):
                sampling.fused_evaluation_seed = evaluation_seed  # each member's fixed noise, not the template's
                try:
                    return member_terms(state[0], state[1], images, conditions, grey_weight, grey_threshold,
                                        False)[1][0]
                finally:
                    sampling.fused_evaluation_seed = None

            return jax.vmap(one)(state, conditions, grey_weights, grey_thresholds, evaluation_seeds)

        self._epoch, self._validate = jax.jit(epoch), jax.jit(validate)
        # One compiled program each to move a member's whole state into or out of its slot (not one per variable).
        self._put = jax.jit(lambda state, values, slot: jax.tree.map(
            lambda stacked, value: stacked.at[slot].set(value), state, values))
        self._take = jax.jit(lambda state, slot: jax.tree.map(lambda stacked: stacked[slot], state))

    def load(self, slot: int, model) -> None:
        """The model's weights, RNG and optimizer state into `slot` (a member starts or resumes there)."""
        from cvae.model import SAMPLING_LAYER

        model.optimizer.build(model.trainable_variables)
        variables = (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables)
        self.state = self._put(self.state, [[variable.value for variable in group] for group in variables], slot)
        self.evaluation_seeds[slot] = [model.encoder.get_layer(SAMPLING_LAYER).seed or 0, 0]

    def store(self, slot: int, model) -> None:
        """`slot`'s state into the member's own model (which then measures and checkpoints)."""
        model.optimizer.build(model.trainable_variables)
        variables = (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables)
        for group, own in zip(self._take(self.state, slot), variables):
            for value, variable in zip(group, own):
                variable.assign(value)

    def train_epoch(self, images, conditions, orders, grey_weights, grey_thresholds, active) -> np.ndarray:
        """One epoch of every active slot; returns (slots, len(TRAIN_METRICS)) means (waits for the device)."""
        self.state, terms = self._epoch(self.state, images, conditions, orders, grey_weights, grey_thresholds, active)
        return np.asarray(terms)

    def validation_terms(self, images, conditions, grey_weights, grey_thresholds) -> np.ndarray:
        """(slots, len(TRAIN_METRICS)): the mean of the loss terms' batch means, as keras' evaluate."""
        batches = [self._validate(self.state[:2], images[start:start + EVALUATION_BATCH],
                                  conditions[:, start:start + EVALUATION_BATCH], grey_weights, grey_thresholds,
                                  self.evaluation_seeds)
                   for start in range(0, len(images), EVALUATION_BATCH)]
        return np.mean([np.asarray(batch) for batch in batches], axis=0)


def train_fused(members: list[Member], slots: int | None = None, refill: Callable[[], Member | None] | None = None,
                inputs=None) -> list[Member]:
    """Train members of one shape as one program, each measured, checkpointed and reported as train() does alone.

    Args:
        members: the first runs (at most `slots`; more wait for a free slot).
        slots: members the program holds at once (default: len(members)).
        refill: called when a slot frees (a member completed, diverged or was stopped) for the next member, or None.
        inputs: the dataset and classifier a study's driver shipped (cvae.train.TrialInputs), else found here.
    Returns:
        Every member that ran, in the order it ended, each with `outcome` set as train() returns it.
    Raises:
        ValueError when a member cannot share the program (another shape) or Keras' backend is not jax.
    """
    import keras

    if keras.backend.backend() != FUSED_BACKEND:
        raise ValueError(f"fused trials need {KERAS_BACKEND_ENV}={FUSED_BACKEND} (this process runs "
                         f"{keras.backend.backend()}); set it before Keras is first imported")
    waiting, ended = list(members), []
    if not waiting:
        return ended
    check_fusable([member.config for member in waiting])
    program = FusedGroup(slots or len(waiting), inputs)
    while True:
        while program.free_slot() is not None and (waiting or refill):
            member = waiting.pop(0) if waiting else refill()
            if member is None:
                refill = None
                break
            if program.add(member):  # resumed after its last epoch: it ended at once
                ended.append(member)
        if not program.active_members():
            return ended
        ended.extend(program.run_epoch())


class FusedGroup:
    """A FusedProgram, its members by slot and the arrays they train on (train_fused's, and a study's group actor's)."""

    def __init__(self, slots: int, inputs):
        self.slots, self.inputs = slots, inputs
        self.members: list[Member | None] = [None] * slots
        self.epochs = [0] * slots  # epochs each slot's member has done
        self.program = self.images = self.conditions = self.key = self.validation_images = None
        self.validation_conditions = None

    def free_slot(self) -> int | None:
        return next((slot for slot, member in enumerate(self.members) if member is None), None)

    def active_members(self) -> list[int]:
        return [slot for slot, member in enumerate(self.members) if member is not None]

    def add(self, member: Member) -> bool:
        """Prepares the member as train() would (data, classifier, model, a checkpoint restored) into a free slot;
        True if it has nothing left to train (resumed after its last epoch) and ended at once."""
        import jax

        from cvae.train import check_resumable, prepare

        if self.key is not None and shape_key(member.config) != self.key:
            differing = [name for name, value in zip(SHAPE_FIELDS, self.key) if getattr(member.config, name) != value]
            raise ValueError(f"a member differs from its program in {', '.join(differing)}, which fix the program's "
                             "shapes")
        started = time.perf_counter()
        check_resumable(member.config, member.checkpoint)
        inputs = self.inputs if self.inputs is not None and self.inputs.fit(member.config) else None
        member.run = run = prepare(member.config, member.checkpoint, inputs)
        run.setup_seconds = time.perf_counter() - started
        slot = self.free_slot()
        if self.program is None:  # the first member's model is the program's template
            self.key = shape_key(member.config)
            self.program = FusedProgram(run.model, self.slots)
            self.images = jax.device_put(run.data.train.images)
            self.validation_images = jax.device_put(run.data.validation.images)
            empty = np.zeros((self.slots, *run.data.train.conditions().shape), np.float32)
            self.conditions = jax.device_put(empty)
            self.validation_conditions = jax.device_put(
                np.zeros((self.slots, *run.data.validation.conditions().shape), np.float32))
        elif not np.array_equal(np.asarray(self.images), run.data.train.images):
            raise ValueError("a fused member's training images differ from its program's")
        self.conditions = self.conditions.at[slot].set(run.data.train.conditions())
        self.validation_conditions = self.validation_conditions.at[slot].set(run.data.validation.conditions())
        self.program.load(slot, run.model)
        self.members[slot], self.epochs[slot] = member, run.start_epoch
        if run.start_epoch >= member.config.epochs:
            self.end(slot)
            return True
        return False

    def run_epoch(self, ready: set[int] | None = None) -> list[Member]:
        """One fused epoch of the members in the `ready` slots (default: every member; the others keep their state
        and their epoch count), each then measured, checkpointed and reported; returns those that ended."""
        from cvae.callbacks import EpochEnd
        from cvae.losses import grey_weight_for_epoch

        active = np.array([member is not None and (ready is None or slot in ready)
                           for slot, member in enumerate(self.members)])
        configs = [member.config if member is not None else None for member in self.members]
        numbers = [self.epochs[slot] + 1 for slot in range(self.slots)]
        grey_weights = np.array([grey_weight_for_epoch(number, config.grey_weight, config.warmup_epochs)
                                 if config else 0.0 for number, config in zip(numbers, configs)], np.float32)
        thresholds = np.array([config.grey_threshold if config else 0.0 for config in configs], np.float32)
        count, batch_size = len(self.images), self.key[SHAPE_FIELDS.index("batch_size")]
        orders = np.stack([member_batches(config.seed, number, count, batch_size) if config
                           else np.zeros((count // batch_size, batch_size), np.int32)
                           for number, config in zip(numbers, configs)])
        started = time.perf_counter()
        terms = self.program.train_epoch(self.images, self.conditions, orders, grey_weights, thresholds, active)
        train_seconds = time.perf_counter() - started
        validation = self.program.validation_terms(self.validation_images, self.validation_conditions, grey_weights,
                                                   thresholds)
        shared_seconds = time.perf_counter() - started
        ended = []
        for slot in np.flatnonzero(active).tolist():
            member = self.members[slot]
            self.program.store(slot, member.run.model)
            member.run.model.grey_weight.assign(grey_weights[slot])
            logs = {**dict(zip(TRAIN_METRICS, terms[slot].tolist())),
                    **{VALIDATION_PREFIX + name: value
                       for name, value in zip(TRAIN_METRICS, validation[slot].tolist())}}
            end = EpochEnd(member.run, member.report, member.checkpoint_dir)
            end.set_model(member.run.model)
            end.started, end.train_seconds = time.perf_counter() - shared_seconds, train_seconds
            self.epochs[slot] = numbers[slot]
            try:
                end.on_epoch_end(numbers[slot] - 1, logs)
            except StopMember:
                member.stopped = True
            if member.stopped or member.run.status == STATUS_DIVERGED or numbers[slot] >= member.config.epochs:
                ended.append(self.end(slot))
        return ended

    def end(self, slot: int) -> Member:
        """The member in `slot` has ended: its outcome as train() returns it; the slot is free for another."""
        from cvae.train import outcome

        member = self.members[slot]
        member.outcome = outcome(member.run)
        self.members[slot] = None
        return member


# ---------------------------------------------------------------- command line


FUSED_FLAGS = (*DATA_FLAGS, "epochs")  # the TrialConfig fields python -m cvae.fused takes as flags (seeds: --seeds)


def parse_seeds(text: str) -> list[int]:
    """--seeds: distinct non-negative integers, comma-separated."""
    import argparse

    try:
        seeds = [int(seed) for seed in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds expects distinct non-negative integers such as 0,1,2,3, "
                                         f"got {text!r}")
    return seeds


def main(argv: list[str] | None = None, prog: str = "python -m cvae.fused") -> int:
    import importlib.util

    parser = ArgumentParser(
        prog=prog,
        description="Train one preset at several seeds as one fused JAX program (cvae/fused.py: every seed is "
        "still its own run, with the numbers it would have alone); DIR/seed_N/ holds each seed's config.json, "
        "metrics.csv and checkpoints/epoch_NNNN, as python -m cvae.train writes them. Rerun with --resume to "
        "continue. On a CPU one TensorFlow run per seed is faster (benchmarks/README.md): fusing pays on a GPU.",
    )
    parser.add_argument("--preset", default="model_4", choices=sorted(PRESETS),
                        help="reference experiment to start from")
    add_config_flags(parser, FUSED_FLAGS)
    parser.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2, 3],
                        help="one member per seed, comma-separated (default 0,1,2,3)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=parse_assignment,
                        metavar="KEY=VALUE", help="any other TrialConfig field, e.g. --set latent_dim=16 (repeatable)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue every seed from its newest checkpoint in --out")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)

    if importlib.util.find_spec("jax") is None:
        parser.exit(2, "error: fused training needs JAX: pip install -e \".[fused]\"\n")
    if os.environ.setdefault(KERAS_BACKEND_ENV, FUSED_BACKEND) != FUSED_BACKEND:  # Keras reads it at its import
        parser.exit(2, f"error: fused training runs on {KERAS_BACKEND_ENV}={FUSED_BACKEND}, not "
                       f"{os.environ[KERAS_BACKEND_ENV]}: unset it\n")
    from cvae.checkpoint import latest_checkpoint
    from cvae.train import METRICS_FILE, metrics_writer

    try:
        base = preset(args.preset).replace(**{**dict(args.overrides), **config_overrides(args, FUSED_FLAGS)})
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    folders = {seed: Path(args.out) / f"seed_{seed}" for seed in args.seeds}
    held = [str(folder) for folder in folders.values() if latest_checkpoint(folder / "checkpoints") is not None]
    if held and not args.resume:
        parser.exit(2, f"error: {', '.join(held)} already hold a run; pass --resume to continue or choose another "
                       "--out\n")
    members = []
    for seed, folder in folders.items():
        resume_from = latest_checkpoint(folder / "checkpoints") if args.resume else None
        config = base.replace(seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(config.to_json())
        members.append(Member(config, metrics_writer(folder / METRICS_FILE, config.epochs, f"seed {seed} "),
                              checkpoint=resume_from, checkpoint_dir=str(folder / "checkpoints")))
    print(f"training {args.preset} on {base.dataset} at seeds {','.join(map(str, args.seeds))} as one program",
          flush=True)
    from cvae.runtime import import_tensorflow_quietly

    import_tensorflow_quietly(args.verbose)  # the data and the classifier's cache still read through TensorFlow
    try:
        ended = train_fused(members)
    except ValueError as error:  # another backend; --resume with settings that differ from a checkpoint's
        parser.exit(2, f"error: {error}\n")
    for member in sorted(ended, key=lambda member: member.config.seed):
        result = member.outcome
        print(f"seed {member.config.seed}: {result['status']} after {result['epochs_run']} epoch(s); checkpoint: "
              f"{result['checkpoint']}")
    return 0 if all(member.outcome["status"] == STATUS_COMPLETED for member in ended) else 1


if __name__ == "__main__":
    exit_with(main)
