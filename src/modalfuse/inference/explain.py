"""Explanations of one prediction by the served model: Shapley contributions of every input
field and of the image, an occlusion heatmap on the normalized image, and each modality's share.

Model-agnostic on purpose: it only calls the bundle's fitted Preprocessor and the
`predict_proba` of the model that scored the request (`Predictor.model_for` its modality
case: both, fields only, image only), so it explains a LightGBM, a CNN or a fusion ONNX
model alike, needs no torch, and sees exactly the features the Predictor computes (no
second preprocessing path). A missing modality is no player: a fields-only request gets
image contribution 0 and no heatmap, an image-only one zero field contributions.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from modalfuse.errors import InvalidInput
from modalfuse.features.preprocess import FeatureBatch
from modalfuse.features.tabular import parse_record, records_frame
from modalfuse.inference.companions import BOTH, FIELDS, IMAGE
from modalfuse.inference.predictor import PredictionInputError, Predictor
from modalfuse.models.registry import Model
from modalfuse.spec import FieldKind

# FeatureBatch attributes whose columns are the encoded table fields; every other
# attribute is derived from the image alone (pixels, image statistics, future embeddings).
TABULAR_ATTRS = ("tabular", "tabular_dense")

METHOD = (
    "Shapley values of the explained class's probability, estimated with antithetic "
    "permutation sampling over the players (each used input field, and the image). A "
    "player that is absent takes its reference value: with a background (training rows), "
    "each background row's value, averaged over the rows; without one, the training "
    "median for numeric and boolean fields, no value for categorical and multi-valued "
    "fields, an empty (fully transparent) canvas for the image. A modality the request "
    "lacks is no player (contribution 0); the model is the one trained for the request's "
    "modalities. Contributions sum exactly to probability - base_value. Heatmap: drop in "
    "the class's probability when one square patch of the normalized image is made "
    "transparent (occlusion)."
)
# The one definition of each modality's share, used by the API, the UI's bar and its text.
SHARE_DEFINITION = (
    "A modality's share is its signed contribution (the image's Shapley value, or the sum "
    "of the fields' values) divided by the move it explains, probability - base_value; the "
    "two shares add up to 100 %. A modality that pushes against the move gets a negative "
    "share and the other one then more than 100 %: image +60 pp and table -10 pp for a move "
    "of +50 pp are shares of 120 % and -20 %. They are undefined (null) when the move is "
    "under 0.1 probability points."
)
SHARE_MIN_MOVE = 1e-3  # below 0.1 pp the shares would divide by (almost) nothing
# A diverging colour map (ColorBrewer PuOr): orange where hiding the patch lowers the
# class's probability (the patch supports the class), purple where it raises it.
HEAT_STOPS = np.array([[94, 60, 153], [178, 171, 210], [247, 247, 247], [253, 184, 99],
                       [230, 97, 1]], dtype=np.float64)
HEAT_SUPPORTS, HEAT_AGAINST = "#e66101", "#5e3c99"
HEATMAP_LEGEND = ("orange: the patch supports the class (hiding it lowers the class's "
                  "probability); purple: it speaks against the class (hiding it raises it); "
                  "white or clear: no effect. The colour scale runs from -max to +max of the "
                  "heatmap, in probability points.")
DEFAULT_OPACITY = 0.7
# Bundle metadata key for an explanation background: a list of request bodies
# ({"fields": ..., "image_base64": ...}) of training rows, like the bundle's `example`.
BACKGROUND_KEY = "explain_background"


@dataclass
class Explanation:
    """Why the model gave `label` the probability it did, for one record and image."""

    label: str
    probability: float
    base_value: float  # probability of `label` at the reference input (nothing known)
    contributions: dict[str, float]  # field -> Shapley value, in probability points
    values: dict[str, Any]  # field -> the value that was explained
    unused_fields: list[str]  # fields the model has no input for (contribution 0 by construction)
    image_contribution: float
    heatmap: np.ndarray | None  # (grid, grid): probability drop when the patch is occluded;
    # None when the request had no image
    patch_size: int
    image: np.ndarray  # the normalized RGBA image the model saw
    prediction: dict[str, Any]
    model_version: str
    extra: dict[str, Any] = field(default_factory=dict)
    mode: str = BOTH  # the request's modality case: both, fields (only), image (only)

    @property
    def table_contribution(self) -> float:
        """The table's signed contribution: the sum of the fields' Shapley values."""
        return float(sum(self.contributions.values()))

    @property
    def move(self) -> float:
        """What the contributions explain: probability - base_value (they sum to it)."""
        return self.image_contribution + self.table_contribution

    def _share(self, part: float) -> float | None:
        move = self.move
        return float(part / move) if abs(move) >= SHARE_MIN_MOVE else None

    @property
    def image_share(self) -> float | None:
        """The image's share of the move: image_contribution / (probability - base_value),
        signed (see SHARE_DEFINITION); None when the move is under 0.1 pp."""
        return self._share(self.image_contribution)

    @property
    def table_share(self) -> float | None:
        """The table's share of the move: sum of field contributions / (probability -
        base_value), signed; 1 - image_share; None when the move is under 0.1 pp."""
        return self._share(self.table_contribution)

    @property
    def heat_scale(self) -> float:
        """The heatmap's colour scale: its largest |value| (0 without a heatmap or effect)."""
        return float(np.abs(self.heatmap).max()) if self.heatmap is not None else 0.0

    def top_contributions(self, k: int | None = None) -> list[tuple[str, float]]:
        """Field contributions, largest magnitude first (the `k` largest when given)."""
        ranked = sorted(self.contributions.items(), key=lambda kv: -abs(kv[1]))
        return ranked if k is None else ranked[:k]

    def overlay_png(self, scale: int = 3, opacity: float = DEFAULT_OPACITY,
                    beside: bool = False) -> bytes | None:
        """PNG of the heatmap over the grey-scaled image (`beside`: the image in colour to
        its left), upscaled by `scale`; None when the request had no image."""
        if self.heatmap is None:
            return None
        return heatmap_overlay_png(self.image, self.heatmap, self.patch_size, scale, opacity,
                                   beside)


def heat_colours(values: np.ndarray, scale: float) -> np.ndarray:
    """RGB (..., 3) of heatmap values on the diverging map HEAT_STOPS over [-scale, +scale]:
    purple (against the class) through white (no effect) to orange (supports it)."""
    t = np.clip(values / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(values)
    pos = (t + 1.0) * (len(HEAT_STOPS) - 1) / 2.0
    lo = np.clip(np.floor(pos).astype(int), 0, len(HEAT_STOPS) - 2)
    frac = (pos - lo)[..., None]
    return HEAT_STOPS[lo] * (1 - frac) + HEAT_STOPS[lo + 1] * frac


def _on_background(rgba: np.ndarray, grey: bool) -> np.ndarray:
    """The RGBA image over a light background; grey-scaled (and its contrast halved, so
    both colours of the map read on it) when `grey`."""
    bg = np.full(rgba.shape[:2] + (3,), 250.0)
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    rgb = rgba[..., :3] * a + bg * (1 - a)
    if not grey:
        return rgb
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    return np.repeat((110.0 + 0.5 * lum)[..., None], 3, axis=2)


def heatmap_overlay_png(rgba: np.ndarray, heat: np.ndarray, patch: int, scale: int = 3,
                        opacity: float = DEFAULT_OPACITY, beside: bool = False) -> bytes:
    """The heatmap (colours of `heat_colours`) over the grey-scaled image at `opacity`
    (0 to 1, weaker effects more transparent); `beside`: the image in colour to its left."""
    size = rgba.shape[0]
    base = _on_background(rgba, grey=True)
    cell = np.kron(heat, np.ones((patch, patch)))[:size, :size]
    peak = float(np.abs(heat).max())
    strength = np.sqrt(np.abs(cell) / peak) if peak > 0 else np.zeros_like(cell)
    alpha = (float(np.clip(opacity, 0.0, 1.0)) * strength)[..., None]
    out = base * (1 - alpha) + heat_colours(cell, peak) * alpha
    if beside:
        gap = np.full((size, max(2, size // 16), 3), 255.0)
        out = np.concatenate([_on_background(rgba, grey=False), gap, out], axis=1)
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8), "RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class Explainer:
    """Explains predictions of the Predictor it is built on (the one the API serves).

    `permutations` sets the Shapley estimate's precision (even; antithetic pairs), `patch`
    the heatmap's resolution in pixels of the normalized image. The sampling is seeded, so
    the same input always gets the same explanation. `background` (records, image bytes)
    of training rows makes absent inputs take real values (interventional Shapley, cost
    times the number of rows); without it, a neutral reference built from the fitted
    Preprocessor is used, which needs no data where the model is served.
    """

    def __init__(self, predictor: Predictor, permutations: int = 24, patch: int = 8,
                 seed: int = 0,
                 background: tuple[Sequence[dict[str, Any]], Sequence[bytes | None]] | None = None):
        if permutations < 2 or permutations % 2:
            raise InvalidInput(f"permutations must be an even number >= 2, got {permutations}")
        if patch < 1 or predictor.spec.image_size % patch:
            raise InvalidInput(f"patch must divide the image size {predictor.spec.image_size}, "
                               f"got {patch}")
        self.predictor = predictor
        self.permutations = permutations
        self.patch = patch
        self.seed = seed
        self.background = background
        self.players_, self.column_player_ = self._players()
        self.reference_ = self._reference()

    @classmethod
    def for_bundle(cls, predictor: Predictor, **kwargs: Any) -> Explainer:
        """The explainer of a served bundle: its stored background if it has one."""
        rows = predictor.bundle.meta.get(BACKGROUND_KEY) or []
        background = None
        if rows:
            background = ([r["fields"] for r in rows],
                          [base64.b64decode(r["image_base64"]) for r in rows])
        return cls(predictor, background=background, **kwargs)

    @property
    def model_version(self) -> str:
        """The version of the model being explained."""
        return self.predictor.model_version

    @property
    def image_player(self) -> str:
        """The name the image goes by among the attribution's players."""
        # The image column's name is never an input field's name (DatasetSpec refuses it).
        return self.predictor.spec.image_column

    def _players(self) -> tuple[list[str], np.ndarray]:
        """Input fields that own at least one encoded column, then the image."""
        spec = self.predictor.spec
        names = self.predictor.bundle.preprocessor.tabular_names
        by_length = sorted((f.name for f in spec.fields), key=len, reverse=True)
        owner = []
        for n in names:
            match = next((f for f in by_length
                          if n == f or n.startswith(f + "=") or n.startswith(f + ":")), None)
            if match is None:
                raise ValueError(f"encoded column {n!r} belongs to no field of {spec.name}")
            owner.append(match)
        players = [f.name for f in spec.fields if f.name in set(owner)] + [self.image_player]
        index = {p: i for i, p in enumerate(players)}
        return players, np.array([index[o] for o in owner], dtype=int)

    def _reference(self) -> FeatureBatch:
        """Reference rows, encoded by the bundle's own Preprocessor: the background rows, or
        the one input where nothing is known."""
        if self.background is not None:
            records, images = self.background
            if not len(records):
                raise InvalidInput("background is empty; give training rows or None")
            prep = self.predictor.prepare(list(records), list(images), allow_extra=True)
            if prep.errors or prep.batch is None:
                raise InvalidInput(f"background rows are invalid: {prep.errors}")
            return prep.batch
        spec = self.predictor.spec
        pre = self.predictor.bundle.preprocessor
        medians = pre.tabular_.medians_ or {}
        ref: dict[str, Any] = {}
        for f in spec.fields:
            if f.kind in (FieldKind.numeric, FieldKind.boolean):
                ref[f.name] = medians.get(f.name)
            elif f.kind == FieldKind.multi:
                ref[f.name] = ""
            else:
                ref[f.name] = None
        size = spec.image_size
        blank = np.zeros((1, size, size, 4), dtype=np.uint8)
        return pre.transform(records_frame(spec, [ref]), blank)

    def _mix(self, x: FeatureBatch, masks: np.ndarray) -> FeatureBatch:
        """len(reference) rows per coalition, coalition-major: present players from `x`,
        absent ones from each reference row."""
        r = self.reference_
        b = len(r)
        masks = np.repeat(masks, b, axis=0)
        img = masks[:, -1]
        cols = masks[:, self.column_player_] if len(self.column_player_) else masks[:, :0]
        parts = {}
        for f in fields(FeatureBatch):
            xa, ra = getattr(x, f.name), getattr(r, f.name)
            ref = np.tile(ra, (len(masks) // b,) + (1,) * (ra.ndim - 1))
            if f.name in TABULAR_ATTRS:
                parts[f.name] = np.where(cols, xa[:1], ref).astype(xa.dtype)
            else:
                shape = (-1,) + (1,) * (xa.ndim - 1)
                parts[f.name] = np.where(img.reshape(shape), xa[:1], ref).astype(xa.dtype)
        return FeatureBatch(**parts)

    def _label_index(self, proba: np.ndarray, label: str | None) -> int:
        labels = self.predictor.labels
        if label is None:
            return int(np.argmax(proba))
        if label not in labels:
            raise InvalidInput(f"unknown label {label!r}; labels are {labels}")
        return labels.index(label)

    def active_players(self, mode: str) -> np.ndarray:
        """Indices of the players of a modality case: every field and the image for `both`,
        the fields for `fields`, the image for `image`. The others stay as the request has
        them (absent) and get contribution 0."""
        n = len(self.players_)
        if mode == FIELDS:
            return np.arange(n - 1)
        if mode == IMAGE:
            return np.array([n - 1])
        return np.arange(n)

    def shapley(self, x: FeatureBatch, k: int, model: Model | None = None,
                active: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
        """(Shapley value per player, f(reference), f(x)) for class k of a one-row batch,
        by `model` (default: the bundle's main one); players outside `active` (default: all)
        always take x's value and get 0."""
        model = self.predictor.bundle.model if model is None else model
        n_all = len(self.players_)
        act = np.arange(n_all) if active is None else np.asarray(active, dtype=int)
        n = len(act)
        rng = np.random.default_rng(self.seed)
        orders = []
        for _ in range(self.permutations // 2):
            perm = rng.permutation(n)
            orders += [perm, perm[::-1]]
        # Coalition j of an order holds its first j players; row 0 and row n are shared.
        masks = np.zeros((len(orders), n + 1, n_all), dtype=bool)
        masks[:, :, np.setdiff1d(np.arange(n_all), act)] = True
        for o, perm in enumerate(orders):
            for j in range(1, n + 1):
                masks[o, j] = masks[o, j - 1]
                masks[o, j, act[perm[j - 1]]] = True
        flat = masks.reshape(-1, n_all)
        unique, inverse = np.unique(flat, axis=0, return_inverse=True)
        p = model.predict_proba(self._mix(x, unique))[:, k]
        p = p.reshape(len(unique), len(self.reference_)).mean(axis=1)
        values = p[inverse.ravel()].reshape(len(orders), n + 1)
        phi = np.zeros(n_all)
        for o, perm in enumerate(orders):
            phi[act[perm]] += np.diff(values[o])
        return phi / len(orders), float(values[0, 0]), float(values[0, -1])

    def occlusion(self, frame: pd.DataFrame, x: FeatureBatch, k: int,
                  model: Model | None = None) -> np.ndarray:
        """Probability drop of class k by `model` (default: the bundle's main one) when each
        patch is made transparent: p(intact) - p(occluded), so positive where the patch
        supports the class; 0 where the patch is empty."""
        model = self.predictor.bundle.model if model is None else model
        size, s = self.predictor.spec.image_size, self.patch
        grid = size // s
        image = x.images[0]
        occluded, cells = [], []
        for i in range(grid):
            for j in range(grid):
                if not image[i * s:(i + 1) * s, j * s:(j + 1) * s, 3].any():
                    continue  # nothing to hide: the model sees the same pixels
                im = image.copy()
                im[i * s:(i + 1) * s, j * s:(j + 1) * s] = 0
                occluded.append(im)
                cells.append((i, j))
        heat = np.zeros((grid, grid))
        if not occluded:
            return heat
        # Row 0 is the intact image: every row then goes through the same batch, and the
        # table part is the instance's own encoded row, so only the pixels differ.
        n = len(occluded) + 1
        pre = self.predictor.bundle.preprocessor
        pixels = pre.transform(pd.concat([frame] * n, ignore_index=True),
                               np.stack([image, *occluded]))
        parts = {}
        for f in fields(FeatureBatch):
            xa = getattr(x, f.name)
            parts[f.name] = (np.repeat(xa[:1], n, axis=0) if f.name in TABULAR_ATTRS
                             else getattr(pixels, f.name))
        p = model.predict_proba(FeatureBatch(**parts))[:, k]
        for (i, j), v in zip(cells, p[1:], strict=True):
            heat[i, j] = p[0] - v
        return heat

    def explain(self, record: dict[str, Any], image: bytes | None, label: str | None = None,
                allow_extra: bool = False, heatmap: bool = True,
                coverage: float | None = None) -> Explanation:
        """Explain one record by the model of its modality case (a record without field
        values: the image alone; no image: the fields alone, with no heatmap). Its
        `prediction` is what /v1/predict answers, with the prediction set at `coverage`.
        Raises PredictionInputError (field -> message) for bad input."""
        predictor = self.predictor
        prep = predictor.prepare([record], [image], allow_extra)
        if prep.errors or prep.batch is None:
            raise PredictionInputError(prep.errors or {0: {"record": "could not be prepared"}})
        x, mode = prep.batch, prep.modes[0]
        model = predictor.model_for(mode)
        proba = model.predict_proba(x)[0]
        k = self._label_index(proba, label)
        phi, base, full = self.shapley(x, k, model, self.active_players(mode))
        parsed = ({f.name: None for f in predictor.spec.fields} if mode == IMAGE
                  else parse_record(predictor.spec, record, allow_extra))
        frame = records_frame(predictor.spec, [parsed])
        grid = predictor.spec.image_size // self.patch
        heat: np.ndarray | None = None
        if mode != FIELDS:
            heat = self.occlusion(frame, x, k, model) if heatmap else np.zeros((grid, grid))
        fields_ = self.players_[:-1]
        prediction_set = predictor.prediction_sets(proba[None], prep.modes, coverage)[0]
        return Explanation(
            label=predictor.labels[k],
            probability=float(proba[k]),
            base_value=base,
            contributions={f: float(v) for f, v in zip(fields_, phi[:-1], strict=True)},
            values={f.name: parsed.get(f.name) for f in predictor.spec.fields},
            unused_fields=[f.name for f in predictor.spec.fields if f.name not in fields_],
            image_contribution=float(phi[-1]),
            heatmap=heat,
            patch_size=self.patch,
            image=x.images[0],
            prediction={**predictor.format(proba),
                        **predictor.describe(prep, 0, prediction_set)},
            model_version=predictor.model_version,
            extra={"f_full_coalition": full},
            mode=mode,
        )

    def explain_many(self, records: Sequence[dict[str, Any]], images: Sequence[bytes | None],
                     heatmap: bool = False, progress: Any = None) -> list[Explanation]:
        """Explanations of many rows (global importance); `progress` is called once per row."""
        out = []
        for rec, img in zip(records, images, strict=True):
            out.append(self.explain(rec, img, heatmap=heatmap))
            if progress is not None:
                progress()
        return out


def global_importance(explanations: Sequence[Explanation], image_name: str = "image"
                      ) -> pd.DataFrame:
    """Mean |contribution| of every field and of the image over explained rows, largest first."""
    if not explanations:
        raise InvalidInput("no explanations to summarise")
    rows = [{**{f: abs(v) for f, v in e.contributions.items()},
             image_name: abs(e.image_contribution)} for e in explanations]
    table = pd.DataFrame(rows).fillna(0.0)
    return table.mean().sort_values(ascending=False).rename("mean_abs_contribution").to_frame()
