"""The Ray batch engine against a real two-node local Ray cluster: parity with the local engine.

One cluster (a head and a worker, 1 CPU each) serves the whole module and is stopped even
when a test fails: only its own processes, found by its port and its temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from typer.testing import CliRunner

from modalfuse.cli import app
from modalfuse.inference.batch import predict_file
from modalfuse.scale.ray_batch import ROW, RayBatchConfig, ray_predict_file, read_output

pytestmark = pytest.mark.slow  # starts a Ray cluster

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([RAY, *args], env=env, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, f"ray {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def _own_ray_processes(marks: tuple[str, ...]) -> list[psutil.Process]:
    """The processes of this user whose command line names this cluster (its port or folder)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "uids"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid != os.getpid() and any(m in cmd for m in marks):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _stop_cluster(marks: tuple[str, ...]) -> None:
    """Stop only this cluster's processes (never `ray stop`, which stops every Ray of the user)."""
    procs = _own_ray_processes(marks)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker with token authentication, everything in a temporary folder of its own.

    The token is made here and handed to every process through RAY_AUTH_TOKEN_PATH, so the
    test needs nothing in ~/.ray: it behaves the same on a new machine and on a used one.
    """
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # A short path: Ray puts unix sockets under it (their paths are limited to ~107 bytes).
    root = Path(tempfile.mkdtemp(prefix="mf-ray-", dir="/tmp"))
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    overrides = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                 "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in overrides}
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state

    # Another module of this test process may have run a local Ray without token auth
    # (tests/deploy does): Ray keeps that session, and caches its auth mode and token per
    # process, so the driver would connect without this cluster's token. Start clean.
    if ray.is_initialized():
        ray.shutdown()
    os.environ.update(overrides)  # the driver (this process) presents the same token
    reset_auth_token_state()
    env = {**os.environ}
    marks = (str(root), f"127.0.0.1:{port}", f"--gcs_server_port={port}")
    try:
        _ray(env, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={root / 'ray'}")
        _ray(env, "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             "--disable-usage-stats")
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop_cluster(marks)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_auth_token_state()  # the next Ray of this process starts without this token
        shutil.rmtree(root, ignore_errors=True)


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
    # Parquet is typed and read strictly (no text rule): hp must be a number column, so the
    # CSV's one "abc" becomes a missing value here instead of making the column text.
    table["hp"] = pd.to_numeric(table["hp"], errors="coerce")
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
    assert res.exit_code == 1 and "no image column 'image'" in res.output
