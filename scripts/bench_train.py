"""Benchmark: wall time of a training run (`modalfuse train --model M`: grouped CV, final fit,
companions) against the LightGBM baseline measured in the same run, and against the
10-minute budget.

    MODALFUSE_DATA_DIR=... python scripts/bench_train.py [--model M] [--no-cv] [--epochs N] [--record]

`--model` defaults to the grouped-CV champion of docs/ablation.json. Prints one table:
seconds per model, the ratio to the baseline, and whether it fits the budget. `--record`
writes the measurement to src/modalfuse/training/champion.json, which decides what
`modalfuse train` (and `make run`) trains by default. Bundles go to a temporary folder; the
dataset's own bundles are not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
from modalfuse.training.champion import BASELINE, BUDGET_S, CHAMPION_FILE
from modalfuse.training.train import TrainConfig, train

ABLATION = Path(__file__).resolve().parents[1] / "docs" / "ablation.json"


def timed(ds, splits, cfg: TrainConfig, out: Path) -> float:
    started = time.perf_counter()
    train(ds, splits, out, cfg, evaluate_test=False)
    return time.perf_counter() - started


def cv_f1(ablation: dict, model: str) -> float | None:
    return next((r["cv"]["macro_f1"]["mean"] for r in ablation.get("results", [])
                 if r["model"] == model), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="pokemon")
    ap.add_argument("--model", default=None, help="default: the CV champion of docs/ablation.json")
    ap.add_argument("--no-cv", action="store_true", help="time the run without grouped-CV scoring")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--record", action="store_true", help=f"write {CHAMPION_FILE.name}")
    args = ap.parse_args()

    ablation = json.loads(ABLATION.read_text()) if ABLATION.exists() else {}
    model = args.model or ablation.get("champion") or BASELINE
    if args.record and (args.no_cv or args.epochs or model != ablation.get("champion")):
        sys.exit("--record measures the ablation's champion with its default settings and CV")
    os.environ.setdefault("MODALFUSE_TRACKING", "false")
    ds = load_dataset(Settings().dataset_dir(args.dataset))
    splits = load_splits(ds)
    net = NetConfig(device=args.device, **({"epochs": args.epochs} if args.epochs else {}))
    cv = not args.no_cv
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        base = timed(ds, splits, TrainConfig(model=BASELINE, cv=cv), Path(tmp) / BASELINE)
        cand = timed(ds, splits, TrainConfig(model=model, cv=cv, net=net), Path(tmp) / model)
    t = Table(title=f"training time, {args.dataset}, cv={'on' if cv else 'off'}, "
                    f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    for col in ("model", "seconds", f"ratio to {BASELINE}", f"within {BUDGET_S} s"):
        t.add_column(col)
    t.add_row(f"{BASELINE} (baseline)", f"{base:.1f}", "1.00", "yes" if base <= BUDGET_S else "no")
    t.add_row(model, f"{cand:.1f}", f"{cand / base:.2f}", "yes" if cand <= BUDGET_S else "no")
    console.print(t)
    if args.record:
        record = {"champion": model, "seconds": round(cand, 1), "budget_s": BUDGET_S,
                  "baseline_seconds": round(base, 1), "cpus": os.cpu_count(),
                  "cv_macro_f1": cv_f1(ablation, model),
                  "baseline_cv_macro_f1": cv_f1(ablation, BASELINE),
                  "dataset": args.dataset, "dataset_version": ds.version,
                  "ablation": ablation.get("command"),
                  "command": "python scripts/bench_train.py --record",
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        CHAMPION_FILE.write_text(json.dumps(record, indent=2) + "\n")
        console.print(f"wrote {CHAMPION_FILE.name}: `modalfuse train` now trains "
                      f"{model if cand <= BUDGET_S else BASELINE} by default")


if __name__ == "__main__":
    main()
