"""Fit what a bundle carries besides its model (`inference/companions.py`), on the training
split only, by the fold engine.

* The fields-only model is recipe `gbm_tabular`, the image-only model recipe `gbm_image`;
  each is cross-validated on the grouped folds like the main model and calibrated with its
  out-of-fold temperature.
* Conformal calibration of each case uses that case's out-of-fold (calibrated)
  probabilities: rows predicted by models that never saw their fold.
* The image OOD threshold is the conformal quantile of out-of-fold distances: the distance
  of each training image of fold k to a detector fitted on the other folds.
"""

from __future__ import annotations

import math

import numpy as np

from modalfuse.inference.companions import BOTH, FIELDS, IMAGE, Companions
from modalfuse.inference.conformal import Conformal, randomised_scores, tie_breaks
from modalfuse.inference.ood import DEFAULT_FALSE_ALARM, FieldOOD, ImageOOD, image_ood_features
from modalfuse.models.calibration import CalibratedModel
from modalfuse.training.folds import OOF_KEY, FoldEngine

# The recipe that serves each missing-modality case.
MODALITY_RECIPES = {FIELDS: "gbm_tabular", IMAGE: "gbm_image"}
# RAPS settings tried on the tuning part of the out-of-fold rows: APS, and rank penalties from
# the second label on (k_reg = 0 and 1 give the same sets: the top label is always in).
RAPS_GRID = [(0.0, 0)] + [(lam, k) for lam in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2) for k in (1, 2, 3)]
# The setting is the one with the smallest mean set over these targets, not at 90 % alone
# (a per-target choice made sets at most 2 % smaller on tests/inference/test_conformal_coverage's
# fixtures, and would break the nesting of a row's sets across coverages).
TUNE_COVERAGES = (0.8, 0.9, 0.95)
TUNE_SHARE = 0.3


def fit_conformal(proba: np.ndarray, y: np.ndarray, seed: int = 0) -> Conformal:
    """RAPS calibrated on out-of-fold rows: the rank penalty is chosen on a random 30 % of the
    rows (the smallest mean set over `TUNE_COVERAGES`), and the scores are those of the other
    70 %, so the choice never touches the rows the guarantee rests on. One setting serves
    every coverage, so a row's sets stay nested (its 80 % set lies inside its 90 % set)."""
    order = np.random.default_rng(seed).permutation(len(y))
    n_tune = int(len(y) * TUNE_SHARE)
    tune, calib = order[:n_tune], order[n_tune:]

    u = tie_breaks(proba[tune])

    def mean_size(setting: tuple[float, int]) -> float:
        # Conformal.sets on the tuning rows, with their scores computed once per setting.
        scores = randomised_scores(proba[tune], *setting, u=u)
        c = Conformal(np.sort(scores[np.arange(n_tune), y[tune]]), *setting)
        return float(np.mean([(scores <= c.quantile(cov)).sum(axis=1).mean()
                              for cov in TUNE_COVERAGES]))

    lam, k_reg = min(RAPS_GRID, key=mean_size) if n_tune >= 20 else (0.0, 0)
    conformal = Conformal.fit(proba[calib], y[calib], lam, k_reg)
    conformal.source = (f"out-of-fold predictions of the training split: {len(calib)} rows "
                        f"calibrate, {n_tune} others chose lam={lam:g}, k_reg={k_reg}")
    return conformal


def training_image_features(engine: FoldEngine) -> np.ndarray:
    """The image OOD detector's features of every training row (image statistics are a
    stateless function of the pixels, so any fitted preprocessor gives the same)."""
    batch = engine.batch(frozenset(), engine.train_pos)
    return image_ood_features(batch.image_stats, batch.images)


def fit_image_ood(engine: FoldEngine, false_alarm: float = DEFAULT_FALSE_ALARM
                  ) -> tuple[ImageOOD, np.ndarray]:
    """The detector fitted on all training images, thresholded on out-of-fold distances;
    also returns those distances."""
    feats = training_image_features(engine)
    held = np.zeros(len(feats))
    for k in engine.folds:
        m = engine.fold_of == k
        held[m] = ImageOOD.fit(feats[~m]).score(feats[m])
    return ImageOOD.fit(feats).calibrate(held, false_alarm), held


def fit_companions(engine: FoldEngine, main_cv: dict | None) -> Companions:
    """Modality models, conformal calibrations (when CV ran) and OOD detectors for a bundle
    whose main model's cross-validation is `main_cv`."""
    comp = Companions()
    if main_cv is not None:
        oof = main_cv[OOF_KEY]
        comp.conformal[BOTH] = fit_conformal(oof.proba, oof.y, engine.cfg.seed)
    for mode, recipe in MODALITY_RECIPES.items():
        cv = engine.cross_validate(recipe) if engine.cfg.cv else None
        temperature = cv["temperature"] if cv else 1.0
        comp.models[mode] = CalibratedModel(engine.fit(recipe), temperature)
        comp.model_info[mode] = {"recipe": recipe, "temperature": temperature,
                                 "cv": cv["summary"] if cv else None}
        if cv is not None:
            comp.conformal[mode] = fit_conformal(cv[OOF_KEY].proba, cv[OOF_KEY].y, engine.cfg.seed)
    detector, held = fit_image_ood(engine)
    comp.field_ood = FieldOOD.fit(engine.ds.spec,
                                  engine.raw.frame.iloc[engine.train_pos].reset_index(drop=True))
    fields_info = {"rule": "a number outside the training range, or a category never seen "
                           "in training"}
    if math.isinf(detector.threshold):  # too few images for a threshold at that rate
        comp.ood_info = {"image": {"none": f"{len(held)} training images cannot set a "
                                           f"{detector.false_alarm:.0%} false-alarm threshold"},
                         "fields": fields_info}
        return comp
    comp.image_ood = detector
    comp.ood_info = {"image": {"false_alarm": detector.false_alarm,
                               "threshold": detector.threshold,
                               "out_of_fold_flag_rate": float((held > detector.threshold).mean()),
                               "calibration": "out-of-fold distances of the training images"},
                     "fields": fields_info}
    return comp
