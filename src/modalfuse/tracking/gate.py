"""The promotion gate: whether a registered challenger is better than the champion, and why.

`Gate` holds the gate's settings; `Gate.decide` compares two versions. On `cv` (the default)
both must have been cross-validated on the same folds of the same dataset version: a paired
bootstrap over their out-of-fold rows gives the macro-F1 gain and its interval, and the
challenger wins only when the lower end clears the margin. On `test` a metric of the frozen
test split decides instead (recorded on the version by the registry). The test split is
scored either way, as a report, and a plot compares the two per class.
`tracking.registry.promote` fetches the versions, asks the gate and moves the aliases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.errors import RegistryError
from modalfuse.inference.bootstrap import BootstrapGain, paired_bootstrap_gain
from modalfuse.inference.bundle import ModelBundle
from modalfuse.inference.evaluate import classification_metrics, evaluate, per_class_report
from modalfuse.inference.oof import OutOfFold, OutOfFoldError, check_comparable
from modalfuse.inference.predictor import Predictor

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "weighted_f1": True,
                    "log_loss": False, "ece": False}
GATES = ("cv", "test")
# What chose, as the registry records it on the version (its `modalfuse.promotion_on` tag).
GATE_TEXT = {"cv": "cv: paired bootstrap of out-of-fold macro_f1 (grouped CV)",
             "test": "test: compared on the frozen test split (--on test)"}


@dataclass
class Candidate:
    """One registered version as the promotion gate sees it: its bundle, data version and scores."""

    version: str
    bundle_version: str
    dataset_version: str | None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the frozen test split: a report
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # on what decided
    cv: dict[str, float] = field(default_factory=dict)  # out-of-fold (grouped CV) metrics
    folds_digest: str | None = None

    def score_test(self, bundle: ModelBundle, ds: Dataset, splits: Splits) -> None:
        """The frozen test split through the Predictor (a report, unless `--on test` decides)."""
        if self.dataset_version == ds.version:
            result = evaluate(Predictor(bundle), ds, splits.ids("test"), None, "test")
            self.metrics = {k: float(v) for k, v in result["metrics"].items() if k != "n"}
            if not self.per_class:
                self.per_class = result["per_class"]

    def score_cv(self, oof: OutOfFold) -> None:
        """The out-of-fold metrics and per-class report of its grouped-CV predictions."""
        self.cv = {k: float(v) for k, v in
                   classification_metrics(oof.proba, oof.y, oof.labels).items() if k != "n"}
        self.per_class = per_class_report(oof.proba, oof.y, oof.labels)


@dataclass
class PromotionDecision:
    """What the gate decided for a challenger and why, with the numbers it compared."""

    promoted: bool
    reason: str
    metric: str
    margin: float
    challenger: Candidate | None = None
    champion: Candidate | None = None
    plot: str | None = None  # PNG comparing the two, per class
    on: str = "cv"  # what chose: "cv" (out-of-fold predictions) or "test" (--on test)
    interval: dict[str, Any] | None = None  # the paired bootstrap of the gain (on cv)

    def to_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data (what `modalfuse promote` prints and logs)."""
        return asdict(self)


@dataclass(frozen=True)
class Gate:
    """The promotion gate's settings (refused when unsafe); `decide` applies them to a
    challenger and a champion."""

    metric: str = "macro_f1"
    margin: float = 0.01
    on: str = "cv"  # what decides: "cv" (out-of-fold predictions) or "test" (the test split)
    confidence: float = 0.90  # on cv: the level of the bootstrap interval
    resamples: int = 2000  # on cv: bootstrap resamples
    seed: int = 0

    def __post_init__(self) -> None:
        if self.on not in GATES:
            raise RegistryError(f"unknown gate {self.on!r}; choose one of {list(GATES)}")
        if self.metric not in HIGHER_IS_BETTER:
            raise RegistryError(f"unknown metric {self.metric!r}; choose one of "
                                f"{sorted(HIGHER_IS_BETTER)}")
        if self.on == "cv" and self.metric != "macro_f1":
            raise RegistryError(f"the out-of-fold gate bootstraps macro_f1, got metric "
                                f"{self.metric!r}; use --metric macro_f1 (or --on test to "
                                "compare another metric)")
        if self.margin < 0:
            raise RegistryError(f"margin must be >= 0, got {self.margin}")
        if not 0 < self.confidence < 1:
            raise RegistryError(f"confidence must be between 0 and 1, got {self.confidence}")

    def refuse(self, reason: str, challenger: Candidate | None = None) -> PromotionDecision:
        """A refusal made before any comparison (no challenger, or nothing to compare)."""
        return PromotionDecision(False, reason, self.metric, self.margin, challenger, on=self.on)

    def decide(self, name: str, challenger: Candidate, champion: Candidate, cb: ModelBundle,
               hb: ModelBundle, ds: Dataset, splits: Splits, plot: Path) -> PromotionDecision:
        """Compare challenger (bundle `cb`) with champion (bundle `hb`) of registered model
        `name` on what `on` names; the per-class plot is written to `plot`."""
        decide = self._decide_on_cv if self.on == "cv" else self._decide_on_test
        return decide(name, challenger, champion, cb, hb, ds, splits, plot)

    def bootstrap(self, challenger: OutOfFold, champion: OutOfFold) -> BootstrapGain:
        """The paired bootstrap of the challenger's out-of-fold macro-F1 gain over the champion,
        over all rows (not within folds); OutOfFoldError when the two are not paired."""
        check_comparable(challenger, champion)
        return paired_bootstrap_gain(challenger.y, challenger.proba, champion.proba,
                                     challenger.labels, self.resamples, self.confidence, self.seed)

    def _decide_on_cv(self, name: str, challenger: Candidate, champion: Candidate,
                      cb: ModelBundle, hb: ModelBundle, ds: Dataset, splits: Splits,
                      plot: Path) -> PromotionDecision:
        metric, margin = self.metric, self.margin
        refusal = cv_refusal(challenger, champion, cb, hb)
        oofs = [OutOfFold.load(b.path, b.labels) for b in (cb, hb)]
        if refusal is None and (oofs[0] is None or oofs[1] is None):
            refusal = "a bundle names out-of-fold predictions it does not carry"
        if refusal is None:
            try:
                gain = self.bootstrap(oofs[0], oofs[1])  # type: ignore[arg-type]
            except OutOfFoldError as e:
                refusal = str(e)
        if refusal is not None:
            return PromotionDecision(False, refusal + "; or pass --on test to compare on the test "
                                     "split (recorded on the version)", metric, margin, challenger,
                                     champion, on="cv")
        challenger.score_cv(oofs[0])  # type: ignore[arg-type]
        champion.score_cv(oofs[1])  # type: ignore[arg-type]
        for c, b in ((challenger, cb), (champion, hb)):
            c.score_test(b, ds, splits)  # a report only
        pct = round(self.confidence * 100)
        text = (f"out-of-fold macro_f1 {gain.model_f1:.4f} vs {gain.base_f1:.4f} on "
                f"{gain.rows} grouped-CV rows of dataset version {challenger.dataset_version}: gain "
                f"{gain.gain:+.4f}, {pct}% paired-bootstrap interval [{gain.low:+.4f}, "
                f"{gain.high:+.4f}] ({gain.resamples} resamples)")
        promoted = gain.low >= margin
        verdict = (f"its lower end clears the margin {margin}" if promoted else
                   f"its lower end is below the margin {margin}; champion stays version "
                   f"{champion.version}")
        plot_comparison(name, challenger, champion, metric, plot, on="cv")
        return PromotionDecision(promoted, f"{text}: {verdict}", metric, margin, challenger,
                                 champion, str(plot), on="cv", interval=interval_record(gain))

    def _decide_on_test(self, name: str, challenger: Candidate, champion: Candidate,
                        cb: ModelBundle, hb: ModelBundle, ds: Dataset, splits: Splits,
                        plot: Path) -> PromotionDecision:
        metric, margin = self.metric, self.margin
        for c, b in ((challenger, cb), (champion, hb)):
            c.score_test(b, ds, splits)
        for who, c in (("challenger", challenger), ("champion", champion)):
            if c.dataset_version != ds.version:
                return PromotionDecision(
                    False, f"{who} (version {c.version}) was trained on dataset version "
                           f"{c.dataset_version}, but the frozen data here is version "
                           f"{ds.version}: the two cannot be compared on the same data; retrain "
                           "it on this version",
                    metric, margin, challenger, champion, on="test")
        plot_comparison(name, challenger, champion, metric, plot, on="test")
        a, h = challenger.metrics[metric], champion.metrics[metric]
        gain = (a - h) if HIGHER_IS_BETTER[metric] else (h - a)
        better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        text = (f"challenger {metric} {a:.4f} vs champion {h:.4f} on the frozen test split of "
                f"dataset version {ds.version} (--on test): {gain:+.4f} ({better} is better)")
        if gain >= margin:
            reason, promoted = f"{text} meets the margin {margin}", True
        else:
            reason, promoted = (f"{text} is below the margin {margin}; champion stays version "
                                f"{champion.version}"), False
        return PromotionDecision(promoted, reason, metric, margin, challenger, champion,
                                 str(plot), on="test")


def interval_record(gain: BootstrapGain) -> dict[str, Any]:
    """The gate's bootstrap as a decision records it (`PromotionDecision.interval`)."""
    return {"challenger": gain.model_f1, "champion": gain.base_f1, "gain": gain.gain,
            "low": gain.low, "high": gain.high, "confidence": gain.confidence,
            "resamples": gain.resamples, "rows": gain.rows}


def cv_refusal(challenger: Candidate, champion: Candidate, cb: ModelBundle,
               hb: ModelBundle) -> str | None:
    """Why the two cannot be compared on out-of-fold predictions, or None when they can."""
    for who, c, b in (("challenger", challenger, cb), ("champion", champion, hb)):
        if not b.meta.get("cv_oof"):
            return (f"{who} (version {c.version}) has no out-of-fold predictions (trained "
                    "with --no-cv, or by an older modalfuse): retrain it with grouped CV")
    if challenger.dataset_version != champion.dataset_version:
        return (f"challenger was cross-validated on dataset version {challenger.dataset_version}, "
                f"champion on {champion.dataset_version}: not the same rows")
    if challenger.folds_digest != champion.folds_digest:
        return (f"challenger and champion were cross-validated on different folds (digest "
                f"{challenger.folds_digest} vs {champion.folds_digest}): their out-of-fold "
                "predictions are not paired")
    return None


def plot_comparison(name: str, challenger: Candidate, champion: Candidate, metric: str,
                    path: Path, on: str = "test") -> Path:
    """Per-class F1 of challenger and champion side by side, the gate's metric in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(set(challenger.per_class) | set(champion.per_class))
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) + 2), 4.5))
    for offset, c, who in ((-0.2, champion, "champion"), (0.2, challenger, "challenger")):
        f1 = [c.per_class.get(lab, {}).get("f1", 0.0) for lab in labels]
        value = (c.cv if on == "cv" else c.metrics).get(metric, float("nan"))
        ax.bar(x + offset, f1, width=0.4, label=f"{who} v{c.version} ({metric} {value:.3f})")
    ax.set_xticks(x, labels, rotation=60, ha="right")
    where = ("out-of-fold predictions (grouped CV)" if on == "cv"
             else "the frozen test split")
    ax.set_ylabel(f"F1 on {where}")
    ax.set_ylim(0, 1.2)  # room for the legend above the bars
    ax.set_title(f"{name}: challenger v{challenger.version} vs champion v{champion.version}")
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
