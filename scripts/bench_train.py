"""Benchmark: wall time of a training run (`modalfuse train --model M`) against the LightGBM
baseline measured in the same run, and against the 10-minute budget.

    MODALFUSE_DATA_DIR=... python scripts/bench_train.py --model stacking [--no-cv] [--epochs N]

Prints one table: seconds per model, the ratio to the baseline, and whether it fits the budget.
Bundles go to a temporary folder; the dataset's own bundles are not touched.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from modalfuse.config import Settings
from modalfuse.data.dataset import load_dataset
from modalfuse.data.split import load_splits
from modalfuse.models.netconfig import NetConfig
from modalfuse.training.train import TrainConfig, train

BUDGET_S = 600


def timed(ds, splits, cfg: TrainConfig, out: Path) -> float:
    started = time.perf_counter()
    train(ds, splits, out, cfg, evaluate_test=False)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="pokemon")
    ap.add_argument("--model", default="stacking")
    ap.add_argument("--no-cv", action="store_true", help="time the run without grouped-CV scoring")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    os.environ.setdefault("MODALFUSE_TRACKING", "false")
    ds = load_dataset(Settings().dataset_dir(args.dataset))
    splits = load_splits(ds)
    net = NetConfig(device=args.device, **({"epochs": args.epochs} if args.epochs else {}))
    cv = not args.no_cv
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        base = timed(ds, splits, TrainConfig(model="gbm", cv=cv), Path(tmp) / "gbm")
        cand = timed(ds, splits, TrainConfig(model=args.model, cv=cv, net=net),
                     Path(tmp) / args.model)
    t = Table(title=f"training time, {args.dataset}, cv={'on' if cv else 'off'}, "
                    f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    for col in ("model", "seconds", "ratio to gbm", f"within {BUDGET_S} s"):
        t.add_column(col)
    t.add_row("gbm (baseline)", f"{base:.1f}", "1.00", "yes" if base <= BUDGET_S else "no")
    t.add_row(args.model, f"{cand:.1f}", f"{cand / base:.2f}", "yes" if cand <= BUDGET_S else "no")
    console.print(t)


if __name__ == "__main__":
    main()
