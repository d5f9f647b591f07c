"""`modalfuse bench soak` end to end, short: a real server under mixed load, sampled, judged.

The verdicts themselves (RSS growth, p99 drift) need minutes and a quiet machine; they are
measured by the command (docs/serving.md), not asserted here.
"""

from __future__ import annotations

import pytest

from modalfuse.bench.soak import check_rows, plot, run_soak, to_markdown


@pytest.mark.slow  # starts `modalfuse serve` and loads it for 21 s
def test_short_soak_samples_and_judges(fixture_bundle, tmp_path):
    res = run_soak(fixture_bundle.path, minutes=0.35, clients=2, sample_s=2, warmup_s=4,
                   job_every_s=4, job_rows=50, job_ttl_s=3, sweep_s=2)
    assert len(res["samples"]) >= 8
    assert {"rss_growth_pct", "p99_end_vs_start_pct", "prediction_log_within_limit",
            "no_server_errors", "jobs_disk_bounded"} == set(res["checks"])
    assert res["checks"]["no_server_errors"]["pass"], res["statuses"]
    assert int(res["statuses"]["200"]) > 50 and int(res["statuses"].get("201", 0)) >= 1
    assert all(s["rss_mb"] > 50 and s["predict_p50_ms"] for s in res["samples"])
    assert len(check_rows(res)) == 5 and "| RSS growth after warm-up (%) |" in to_markdown(res)
    assert plot(res, tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
