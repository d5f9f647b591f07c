"""Regenerate the tables of docs/report.md from the latest evaluation and benchmark outputs.

The report's prose is written by people; every table sits between
`<!-- BEGIN table:NAME -->` and `<!-- END table:NAME -->` and is rewritten by
`modalfuse report build` from the JSON that a project command produced. A table whose
source is missing says which command makes it, instead of showing a stale number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from modalfuse.config import Settings
from modalfuse.errors import MissingData
from modalfuse.serve.soak import check_rows

TableFn = Callable[["Sources"], str]
TABLES: dict[str, tuple[str, TableFn]] = {}  # name -> (command that makes the source, renderer)


class MissingSource(MissingData):
    """The JSON a table is made from has not been produced yet."""


class Sources:
    """Where the measured outputs live: the data folder first, then committed copies in docs/."""

    def __init__(self, settings: Settings, docs: Path, dataset: str = "pokemon"):
        self.settings, self.docs, self.dataset = settings, docs, dataset

    def json(self, *candidates: Path) -> dict:
        """The first of `candidates` that exists, parsed; MissingSource names them all if none does."""
        for p in candidates:
            if p.exists():
                return json.loads(p.read_text())
        raise MissingSource(", ".join(str(c) for c in candidates))

    @property
    def dataset_dir(self) -> Path:
        """The built dataset the report is about."""
        return self.settings.dataset_dir(self.dataset)

    @property
    def bench_dir(self) -> Path:
        """Where `modalfuse bench ...` commands write their measurements."""
        return self.settings.reports_dir / "bench"


def table(name: str, command: str) -> Callable[[TableFn], TableFn]:
    """Decorator that registers a renderer for the report table `name`, made from the output of `command`."""
    def deco(fn: TableFn) -> TableFn:
        TABLES[name] = (command, fn)
        return fn

    return deco


def md_table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table; floats are shown with three decimals."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _mean_sd(d: dict | None) -> str:
    return f"{d['mean']:.3f} ± {d['sd']:.3f}" if d else "-"


@table("dataset", "modalfuse data build")
def _dataset(src: Sources) -> str:
    m = src.json(src.dataset_dir / "manifest.json")
    classes = sorted(m["classes"].items(), key=lambda kv: -kv[1])
    rows = [["dataset version", m["version"]], ["rows (species)", m["rows"]],
            ["image files (front + views)", m["images"]], ["classes", len(classes)],
            ["largest / smallest class", f"{classes[0][0]} {classes[0][1]} / "
                                         f"{classes[-1][0]} {classes[-1][1]}"]]
    rows += [[f"source: {k}", v] for k, v in m.get("sources", {}).items()]
    return md_table(["fact", "value"], rows)


@table("split_audit", "modalfuse data split")
def _split(src: Sources) -> str:
    a = src.json(src.dataset_dir / "split_audit.json")
    rows: list[list[object]] = [[s, v["rows"], v["groups"]] for s, v in a["per_split"].items()]
    out = md_table(["split", "rows", "groups (families)"], rows)
    checks = [[c["name"], "yes" if c["blocking"] else "no", "pass" if c["passed"] else "FAIL",
               ", ".join(f"{k}={v}" for k, v in c["summary"].items()
                         if isinstance(v, int | float) and not isinstance(v, bool))]
              for c in a["checks"]]
    return out + "\n\n" + md_table(["check", "blocking", "result", "numbers"], checks)


@table("decisions", "modalfuse report decisions")
def _decisions(src: Sources) -> str:
    m = src.json(src.docs / "decisions.json")
    rows = [[k, _mean_sd(v["cv_acc"]), _mean_sd(v["cv_f1"]), v["test_acc"], v["test_f1"]]
            for k, v in m["variants"].items()]
    return md_table(["variant (LightGBM)", "grouped-CV acc", "grouped-CV macro-F1", "test acc",
                     "test macro-F1"], rows)


def _records_table(data: dict | list, prefer: list[str] | None = None) -> str:
    """A list of flat dicts (or {"rows": [...]}) as a markdown table."""
    rows = data.get("rows", data.get("results", data)) if isinstance(data, dict) else data
    if isinstance(rows, dict):
        rows = [{"name": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in rows.items()]
    if not rows:
        return "_no rows_"
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and not isinstance(v, dict | list):
                keys.append(k)
    if prefer:
        keys = [k for k in prefer if k in keys] + [k for k in keys if k not in prefer]
    return md_table(keys, [[r.get(k, "") for k in keys] for r in rows])


@table("batch_bench", "modalfuse bench batch")
def _batch(src: Sources) -> str:
    b = src.json(src.bench_dir / "bench_batch.json", src.docs / "results" / "bench_batch.json")
    rows = [[name.replace("_", " "), e["rows_per_s"], e["ratio_to_limit"]]
            for name, e in b["engines"].items()]
    head = (f"`{b['command']}`, {b['rows']} rows, model `{b['model_version']}`, "
            f"1-min load average {b['machine'].get('load_avg_1m', float('nan')):.1f}\n\n")
    return head + md_table(["engine", "rows/s", "× the in-process Predictor"], rows)


@table("serve_bench", "modalfuse bench serve")
def _serve(src: Sources) -> str:
    b = src.json(src.docs / "benchmarks" / "serve.json")
    rows = [[r["target"], r["concurrency"], r["errors"], r["p50_ms"], r["p99_ms"],
             r["throughput_rps"]] for r in b["results"]]
    return (f"model `{b['model_version']}`\n\n"
            + md_table(["target", "concurrency", "errors", "p50 ms", "p99 ms", "req/s"], rows))


@table("soak", "modalfuse bench soak --minutes 10 --clients 4")
def _soak(src: Sources) -> str:
    b = src.json(src.docs / "benchmarks" / "soak.json")
    head = (f"`{b['command']}`, model `{b['model_version']}`, statuses {b['statuses']}; RSS "
            f"{b['rss_start_mb']:.0f} → {b['rss_end_mb']:.0f} MB, p99 {b['p99_start_ms']:.1f} → "
            f"{b['p99_end_ms']:.1f} ms\n\n")
    rows: list[list[object]] = [list(r) for r in check_rows(b)]
    return head + md_table(["check", "target", "measured", "pass"], rows)


@table("shadow", "modalfuse bench shadow --requests 600")
def _shadow(src: Sources) -> str:
    b = src.json(src.bench_dir / "bench_shadow.json", src.docs / "benchmarks" / "shadow.json")
    rows: list[list[object]] = [
        [r["concurrency"], "on" if r["shadow"] else "off", r["requests"], r["errors"],
         r["p50_ms"], r["p99_ms"], r["throughput_rps"]] for r in b["results"]]
    ratios = ", ".join(f"c={c}: p50 ×{v['p50']:.3f}, p99 ×{v['p99']:.3f}"
                       for c, v in b["ratios"].items())
    shadowed = ", ".join(f"c={c}: {v['scored']} scored, {v['dropped']} dropped"
                         for c, v in b["shadow"].items())
    verdict = "met" if b["target"]["met"] else "**not met**"
    challenger = b.get("challenger_version", b["challenger"])
    return (f"champion `{b['model_version']}`, challenger `{challenger}`, "
            f"{b['machine']['cpus']} CPUs, {b['created_at']}\n\n"
            + md_table(["c", "shadow", "requests", "errors", "p50 ms", "p99 ms", "req/s"], rows)
            + f"\n\nWith the shadow / without: {ratios}. Shadow: {shadowed}. Target p50 ×"
              f"{b['target']['max_p50_ratio']}: {verdict}.")


def render(src: Sources, name: str) -> str:
    """One table's markdown, or a line naming the command to run when its source is missing."""
    command, fn = TABLES[name]
    try:
        body = fn(src)
    except MissingSource as e:
        return f"_Not measured yet: run `{command}` (looked for {e})._"
    return f"{body}\n\n<sub>Produced by `{command}`; refreshed by `modalfuse report build`.</sub>"


BLOCK = re.compile(r"(<!-- BEGIN table:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- END table:(?P=name) -->)",
                   re.DOTALL)


def build_report(path: Path, src: Sources) -> list[str]:
    """Rewrite every table block of `path`; return the names of the tables refreshed."""
    text = path.read_text()
    done: list[str] = []

    def sub(m: re.Match) -> str:
        name = m["name"]
        if name not in TABLES:
            return m.group(0)
        done.append(name)
        return f"{m.group(1)}{render(src, name)}\n{m.group(4)}"

    path.write_text(BLOCK.sub(sub, text))
    return done
