"""`modalfuse bench serve`, short and without the MLflow peer: a real `modalfuse serve` driven
at c=1 and c=16 next to the in-process Predictor, every level and check reported."""

from __future__ import annotations

import pytest

from modalfuse.bench.load import CHECK_NAMES, run_serve_bench, to_markdown


@pytest.mark.slow  # starts `modalfuse serve`
def test_short_serve_bench_measures_every_level(fixture_bundle):
    res = run_serve_bench([fixture_bundle.path], workers=[1], requests_c1=30, requests_c16=32,
                          warmup=2, include_mlflow=False)
    levels = {(r["target"], r["concurrency"]) for r in res["results"]}
    assert levels == {("in-process Predictor", 1), ("modalfuse API", 1), ("modalfuse API", 16)}
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in res["results"])
    assert {c["check"] for c in res["checks"]} >= {"p50_ms_c1", "p99_ms_c1", "http_p50_vs_inprocess"}
    assert all(c["check"] in CHECK_NAMES for c in res["checks"])
    assert "| API p50 at c=1 (ms) |" in to_markdown(res)
