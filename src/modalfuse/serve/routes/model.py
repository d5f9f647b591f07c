"""Model and health routes: what is served, and whether it is up."""

from __future__ import annotations

from fastapi import APIRouter, Request

from modalfuse.serve.deps import PredictorDep
from modalfuse.serve.schemas import Health, ModelInfo

router = APIRouter()


@router.get("/health", response_model=Health, tags=["ops"])
def health(predictor: PredictorDep) -> Health:
    return Health(status="ok", model_version=predictor.model_version)


@router.get("/v1/model", response_model=ModelInfo, tags=["model"])
def model_info(predictor: PredictorDep, request: Request) -> ModelInfo:
    """What is served: version, inputs, labels, metrics, and where it came from (registry/bundle)."""
    source = dict(getattr(request.app.state, "model_source", None) or {})
    # The source is swapped just after the predictor on reload: only report a matching one.
    if source.get("model_version") != predictor.model_version:
        source = {"model_version": predictor.model_version}
    meta = predictor.bundle.meta
    spec = predictor.spec
    return ModelInfo(
        model_version=predictor.model_version,
        dataset=meta.get("dataset", {}),
        labels=predictor.labels,
        input_schema=[f.model_dump(mode="json") for f in spec.fields],
        image={"field": "image_base64", "size": spec.image_size,
               "formats": ["PNG", "JPEG", "GIF", "WEBP", "BMP"],
               "note": "first frame; cropped to its opaque box and centred on a square"},
        metrics=meta.get("metrics", {}),
        created_at=meta.get("created_at"),
        source=source,
    )
