"""Request and response schemas. The record schema is generated from the bundle's spec.

Single predictions are strictly typed (a wrong field is a 422 that names it); batch rows
are validated one by one by the Predictor, so one bad row becomes an error entry instead
of failing the whole batch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictStr, create_model

from modalfuse.spec import DatasetSpec, FieldKind, FieldSpec


def _field_type(f: FieldSpec) -> tuple[Any, Any]:
    # Strict types: JSON "39" is not a number and "yes" not a boolean (ints are numbers).
    desc = f.description or f.kind.value
    default = ... if f.required else None
    if f.kind == FieldKind.numeric:
        return (StrictFloat if f.required else StrictFloat | None,
                Field(default, ge=f.min, le=f.max, description=desc, allow_inf_nan=False))
    if f.kind == FieldKind.boolean:
        return (StrictBool if f.required else StrictBool | None, Field(default, description=desc))
    if f.kind == FieldKind.categorical:
        t: Any = Literal[tuple(f.categories)] if f.categories else StrictStr  # type: ignore[valid-type]
        return (t if f.required else t | None, Field(default, description=desc))
    item: Any = Literal[tuple(f.categories)] if f.categories else StrictStr  # type: ignore[valid-type]
    return (list[item] | None, Field(default, description=desc + " (a list of strings)"))


def record_model(spec: DatasetSpec) -> type[BaseModel]:
    """The strict pydantic model of one record's table fields, made from the dataset spec."""
    fields = {f.name: _field_type(f) for f in spec.fields}
    return create_model(  # type: ignore[call-overload]
        f"{spec.name.title()}Record",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


class PredictionSet(BaseModel):
    """Labels calibrated to hold the true one with probability `coverage` (split conformal on
    out-of-fold predictions; marginal, and approximate for the refitted model: docs/trust.md)."""

    labels: list[str] = Field(description="the set, most probable first (never empty)")
    coverage: float = Field(description="the coverage the set was made for")
    method: str = Field(description="aps, or raps (APS with a rank penalty)")


class ImageOOD(BaseModel):
    """How unlike the training images this image is."""

    score: float = Field(description="distance to the training images (larger is stranger)")
    threshold: float = Field(description="scores above it are flagged (out-of-fold calibrated)")
    flag: bool


class FieldsOOD(BaseModel):
    """Fields whose values the training rows never had."""

    flag: bool
    reasons: dict[str, str] = Field(description="field -> what was outside the training data")


class OOD(BaseModel):
    """Out-of-distribution flags of the inputs; `flag` is true when any input is flagged."""

    flag: bool
    image: ImageOOD | None = Field(default=None, description="none without an image")
    fields: FieldsOOD | None = Field(default=None, description="none without fields")


class Modalities(BaseModel):
    """What the prediction was made from."""

    used: list[Literal["fields", "image"]]
    missing: list[Literal["fields", "image"]]


class Prediction(BaseModel):
    """One scored record: the label, every probability, the top classes, the prediction set,
    the OOD flags and the modalities it was made from."""

    label: str = Field(description="most likely class")
    probabilities: dict[str, float] = Field(description="probability of every class")
    top: list[dict[str, Any]] = Field(description="the k most likely classes, best first")
    prediction_set: PredictionSet | None = Field(default=None, description=(
        "conformal prediction set at the requested coverage (none for a model trained "
        "without cross-validation)"))
    ood: OOD | None = None
    modalities: Modalities | None = None


PREDICTION_ID = ("the id of this prediction (32 hex characters): send it with the true label "
                 "to POST /v1/feedback")


class PredictResponse(Prediction):
    """The answer of /v1/predict and /v1/predict/upload."""

    model_version: str
    prediction_id: str = Field(description=PREDICTION_ID)


class BatchRow(BaseModel):
    """One row of a /v1/predict/batch request: fields, an image, or both."""

    fields: dict[str, Any] = Field(default_factory=dict, description=(
        "the record's fields, as in /v1/predict; empty or absent: scored from the image alone"))
    image_base64: str | None = Field(default=None, description=(
        "the image (PNG, JPEG, GIF, WebP, BMP) in base64; absent: scored from the fields alone"))


class BatchItem(BaseModel):
    """One row of a batch answer: a prediction, or the error that kept it from being scored."""

    label: str | None = None
    probabilities: dict[str, float] | None = None
    top: list[dict[str, Any]] | None = None
    prediction_set: PredictionSet | None = None
    ood: OOD | None = None
    modalities: Modalities | None = None
    error: dict[str, str] | None = Field(default=None,
                                         description="why this row was not scored (field -> message)")
    prediction_id: str | None = Field(default=None, description=PREDICTION_ID + " (none for an "
                                      "error row)")


class BatchResponse(BaseModel):
    """The answer of /v1/predict/batch: one item per row, in order."""

    model_version: str
    predictions: list[BatchItem]
    errors: int


class ModelInfo(BaseModel):
    """What /v1/model says about the served model."""

    model_version: str
    dataset: dict[str, Any]
    labels: list[str]
    input_schema: list[dict[str, Any]]
    image: dict[str, Any]
    metrics: dict[str, Any]
    created_at: str | None = None
    modalities: dict[str, bool] = Field(default_factory=dict, description=(
        "the request cases the model scores: both, fields (no image), image (no fields)"))
    trust: dict[str, Any] = Field(default_factory=dict, description=(
        "how prediction sets and OOD flags are made: conformal method and default coverage "
        "per case, OOD thresholds (docs/trust.md)"))
    source: dict[str, Any] = Field(default_factory=dict, description=(
        "where the served model came from: source (registry or bundle), uri, alias, "
        "registered version, run id, local bundle path, and what chose it"))


class Health(BaseModel):
    """The answer of /health."""

    status: Literal["ok"]
    model_version: str


# "Try it out" sends it as it is: an id no prediction has, so its row is answered `unknown`.
FEEDBACK_EXAMPLE: dict[str, Any] = {
    "feedback": [{"prediction_id": "0123456789abcdef0123456789abcdef", "label": "Fire"}],
    "replace": False}


class FeedbackItem(BaseModel):
    """The true label of one earlier prediction."""

    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="the `prediction_id` a "
                               "prediction route answered")
    label: StrictStr = Field(min_length=1, max_length=200, description="the true class: one of "
                             "the labels of the model that made the prediction")


class FeedbackRequest(BaseModel):
    """Ground truth for one or more predictions, however long after them."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [FEEDBACK_EXAMPLE]})
    feedback: list[FeedbackItem] = Field(min_length=1, description="one row per prediction "
                                         "(at most MODALFUSE_MAX_BATCH_ROWS)")
    replace: StrictBool = Field(default=False, description="replace a label an id already has "
                                "(without it, a different label is a 409)")


class FeedbackResult(BaseModel):
    """What happened to one feedback row."""

    prediction_id: str
    label: str
    status: Literal["stored", "unchanged", "replaced", "unknown"] = Field(description=(
        "stored; unchanged (the id had this label already); replaced (it had another, and "
        "replace was true); unknown (no prediction with this id in the log: never made, "
        "pruned by retention, or not yet written; nothing is stored, the row may be resent)"))
    model_version: str | None = Field(default=None, description="the model that made the "
                                      "prediction")
    previous_label: str | None = Field(default=None, description="the label the id had before")


class FeedbackResponse(BaseModel):
    """Counts by outcome, and one result per row in request order."""

    stored: int
    unchanged: int
    replaced: int
    unknown: int
    results: list[FeedbackResult]
