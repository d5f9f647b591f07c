"""The Ray batch engine against a real two-node local Ray cluster: parity with the local engine.

One cluster (a head and a worker, 1 CPU each) serves the whole module and is stopped even
when a test fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from modalfuse.batch import predict_file
from modalfuse.cli import app
from modalfuse.scale.ray_batch import ROW, RayBatchConfig, ray_predict_file, read_output

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([RAY, *args], env=env, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, f"ray {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def cluster():
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # `ray start --head` turns on token authentication; the worker and this driver present
    # the token (~/.ray/auth_token, written by the head) only in token mode.
    old_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        _ray("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             "--include-dashboard=false", "--disable-usage-stats")
        _ray("start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             "--disable-usage-stats")
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], timeout=120, capture_output=True)
        if old_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_mode


@pytest.fixture(scope="module")
def batch_input(fixture_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """A CSV of the fixture rows with bad ones mixed in (each kind of error the engine reports)."""
    d = tmp_path_factory.mktemp("ray-batch")
    spec = fixture_dataset.spec
    t = fixture_dataset.table.drop(columns=[spec.target]).reset_index(drop=True)
    t = t.astype({"hp": object, "color": object, spec.image_column: object})
    t.loc[3, "hp"] = -5                                  # out of range
    t.loc[5, spec.image_column] = "../../etc/passwd"      # leaves the images folder
    t.loc[7, spec.image_column] = "missing.png"           # no such file
    t.loc[9, "color"] = "Plaid"                           # unknown category
    t.loc[len(t) - 2, "hp"] = "abc"                       # not a number, near the end
    t.loc[11, "hp"] = None                                # required and missing
    path = d / "rows.csv"
    t.to_csv(path, index=False)
    return path, fixture_dataset.image_dir


def _assert_same(local: pd.DataFrame, ray: pd.DataFrame) -> None:
    assert list(ray.columns) == list(local.columns)
    assert ray[ROW].tolist() == list(range(len(local)))
    proba = [c for c in local.columns if c.startswith("proba_")]
    a, b = local[proba].to_numpy(), ray[proba].to_numpy()
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) <= 1e-6
    assert local["error"].isna().tolist() == ray["error"].isna().tolist()
    assert local["error"].fillna("").tolist() == ray["error"].fillna("").tolist()
    assert local["predicted"].fillna("").tolist() == ray["predicted"].fillna("").tolist()
    assert (local["id"].to_numpy() == ray["id"].to_numpy()).all()


def test_ray_cluster_job_matches_local_engine(cluster, batch_input, predictor, fixture_bundle,
                                              tmp_path):
    rows, images = batch_input
    predict_file(predictor, rows, images, tmp_path / "local.parquet")
    local = pd.read_parquet(tmp_path / "local.parquet")
    # Small batches so both actors (one per node) get several blocks each.
    cfg = RayBatchConfig(address=cluster, actors=2, cpus_per_actor=0.5, batch_size=16)
    summary = ray_predict_file(fixture_bundle.path, str(rows), images, tmp_path / "ray", cfg)
    ray_out = read_output(tmp_path / "ray")
    assert summary["rows"] == len(local) == len(ray_out)
    assert summary["errors"] == 6 == int(local["error"].notna().sum())
    assert summary["files"] >= 2  # partitioned output
    _assert_same(local, ray_out)
    errors = {r: json.loads(e) for r, e in zip(ray_out[ROW], ray_out["error"], strict=True) if e}
    assert set(errors) == {3, 5, 7, 9, 11, len(local) - 2}
    assert "leaves the images folder" in errors[5]["image"]
    assert errors[len(local) - 2] == {"hp": "must be a number, got 'abc'"}


def test_cli_ray_engine_on_parquet_and_clear_errors(cluster, batch_input, fixture_bundle,
                                                   predictor, tmp_path):
    rows, images = batch_input
    table = pd.read_csv(rows)
    table.to_parquet(tmp_path / "rows.parquet", index=False)
    runner = CliRunner()
    base = ["predict", "--bundle", str(fixture_bundle.path), "--images", str(images)]
    res = runner.invoke(app, [*base, "-i", str(tmp_path / "rows.parquet"), "-o",
                              str(tmp_path / "out"), "--engine", "ray", "--address", cluster,
                              "--chunk-size", "32"])
    assert res.exit_code == 0, res.output
    assert f"{len(table)} rows" in " ".join(res.output.split())
    predict_file(predictor, tmp_path / "rows.parquet", images, tmp_path / "local.parquet")
    _assert_same(pd.read_parquet(tmp_path / "local.parquet"), read_output(tmp_path / "out"))

    bad = runner.invoke(app, [*base, "-i", str(rows), "-o", str(tmp_path / "x"),
                              "--engine", "spark"])
    assert bad.exit_code == 2 and "valid engines: ['local', 'ray']" in bad.output
    table.drop(columns=["image"]).to_csv(tmp_path / "noimage.csv", index=False)
    res = runner.invoke(app, [*base, "-i", str(tmp_path / "noimage.csv"), "-o",
                              str(tmp_path / "y"), "--engine", "ray", "--address", cluster])
    assert res.exit_code == 2 and "no image column 'image'" in res.output
