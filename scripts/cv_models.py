"""Grouped-CV scores of models under one network setting, for design decisions (views, size).

    MODALFUSE_DATA_DIR=... python scripts/cv_models.py --model cnn --net '{"views": ["front"]}'

Prints, per model, the calibrated per-fold mean ± sd of accuracy, macro-F1 and ECE, the
pooled uncalibrated out-of-fold scores and the seconds it took. Test rows are never used.
"""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console

from modalfuse.config import Settings
from modalfuse.data.dataset import load_dataset
from modalfuse.data.split import load_splits
from modalfuse.training.folds import FoldEngine
from modalfuse.training.train import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="pokemon")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--net", default="{}", help="NetConfig fields as JSON")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    console = Console()
    ds = load_dataset(Settings().dataset_dir(args.dataset))
    splits = load_splits(ds)
    labels = sorted(ds.table.set_index(ds.spec.id_column)
                    .loc[splits.ids("train"), ds.spec.target].unique())
    cfg = TrainConfig(model=args.model[0], seed=args.seed, net=json.loads(args.net))
    fitter = FoldEngine(ds, splits, cfg, labels)
    for name in args.model:
        started = time.perf_counter()
        cv = fitter.cross_validate(name)
        s, u = cv["summary"], cv["uncalibrated"]
        console.print(
            f"{name} net={args.net}: "
            + ", ".join(f"{k} {s[k]['mean']:.3f} ± {s[k]['sd']:.3f}"
                        for k in ("accuracy", "macro_f1", "ece"))
            + f"; pooled out-of-fold (uncalibrated) accuracy {u['accuracy']:.3f}, macro-F1 "
              f"{u['macro_f1']:.3f}; T {cv['temperature']:.2f}; "
              f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
