"""Explanation route: why the served model predicts what it does for one record and image.

The explainer belongs to the served model (`ServedModel.explainer`, built on first use from
its own Predictor), so `/v1/explain`, the UI and `/v1/predict` always describe the same model
(the same `model_version`), before and after a reload. Like /v1/predict it takes the fields,
the image or both; a missing modality gets contribution 0 (and no heatmap without an image).
"""

# No `from __future__ import annotations`: FastAPI must see the request model built at runtime.
import base64
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, Field, create_model

from modalfuse.inference.explain import (
    HEATMAP_LEGEND,
    METHOD,
    SHARE_DEFINITION,
    Explainer,
    Explanation,
)
from modalfuse.inference.predictor import PredictionInputError
from modalfuse.serve.deps import ServedModelDep
from modalfuse.serve.routes.predict import CoverageQuery, decode_base64, unprocessable
from modalfuse.serve.schemas import Prediction


def explainer_for(app: FastAPI) -> Explainer:
    """The explainer of the model the app serves now (made on first use from its Predictor)."""
    return app.state.model_holder.current.explainer


class Contribution(BaseModel):
    field: str
    value: Any = Field(description="the value that was explained")
    contribution: float = Field(description="Shapley value, in probability points of `label`")


class ModalityShare(BaseModel):
    """Each modality's signed share of probability - base_value (they add up to 1)."""

    image: float | None = Field(description="image_contribution / (probability - base_value); "
                                "null when that move is under 0.1 pp")
    table: float | None = Field(description="table_contribution / (probability - base_value); "
                                "null when that move is under 0.1 pp")
    definition: str = SHARE_DEFINITION


class ExplainResponse(BaseModel):
    model_version: str
    label: str = Field(description="the class explained (the predicted one unless asked)")
    probability: float
    base_value: float = Field(description="probability of `label` when nothing is known")
    prediction: Prediction
    contributions: list[Contribution] = Field(description="the largest field contributions")
    other_fields_contribution: float = Field(description="sum of the fields not listed")
    unused_fields: list[str] = Field(description="fields the model takes no input from")
    image_contribution: float = Field(description="the image's Shapley value (0 without one)")
    table_contribution: float = Field(description="the sum of every field's Shapley value")
    modality_share: ModalityShare
    heatmap_png_base64: str | None = Field(description=(
        "PNG: heatmap over the grey-scaled normalized image; null without an image"))
    heatmap: list[list[float]] | None = Field(description=(
        "probability drop per occluded patch (positive: the patch supports `label`); null "
        "without an image"))
    heatmap_legend: str = HEATMAP_LEGEND
    patch_size: int
    method: str


def explanation_response(e: Explanation, top_fields: int) -> ExplainResponse:
    """The API's answer for one explanation, listing its `top_fields` largest fields."""
    ranked = e.top_contributions()
    shown, rest = ranked[:top_fields], ranked[top_fields:]
    png = e.overlay_png()
    return ExplainResponse(
        model_version=e.model_version,
        label=e.label,
        probability=e.probability,
        base_value=e.base_value,
        prediction=Prediction(**e.prediction),
        contributions=[Contribution(field=f, value=e.values.get(f), contribution=v)
                       for f, v in shown],
        other_fields_contribution=float(sum(v for _, v in rest)),
        unused_fields=e.unused_fields,
        image_contribution=e.image_contribution,
        table_contribution=e.table_contribution,
        modality_share=ModalityShare(image=e.image_share, table=e.table_share),
        heatmap_png_base64=None if png is None else base64.b64encode(png).decode(),
        heatmap=None if e.heatmap is None else e.heatmap.round(6).tolist(),
        patch_size=e.patch_size,
        method=METHOD,
    )


def build_router(record_model: type[BaseModel], example: dict | None,
                 labels: list[str]) -> APIRouter:
    """The /v1/explain route, its request schema made from the served model's spec."""
    router = APIRouter(prefix="/v1", tags=["explain"])
    request_model = create_model(  # type: ignore[call-overload]
        "ExplainRequest",
        fields=(record_model | None, Field(default=None, description=(
            "the record's table fields; absent or null: explained from the image alone"))),
        image_base64=(str | None, Field(default=None, description=(
            "the image (PNG, JPEG, GIF, WebP, BMP) in base64; absent or null: explained "
            "from the fields alone"))),
        label=(str | None, Field(None, description=f"class to explain; one of {labels}; "
                                                   "default: the predicted class")),
        top_fields=(int, Field(8, ge=1, le=100, description="how many fields to list")),
        __config__={"extra": "forbid",
                    "json_schema_extra": {"examples": [example]} if example else None},
    )

    @router.post("/explain", response_model=ExplainResponse,
                 summary="Explain one prediction: field contributions, heatmap, modality share")
    def explain(body: request_model,  # type: ignore[valid-type]
                served: ServedModelDep, coverage: CoverageQuery = None) -> ExplainResponse:
        explainer = served.explainer
        raw = body.image_base64  # type: ignore[attr-defined]
        image = None if raw is None else decode_base64(raw, "image_base64")
        record = body.fields  # type: ignore[attr-defined]
        fields = {} if record is None else record.model_dump(exclude_none=True)
        label = body.label  # type: ignore[attr-defined]
        if label is not None and label not in explainer.predictor.labels:
            raise HTTPException(422, detail=[{"loc": ["body", "label"], "type": "value_error",
                                              "msg": f"unknown label {label!r}; labels are "
                                                     f"{explainer.predictor.labels}"}])
        try:
            e = explainer.explain(fields, image, label=label, coverage=coverage)
        except PredictionInputError as err:
            raise unprocessable(err.errors[0], ["body"]) from None
        return explanation_response(e, body.top_fields)  # type: ignore[attr-defined]

    return router
