"""Bring your own dataset: a differently shaped table goes through the same pipeline.

A 'fruit' dataset with other columns, other field kinds, other image sizes and JPEG
files: imported from CSV, split, trained, served, and scored through the CLI - with no
line of Pokémon-specific code involved.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from modalfuse.cli import app as cli_app
from modalfuse.config import FieldKind, Settings
from modalfuse.data.dataset import load_dataset
from modalfuse.predict import Predictor, api_body, table_records
from modalfuse.serve.app import create_app

FRUITS = {"apple": ((200, 30, 30), 150, 12), "banana": ((230, 210, 40), 120, 18),
          "lime": ((60, 190, 50), 60, 4)}


def photo(rng, rgb) -> bytes:
    w, h = int(rng.integers(120, 260)), int(rng.integers(100, 200))
    img = Image.new("RGB", (w, h), (240, 240, 235))  # photos: opaque background, no alpha
    d = ImageDraw.Draw(img)
    col = tuple(int(np.clip(c + rng.normal(0, 20), 0, 255)) for c in rgb)
    d.ellipse((w // 5, h // 5, 4 * w // 5, 4 * h // 5), fill=col)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def fruit_dir(tmp_path_factory):
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("fruit")
    (root / "photos" / "batch1").mkdir(parents=True)
    rows = []
    for i in range(150):
        kind = list(FRUITS)[i % 3]
        rgb, grams, sweet = FRUITS[kind]
        name = f"batch1/f{i:03d}.jpg"
        (root / "photos" / name).write_bytes(photo(rng, rgb))
        rows.append({"sku": f"S{i:04d}", "fruit": kind, "photo": name,
                     "orchard": f"o{i // 2}",  # two photos per orchard lot: one group
                     "grams": float(grams + rng.normal(0, 15)),
                     "sugar": float(sweet + rng.normal(0, 2)),
                     "organic": bool(rng.random() < 0.5),
                     "origin": str(rng.choice(["ES", "IT", "CO"])),
                     "labels": "|".join(sorted(set(rng.choice(["fresh", "local", "sale"], 2))))})
    pd.DataFrame(rows).to_csv(root / "fruit.csv", index=False)
    return root


def test_import_split_train_serve_a_differently_shaped_dataset(fruit_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli_app, ["data", "import", "--table", str(fruit_dir / "fruit.csv"),
                                  "--images", str(fruit_dir / "photos"), "--name", "fruit",
                                  "--target", "fruit", "--image-column", "photo",
                                  "--id-column", "sku", "--group-column", "orchard"])
    assert res.exit_code == 0, res.output
    ds = load_dataset(Settings().dataset_dir("fruit"))
    kinds = {f.name: f.kind for f in ds.spec.fields}
    assert kinds == {"grams": FieldKind.numeric, "sugar": FieldKind.numeric,
                     "organic": FieldKind.boolean, "origin": FieldKind.categorical,
                     "labels": FieldKind.multi}

    res = runner.invoke(cli_app, ["data", "split", "--dataset", "fruit", "--seed", "1"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "bundle"
    res = runner.invoke(cli_app, ["train", "--dataset", "fruit", "--out", str(out),
                                  "--rounds", "30", "--no-cv"])
    assert res.exit_code == 0, res.output

    predictor = Predictor.from_path(out)
    assert predictor.labels == ["apple", "banana", "lime"]
    assert predictor.bundle.metrics["test"]["accuracy"] >= 0.8

    row = ds.table.iloc[:1]
    body = api_body(ds.spec, table_records(ds.spec, row)[0], ds.image_bytes(row["photo"].iloc[0]))
    client = TestClient(create_app(Settings(), predictor=predictor))
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 200, r.text
    direct = predictor.predict_proba(table_records(ds.spec, row), [base64.b64decode(body["image_base64"])])
    assert abs(r.json()["probabilities"]["apple"] - direct[0][0]) < 1e-9
    bad = {**body, "fields": {**body["fields"], "origin": "Mars"}}
    assert client.post("/v1/predict", json=bad).status_code == 422

    batch_out = tmp_path / "preds.parquet"
    res = runner.invoke(cli_app, ["predict", "-i", str(fruit_dir / "fruit.csv"), "-o", str(batch_out),
                                  "--images", str(fruit_dir / "photos"), "--bundle", str(out)])
    assert res.exit_code == 0, res.output
    preds = pd.read_parquet(batch_out)
    assert len(preds) == 150 and preds["error"].isna().all()
    assert (preds["predicted"] == pd.read_csv(fruit_dir / "fruit.csv")["fruit"]).mean() > 0.8
