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
    # The shares are signed: each modality's contribution over probability - base_value.
    move = e.probability - e.base_value
    assert e.image_share == pytest.approx(e.image_contribution / move)
    assert e.table_share == pytest.approx(sum(e.contributions.values()) / move)
    assert e.image_share + e.table_share == pytest.approx(1.0)
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
    move = body["probability"] - body["base_value"]
    assert shares["image"] == pytest.approx(body["image_contribution"] / move)
    assert shares["table"] == pytest.approx(body["table_contribution"] / move)
    assert "signed" in shares["definition"] and "orange" in body["heatmap_legend"]
    assert body["prediction"]["modalities"]["used"] == ["fields", "image"]
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


def test_shares_are_signed_and_undefined_without_a_move(explainer, rows):
    import dataclasses

    records, images = rows
    e = explainer.explain(records[0], images[0], heatmap=False)
    # The image pushes against a move the fields make: its share is negative, the table's > 1.
    against = dataclasses.replace(e, base_value=0.2, probability=0.7, image_contribution=-0.1,
                                  contributions={"hp": 0.6})
    assert against.image_share == pytest.approx(-0.2) and against.table_share == pytest.approx(1.2)
    still = dataclasses.replace(e, base_value=0.5, probability=0.5, image_contribution=0.1,
                                contributions={"hp": -0.1})
    assert still.image_share is None and still.table_share is None


class _OnePatchModel:
    """Class 0's probability grows with the opacity of one patch of the image (the patch at
    `cell` of the explainer's grid): that patch supports class 0, and nothing else matters."""

    kind = "test-one-patch"

    def __init__(self, cell: tuple[int, int], patch: int, n_classes: int):
        self.cell, self.patch, self.n_classes = cell, patch, n_classes

    def predict_proba(self, batch):
        (i, j), s = self.cell, self.patch
        a = batch.images[:, i * s:(i + 1) * s, j * s:(j + 1) * s, 3].mean(axis=(1, 2)) / 255.0
        p0 = 0.2 + 0.6 * a
        rest = np.repeat(((1 - p0) / (self.n_classes - 1))[:, None], self.n_classes - 1, axis=1)
        return np.column_stack([p0, rest])


def test_the_heatmap_is_positive_where_the_patch_supports_the_class(predictor, rows):
    import dataclasses

    from modalfuse.inference.predictor import Predictor

    records, images = rows
    x = predictor.prepare([records[0]], [images[0]]).batch
    s = 8
    grid = predictor.spec.image_size // s
    opaque = [(i, j) for i in range(grid) for j in range(grid)
              if x.images[0, i * s:(i + 1) * s, j * s:(j + 1) * s, 3].mean() > 128]
    cell = opaque[len(opaque) // 2]
    bundle = dataclasses.replace(predictor.bundle,
                                 model=_OnePatchModel(cell, s, len(predictor.labels)))
    e = Explainer(Predictor(bundle), permutations=2, patch=s).explain(
        records[0], images[0], label=predictor.labels[0])
    assert e.heatmap[cell] > 0.1 and np.count_nonzero(e.heatmap) == 1
    assert e.image_contribution > 0 and e.image_share == pytest.approx(1.0)


def test_a_missing_modality_is_explained_by_the_model_for_its_case(fixture_bundle, rows):
    """Fields only: the fields-only model, image contribution 0 and no heatmap; image only:
    the image-only model, every field 0. Each explains the probability /v1/predict gives."""
    from modalfuse.inference.predictor import Predictor

    predictor = Predictor.from_path(fixture_bundle.path)
    assert predictor.supports("fields") and predictor.supports("image")
    explainer = Explainer(predictor, permutations=8)
    records, images = rows
    e = explainer.explain(records[0], None)
    direct = predictor.predict([records[0]], [None])[0]
    assert e.mode == "fields" and e.prediction["modalities"] == direct["modalities"]
    assert e.probability == pytest.approx(direct["probabilities"][e.label], abs=1e-12)
    assert e.image_contribution == 0.0 and e.heatmap is None and e.overlay_png() is None
    assert e.image_share == 0.0 and e.table_share == 1.0
    total = sum(e.contributions.values())
    assert total == pytest.approx(e.probability - e.base_value, abs=1e-9)
    e = explainer.explain({}, images[0])
    direct = predictor.predict([{}], [images[0]])[0]
    assert e.mode == "image" and e.prediction["modalities"]["used"] == ["image"]
    assert e.probability == pytest.approx(direct["probabilities"][e.label], abs=1e-12)
    assert all(v == 0.0 for v in e.contributions.values()) and e.heatmap is not None
    assert e.image_contribution == pytest.approx(e.probability - e.base_value, abs=1e-9)


def test_explain_route_takes_either_modality_alone(fixture_bundle):
    from modalfuse.config import Settings
    from modalfuse.inference.predictor import Predictor
    from modalfuse.serve.app import create_app

    predictor = Predictor.from_path(fixture_bundle.path)
    client = TestClient(create_app(Settings(), predictor=predictor))
    example = predictor.bundle.meta["example"]
    r = client.post("/v1/explain", json={"fields": example["fields"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_contribution"] == 0.0 and body["heatmap"] is None
    assert body["heatmap_png_base64"] is None and body["prediction"]["modalities"]["missing"] == ["image"]
    r = client.post("/v1/explain?coverage=0.8", json={"image_base64": example["image_base64"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["table_contribution"] == 0.0 and body["heatmap"] is not None
    assert body["prediction"]["prediction_set"]["coverage"] == 0.8
    assert client.post("/v1/explain", json={}).status_code == 422
