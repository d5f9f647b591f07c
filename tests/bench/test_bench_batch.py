"""`modalfuse bench batch` without Ray: the Predictor limit, the model alone and the local
engine timed on the same rows, each as a ratio to the limit."""

from __future__ import annotations

import pytest

from modalfuse.bench.batch import LABELS, run_bench, to_markdown


def test_batch_bench_without_ray_times_every_engine(fixture_bundle, fixture_dataset):
    report = run_bench(fixture_bundle.path, fixture_dataset.root, rows=60, chunk_size=16,
                       repeats=1, ray_engine=False)
    assert set(report["engines"]) == {"predictor_limit", "model_only", "local_engine"}
    assert report["engines"]["predictor_limit"]["ratio_to_limit"] == pytest.approx(1.0)
    assert all(v["rows_per_s"] > 0 for v in report["engines"].values())
    assert report["command"].endswith("--no-ray")
    assert LABELS["local_engine"] in to_markdown(report)
