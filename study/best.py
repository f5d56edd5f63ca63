"""CLI: python study/best.py results/<name> — print the best trial of a study and where its checkpoint is."""

from __future__ import annotations

from cvae.command_line import ArgumentParser, exit_with, fail
from cvae.metrics import SPLIT_FREE_METRICS
from study.tables.records import trial_params
from study.tables.selection import BEST_RULE, metric_pairs, provisional_note
from study.tables.table_files import resolve_path
from study.tables.studies import Study


def main(argv=None, prog: str = "python study/best.py") -> int:
    parser = ArgumentParser(prog=prog, description=__doc__.split(" — ")[1] + " " + BEST_RULE)
    parser.add_argument("results", help="a study's results folder, e.g. results/grey_loss, or its storage URI "
                        "(STORAGE/NAME, as --storage-path and --name made it)")
    args = parser.parse_args(argv)
    try:
        study = Study.open(args.results)
        note = study.incomplete()
        if note:
            print(note, flush=True)  # the first line, whatever follows
        best = study.best()
    except ValueError as error:
        fail(str(error))
    print(f"study {study.spec.name}: {len(study.trials)} trial(s); objective {study.objective}")
    provisional = provisional_note(best)
    if provisional:
        print(provisional)
    print(f"best trial: {best['trial_id']} (status {best['status']}, {best['epochs_run']:.0f} epoch(s))")
    for name, value in trial_params(best).items():
        print(f"  {name} = {value}")
    print(f"  {'metric':<20} {'validation':>12}" + ("" if provisional else f" {'test':>12}"))
    for name, validation, test in metric_pairs(best):
        shown_test = f" {'(one sweep)':>12}" if name in SPLIT_FREE_METRICS else f" {test:>12.5g}"
        print(f"  {name:<20} {validation:>12.5g}" + ("" if provisional else shown_test))
    print(f"checkpoint: {resolve_path(study.folder, best['checkpoint'])}")
    return 0


if __name__ == "__main__":
    exit_with(main)
