"""Code tier: the benchmarks report their levels and timed runs as progress steps with counts
known before the first (in-process and short; the servers' benchmarks are tested apart)."""

from __future__ import annotations

from modalfuse.bench.load import ROUNDS, levels_per_bundle
from progress_recorder import Recorder


def test_serve_bench_counts_its_levels_up_front():
    # first worker count: Predictor and API at c=1 in alternating rounds, then c=16
    assert levels_per_bundle([1], include_mlflow=False) == 2 * ROUNDS + 1
    assert levels_per_bundle([1, 2], include_mlflow=True) == (2 * ROUNDS + 1) + 2 + 2 * 2


def test_shadow_bench_reports_each_level(fixture_bundle):
    from modalfuse.bench.shadow import run_shadow_bench

    rec = Recorder()
    res = run_shadow_bench(fixture_bundle.path, requests=10, warmup=1, server=False, reporter=rec)
    measured = [(n, d, t) for n, d, t, _ in rec.of("level")]
    assert measured[0] == ("c=1 without a shadow, 10 requests", 0, 4)
    assert measured[-1] == ("c=8 with a shadow, 10 requests", 4, 4)
    assert [d for _, d, _ in measured] == sorted(d for _, d, _ in measured)
    assert len(res["results"]) == 4


def test_batch_bench_reports_each_timed_run(fixture_bundle, fixture_dataset):
    from modalfuse.bench.batch import run_bench

    rec = Recorder()
    run_bench(fixture_bundle.path, fixture_dataset.root, rows=40, chunk_size=16, repeats=2,
              ray_engine=False, reporter=rec)
    runs = [(n, d, t) for n, d, t, _ in rec.of("run")]
    assert [d for _, d, _ in runs] == list(range(7)) and {t for *_, t in runs} == {6}
    assert runs[0][0].endswith("repeat 1/2") and runs[-1][0] == "timed every engine"
