"""Bring your own dataset: a differently shaped table goes through the same pipeline.

A 'fruit' dataset with other columns, other field kinds, other image sizes and JPEG
files: imported from CSV, split, trained, served, and scored through the CLI - with no
line of Pokémon-specific code involved.
"""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fixture_data import make_fruit_dataset
from modalfuse.cli import app as cli_app
from modalfuse.config import Settings
from modalfuse.data.builders.custom import read_table
from modalfuse.data.dataset import load_dataset
from modalfuse.inference.predictor import Predictor, api_body, table_records
from modalfuse.inference.reliability import fruit_photo
from modalfuse.serve.app import create_app
from modalfuse.spec import FieldKind


@pytest.fixture(scope="module")
def fruit_dir(tmp_path_factory):
    """The fruit table (tests/fixture_data.py): 150 photos, two per orchard lot."""
    return make_fruit_dataset(tmp_path_factory.mktemp("fruit"), n_rows=150, seed=3)


@pytest.mark.slow  # import, split, train, serve a second dataset: 32 s under -n 2 on 2 cores
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


def import_table(table_path, images_dir, name, *extra):
    """Run `modalfuse data import` on a small country table (id 'code', target 'zone')."""
    return CliRunner().invoke(cli_app, ["data", "import", "--table", str(table_path),
                                        "--images", str(images_dir), "--name", name,
                                        "--target", "zone", "--image-column", "flag",
                                        "--id-column", "code", *extra])


@pytest.fixture(scope="module")
def country_dir(tmp_path_factory):
    """Six countries as written by hand: Namibia's code is NA, 'None'/'null'/'N/A' are values."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("countries")
    (root / "flags").mkdir()
    for i in range(6):
        (root / "flags" / f"c{i}.jpg").write_bytes(fruit_photo(rng, (40 * i, 90, 200 - 30 * i)))
    (root / "countries.csv").write_text(
        "code,zone,flag,leader,area,tags\n"
        "NA,south,c0.jpg,None,825.6,coast|desert\n"
        "FR,north,c1.jpg,null,551.7,coast\n"
        "DE,north,c2.jpg,N/A,,inland\n"
        "ZA,south,c3.jpg,NA,1221.0,NA\n"
        "NO,north,c4.jpg,Some,385.2,\n"
        "BW,south,c5.jpg,,581.7,desert\n")
    return root


def test_import_keeps_na_none_null_as_written(country_dir):
    res = import_table(country_dir / "countries.csv", country_dir / "flags", "countries")
    assert res.exit_code == 0, res.output
    ds = load_dataset(Settings().dataset_dir("countries"))
    t = ds.table.set_index("code")
    assert "NA" in t.index and t.loc["NA", "zone"] == "south"
    assert t["leader"].tolist() == ["None", "null", "N/A", "NA", "Some", None]
    assert t.loc["ZA", "tags"] == "NA" and pd.isna(t.loc["NO", "tags"])
    fields = {f.name: f for f in ds.spec.fields}
    assert fields["leader"].kind == FieldKind.categorical
    assert fields["leader"].categories == ["N/A", "NA", "None", "Some", "null"]
    assert fields["tags"].kind == FieldKind.multi
    # a numeric column with an empty cell is still numeric, the cell missing
    assert fields["area"].kind == FieldKind.numeric and not fields["area"].required
    assert pd.api.types.is_float_dtype(t["area"]) and pd.isna(t.loc["DE", "area"])


def test_na_value_option_names_more_missing_markers(country_dir):
    res = import_table(country_dir / "countries.csv", country_dir / "flags", "countries_na",
                       "--na-value", "NA", "--na-value", "null")
    # Namibia's code now reads as missing: the id rule names the file's line 2
    assert res.exit_code != 0
    out = " ".join(res.output.split())
    assert "line 2 (code empty): column 'code', rule not_nullable" in out
    assert "'_group'" not in out  # the group copied from the id is not reported twice
    # without an id column that uses NA, the markers simply become missing cells
    table = pd.read_csv(country_dir / "countries.csv", keep_default_na=False)
    table["code"] = [f"K{i}" for i in range(len(table))]
    table.to_csv(country_dir / "coded.csv", index=False)
    res = import_table(country_dir / "coded.csv", country_dir / "flags", "coded",
                       "--na-value", "NA", "--na-value", "null")
    assert res.exit_code == 0, res.output
    ds = load_dataset(Settings().dataset_dir("coded"))
    assert ds.table["leader"].isna().tolist() == [False, True, False, True, False, True]
    leader = next(f for f in ds.spec.fields if f.name == "leader")
    assert leader.categories == ["N/A", "None", "Some"]


def test_bad_row_is_named_by_its_line_and_id(country_dir):
    spec = load_dataset(Settings().dataset_dir("countries")).spec
    area = next(f for f in spec.fields if f.name == "area")
    area.min = 400.0
    spec.name = "countries_bad"
    spec.save(country_dir / "spec.json")
    text = (country_dir / "countries.csv").read_text().replace(
        "ZA,south,c3.jpg,NA,1221.0,NA\n", 'ZA,south,c3.jpg,Mars,1221.0,"two\nlines"\n\n')
    (country_dir / "bad.csv").write_text(text)
    res = import_table(country_dir / "bad.csv", country_dir / "flags", "countries_bad",
                       "--spec", str(country_dir / "spec.json"))
    assert res.exit_code != 0
    out = " ".join(res.output.split())  # rich wraps long lines
    assert "line 5 (code 'ZA'): column 'leader', rule isin" in out and "(value 'Mars')" in out
    # a blank line and a quoted line break are counted as they are in the file
    assert "line 8 (code 'NO'): column 'area', rule greater_than_or_equal_to(400.0)" in out
    assert "line 2 (code 'NA')" not in out and "'nan'" not in out


def test_parquet_nulls_are_missing_and_na_values_too(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"code": ["NA", "FR", None], "area": [825.6, None, 1.0]}).to_parquet(path)
    as_written = read_table(path)
    assert as_written["code"].tolist()[:2] == ["NA", "FR"] and pd.isna(as_written["code"][2])
    marked = read_table(path, na_values=["NA"])
    assert marked["code"].isna().tolist() == [True, False, True]
    assert pd.api.types.is_float_dtype(marked["area"]) and marked["area"].isna().sum() == 1


def test_scoring_a_csv_reads_it_as_the_import_did(country_dir):
    """No skew between import and scoring: a CSV to score is read as written ("NA" is a
    value), and the markers given to `data import --na-value` are missing there too."""
    from modalfuse.features.tabular import parse_record
    from modalfuse.inference.batch import iter_row_chunks
    from modalfuse.inference.predictor import table_records

    as_written = load_dataset(Settings().dataset_dir("countries")).spec
    with_markers = load_dataset(Settings().dataset_dir("coded")).spec
    assert as_written.na_values == [] and with_markers.na_values == ["NA", "null"]
    rows = next(iter(iter_row_chunks(country_dir / "countries.csv", 100))).rows
    assert rows["code"].tolist()[0] == "NA" and rows["leader"].tolist()[:2] == ["None", "null"]
    za = rows.index[rows["code"] == "ZA"][0]
    record = table_records(as_written, rows)[za]
    assert parse_record(as_written, record, from_text=True)["leader"] == "NA"
    assert parse_record(with_markers, record, from_text=True)["leader"] is None
