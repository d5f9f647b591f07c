"""`modalfuse bench shadow` end to end, in-process and short: every level measured with and
without a shadow, the shadow scored, the result written as JSON and Markdown."""

from __future__ import annotations

import json

import pytest


def test_bench_shadow_runs_in_process(fixture_bundle, tmp_path, monkeypatch):
    from modalfuse.cli import main

    monkeypatch.setenv("MODALFUSE_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as done:
        main(["bench", "shadow", "--bundle", str(fixture_bundle.path), "--requests", "10",
              "--warmup", "1", "--in-process"])
    assert done.value.code in (0, None)
    res = json.loads((tmp_path / "reports" / "bench" / "bench_shadow.json").read_text())
    assert {(r["concurrency"], r["shadow"]) for r in res["results"]} == {
        (1, False), (1, True), (8, False), (8, True)}
    assert all(r["errors"] == 0 for r in res["results"])
    assert set(res["ratios"]) == {"1", "8"} and res["shadow"]["1"]["scored"] > 0
    assert "met" in (tmp_path / "reports" / "bench" / "bench_shadow.md").read_text()
