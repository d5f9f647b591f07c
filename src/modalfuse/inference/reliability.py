"""How far a bundle's predictions can be trusted, measured on the frozen test split:
accuracy with a modality missing, conformal coverage and set sizes, and how well the OOD
flags separate images the project makes itself from the test images.

Everything goes through the Predictor from raw records and image bytes, like serving. The
test split is only scored here: the calibrations and thresholds were fitted on the
training split (out of fold) and nothing is chosen from these numbers.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from modalfuse.data.dataset import Dataset
from modalfuse.inference.companions import BOTH, FIELDS, IMAGE
from modalfuse.inference.conformal import set_report
from modalfuse.inference.evaluate import classification_metrics, expected_calibration_error
from modalfuse.inference.ood import auroc
from modalfuse.inference.predictor import Predictor, table_records
from modalfuse.markdown import markdown_table
from modalfuse.spec import DatasetWords

COVERAGES = (0.8, 0.9, 0.95)
CURVE = tuple(round(c, 2) for c in np.arange(0.5, 0.991, 0.02))  # the coverage plot's targets
# The rows of the missing-modality table: what a request sends.
CASES = {BOTH: "image + fields", FIELDS: "fields only (no image)", IMAGE: "image only (no fields)"}


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def on_white(image: bytes) -> Image.Image:
    """An image composited on a white background (what a photo or a scan of it looks like)."""
    img = Image.open(io.BytesIO(image)).convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, img)


def fruit_photo(rng: np.random.Generator, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A photo of a fruit: a coloured ellipse on an opaque off-white background, as JPEG (the
    custom-dataset fixture's photos)."""
    w, h = int(rng.integers(120, 260)), int(rng.integers(100, 200))
    img = Image.new("RGB", (w, h), (240, 240, 235))
    col = tuple(int(np.clip(c + rng.normal(0, 20), 0, 255)) for c in rgb)
    ImageDraw.Draw(img).ellipse((w // 5, h // 5, 4 * w // 5, 4 * h // 5), fill=col)
    return _jpeg(img, 90)


def _noise(rng: np.random.Generator) -> bytes:
    return _png(Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "RGB"))


def _text(rng: np.random.Generator) -> bytes:
    img = Image.new("RGB", (160, 60), (255, 255, 255))
    # Drawn as pixels, never shown as text; the recorded OOD numbers rest on these exact images.
    words = [f"No. {int(rng.integers(1, 999)):03d}", "TYPE ?", "sprite", "HP 45"]
    ImageDraw.Draw(img).text((8, 20), " ".join(rng.choice(words, 2)), fill=(0, 0, 0))
    return _png(img)


def _scene(rng: np.random.Generator) -> bytes:
    """A photo of something else: smooth colour fields with soft blobs (no alpha)."""
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((200, 150), Image.Resampling.BICUBIC)
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x, y, r = int(rng.integers(0, 200)), int(rng.integers(0, 150)), int(rng.integers(10, 40))
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return _jpeg(img.filter(ImageFilter.GaussianBlur(2)), 85)


def _heavy_jpeg(image: bytes) -> bytes:
    return _jpeg(on_white(image), 8)


def _smoothed(image: bytes) -> bytes:
    img = Image.open(io.BytesIO(image)).convert("RGBA")
    big = img.resize((img.width * 3, img.height * 3), Image.Resampling.BICUBIC)
    return _png(big.filter(ImageFilter.GaussianBlur(3)))


# Families of images unlike the training images: made from nothing, or from a test image.
MADE: dict[str, Callable[[np.random.Generator], bytes]] = {
    "fruit photos (custom-dataset fixture)": fruit_photo, "random noise": _noise,
    "rendered text": _text, "photos of other things (synthetic scenes)": _scene}
# Names with `{images}`: the dataset's word for its images (`DatasetWords.images`).
FROM_TEST: dict[str, Callable[[bytes], bytes]] = {
    "test {images} as heavy JPEG on white (quality 8)": _heavy_jpeg,
    "test {images} scaled x3 and smoothed": _smoothed}
# In-domain images the detector must *not* flag beyond its false-alarm rate.
CONTROLS: dict[str, Callable[[bytes], bytes]] = {
    "control: test {images} mirrored (in domain)": lambda s: _png(
        Image.open(io.BytesIO(s)).convert("RGBA").transpose(Image.Transpose.FLIP_LEFT_RIGHT))}
IN_DOMAIN = "in-domain test {images}"  # the test split's own images, in the OOD table and plot


def in_words(name: str, words: DatasetWords) -> str:
    """A family name of this module with the dataset's word for its images filled in."""
    return name.replace("{images}", words.images)


def ood_probes(images: list[bytes], n: int = 40, seed: int = 0,
               words: DatasetWords | None = None) -> dict[str, list[bytes]]:
    """`n` images of every not-training-like family (and of the in-domain controls),
    deterministic for a seed; families made from test images are named in `words`."""
    w = words or DatasetWords()
    rng = np.random.default_rng(seed)
    out = {name: [make(rng) for _ in range(n)] for name, make in MADE.items()}
    for name, derive in {**FROM_TEST, **CONTROLS}.items():
        out[in_words(name, w)] = [derive(s) for s in images[:n]]
    return out


def ece_floor(proba: np.ndarray, draws: int = 500, seed: int = 0) -> dict:
    """The ECE a *perfectly calibrated* model with these probabilities would show on this many
    rows, by simulation (labels drawn from the probabilities themselves): mean and 90th
    percentile. A measured ECE near it is sampling noise, not miscalibration."""
    rng = np.random.default_rng(seed)
    cum = np.cumsum(proba, axis=1)
    values = []
    for _ in range(draws):
        u = rng.random((len(proba), 1)) * cum[:, -1:]
        y = np.minimum((u > cum).sum(axis=1), proba.shape[1] - 1)
        values.append(expected_calibration_error(proba, y))
    return {"mean": float(np.mean(values)), "p90": float(np.quantile(values, 0.9)),
            "draws": draws}


def image_scores(predictor: Predictor, images: list[bytes]) -> np.ndarray:
    """The image OOD score of each image (scored without fields, so only the image counts)."""
    prep = predictor.prepare([{}] * len(images), images)
    scores = np.full(len(images), np.nan)
    if prep.image_ood is not None:
        scores[prep.valid] = prep.image_ood
    return scores


def reliability_report(predictor: Predictor, ds: Dataset, test_ids: np.ndarray,
                       probes_per_family: int = 40, seed: int = 0) -> dict:
    """Missing-modality scores, conformal coverage and OOD separation of a bundle on the test
    split (see the module docstring)."""
    spec, labels = ds.spec, predictor.labels
    rows = ds.table.set_index(spec.id_column).loc[test_ids].reset_index()
    keep = rows[spec.target].isin(labels).to_numpy()
    rows = rows[keep].reset_index(drop=True)
    records, images = table_records(spec, rows), ds.row_images(rows)
    y = np.array([labels.index(v) for v in rows[spec.target]])
    inputs: dict[str, tuple[list, list]] = {BOTH: (records, images), FIELDS: (records, [None] * len(records)),
              IMAGE: ([{}] * len(records), images)}
    cases, conformal = {}, {}
    for mode, (recs, imgs) in inputs.items():
        if not predictor.supports(mode):
            continue
        prep = predictor.prepare(recs, imgs)
        proba = predictor.proba(prep)
        cases[mode] = {**classification_metrics(proba, y, labels), "ece_floor": ece_floor(proba)}
        if mode in predictor.bundle.companions.conformal:
            c = predictor.bundle.companions.conformal[mode]
            curve = [set_report(c.sets(proba, cov), y, labels) for cov in CURVE]
            conformal[mode] = {"method": c.method, "lam": c.lam, "k_reg": c.k_reg,
                               "calibration_rows": len(c.scores),
                               **{str(cov): set_report(c.sets(proba, cov), y, labels)
                                  for cov in COVERAGES},
                               "curve": [{"target": t, "coverage": r["coverage"],
                                          "interval": r["coverage_interval"],
                                          "mean_size": r["mean_size"]}
                                         for t, r in zip(CURVE, curve, strict=True)]}
    report: dict = {"rows": len(y), "cases": cases, "conformal": conformal,
                    "words": spec.words.model_dump()}
    detector = predictor.bundle.companions.image_ood
    if detector is not None:
        inside = image_scores(predictor, images)
        families = {}
        for name, probe in ood_probes(images, probes_per_family, seed, spec.words).items():
            s = image_scores(predictor, probe)
            families[name] = {"images": len(probe), "auroc": auroc(inside, s),
                              "flag_rate": float(np.mean(s > detector.threshold)),
                              "scores": [round(float(v), 3) for v in s]}
        report["ood"] = {"threshold": detector.threshold, "false_alarm": detector.false_alarm,
                         "test_flag_rate": float(np.mean(inside > detector.threshold)),
                         "test_scores": [round(float(v), 3) for v in inside],
                         "families": families}
    field_ood = predictor.bundle.companions.field_ood
    if field_ood is not None:
        prep = predictor.prepare(records, [None] * len(records) if predictor.supports(FIELDS)
                                 else images)
        flagged = [bool(f) for f in prep.field_flags]
        by_field: dict[str, int] = {}
        for f in prep.field_flags:
            for name in f:
                by_field[name] = by_field.get(name, 0) + 1
        report["field_ood"] = {"test_flag_rate": float(np.mean(flagged)) if flagged else 0.0,
                               "by_field": {k: v / len(flagged) for k, v in sorted(by_field.items())}}
    return report


def _floor_cell(f: dict | None) -> str:
    """The ECE floor of a missing-modality case, or – without one."""
    return f"{f['mean']:.3f} (90 % below {f['p90']:.3f})" if f else "–"


def _coverage_row(mode: str, c: dict, cov: float) -> list[str]:
    """One request case and target coverage of the prediction-set table."""
    r = c[str(cov)]
    lo, hi = r["coverage_interval"]
    return [CASES[mode], f"{c['method']} (lam {c['lam']:g}, k_reg {c['k_reg']})", f"{cov:.0%}",
            f"{r['coverage']:.3f} [{lo:.3f}, {hi:.3f}]", f"{r['mean_size']:.2f}",
            f"{r['singleton_share']:.1%}"]


def reliability_markdown(report: dict, model: str) -> list[str]:
    """The missing-modality, conformal and OOD sections of the ablation page."""
    words = DatasetWords.model_validate(report.get("words") or {})
    lines = ["", f"## Missing modalities (`{model}`, test split, {report['rows']} rows)", "",
             "Each case is scored by the model trained for it (fields only: `gbm_tabular`; image "
             "only: `gbm_image`), never by imputing an image.", "",
             "The ECE floor is what a perfectly calibrated model with the same probabilities "
             "would show on this many rows (labels drawn from its own probabilities): a test "
             "ECE near it is sampling noise, not miscalibration.", "",
             markdown_table(["request", "test accuracy", "test macro-F1", "test ECE",
                             "ECE floor (perfect calibration, this many rows)"],
                            [[CASES[mode], f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}",
                              f"{m['ece']:.3f}", _floor_cell(m.get("ece_floor"))]
                             for mode, m in report["cases"].items()])]
    if report["conformal"]:
        lines += ["", "## Prediction sets (split conformal, test split)", "",
                  "Calibrated on out-of-fold predictions of the training split (never the test "
                  "split); the rank penalty (RAPS) was chosen on a separate 30 % of those rows. "
                  "The interval is the 90 % binomial (Wilson) range of a coverage measured on this "
                  "many rows: a target inside it is as close as the test split can tell.", "",
                  markdown_table(["request", "method", "target coverage",
                                  "test coverage [90 % interval]", "mean set size",
                                  "single-label sets"],
                                 [_coverage_row(mode, c, cov)
                                  for mode, c in report["conformal"].items() for cov in COVERAGES])]
        both = report["conformal"].get(BOTH)
        if both:
            per = both["0.9"]["per_class_coverage"]
            lines += ["", "Per-class test coverage at 90 % (image + fields):", "",
                      markdown_table(list(per), [["–" if v is None else f"{v:.2f}"
                                                  for v in per.values()]])]
    ood = report.get("ood")
    if ood:
        lines += ["", "## Out-of-distribution images", "",
                  f"Threshold {ood['threshold']:.2f}: the conformal quantile of out-of-fold "
                  f"distances of the training images at a {ood['false_alarm']:.0%} false-alarm "
                  f"rate. In-domain test {words.images} flagged: **{ood['test_flag_rate']:.1%}**. "
                  f"AUROC: the chance a probe image scores above a test {words.image_noun}.", "",
                  markdown_table(["images", "n", "AUROC", "flagged"],
                                 [[name, f["images"], f"{f['auroc']:.3f}", f"{f['flag_rate']:.1%}"]
                                  for name, f in ood["families"].items()])]
    fo = report.get("field_ood")
    if fo:
        by = ", ".join(f"`{k}` {v:.1%}" for k, v in fo["by_field"].items()) or "none"
        lines += ["", f"Field flags (a value outside the training range, or never seen in "
                  f"training) on the test split: {fo['test_flag_rate']:.1%} of rows ({by}). New "
                  f"{words.rows} bring values no training {words.row_noun} had: such a flag says "
                  f"the {words.record_noun} holds something the model has not learned from, not "
                  "that it is wrong."]
    return lines


def plot_reliability(report: dict, path: Path, title: str = "") -> Path:
    """Two panels: test coverage against the target coverage per request case (with the 90 %
    binomial band), and the image OOD scores of the test images and of each probe family
    against the threshold. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    for mode, c in report["conformal"].items():
        curve = c.get("curve") or []
        t = [p["target"] for p in curve]
        line, = left.plot(t, [p["coverage"] for p in curve], marker=".", label=CASES[mode])
        left.fill_between(t, [p["interval"][0] for p in curve], [p["interval"][1] for p in curve],
                          color=line.get_color(), alpha=0.12)
    left.plot([0.5, 1], [0.5, 1], color="grey", ls="--", lw=1, label="target")
    left.set_xlabel("target coverage")
    left.set_ylabel("test coverage (band: 90 % binomial)")
    left.set_title("prediction sets: coverage on the test split")
    left.legend(fontsize=8, loc="lower right")
    left.grid(alpha=0.3)
    ood = report.get("ood")
    if ood:
        words = DatasetWords.model_validate(report.get("words") or {})
        names = [in_words(IN_DOMAIN, words), *ood["families"]]
        values = [ood["test_scores"], *[f["scores"] for f in ood["families"].values()]]
        right.boxplot([np.log10(np.maximum(v, 1e-3)) for v in values], vert=False)
        right.set_yticks(range(1, len(names) + 1), names, fontsize=7)
        right.axvline(np.log10(ood["threshold"]), color="#c0392b", ls="--",
                      label=f"threshold ({ood['false_alarm']:.0%} false alarms, out of fold)")
        right.set_xlabel("image OOD score (log10 Mahalanobis distance)")
        right.set_title("out-of-distribution images")
        right.legend(fontsize=8, loc="lower right")
        right.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
