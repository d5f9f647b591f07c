"""Measure the dataset and modelling decisions of the skeleton, and write them as markdown.

`modalfuse report decisions` reruns every measurement (grouped vs random CV, with and
without the field whose values most nearly name a class, with and without image
statistics, image sizes, hash distances), so the numbers in docs/decisions.md always come
from this command. The page names the dataset's things in its spec's words.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich.progress import track

from modalfuse.data.audit import PHASH_THRESHOLD, hamming_matrix, phash_bits
from modalfuse.data.dataset import Dataset
from modalfuse.data.split import Splits
from modalfuse.features.image import normalize_image, open_image
from modalfuse.inference.evaluate import classification_metrics
from modalfuse.markdown import markdown_table
from modalfuse.spec import DatasetWords
from modalfuse.training.config import TrainConfig
from modalfuse.training.folds import FoldEngine, load_raw, training_labels


def random_folds(splits: Splits, n_folds: int, seed: int) -> Splits:
    """The same training rows cut into random (ungrouped) folds: the leaky alternative."""
    t = splits.table.copy()
    train = t["split"] == "train"
    rng = np.random.default_rng(seed)
    t.loc[train, "fold"] = rng.permutation(np.arange(train.sum()) % n_folds)
    return Splits(table=t, audit=splits.audit)


def cv_and_test(engine: FoldEngine, splits: Splits) -> dict:
    """Grouped-CV accuracy and macro-F1 of the `gbm` recipe, and the final model's on test."""
    cv = engine.cross_validate("gbm")["summary"]
    te = engine.raw.rows(splits.ids("test"))
    model = engine.fit("gbm")
    test = classification_metrics(model.predict_proba(engine.batch(frozenset(), te)),
                                  engine.raw.y[te], engine.labels)
    return {"cv_acc": cv["accuracy"], "cv_f1": cv["macro_f1"], "test_acc": test["accuracy"],
            "test_f1": test["macro_f1"]}


def probe_field(audit: dict) -> str | None:
    """The input field whose removal the page measures: the one with the largest share of
    training rows holding a value that is >= 90 % one class (the split audit's
    `target_encoding_values`), or None when no field has such values."""
    check: dict = next((c for c in audit.get("checks", [])
                        if c["name"] == "target_encoding_values"), {})
    shares = {name: s.get("share_of_train_rows_with_such_a_value", 0.0)
              for name, s in (check.get("summary") or {}).items() if isinstance(s, dict)}
    best = max(shares, key=lambda n: shares[n], default=None)
    return best if best is not None and shares[best] > 0 else None


def default_variant(field: str | None) -> str:
    """The name of the default variant in the table (it says which probed field it uses)."""
    return f"tabular + image stats, {field} used (default)" if field else "tabular + image stats (default)"


RANDOM_FOLDS = "default, random (ungrouped) CV folds"


def measure(ds: Dataset, splits: Splits, seed: int = 42, field: str | None = None) -> dict:
    """Cross-validate and test each design variant (features, fold scheme), with image and
    class facts; `field` is the input left out in one variant (default: `probe_field`)."""
    labels = training_labels(ds, splits)
    raw = load_raw(ds, labels)
    n_folds = len(splits.folds())
    field = field or probe_field(splits.audit)
    variants = {default_variant(field): (TrainConfig(seed=seed), splits)}
    if field:
        variants[f"without {field}"] = (TrainConfig(seed=seed, exclude_fields=[field]), splits)
    variants["without image stats (tabular only)"] = (TrainConfig(seed=seed, use_image_stats=False),
                                                      splits)
    variants[RANDOM_FOLDS] = (TrainConfig(seed=seed), random_folds(splits, n_folds, seed))
    results = {}
    for name, (cfg, sp) in track(list(variants.items()), description="decision variants"):
        results[name] = cv_and_test(FoldEngine(ds, sp, cfg, labels, raw=raw), sp)
    return {"variants": results, "images": _image_facts(ds), "classes": _class_facts(ds, splits),
            "field": _field_facts(ds, splits, field), "target": ds.spec.target,
            "min_class_count": ds.spec.min_class_count, "words": ds.spec.words.model_dump()}


def _field_facts(ds: Dataset, splits: Splits, field: str | None, shown: int = 2) -> dict | None:
    """The probed field, the share of training rows holding a value that is >= 90 % one class
    (with >= 3 rows, as the audit counts them), and the `shown` commonest such values."""
    if not field:
        return None
    t = ds.table.set_index(ds.spec.id_column).loc[splits.ids("train")]
    values = t[field].fillna("").astype(str).str.split("|")
    exploded = pd.DataFrame({"v": values, "y": t[ds.spec.target].to_numpy()}).explode("v")
    exploded = exploded[exploded["v"] != ""]
    stats = exploded.groupby("v")["y"].agg(["size", lambda s: s.value_counts().iloc[0]])
    stats.columns = ["n", "top"]
    pure = stats[(stats["n"] >= 3) & (stats["top"] / stats["n"] >= 0.9)].sort_values(
        "n", ascending=False, kind="stable")
    held = values.map(lambda vs, pv=set(pure.index): bool(set(vs) & pv))
    return {"name": field, "share_of_train_rows": float(held.mean()) if len(held) else 0.0,
            "examples": [str(v) for v in pure.index[:shown]]}


def _image_facts(ds: Dataset) -> dict:
    spec = ds.spec
    boxes = []
    for name in ds.table[spec.image_column]:  # the stored image's opaque box, before any scaling
        bbox = open_image(ds.image_bytes(name)).convert("RGBA").getchannel("A").getbbox()
        boxes.append(0 if bbox is None else max(bbox[2] - bbox[0], bbox[3] - bbox[1]))
    facts: dict = {"max_opaque_box_px": int(max(boxes)),
                   "share_box_le_64": float(np.mean(np.array(boxes) <= 64)),
                   "image_size": spec.image_size}
    bits = np.stack([phash_bits(normalize_image(ds.image_bytes(n), spec.image_size))
                     for n in ds.table[spec.image_column]])
    d = hamming_matrix(bits)
    np.fill_diagonal(d, 999)
    facts["nearest_other_row_bits"] = {"min": int(d.min()), "median": float(np.median(d.min(1)))}
    if ds.views is not None:
        shiny = ds.views[(ds.views["view"] == "shiny") & (ds.views["frame"] == 0)]
        pos = {v: i for i, v in enumerate(ds.table[spec.id_column])}
        dists = []
        for rid, path in zip(shiny["id"], shiny["path"], strict=True):
            if rid in pos:
                b = phash_bits(normalize_image(ds.image_bytes(path), spec.image_size))
                dists.append(int((b != bits[pos[rid]]).sum()))
        if dists:
            facts["shiny_vs_normal_bits"] = {"median": float(np.median(dists)),
                                             "p90": float(np.percentile(dists, 90))}
    facts["threshold"] = PHASH_THRESHOLD
    return facts


def _class_facts(ds: Dataset, splits: Splits) -> dict:
    counts = ds.table[ds.spec.target].value_counts()
    return {"n_classes": len(counts), "excluded": splits.audit.get("excluded_classes", []),
            "smallest": {str(k): int(v) for k, v in counts.tail(3).items()},
            "majority_share": float(counts.iloc[0] / counts.sum())}


def to_markdown(m: dict, command: str) -> str:
    """The design-decisions page: the variants table and the facts behind each choice, as
    Markdown, in the dataset's words."""
    rows = pd.DataFrame(m["variants"]).T

    def fmt(d: dict) -> str:
        return f"{d['mean']:.3f} ± {d['sd']:.3f}"

    table = markdown_table(
        ["variant", "grouped-CV acc", "grouped-CV macro-F1", "test acc", "test macro-F1"],
        [[name, fmt(r["cv_acc"]), fmt(r["cv_f1"]), f"{r['test_acc']:.3f}", f"{r['test_f1']:.3f}"]
         for name, r in rows.iterrows()])
    w = DatasetWords.model_validate(m.get("words") or {})
    field = m.get("field")
    default = m["variants"][default_variant(field["name"] if field else None)]
    rnd = m["variants"][RANDOM_FOLDS]
    return "\n".join([
        "# Decisions and their measured effect",
        "",
        f"Generated by `{command}`; every number below comes from that run.",
        "",
        table,
        "",
        "(The random-folds row changes only how the training part is cut for CV; its test "
        "numbers equal the default's because the final model and the frozen test split are the same.)",
        "",
        f"## Split by {w.group_noun}, never at random",
        f"Random folds score {rnd['cv_acc']['mean']:.3f} CV accuracy against "
        f"{default['cv_acc']['mean']:.3f} with {w.grouped} folds: the {w.rows} of one "
        f"{w.group_noun} tend to share class, look and fields, so a random split rewards "
        f"memorising a {w.group_noun}. The grouped number is the honest one, and it is the one "
        "that predicts the frozen test split.",
        "",
        *_field_section(m, default, w),
        *_target_section(m, w),
        *_image_sections(m["images"], w),
    ])


def _field_section(m: dict, default: dict, w: DatasetWords) -> list[str]:
    """The section on the field whose values most nearly name a class (none without one)."""
    f = m.get("field")
    if not f:
        return []
    name = f["name"]
    without = m["variants"][f"without {name}"]
    examples = f" ({', '.join(f['examples'])})" if f["examples"] else ""
    return [
        f"## `{name}` is used",
        f"With `{name}`: {default['cv_f1']['mean']:.3f} grouped-CV macro-F1; without: "
        f"{without['cv_f1']['mean']:.3f}. It is part of the {w.record_noun} a user has at "
        f"prediction time, so, unless it is derived from `{m['target']}`, it is a legitimate "
        f"input; {f['share_of_train_rows']:.0%} of training {w.rows} hold a value of it that "
        f"is ≥ 90 % one class{examples}, which is why the split audit reports that share "
        f"(`target_encoding_values`). The {w.grouped} split keeps the gain honest: a test "
        f"{w.group_noun}'s values were never seen with its own members. Train without it with "
        f"`modalfuse train --exclude-field {name}`.",
        "",
    ]


def _target_section(m: dict, w: DatasetWords) -> list[str]:
    """The section on the classes: how many, the majority share, the ones left out."""
    cls, least = m["classes"], m.get("min_class_count", 2)
    return [
        "## The target",
        f"{cls['n_classes']} classes of `{m.get('target', 'the target')}`; the majority class is "
        f"{cls['majority_share']:.3f} of {w.rows}. Classes with fewer than `min_class_count` "
        f"({least}) {w.rows} are kept in the table but left out of modelling (split "
        f"`excluded`): {cls['excluded']}. A class with one example can be neither learned nor "
        "evaluated: in test it would be a guaranteed miss costing one class's full share of "
        "macro-F1, in train it would be a label the model never predicts.",
        "",
    ]


def _image_sections(img: dict, w: DatasetWords) -> list[str]:
    """The sections on the image canvas and on the near-duplicate threshold."""
    size = img["image_size"]
    fits = (f"so a {size} px canvas holds every {w.image_noun} without resampling a pixel"
            if img["max_opaque_box_px"] <= size else
            f"so {w.images} larger than the {size} px canvas are scaled down to fit it, keeping "
            "their aspect")
    shiny = img.get("shiny_vs_normal_bits")
    views = (f"; a shiny and a normal {w.image_noun} of one {w.row_noun} differ by a median "
             f"{shiny['median']:.0f} bits (90th percentile {shiny['p90']:.0f})") if shiny else ""
    return [
        f"## {w.images.capitalize()}: {size} px, cropped and centred",
        f"The largest opaque box of any {w.image_noun} is {img['max_opaque_box_px']} px "
        f"({img['share_box_le_64']:.0%} are ≤ 64 px), {fits}. {w.images.capitalize()} are "
        "cropped to their opaque box and centred, which removes any canvas offset they carry; "
        "a client's raw image goes through the same function at serving time.",
        "",
        "## Near-duplicate threshold",
        f"pHash (64 bits) of the cropped {w.image_noun}: the nearest other {w.row_noun} is "
        f"{img['nearest_other_row_bits']['min']} bits away at the closest (median nearest "
        f"{img['nearest_other_row_bits']['median']:.0f}){views}. The threshold is "
        f"{img['threshold']} bits; rows within it are merged into one group before splitting, "
        "so they cannot cross.",
        "",
    ]
