"""CLI: python study/report.py results/<name> — figures/*.png and summary.md (tables + claim verdicts), no Jupyter."""

from __future__ import annotations

from pathlib import Path

from cvae.command_line import ArgumentParser, add_verbose_flag, exit_with, fail
from study.tables.records import FIGURES_DIR, SUMMARY_FILE
from study.analysis.details import collect_details
from study.analysis.figures import make_figures
from study.analysis.summary_file import write_summary
from study.tables.studies import Study
from study.tables.table_files import load_details


def parse_args(argv, prog: str):
    parser = ArgumentParser(
        prog=prog,
        description="Write figures/*.png and summary.md for a study's results folder. Per-class thickness sweeps "
        "and sample grids are drawn once from the checkpoints into details.csv and samples.npz, so the folder "
        "stays reportable after the checkpoints are deleted.")
    parser.add_argument("results", help="a study's results folder, e.g. results/grey_loss, or its storage URI "
                        "(STORAGE/NAME, as --storage-path and --name made it; figures and summary.md then go into a "
                        "local copy)")
    parser.add_argument("--refresh-details", action="store_true",
                        help="redraw details.csv / samples.npz from the checkpoints even if they exist")
    parser.add_argument("--no-details", action="store_true",
                        help="use only the tables (no TensorFlow; no sweeps or sample grids unless already saved)")
    parser.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150: print size)")
    parser.add_argument("--pool", action="append", default=[], metavar="FOLDER",
                        help="pool this grid study's trials with the first one's (more seeds of the same design, "
                        "e.g. one run with --first-seed); repeatable; needs --out")
    parser.add_argument("--out", help="with --pool: the folder for the pooled study's tables, figures and summary")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if not 20 <= args.dpi <= 600:
        fail(f"--dpi must be in [20, 600], got {args.dpi}")
    if bool(args.pool) != bool(args.out):
        fail("--pool and --out go together: report.py FIRST --pool MORE --out POOLED")
    return args


def pool_studies(args) -> Path:
    """--pool: the pooled study's folder, made from the first study and the others (exit 2 if they differ)."""
    from study.tables.pooling import pool

    folder = Path(args.out)
    if folder.resolve() in {Path(f).resolve() for f in (args.results, *args.pool)}:
        fail(f"--out {folder} is one of the pooled studies; name a new folder")
    try:
        pool([Path(args.results), *map(Path, args.pool)], folder)
    except ValueError as error:
        fail(str(error))
    print(f"pooled {1 + len(args.pool)} studies into {folder}", flush=True)
    return folder


def main(argv=None, prog: str = "python study/report.py") -> int:
    args = parse_args(argv, prog)
    try:
        study = Study.open(pool_studies(args) if args.pool else args.results)
    except ValueError as error:
        fail(str(error))
    folder, trials, epochs, spec = study.folder, study.trials, study.epochs, study.record
    note = study.incomplete()
    if note:
        print(note, flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        if args.no_details:
            details, grids = load_details(folder)
        else:
            details, grids = collect_details(folder, trials, spec, refresh=args.refresh_details,
                                                verbose=args.verbose)
    except ValueError as error:  # a received folder's details or checkpoint paths are not what report.py wrote
        fail(str(error))
    figures = make_figures(trials, epochs, details, grids, spec)
    (folder / FIGURES_DIR).mkdir(exist_ok=True)
    for name, figure in figures.items():
        figure.savefig(folder / FIGURES_DIR / f"{name}.png", dpi=args.dpi)
        plt.close(figure)
    write_summary(folder, trials, epochs, details, spec, list(figures))
    print(f"wrote {len(figures)} figure(s) to {folder / FIGURES_DIR} and {folder / SUMMARY_FILE}")
    return 0


if __name__ == "__main__":
    exit_with(main)
