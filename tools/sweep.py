"""Run a W&B sweep file locally, without a W&B server (clusters without W&B, quick checks).

    python tools/sweep.py configs/sweeps/digits.yaml                  # the whole grid
    python tools/sweep.py configs/sweeps/kd.yaml --count 20 --workers 2   # 20 random trials, 2 at once
    python tools/sweep.py configs/sweeps/kd.yaml --dry-run            # print the trials' commands

Each trial runs the command a `wandb agent` would run (tools/train.py with the trial's overrides).
Grid search runs every combination (the first --count of them with --count); random search (and
bayes, which needs the server) draws --count trials, reproducibly for a given --seed. Run the same
command again to resume: finished trials are skipped, interrupted ones continue from their
`latest` checkpoint. Records, logs and the results table go to
<LOG.PREFIX>/<EXPERIMENT.PROJECT>/sweeps/<file name>/ (or --out). Trials run with WANDB_MODE=disabled
unless WANDB_MODE is set (WANDB_MODE=offline keeps logs to `wandb sync` later).
See docs/sweeps.md.
"""

import argparse
import shlex
import sys
from typing import List, Optional

import _path  # noqa: F401

from mdistiller.cli import run_tool
from mdistiller.experiments.sweep_runner import SweepRunner, plan_trials
from mdistiller.experiments.sweeps import check_sweep, load_sweep


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Run a W&B sweep file's trials locally.")
    parser.add_argument("sweep", help="sweep file, e.g. configs/sweeps/kd.yaml")
    parser.add_argument("--count", type=int, default=None, help="number of trials (random search: required unless run_cap)")
    parser.add_argument("--workers", type=int, default=1, help="trials run at once (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random search's draws (not of the runs)")
    parser.add_argument("--out", default=None, help="records and results directory (default <project>/sweeps/<name>)")
    parser.add_argument("--dry-run", action="store_true", help="check the file and print the commands, run nothing")
    args = parser.parse_args(argv)

    spec = load_sweep(args.sweep)
    check_sweep(spec)
    trials = plan_trials(spec, args.count, args.seed)
    runner = SweepRunner(spec, trials, args.workers, args.out)
    if args.dry_run:
        for trial in trials:
            print(" ".join(shlex.quote(c) for c in trial.command))
        return
    print(f"{len(trials)} trials of {args.sweep} ({spec['method']}), {args.workers} at a time; records in {runner.out_dir}",
          flush=True)
    failed = runner.run()
    print("\n" + runner.write_results())
    print(f"Wrote {runner.out_dir}/results.md and results.csv.")
    if failed:
        print(f"{len(failed)} trial(s) failed; their logs are in {runner.out_dir}/logs.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_tool(main)
