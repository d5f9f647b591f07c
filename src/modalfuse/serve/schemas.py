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
    fields = {f.name: _field_type(f) for f in spec.fields}
    return create_model(  # type: ignore[call-overload]
        f"{spec.name.title()}Record",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


class Prediction(BaseModel):
    label: str = Field(description="most likely class")
    probabilities: dict[str, float] = Field(description="probability of every class")
    top: list[dict[str, Any]] = Field(description="the k most likely classes, best first")


class PredictResponse(Prediction):
    model_version: str


class BatchRow(BaseModel):
    fields: dict[str, Any] = Field(description="the record's fields, as in /v1/predict")
    image_base64: str = Field(description="the image (PNG, JPEG, GIF, WebP, BMP) in base64")


class BatchItem(BaseModel):
    label: str | None = None
    probabilities: dict[str, float] | None = None
    top: list[dict[str, Any]] | None = None
    error: dict[str, str] | None = Field(default=None,
                                         description="why this row was not scored (field -> message)")


class BatchResponse(BaseModel):
    model_version: str
    predictions: list[BatchItem]
    errors: int


class ModelInfo(BaseModel):
    model_version: str
    dataset: dict[str, Any]
    labels: list[str]
    input_schema: list[dict[str, Any]]
    image: dict[str, Any]
    metrics: dict[str, Any]
    created_at: str | None = None
    source: dict[str, Any] = Field(default_factory=dict, description=(
        "where the served model came from: source (registry or bundle), uri, alias, "
        "registered version, run id, local bundle path, and what chose it"))


class Health(BaseModel):
    status: Literal["ok"]
    model_version: str
