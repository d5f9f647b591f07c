"""Parity of the served ONNX files with LightGBM itself, for every LightGBM part of a bundle
(the main model's and the companions'), on every row of the bundle's dataset.

    MODALFUSE_DATA_DIR=... python scripts/gbm_onnx_parity.py --bundle B

Prints, per part, the rows scored, the largest |ONNX - LightGBM| probability difference and
the share of rows whose most probable class agrees. Needs lightgbm (the training install).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from modalfuse.config import Settings
from modalfuse.data.dataset import load_dataset
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.models.gbm import lightgbm_parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    args = ap.parse_args()
    predictor = Predictor.from_path(args.bundle)
    ds = load_dataset(Settings().dataset_dir(predictor.spec.name))
    prep = predictor.prepare(table_records(ds.spec, ds.table), ds.row_images(ds.table))
    assert prep.batch is not None
    comp = predictor.bundle.companions.models
    parts = [("main", g) for g in lightgbm_parts(predictor.bundle.model)]
    parts += [(mode, g) for mode, m in comp.items() for g in lightgbm_parts(m)]
    t = Table(title=f"ONNX vs LightGBM, {predictor.model_version}")
    for col in ("part", "rows", "max |onnx - lightgbm|", "same argmax"):
        t.add_column(col)
    for name, gbm in parts:
        served, native = gbm.predict_proba(prep.batch), gbm.native_proba(prep.batch)
        t.add_row(name, str(len(served)), f"{np.abs(served - native).max():.2e}",
                  f"{(served.argmax(1) == native.argmax(1)).mean():.1%}")
    Console().print(t)


if __name__ == "__main__":
    main()
