"""OOD detectors: the image threshold's false-alarm rate, the field rules, AUROC."""

from __future__ import annotations

import numpy as np
import pandas as pd

from modalfuse.inference.ood import (
    FieldOOD,
    ImageOOD,
    auroc,
    conformal_threshold,
    pixel_art_stats,
)
from modalfuse.spec import DatasetSpec, FieldKind, FieldSpec


def test_threshold_false_alarm_rate_on_in_distribution_data():
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(100):
        held = ImageOOD.fit(rng.normal(size=(300, 5)))
        scores = held.score(rng.normal(size=(300, 5)))
        det = held.calibrate(scores, 0.05)
        rates.append(float((det.score(rng.normal(size=(300, 5))) > det.threshold).mean()))
    assert np.mean(rates) <= 0.06
    shifted = det.score(rng.normal(3, 1, size=(300, 5)))
    assert (shifted > det.threshold).mean() > 0.9


def test_conformal_threshold_is_a_finite_sample_quantile():
    assert conformal_threshold(np.arange(1, 20, dtype=float), 0.05) == 19.0
    assert conformal_threshold(np.arange(1, 10, dtype=float), 0.05) == float("inf")


def test_round_trip():
    rng = np.random.default_rng(1)
    det = ImageOOD.fit(rng.normal(size=(50, 3))).calibrate(rng.normal(size=50), 0.1)
    x = rng.normal(size=(5, 3))
    np.testing.assert_allclose(ImageOOD.from_dict(det.to_dict()).score(x), det.score(x))


def test_field_rules_name_the_field_and_why():
    spec = DatasetSpec(name="t", id_column="id", target="y", image_column="img",
                       group_column="g", fields=[
                           FieldSpec(name="hp", kind=FieldKind.numeric),
                           FieldSpec(name="colour", kind=FieldKind.categorical),
                           FieldSpec(name="tags", kind=FieldKind.multi)])
    frame = pd.DataFrame({"hp": [10.0, 50.0, None], "colour": ["red", "blue", None],
                          "tags": ["a|b", "b", ""]})
    rules = FieldOOD.fit(spec, frame)
    assert rules.reasons({"hp": 30.0, "colour": "red", "tags": "a"}) == {}
    assert rules.reasons({"hp": None, "colour": None, "tags": None}) == {}
    got = rules.reasons({"hp": 80.0, "colour": "green", "tags": "a|zz"})
    assert got == {"hp": "80 is outside the training range [10, 50]",
                   "colour": "'green' never seen in training",
                   "tags": "'zz' never seen in training"}
    assert FieldOOD.from_dict(rules.to_dict()).reasons({"hp": 80.0}) == {"hp": got["hp"]}


def test_auroc():
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5


def test_pixel_art_statistics_separate_flat_art_from_noise():
    art = np.zeros((16, 16, 4), np.uint8)
    art[4:12, 4:12] = [200, 40, 40, 255]
    rng = np.random.default_rng(0)
    noise = np.concatenate([rng.integers(0, 256, (16, 16, 3)), np.full((16, 16, 1), 255)],
                           axis=2).astype(np.uint8)
    a, n = pixel_art_stats(np.stack([art, noise]))
    assert a[0] == 0 and n[0] == 0  # no semi-transparent pixel in either
    assert a[1] < n[1]  # palette: one colour vs. many
    assert a[2] > n[2]  # identical neighbours
    assert pixel_art_stats(np.zeros((1, 8, 8, 4), np.uint8)).tolist() == [[0, 0, 0, 0]]
