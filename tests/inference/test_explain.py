"""Explanations: exact efficiency, determinism, and the sanity checks (an explanation moves
when the input it credits moves, and stays put when an input the model ignores changes)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modalfuse.inference.explain import Explainer, global_importance
from modalfuse.inference.predictor import PredictionInputError, table_records


@pytest.fixture(scope="module")
def predictor(fixture_dataset, fixture_splits, tmp_path_factory):
    """A LightGBM bundle at temperature 1 (no CV): the fixture's classes separate perfectly,
    so a CV temperature would saturate every probability and leave nothing to explain."""
    from modalfuse.inference.predictor import Predictor
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.train import train

    out = tmp_path_factory.mktemp("explain") / "gbm"
    cfg = TrainConfig(num_boost_round=40, seed=0, cv=False)
    return Predictor.from_path(train(fixture_dataset, fixture_splits, out, cfg).path)


@pytest.fixture(scope="module")
def explainer(predictor):
    return Explainer(predictor, permutations=16)


@pytest.fixture(scope="module")
def rows(fixture_dataset, fixture_splits):
    ds = fixture_dataset
    test = ds.table.set_index(ds.spec.id_column).loc[fixture_splits.ids("test")].reset_index()
    return table_records(ds.spec, test), ds.row_images(test)


def _same(a, b) -> bool:
    return (a.label == b.label and a.contributions == b.contributions
            and a.image_contribution == b.image_contribution
            and np.array_equal(a.heatmap, b.heatmap))


def test_contributions_add_up_to_the_prediction(explainer, rows):
    records, images = rows
    e = explainer.explain(records[0], images[0])
    total = sum(e.contributions.values()) + e.image_contribution
    assert total == pytest.approx(e.probability - e.base_value, abs=1e-9)
    assert e.extra["f_full_coalition"] == pytest.approx(e.probability, abs=1e-12)
    assert e.label == e.prediction["label"]
    assert 0.0 <= e.image_share <= 1.0 and e.image_share + e.table_share == pytest.approx(1.0)
    # The heatmap is zero where the normalized image has no opaque pixel.
    s = e.patch_size
    empty = np.array([[not e.image[i * s:(i + 1) * s, j * s:(j + 1) * s, 3].any()
                       for j in range(e.heatmap.shape[1])] for i in range(e.heatmap.shape[0])])
    assert empty.any() and np.all(e.heatmap[empty] == 0)
    png = Image.open(io.BytesIO(e.overlay_png(scale=2)))
    assert png.size == (2 * e.image.shape[0],) * 2


def test_explanations_are_deterministic(explainer, rows):
    records, images = rows
    assert _same(explainer.explain(records[1], images[1]), explainer.explain(records[1], images[1]))


def test_ignored_inputs_leave_the_explanation_unchanged(explainer, predictor, rows):
    records, images = rows
    gains = predictor.bundle.model.inner.feature_importance()  # the calibrated LightGBM
    names = predictor.bundle.preprocessor.tabular_names
    # A field none of whose encoded columns the trees ever split on is ignored by the model.
    ignored = [f.name for f in predictor.spec.fields if f.kind.value == "boolean"
               and all(gains.get(n, 0.0) == 0 for n in names if n == f.name)]
    assert ignored, "the fixture model should ignore a constant boolean field"
    field = ignored[0]
    rec = dict(records[2])
    before = explainer.explain(rec, images[2])
    after = explainer.explain({**rec, field: not bool(rec.get(field))}, images[2])
    assert _same(before, after)
    assert before.contributions[field] == 0.0
    # Transparent padding around the sprite is cropped away by normalization: ignored too.
    img = Image.open(io.BytesIO(images[2])).convert("RGBA")
    padded = Image.new("RGBA", (img.width + 40, img.height + 30), (0, 0, 0, 0))
    padded.paste(img, (25, 5))
    buf = io.BytesIO()
    padded.save(buf, format="PNG")
    assert _same(before, explainer.explain(rec, buf.getvalue()))


def test_credited_inputs_move_the_explanation(explainer, rows):
    records, images = rows
    rec, img = records[3], images[3]
    e = explainer.explain(rec, img)
    field, credit = e.top_contributions(1)[0]
    assert abs(credit) > 0.01
    changed = dict(rec)
    spec = explainer.predictor.spec
    f = spec.field(field)
    if f.kind.value == "numeric":
        changed[field] = f.max if rec[field] < (f.min + f.max) / 2 else f.min
    elif f.kind.value == "categorical":
        changed[field] = next(c for c in f.categories if c != rec[field])
    elif f.kind.value == "multi":
        changed[field] = ""
    else:
        changed[field] = not rec[field]
    e2 = explainer.explain(changed, img, label=e.label)
    assert abs(e2.contributions[field] - credit) > 0.01
    # The image: the same sprite with its colours rotated changes what the image is credited.
    px = np.asarray(Image.open(io.BytesIO(img)).convert("RGBA")).copy()
    px[..., :3] = px[..., [2, 0, 1]]
    buf = io.BytesIO()
    Image.fromarray(px, "RGBA").save(buf, format="PNG")
    e3 = explainer.explain(rec, buf.getvalue(), label=e.label)
    assert abs(e3.image_contribution - e.image_contribution) > 1e-3
    assert not np.array_equal(e3.heatmap, e.heatmap)


def test_a_background_of_training_rows_keeps_the_guarantees(predictor, fixture_dataset,
                                                          fixture_splits, rows):
    ds = fixture_dataset
    train = ds.table.set_index(ds.spec.id_column).loc[fixture_splits.ids("train")[:4]].reset_index()
    bg = Explainer(predictor, permutations=8,
                   background=(table_records(ds.spec, train), ds.row_images(train)))
    records, images = rows
    e = bg.explain(records[0], images[0], heatmap=False)
    expected_base = predictor.predict_proba(table_records(ds.spec, train), ds.row_images(train))
    k = predictor.labels.index(e.label)
    assert e.base_value == pytest.approx(float(expected_base[:, k].mean()), abs=1e-9)
    total = sum(e.contributions.values()) + e.image_contribution
    assert total == pytest.approx(e.probability - e.base_value, abs=1e-9)
    with pytest.raises(ValueError, match="background is empty"):
        Explainer(predictor, background=([], []))


def test_bad_input_and_labels_are_refused_clearly(explainer, rows):
    records, images = rows
    with pytest.raises(PredictionInputError) as err:
        explainer.explain({**records[0], "hp": -3}, images[0])
    assert "hp" in err.value.errors[0]
    with pytest.raises(ValueError, match="unknown label 'Nope'"):
        explainer.explain(records[0], images[0], label="Nope")
    other = next(lab for lab in explainer.predictor.labels
                 if lab != explainer.explain(records[0], images[0]).label)
    assert explainer.explain(records[0], images[0], label=other, heatmap=False).label == other


def test_global_importance_ranks_fields_and_image(explainer, rows):
    records, images = rows
    table = global_importance(explainer.explain_many(records[:4], images[:4]), "image")
    assert "image" in table.index and table["mean_abs_contribution"].is_monotonic_decreasing


def test_explain_route_serves_the_same_model(predictor):
    from modalfuse.config import Settings
    from modalfuse.serve.app import create_app

    client = TestClient(create_app(Settings(), predictor=predictor))
    example = predictor.bundle.meta["example"]
    r = client.post("/v1/explain", json={**example, "top_fields": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    p = client.post("/v1/predict", json=example).json()
    assert body["model_version"] == p["model_version"] == predictor.model_version
    assert body["label"] == p["label"] and len(body["contributions"]) == 3
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
    assert heat.format == "PNG"
    shares = body["modality_share"]
    assert shares["image"] + shares["table"] == pytest.approx(1.0)
    bad = [
        {**example, "label": "Nope"},
        {**example, "image_base64": base64.b64encode(b"not an image").decode()},
        {**example, "image_base64": "%%%"},
        {**example, "fields": {**example["fields"], "hp": 999}},
        {**example, "top_fields": 0},
    ]
    for body in bad:
        r = client.post("/v1/explain", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"][0]["msg"]


class _OneModalityModel:
    """A model kind that reads only one FeatureBatch representation (as a CNN or a neural
    tabular model would): the explainer must credit that modality and nothing else."""

    kind = "test-one-modality"

    def __init__(self, attr: str, n_classes: int, seed: int = 0):
        self.attr, self.n_classes, self.seed = attr, n_classes, seed

    def predict_proba(self, batch):
        x = getattr(batch, self.attr).reshape(len(batch), -1).astype(np.float64)
        if self.attr == "images":
            x = x[:, ::97] / 255.0  # a fixed sample of pixels: cheap and deterministic
        w = np.random.default_rng(self.seed).normal(size=(x.shape[1], self.n_classes))
        z = x @ w
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("attr", ["images", "tabular_dense"])
def test_any_model_kind_gets_credit_only_where_it_looks(predictor, rows, attr):
    import dataclasses

    from modalfuse.inference.predictor import Predictor

    bundle = dataclasses.replace(predictor.bundle,
                                 model=_OneModalityModel(attr, len(predictor.labels)))
    explainer = Explainer(Predictor(bundle), permutations=8)
    records, images = rows
    e = explainer.explain(records[0], images[0])
    total = sum(e.contributions.values()) + e.image_contribution
    assert total == pytest.approx(e.probability - e.base_value, abs=1e-9)
    if attr == "images":
        assert all(v == 0.0 for v in e.contributions.values()) and e.image_share == 1.0
        assert np.abs(e.heatmap).max() > 0
        changed = {**records[0], "hp": 200, "color": "Purple"}
        assert _same(e, explainer.explain(changed, images[0]))
    else:
        assert e.image_contribution == 0.0 and e.table_share == 1.0
        assert np.abs(e.heatmap).max() < 1e-12  # the pixels it ignores move nothing
        other = explainer.explain(records[0], images[1])
        # Equal up to float rounding: batches of another size may round the last bit apart.
        assert other.label == e.label and other.image_contribution == 0.0
        assert all(abs(other.contributions[f] - v) < 1e-12 for f, v in e.contributions.items())
