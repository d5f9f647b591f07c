"""Real-data smoke: serve the freshly trained bundle over HTTP and predict a real sprite.

Run by `make smoke` after building and training on the pinned sources; it does what a
user does after `make run`: starts the API and sends a species with its sprite.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time

import httpx

from modalfuse.config import Settings
from modalfuse.data.dataset import load_dataset
from modalfuse.data.split import load_splits
from modalfuse.inference.predictor import Predictor, table_records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    settings = Settings()
    ds = load_dataset(settings.dataset_dir("pokemon"))
    assert len(ds.table) == 649, f"expected 649 species, got {len(ds.table)}"
    splits = load_splits(ds)
    audit = splits.audit
    assert audit["passed"], audit
    bundle = settings.default_bundle("pokemon")
    predictor = Predictor.from_path(bundle)
    test = predictor.bundle.metrics["test"]
    sys.stderr.write(f"smoke: test accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}\n")
    assert test["accuracy"] > 0.3, test  # quick settings; far above the 0.154 majority rate

    row = ds.table.set_index("id").loc[splits.ids("test")[:1]].reset_index()
    record = {k: v for k, v in table_records(ds.spec, row)[0].items() if v is not None}
    for f in ds.spec.fields:
        if f.kind.value == "multi" and f.name in record:
            record[f.name] = str(record[f.name]).split("|")
    sprite = ds.image_bytes(row["image"].iloc[0])

    port = free_port()
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "modalfuse.cli", "serve", "--port", str(port),
                             "--bundle", str(bundle)], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("API did not come up in 60 s")
        body = {"fields": record, "image_base64": base64.b64encode(sprite).decode()}
        r = httpx.post(f"{base}/v1/predict", json=body, timeout=10)
        r.raise_for_status()
        got = r.json()
        direct = predictor.predict([table_records(ds.spec, row)[0]], [sprite])[0]
        assert got["label"] == direct["label"], (got, direct)
        for lab, p in direct["probabilities"].items():
            assert abs(got["probabilities"][lab] - p) <= 1e-6, (lab, p, got["probabilities"][lab])
        example = httpx.get(f"{base}/openapi.json").json()["components"]["schemas"][
            "PredictRequest"]["examples"][0]
        assert httpx.post(f"{base}/v1/predict", json=example).status_code == 200
        # Every answer carries its prediction set, OOD flags and modalities; either modality
        # alone is scored by the model trained for that case.
        assert got["prediction_set"]["labels"][0] == got["label"], got["prediction_set"]
        assert got["ood"]["image"]["flag"] is False, got["ood"]
        for part, missing in (({"fields": record}, "image"),
                              ({"image_base64": body["image_base64"]}, "fields")):
            alone = httpx.post(f"{base}/v1/predict", json=part, timeout=10)
            assert alone.status_code == 200, alone.text
            assert alone.json()["modalities"]["missing"] == [missing], alone.json()
        sys.stderr.write(f"smoke: {row['name'].iloc[0]} ({row['primary_type'].iloc[0]}) -> "
                         f"{json.dumps(got['top'])} by {got['model_version']}\n")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
