"""The modality ablation: tabular only, image only and each fusion, scored the same way, in one table.

Every model is cross-validated on the grouped folds of the training part (calibrated per
fold on the other folds), trained on the whole training part, bundled, and scored once on
the frozen test split through the Predictor. The champion is the best CV macro-F1; the
test columns are reported, never used to choose.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.inference.bootstrap import BootstrapGain, paired_bootstrap_gain
from modalfuse.inference.bundle import load_bundle
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.inference.reliability import (
    plot_reliability,
    reliability_markdown,
    reliability_report,
)
from modalfuse.markdown import markdown_table
from modalfuse.progress import SILENT, ProgressReporter
from modalfuse.spec import DatasetWords
from modalfuse.training import recipes
from modalfuse.training.ablation_plan import AblationPace, plan_ablation
from modalfuse.training.config import TrainConfig
from modalfuse.training.folds import OOF_KEY, FoldEngine, training_labels
from modalfuse.training.train import train

FUSED = ("stacking", "intermediate", "gbm_embed")
SINGLE = {"gbm_tabular": "tabular", "cnn": "image", "gbm_image": "image"}
TARGETS = {"accuracy": 0.72, "macro_f1": 0.60, "ece": 0.05, "fusion_gain_macro_f1": 0.05}
# The concatenation baseline every model's out-of-fold macro-F1 gain is measured against.
BASELINE = "gbm"


def measure_latency(predictor, ds: Dataset, ids: np.ndarray, n: int = 40) -> dict:
    """Milliseconds per row through the Predictor from raw fields + image bytes: one-row
    requests (median) and one batch of all `ids` (mean per row)."""
    rows = ds.table.set_index(ds.spec.id_column).loc[ids].reset_index()
    records, images = table_records(ds.spec, rows), ds.row_images(rows)
    predictor.predict_proba(records[:1], images[:1])  # warm-up: sessions, lazy imports
    single = []
    for rec, img in zip(records[:n], images[:n], strict=True):
        t = time.perf_counter()
        predictor.predict_proba([rec], [img])
        single.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    predictor.predict_proba(records, images)
    batch = (time.perf_counter() - t) * 1000 / len(records)
    return {"single_ms": statistics.median(single), "batch_ms_per_row": batch}


def run_ablation(ds: Dataset, splits: Splits, out_dir: Path, cfg: TrainConfig,
                 models: tuple[str, ...] | None = None, engine: FoldEngine | None = None,
                 reporter: ProgressReporter = SILENT, step_s: float | None = None) -> dict:
    """Cross-validate, train, bundle and score every recipe in `models` (default: all), sharing
    fits through one fold engine; the champion is the best grouped-CV macro-F1.

    Each model is a `model` step to `reporter`, with the time left (`ablation_plan`, scaled by
    `step_s`, a network training step measured here, if given); a fold engine made here
    reports its folds and epochs to it too."""
    models = models or recipes.names()
    plan = plan_ablation(splits, cfg, models, step_s)
    train_ids = splits.ids("train")
    fitter = engine or FoldEngine(ds, splits, cfg, training_labels(ds, splits), reporter=reporter)
    pace = AblationPace(plan)
    results = []
    oofs = {}
    for i, name in enumerate(models):
        started = time.perf_counter()
        reporter.on_step("model", f"{name}: cross-validation", i, len(models),
                         pace.seconds_left(i))
        cv = fitter.cross_validate(name)
        oofs[name] = cv[OOF_KEY]
        reporter.on_step("model", f"{name}: final fit, bundle, test", i, len(models),
                         pace.seconds_left(i, time.perf_counter() - started))
        bundle = train(ds, splits, out_dir / name, cfg.model_copy(update={"model": name}),
                       engine=fitter, cv=cv)
        latency = measure_latency(Predictor(bundle), ds, splits.ids("test"))
        pace.finished(name, time.perf_counter() - started)
        reporter.on_step("model", name, i + 1, len(models), pace.seconds_left(i + 1))
        results.append({
            "model": name, "description": recipes.get(name).describe(ds.spec.words),
            "cv": cv["summary"],
            "temperature": cv["temperature"], "test": bundle.metrics["test"],
            "latency": latency, "bundle": str(bundle.path), "model_version": bundle.model_version,
            "seconds": round(time.perf_counter() - started, 1),
        })
    if BASELINE in oofs:  # paired bootstrap of each model's gain on the same out-of-fold rows
        base = oofs[BASELINE]
        for r in results:
            o = oofs[r["model"]]
            r["gain_over_baseline"] = gain_record(paired_bootstrap_gain(
                o.y, o.proba, base.proba, o.labels, seed=cfg.seed, folds=o.folds))
    champion = max(results, key=lambda r: r["cv"]["macro_f1"]["mean"])
    report = {
        "dataset": {"name": ds.spec.name, "version": ds.version,
                    "train_rows": len(train_ids), "test_rows": len(splits.ids("test")),
                    "folds": len(fitter.folds), "words": ds.spec.words.model_dump(),
                    "extra_views": ds.spec.views_table is not None},
        "config": cfg.model_dump(mode="json"),
        "results": results,
        "champion": champion["model"],
        "targets": target_check(results, champion["model"]),
        # What the champion's predictions carry: missing modalities, sets, OOD flags.
        "reliability": reliability_report(Predictor(load_bundle(Path(champion["bundle"]))), ds,
                                          splits.ids("test")),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps(report, indent=2, default=float))
    plot_ablation(report, out_dir / "ablation.png")
    plot_reliability(report["reliability"], out_dir / "reliability.png",
                     f"champion {champion['model']}, test split")
    return report


def gain_record(gain: BootstrapGain) -> dict[str, float | int]:
    """A model's bootstrapped gain over `BASELINE` as ablation.json records it."""
    return {"model_macro_f1": gain.model_f1, "base_macro_f1": gain.base_f1, "gain": gain.gain,
            "gain_mean": gain.mean, "low": gain.low, "high": gain.high,
            "level": gain.confidence, "n_boot": gain.resamples, "rows": gain.rows,
            "p_not_better": gain.p_not_better}


def target_check(results: list[dict], champion: str) -> dict:
    """The champion's test scores and fusion gain over the best single modality, checked against `TARGETS`."""
    by = {r["model"]: r for r in results}
    best_single = max((by[m] for m in SINGLE if m in by), key=lambda r: r["test"]["macro_f1"],
                      default=None)
    fused = by.get(champion)
    if fused is None:
        return {}
    out = {"model": champion,
           "accuracy": fused["test"]["accuracy"], "macro_f1": fused["test"]["macro_f1"],
           "ece": fused["test"]["ece"]}
    if best_single is not None:
        out["best_single"] = best_single["model"]
        out["fusion_gain_macro_f1"] = fused["test"]["macro_f1"] - best_single["test"]["macro_f1"]
    out["met"] = {k: (out[k] <= v if k == "ece" else out[k] >= v)
                  for k, v in TARGETS.items() if k in out}
    return out


def plot_ablation(report: dict, path: Path) -> Path:
    """Draw macro-F1 and accuracy bars (grouped CV ± sd beside test) per model to `path`; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    names = [r["model"] for r in res]
    x = np.arange(len(res))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "macro_f1", "macro-F1"), (axes[1], "accuracy", "accuracy")):
        ax.bar(x - 0.2, [r["cv"][key]["mean"] for r in res], 0.4,
               yerr=[r["cv"][key]["sd"] for r in res], label="grouped CV (mean ± sd)", capsize=3)
        ax.bar(x + 0.2, [r["test"][key] for r in res], 0.4, label="test")
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left")
    fig.suptitle(f"modality ablation, {report['dataset']['name']} "
                 f"(champion on CV: {report['champion']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ece_floor_note(report: dict) -> str:
    """What a perfectly calibrated model with the champion's test probabilities would score,
    after the ECE target (the target is only reachable above that floor)."""
    floor = (report.get("reliability") or {}).get("cases", {}).get("both", {}).get("ece_floor")
    if not floor:
        return ""
    return (f"; a perfectly calibrated model with these probabilities would show "
            f"{floor['mean']:.3f} on these rows (90 % of draws below {floor['p90']:.3f})")


def gain_cell(result: dict) -> str:
    """`+0.012 [-0.004, +0.029]`: the observed gain and its interval, or `–` without one."""
    g = result.get("gain_over_baseline")
    if not g or result["model"] == BASELINE:
        return "–"
    return f"{g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"


def results_row(r: dict, champion: str) -> list[str]:
    """One model's cells of the ablation table."""
    cv, t, lat = r["cv"], r["test"], r["latency"]
    star = " **(champion)**" if r["model"] == champion else ""
    return [f"`{r['model']}`{star}", r["description"],
            f"{cv['accuracy']['mean']:.3f} ± {cv['accuracy']['sd']:.3f}",
            f"{cv['macro_f1']['mean']:.3f} ± {cv['macro_f1']['sd']:.3f}",
            f"{cv['ece']['mean']:.3f} ± {cv['ece']['sd']:.3f}", gain_cell(r),
            f"{t['accuracy']:.3f}", f"{t['macro_f1']:.3f}", f"{t['ece']:.3f}",
            f"{lat['single_ms']:.1f}", f"{lat['batch_ms_per_row']:.2f}", f"{r['temperature']:.2f}"]


def settings_line(report: dict, words: DatasetWords) -> str:
    """The seed, network and LightGBM settings of an ablation, in the dataset's words (extra
    views only where the dataset has them)."""
    net, cfg = report["config"]["net"], report["config"]
    if report["dataset"].get("extra_views", True):
        seen = (f"{net['views_per_epoch']} random views per training {words.row_noun}, views "
                f"{', '.join(net['views'])}")
    else:
        seen = f"each training {words.row_noun}'s {words.image_noun}"
    return (f"Seed {cfg['seed']}; networks: {net['image_size']} px, width {net['width']}, "
            f"embedding {net['embed_dim']}, {net['epochs']} epochs of {seen}, augmentation "
            f"{'on' if net['augment'] else 'off'} (kornia, training rows only); LightGBM "
            f"{cfg['num_boost_round']} rounds.")


def to_markdown(report: dict, command: str, image: str | None = None,
                trust_image: str | None = None) -> str:
    """The ablation report as the generated Markdown page, with the plot `image` (and the
    coverage / OOD plot `trust_image`) linked if given."""
    d = report["dataset"]
    words = DatasetWords.model_validate(d.get("words") or {})
    lines = [
        "# Modality ablation",
        "",
        f"Generated by `{command}`; do not edit by hand. Dataset `{d['name']}` version "
        f"`{d['version']}`: {d['train_rows']} training rows in {d['folds']} {words.grouped} CV "
        f"folds, {d['test_rows']} rows in the frozen test split.",
        "",
        "Each model is cross-validated on the grouped folds (probabilities temperature-scaled "
        "per fold, with the temperature fitted on the other folds' out-of-fold predictions), "
        "then trained on the whole training part and scored once on the test split through "
        "the `Predictor` (raw fields + image bytes, ONNX Runtime for every network and every LightGBM). The "
        "champion is the best grouped-CV macro-F1; test numbers play no part in choosing. "
        "Latency: one-row requests through the `Predictor` (median), and per row in one "
        "batch of the test split.",
        "",
        markdown_table(
            ["model", "what", "CV accuracy", "CV macro-F1", "CV ECE",
             f"out-of-fold macro-F1 gain over `{BASELINE}` (90 % paired bootstrap)",
             "test accuracy", "test macro-F1", "test ECE", "ms/row (1-row)", "ms/row (batch)", "T"],
            [results_row(r, report["champion"]) for r in report["results"]]),
    ]
    tg = report.get("targets") or {}
    if tg:
        met = tg.get("met", {})

        def mark(k: str) -> str:
            return "met" if met.get(k) else "**not met**"

        lines += [
            "",
            f"## Targets (champion `{tg['model']}` on the test split)",
            "",
            f"- accuracy ≥ {TARGETS['accuracy']}: {tg['accuracy']:.3f} ({mark('accuracy')})",
            f"- macro-F1 ≥ {TARGETS['macro_f1']}: {tg['macro_f1']:.3f} ({mark('macro_f1')})",
            f"- ECE ≤ {TARGETS['ece']}: {tg['ece']:.3f} ({mark('ece')}){ece_floor_note(report)}",
        ]
        if "fusion_gain_macro_f1" in tg:
            lines.append(
                f"- macro-F1 ≥ {TARGETS['fusion_gain_macro_f1']:.2f} above the best single "
                f"modality (`{tg['best_single']}`): {tg['fusion_gain_macro_f1']:+.3f} "
                f"({mark('fusion_gain_macro_f1')})")
    lines += ["", "## Settings", "", settings_line(report, words)]
    if report.get("reliability"):
        lines += reliability_markdown(report["reliability"], report["champion"])
        if trust_image:
            lines += ["", f"![coverage and OOD scores]({trust_image})"]
    if image:
        lines += ["", f"![ablation]({image})"]
    return "\n".join(lines) + "\n"
