"""Gather the runs of a project into a results table, CSV files and plots.

    python tools/report.py output/digits_sweep                # writes output/digits_sweep/report/
    python tools/report.py output/cifar100_sweeps --out results/ --include-unfinished

Every run directory under the given one (any depth) counts: its best and last test top-1 are read
from metrics.jsonl, its config from cfg.yaml. Runs are grouped by dataset, method, teacher ->
student pair and setting (the keys a sweep varied; the seed is the repetition), and each group
gets mean ± std of best and last top-1 and its number of runs, with the published number of the
method and pair beside it. Writes results.md, summary.csv, runs.csv and plots/ (per pair:
<pair>_curves.png, accuracy per epoch; <pair>_bars.png, best top-1 per method). See docs/sweeps.md.
"""

import argparse
import os
from typing import List, Optional

import _path  # noqa: F401

from mdistiller.cli import run_tool
from mdistiller.errors import ConfigError
from mdistiller.experiments.report import write_report


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Tabulate and plot the runs of a project directory.")
    parser.add_argument("root", help="a project directory, e.g. output/digits_sweep")
    parser.add_argument("--out", default=None, help="output directory (default ROOT/report)")
    parser.add_argument("--include-unfinished", action="store_true", help="also count runs that stopped early")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        raise ConfigError(f"No directory {args.root}: pass a project directory such as output/<EXPERIMENT.PROJECT>.")
    text, groups = write_report(args.root, args.out, args.include_unfinished, plots=not args.no_plots)
    if not groups:
        raise ConfigError(f"No finished run under {args.root} (a run directory holds cfg.yaml and metrics.jsonl).")
    print(text)
    print(f"Wrote {args.out or os.path.join(args.root, 'report')}/results.md, summary.csv, runs.csv and plots/.")


if __name__ == "__main__":
    run_tool(main)
