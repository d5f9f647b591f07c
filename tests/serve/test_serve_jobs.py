"""Async batch jobs through the API: upload, poll, result, idempotency, auth, hostile zips."""

from __future__ import annotations

import io
import stat
import zipfile

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from modalfuse.config import Settings
from modalfuse.inference.batch import score_frame
from modalfuse.serve.app import create_app
from prod_helpers import API_KEY, AUTH, job_inputs, wait_for


@pytest.fixture(scope="module")
def jobs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs-root")


@pytest.fixture(scope="module")
def client(predictor, tmp_path_factory, jobs_root):
    settings = Settings(data_dir=tmp_path_factory.mktemp("serve-jobs"), api_key=API_KEY,
                        job_chunk_rows=7, jobs_root=jobs_root, max_job_rows=500)
    with TestClient(create_app(settings, predictor=predictor)) as c:
        yield c


def submit(client, table: bytes, images: bytes, name="rows.csv", key=None, **kw):
    headers = dict(AUTH)
    if key:
        headers["Idempotency-Key"] = key
    return client.post("/v1/jobs", headers=headers, files={
        "table": (name, table, "text/csv"), "images": ("images.zip", images, "application/zip")},
        **kw)


def test_job_scores_every_row_once_like_the_batch_path(client, fixture_dataset, predictor,
                                                       tmp_path):
    table, images, frame = job_inputs(fixture_dataset, 40, bad_rows=(3, 17))
    r = submit(client, table, images)
    assert r.status_code == 201, r.text
    job = wait_for(client.get, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert (job["done_rows"], job["error_rows"], job["progress"]) == (40, 2, 1.0)
    res = client.get(job["result_url"], headers=AUTH)
    assert res.status_code == 200
    out = pd.read_parquet(io.BytesIO(res.content))
    assert out["row"].tolist() == list(range(40))
    assert out["error"].notna().sum() == 2
    assert "not found" in out.loc[3, "error"]
    # Same numbers as the file batch path through the same Predictor.
    with zipfile.ZipFile(io.BytesIO(images)) as zf:
        zf.extractall(tmp_path)
    direct = score_frame(predictor, frame, tmp_path)
    cols = [c for c in out.columns if c.startswith("proba_")]
    np.testing.assert_allclose(out[cols].to_numpy(), direct[cols].to_numpy())
    csv = client.get(job["result_url"] + "?format=csv", headers=AUTH)
    assert csv.status_code == 200 and len(pd.read_csv(io.BytesIO(csv.content))) == 40
    # Every scored row has a prediction id the feedback route knows; error rows have none.
    ids = out["prediction_id"]
    assert ids[out["error"].isna()].str.len().eq(32).all() and ids[out["error"].notna()].isna().all()
    client.app.state.prediction_log.flush()
    fb = client.post("/v1/feedback", headers=AUTH, json={"feedback": [
        {"prediction_id": ids.iloc[0], "label": str(out.loc[0, "predicted"])}]})
    assert fb.status_code == 200 and fb.json()["stored"] == 1, fb.text


def test_idempotency_key_returns_the_same_job_and_refuses_other_inputs(client, fixture_dataset):
    table, images, _ = job_inputs(fixture_dataset, 10)
    first = submit(client, table, images, key="order-42")
    again = submit(client, table, images, key="order-42")
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other, _, _ = job_inputs(fixture_dataset, 11)
    clash = submit(client, other, images, key="order-42")
    assert clash.status_code == 409 and "different request" in clash.json()["detail"]
    assert submit(client, table, images, key="bad key with spaces").status_code == 422


def test_jobs_need_the_api_key(client, fixture_dataset):
    table, images, _ = job_inputs(fixture_dataset, 3)
    files = {"table": ("t.csv", table), "images": ("i.zip", images)}
    assert client.post("/v1/jobs", files=files).status_code == 401
    assert client.post("/v1/jobs", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/v1/jobs/" + "0" * 32).status_code == 401
    assert client.get("/v1/jobs/" + "0" * 32, headers=AUTH).status_code == 404
    assert client.get("/v1/jobs/../../etc/passwd", headers=AUTH).status_code == 404


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("archive, says", [
    (_zip([("../../evil.png", b"x")]), "escapes"),
    (_zip([("/etc/cron.d/evil", b"x")]), "escapes"),
    (_zip([(_symlink("link.png"), b"/etc/passwd")]), "symbolic link"),
    (_zip([("bomb.png", b"\0" * 20_000_000)]), "zip bomb"),
    (b"PK\x03\x04 this is not really a zip", "not a valid zip"),
    (b"", "not a valid zip"),
])
def test_hostile_zips_are_refused_with_a_reason(client, fixture_dataset, archive, says):
    table, _, _ = job_inputs(fixture_dataset, 3)
    r = submit(client, table, archive)
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("table, name, says", [
    (b"", "rows.csv", "cannot read"),
    (b"a,b\n1,2\n", "rows.csv", "no image column"),
    (b"\x00\x01garbage", "rows.parquet", "cannot read"),
    (b"id,image\n", "rows.csv", "no rows"),
    (b"x", "rows.xlsx", ".csv or .parquet"),
])
def test_bad_tables_are_refused_with_a_reason(client, fixture_dataset, table, name, says):
    _, images, _ = job_inputs(fixture_dataset, 3)
    r = submit(client, table, images, name=name)
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"][0]["msg"]


def test_too_many_rows_is_refused(client, fixture_dataset):
    table, images, _ = job_inputs(fixture_dataset, 501)
    r = submit(client, table, images)
    assert r.status_code == 422 and "limit is 500" in r.json()["detail"][0]["msg"]


def test_server_side_paths_stay_under_the_jobs_root(client, fixture_dataset, jobs_root):
    table, images, _ = job_inputs(fixture_dataset, 12)
    (jobs_root / "in").mkdir(exist_ok=True)
    (jobs_root / "in" / "rows.csv").write_bytes(table)
    with zipfile.ZipFile(io.BytesIO(images)) as zf:
        zf.extractall(jobs_root / "in" / "images")
    r = client.post("/v1/jobs", headers=AUTH,
                    data={"table_path": "in/rows.csv", "images_path": "in/images"})
    assert r.status_code == 201, r.text
    assert wait_for(client.get, r.json()["id"])["state"] == "succeeded"
    for field, value in (("table_path", "../../../etc/passwd"), ("table_path", "/etc/passwd"),
                         ("images_path", "../")):
        data = {"table_path": "in/rows.csv", "images_path": "in/images", field: value}
        bad = client.post("/v1/jobs", headers=AUTH, data=data)
        assert bad.status_code == 422, bad.text
        assert "outside the jobs root" in bad.json()["detail"][0]["msg"]


def test_a_job_needs_exactly_one_table_and_one_image_source(client, fixture_dataset):
    table, images, _ = job_inputs(fixture_dataset, 3)
    r = client.post("/v1/jobs", headers=AUTH, files={"table": ("t.csv", table)})
    assert r.status_code == 422 and "images" in r.json()["detail"][0]["msg"]
    r = client.post("/v1/jobs", headers=AUTH, files={"images": ("i.zip", images)})
    assert r.status_code == 422 and "table" in r.json()["detail"][0]["msg"]


def test_production_settings_refuse_a_missing_key_and_keyless_servers_close_jobs(predictor,
                                                                                 tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="MODALFUSE_API_KEY"):
        Settings(environment="production", api_key="")
    with pytest.raises(ValidationError, match="16 characters"):
        Settings(environment="production", api_key="short")
    app = create_app(Settings(data_dir=tmp_path, api_key=""), predictor=predictor)
    with TestClient(app) as c:
        r = c.get("/v1/jobs/" + "0" * 32, headers=AUTH)
        assert r.status_code == 403 and "MODALFUSE_API_KEY" in r.json()["detail"]
        assert c.get("/v1/monitoring/drift", headers=AUTH).status_code == 403


def test_without_pyarrow_jobs_take_and_give_csv_and_say_why_not_parquet(client, fixture_dataset,
                                                                        monkeypatch):
    """The lean serve install has no pyarrow: a .parquet table is refused with what to send
    instead, the result comes as CSV, and asking for Parquet is a 406, never a 500."""
    import modalfuse.inference.batch as batch
    import modalfuse.serve.jobs as jobs
    import modalfuse.serve.routes.jobs as routes

    for module in (batch, jobs, routes):
        monkeypatch.setattr(module, "parquet_available", lambda: False)
    table, images, _ = job_inputs(fixture_dataset, 9, bad_rows=(2,))
    frame = pd.read_csv(io.BytesIO(table), keep_default_na=False)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    refused = submit(client, buf.getvalue(), images, name="rows.parquet")
    assert refused.status_code == 422, refused.text
    assert "send a .csv" in refused.text and "modalfuse[parquet]" in refused.text
    r = submit(client, table, images)
    assert r.status_code == 201, r.text
    job = wait_for(client.get, r.json()["id"])
    assert job["state"] == "succeeded", job
    res = client.get(job["result_url"], headers=AUTH)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    out = pd.read_csv(io.BytesIO(res.content))
    assert out["row"].tolist() == list(range(9)) and out["error"].notna().sum() == 1
    asked = client.get(job["result_url"] + "?format=parquet", headers=AUTH)
    assert asked.status_code == 406 and "format=csv" in asked.json()["detail"]
