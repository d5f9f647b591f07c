"""The S3 paths of the AWS deployment against a local S3 (moto's server on 127.0.0.1).

Clients find it only through the ordinary endpoint settings, as they would find real S3:
`AWS_ENDPOINT_URL_S3` (boto3 and pyarrow) and `MLFLOW_S3_ENDPOINT_URL` (MLflow), with fake
credentials. Proved here: MLflow run and model artifacts stored in a bucket and a registered
bundle fetched back from it; Ray batch scoring reading its table from S3 and writing its
Parquet output there; and the batch task's own command chain, read from
deploy/aws/batch.tf, run against an MLflow server started like the one in ecs.tf. Not
proved: IAM policies, networking (security groups, NAT, endpoints) and real ECS or
Fargate; moto accepts any credentials and checks no permissions.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modalfuse.config import Settings
from prod_helpers import stop_group, wait_healthy

pytestmark = pytest.mark.slow  # starts moto's S3 server, an MLflow server and Ray

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REGION = "eu-west-1"


@dataclass
class LocalS3:
    """The moto server: its endpoint and a boto3 client on it."""

    endpoint: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def new_bucket(self) -> str:
        name = f"modalfuse-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name,
                                    CreateBucketConfiguration={"LocationConstraint": REGION})
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                        Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def local_s3() -> Iterator[LocalS3]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield LocalS3(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_env(local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LocalS3:
    """Point every client at the local S3 the way a deployment would point it at real S3."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI",
                "MLFLOW_REGISTRY_URI", "RAY_ADDRESS", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                "https_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", local_s3.endpoint)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", local_s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    # No ~/.aws files and no instance metadata lookups: nothing but the settings above.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    return local_s3


def batch_rows(ds) -> pd.DataFrame:
    """The fixture rows without their target, two of them broken (what a batch job gets)."""
    spec = ds.spec
    rows = ds.table.drop(columns=[spec.target]).reset_index(drop=True)
    rows = rows.astype({"hp": object, spec.image_column: object})
    rows.loc[2, "hp"] = -5                         # out of range
    rows.loc[4, spec.image_column] = "missing.png"  # no such file
    return rows


def assert_same_scores(a: pd.DataFrame, b: pd.DataFrame) -> None:
    proba = [c for c in a.columns if c.startswith("proba_")]
    assert proba and proba == [c for c in b.columns if c.startswith("proba_")]
    x, y = a[proba].to_numpy(dtype=float), b[proba].to_numpy(dtype=float)
    assert np.array_equal(np.isnan(x), np.isnan(y))
    assert np.nanmax(np.abs(x - y)) <= 1e-6
    assert a["predicted"].fillna("").tolist() == b["predicted"].fillna("").tolist()
    assert a["error"].fillna("").tolist() == b["error"].fillna("").tolist()


def test_mlflow_artifacts_and_registry_on_s3(s3_env, fixture_bundle, fixture_dataset,
                                             fixture_splits, predictor, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from modalfuse.inference.batch import score_frame
    from modalfuse.inference.bundle import BUNDLE_FILE
    from modalfuse.inference.predictor import Predictor
    from modalfuse.tracking.registry import fetch_bundle, log_and_register

    bucket = s3_env.new_bucket()
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.chdir(tmp_path)  # anything written "wherever it runs" would land here
    MlflowClient(tracking).create_experiment(fixture_dataset.spec.name,
                                             artifact_location=f"s3://{bucket}/mlflow")
    settings = Settings(data_dir=tmp_path / "data")

    tracked = log_and_register(fixture_bundle, fixture_dataset, fixture_splits, settings)
    assert tracked.alias == "champion" and tracked.registered_version == "1"

    keys = s3_env.keys(bucket)
    assert all(k.startswith("mlflow/") for k in keys)
    run_keys = [k for k in keys if k.startswith(f"mlflow/{tracked.run_id}/artifacts/")]
    assert any(k.endswith("model_card/model_card.md") for k in run_keys)
    assert any(k.endswith("environment/requirements.txt") for k in run_keys)
    # The logged model (MLflow 3: under the experiment's models/), the bundle folder inside it.
    bundle_keys = [k for k in keys if k.endswith(f"/{BUNDLE_FILE}")]
    assert len(bundle_keys) == 1 and bundle_keys[0].startswith("mlflow/models/"), bundle_keys
    assert not (tmp_path / "mlruns").exists()  # no local artifact store on the side

    path, info = fetch_bundle(f"models:/{fixture_dataset.spec.name}@champion", settings)
    assert info["version"] == "1" and info["run_id"] == tracked.run_id
    assert path.is_relative_to(settings.mlflow_dir / "serving")
    fetched = Predictor.from_path(path)
    assert fetched.model_version == predictor.model_version
    rows = batch_rows(fixture_dataset)
    images = fixture_dataset.image_dir
    assert_same_scores(score_frame(predictor, rows, images), score_frame(fetched, rows, images))


def test_ray_batch_reads_and_writes_s3(s3_env, fixture_bundle, fixture_dataset, predictor,
                                       tmp_path):
    from modalfuse.inference.batch import predict_file
    from modalfuse.scale.ray_batch import ROW, RayBatchConfig, ray_predict_file, read_output

    bucket = s3_env.new_bucket()
    rows = batch_rows(fixture_dataset)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    s3_env.client().upload_file(str(tmp_path / "rows.csv"), bucket, "jobs/ray-1/rows.csv")
    images = fixture_dataset.image_dir  # images come from a folder every worker sees
    out = f"s3://{bucket}/jobs/ray-1/predictions"

    cfg = RayBatchConfig(actors=2, cpus_per_actor=0.5, batch_size=16, local_cpus=2)
    summary = ray_predict_file(fixture_bundle.path, f"s3://{bucket}/jobs/ray-1/rows.csv",
                               images, out, cfg)

    assert summary["rows"] == len(rows) and summary["errors"] == 2
    # Objects, not the empty "folder/" marker pyarrow's S3 filesystem may add.
    written = [k for k in s3_env.keys(bucket, "jobs/ray-1/predictions/") if not k.endswith("/")]
    assert len(written) == summary["files"] >= 1
    assert all(k.endswith(".parquet") for k in written)
    ray_out = read_output(out)  # read back from S3 through the same endpoint setting
    assert ray_out[ROW].tolist() == list(range(len(rows)))
    errors = {r: json.loads(e) for r, e in zip(ray_out[ROW], ray_out["error"], strict=True) if e}
    assert set(errors) == {2, 4}
    predict_file(predictor, tmp_path / "rows.csv", images, tmp_path / "local.parquet")
    assert_same_scores(pd.read_parquet(tmp_path / "local.parquet"), ray_out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _terraform_command(tf: Path, resource: str) -> list[str]:
    """The quoted steps of a task definition's `command = [join(" && ", [...])]`."""
    text = tf.read_text()
    body = text[text.index(f'resource "aws_ecs_task_definition" "{resource}"'):]
    block = re.search(r'command = \[join\(" && ", \[(.*?)\]\)\]', body, re.S)
    assert block, f"no joined command in {tf.name}:{resource}"
    return [json.loads(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', block[1])]


def _mlflow_server_args(tf: Path) -> list[str]:
    """The flags of ecs.tf's `mlflow server` after --backend-store-uri (the artifact ones)."""
    text = tf.read_text()
    cmd = re.search(r'exec mlflow server (.*?)"\]', text)[1]  # type: ignore[index]
    args = shlex.split(cmd)
    return args[args.index("--backend-store-uri") + 2:]


@pytest.fixture
def mlflow_server(s3_env, tmp_path) -> Iterator[tuple[str, str]]:
    """`mlflow server` with ecs.tf's artifact flags on a fresh bucket; (url, bucket)."""
    bucket = s3_env.new_bucket()
    flags = _mlflow_server_args(REPO / "deploy" / "aws" / "ecs.tf")
    flags = [re.sub(r"s3://\$\{aws_s3_bucket\.artifacts\.bucket\}", f"s3://{bucket}", f)
             for f in flags]
    assert flags == ["--artifacts-destination", f"s3://{bucket}/mlflow", "--serve-artifacts"]
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp_path / "mlflow-server.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", *flags],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, tmp_path / "mlflow-server.log", timeout=60)
        yield url, bucket
    finally:
        stop_group(proc)
        log.close()


def test_batch_task_command_chain_on_s3(mlflow_server, s3_env, fixture_bundle,
                                        fixture_dataset, fixture_splits, predictor, tmp_path,
                                        monkeypatch):
    """batch.tf's steps, as written there: model from the MLflow server (artifacts proxied
    to S3), inputs down from S3, `modalfuse predict`, the result back up."""
    from modalfuse.inference.batch import predict_file
    from modalfuse.tracking.registry import log_and_register

    url, bucket = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    name = fixture_dataset.spec.name
    tracked = log_and_register(fixture_bundle, fixture_dataset, fixture_splits,
                               Settings(data_dir=tmp_path / "data"))
    assert tracked.alias == "champion"
    assert any(k.endswith("/bundle.json") for k in s3_env.keys(bucket, "mlflow/"))

    spec = fixture_dataset.spec
    rows = batch_rows(fixture_dataset)
    rows["hp"] = pd.to_numeric(rows["hp"])  # Parquet is typed
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    client = s3_env.client()
    client.upload_file(str(tmp_path / "rows.parquet"), bucket, "jobs/7/rows.parquet")
    for image in rows[spec.image_column].dropna().unique():
        if (fixture_dataset.image_dir / image).is_file():
            client.upload_file(str(fixture_dataset.image_dir / image), bucket,
                               f"jobs/7/images/{image}")

    data = tmp_path / "task"
    steps = _terraform_command(REPO / "deploy" / "aws" / "batch.tf", "batch")
    script = " && ".join(steps).replace("${aws_s3_bucket.artifacts.bucket}", bucket)
    script = script.replace("/data/", f"{data}/")
    assert "${" not in script, script
    data.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MODALFUSE_MODEL_URI": f"models:/{name}@champion", "MLFLOW_TRACKING_URI": url,
           "MODALFUSE_DATA_DIR": str(tmp_path / "task-data"),
           "INPUT_PREFIX": "jobs/7/", "OUTPUT_KEY": "jobs/7/predictions.parquet"}
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=150)
    assert done.returncode == 0, f"{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    assert "jobs/7/predictions.parquet" in s3_env.keys(bucket, "jobs/7/")
    client.download_file(bucket, "jobs/7/predictions.parquet", str(tmp_path / "got.parquet"))
    got = pd.read_parquet(tmp_path / "got.parquet")
    assert len(got) == len(rows) and int(got["error"].notna().sum()) == 2
    predict_file(predictor, tmp_path / "rows.parquet", fixture_dataset.image_dir,
                 tmp_path / "local.parquet")
    assert_same_scores(pd.read_parquet(tmp_path / "local.parquet"), got)
