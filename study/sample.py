"""CLI: python study/sample.py results/<name> [--trial ID] [cvae.sample options] — draw digits from a study's checkpoint."""

from __future__ import annotations


from cvae.command_line import ArgumentParser, exit_with, fail
from study.tables.studies import Study
from study.store.storage import display, is_uri


def main(argv=None, prog: str = "python study/sample.py") -> int:
    parser = ArgumentParser(
        prog=prog,
        description="Draw digits from the best trial's checkpoint (or --trial ID's). Every other option is passed "
        "to python -m cvae.sample: --out, --digits, --thickness, --samples, --seed, --style IMAGE, --scale.",
    )
    parser.add_argument("results", help="a study's results folder, e.g. results/grey_loss, or its storage URI "
                        "(STORAGE/NAME, as --storage-path and --name made it)")
    parser.add_argument("--trial", help="trial id from trials.csv (default: the best trial)")
    args, passed_on = parser.parse_known_args(argv)
    from cvae.sample import main as sample_main, parse_args as parse_sample_args

    parse_sample_args(["CHECKPOINT", *passed_on])  # every option checked before any table or model is read
    try:
        study = Study.open(args.results)
        trials = study.trials
        note = study.incomplete()
        if note:
            print(note, flush=True)  # the first line, whatever follows
        if args.trial:
            chosen = trials[trials["trial_id"].astype(str) == args.trial]
            if chosen.empty:
                raise ValueError(f"no trial {args.trial!r}; trials: {', '.join(map(str, trials['trial_id']))}")
            row = chosen.iloc[0]
        else:
            row = study.best()
        if not isinstance(row["checkpoint"], str) or not row["checkpoint"]:
            raise ValueError(f"trial {row['trial_id']} has no checkpoint (status {row['status']})")
    except ValueError as error:
        fail(str(error))
    try:
        checkpoint = study.checkpoint(row["checkpoint"])
    except ValueError as error:
        fail(str(error))
    print(f"trial {row['trial_id']}: {checkpoint}"
          + (f" (a copy of {display(row['checkpoint'])})" if is_uri(row["checkpoint"]) else ""))
    chosen = "chosen with --trial" if args.trial else f"best by validation {study.spec.metrics[0]}"
    title = (f"study {study.spec.name}, trial {row['trial_id']} ({chosen}; {row['status']} after "
             f"{row['epochs_run']:.0f} epochs)")
    if "--title" not in passed_on:
        passed_on = [*passed_on, "--title", title]
    return sample_main([str(checkpoint), *passed_on])


if __name__ == "__main__":
    exit_with(main)
