"""Prediction routes: one record (JSON or multipart upload) and a JSON batch.

Every scored row gets a `prediction_id` (uuid4 hex), made here and passed to the Predictor,
so the prediction log stores it and `POST /v1/feedback` can later give that row its label.
"""


import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, File, Form, HTTPException, Query, Request, Response, UploadFile
from pydantic import BaseModel, Field, ValidationError, create_model

from modalfuse.config import Settings
from modalfuse.features.image import ImageError, decode_base64_image
from modalfuse.inference.conformal import DEFAULT_COVERAGE, MAX_COVERAGE, MIN_COVERAGE
from modalfuse.serve.deps import ServedModelDep, SettingsDep, served_model_for
from modalfuse.serve.schemas import BatchItem, BatchResponse, BatchRow, PredictResponse
from modalfuse.serve.state import ServedModel


def decode_base64(data: str, loc: str) -> bytes:
    """Decode a request's base64 image, or answer 422 naming the field at `loc`."""
    try:
        return decode_base64_image(data)  # line-wrapped (RFC 2045) base64 too
    except ImageError:
        raise HTTPException(422, detail=[{"loc": ["body", loc], "type": "value_error",
                                          "msg": "image_base64 is not valid base64"}]) from None


def json_response(answer: BaseModel) -> Response:
    """The answer as JSON, serialised once by pydantic: a route that returns the model itself
    has FastAPI validate it again against `response_model` first."""
    return Response(answer.model_dump_json(), media_type="application/json")


def unprocessable(errors: dict[str, str], prefix: list[Any]) -> HTTPException:
    """A 422 with one entry per bad field, each located under `prefix`."""
    return HTTPException(422, detail=[{"loc": [*prefix, k], "type": "value_error", "msg": v}
                                      for k, v in errors.items()])


COVERAGE_HELP = (f"coverage of the prediction set, from {MIN_COVERAGE} to {MAX_COVERAGE} "
                 f"(default: the model's, {DEFAULT_COVERAGE})")
CoverageQuery = Annotated[float | None, Query(ge=MIN_COVERAGE, le=MAX_COVERAGE,
                                              description=COVERAGE_HELP)]


def new_prediction_ids(n: int) -> list[str]:
    """`n` fresh prediction ids (uuid4 hex, 32 characters), one per row of a request."""
    return [uuid.uuid4().hex for _ in range(n)]


def batch_examples(record_model: type[BaseModel], example: dict) -> dict[str, Any]:
    """Named OpenAPI examples for /v1/predict/batch, made from one /v1/predict body."""
    required = {name for name, f in record_model.model_fields.items() if f.is_required()}
    lean = {**example, "fields": {k: v for k, v in example["fields"].items() if k in required}}
    bad_image = {**example, "image_base64": "not base64!"}
    return {
        "rows": {"summary": "two rows: the example, and it again with only the required fields",
                 "value": [example, lean]},
        "bad_row": {"summary": "a bad row comes back as an error entry; the others are scored",
                    "value": [example, bad_image]},
    }


def build_router(record_model: type[BaseModel], example: dict | None,
                 modalities: dict[str, bool] | None = None) -> APIRouter:
    """The /v1/predict routes, their request schemas made from the served model's spec and
    the cases it scores (`modalities`: a bundle without a fields-only model requires the
    image, one without an image-only model requires the fields)."""
    cases = modalities or {"both": True, "fields": True, "image": True}
    router = APIRouter(prefix="/v1", tags=["predict"])
    # "Try it out" sends these as they are, so each is a request that succeeds.
    predict_examples = {"example": {"summary": "the model's example record",
                                    "value": example}} if example else None
    fields_examples = [json.dumps(example["fields"])] if example else None

    fields_def: tuple[Any, Any] = (
        (record_model | None, Field(default=None, description=(
            "the record's table fields; absent or null: scored from the image alone")))
        if cases["image"] else (record_model, Field(description="the record's table fields")))
    image_def: tuple[Any, Any] = (
        (str | None, Field(default=None, description=(
            "the image (PNG, JPEG, GIF, WebP, BMP) in base64; absent or null: scored from "
            "the fields alone")))
        if cases["fields"] else
        (str, Field(description="the image (PNG, JPEG, GIF, WebP, BMP) in base64")))
    request_model = create_model(  # type: ignore[call-overload]
        "PredictRequest",
        fields=fields_def,
        image_base64=image_def,
        __config__={"extra": "forbid",
                    "json_schema_extra": {"examples": [example]} if example else None},
    )

    def score_one(served: ServedModel, settings: Settings, fields: dict, image: bytes | None,
                  coverage: float | None, image_loc: str | None = None,
                  fields_loc: tuple[str, ...] = ()) -> PredictResponse:
        """Score one record; a row error is a 422 whose entries sit under the request part
        they came from (`image_loc` for the image, `fields_loc` before a field's name)."""
        # Through Predictor.predict, so every prediction reaches its observers (log, metrics).
        ids = new_prediction_ids(1)
        predictor = served.predictor
        result = predictor.predict([fields], [image], prediction_ids=ids,
                                   max_total_pixels=settings.max_request_pixels,
                                   coverage=coverage)[0]
        if "error" in result:
            image_key = predictor.spec.image_column
            raise HTTPException(422, detail=[
                {"loc": ["body", image_loc or k] if k == image_key else ["body", *fields_loc, k],
                 "type": "value_error", "msg": v} for k, v in result["error"].items()])
        return PredictResponse(model_version=served.version, prediction_id=ids[0], **result)

    @router.post("/predict", response_model=PredictResponse,
                 summary="Predict one record from its fields and a base64 image (or either alone)",
                 description="Send `fields`, `image_base64`, or both. A request missing one is "
                             "scored by the model trained for that case; the answer's "
                             "`modalities` says what was used.")
    async def predict(body: Annotated[request_model,  # type: ignore[valid-type]
                                      Body(openapi_examples=predict_examples)],
                      request: Request, coverage: CoverageQuery = None) -> Response:
        # Scored on the event loop: one record is about a millisecond of work, less than the
        # hop to a worker thread and back costs (docs/serving.md, "Where a request's time
        # goes"); a record's image is bounded by MODALFUSE_MAX_IMAGE_PIXELS. The model and
        # settings are read here, not injected: each dependency is a step of FastAPI's own.
        served, settings = served_model_for(request), request.app.state.settings
        raw = body.image_base64  # type: ignore[attr-defined]
        image = None if raw is None else decode_base64(raw, "image_base64")
        record = body.fields  # type: ignore[attr-defined]
        fields = {} if record is None else record.model_dump(exclude_none=True)
        return json_response(score_one(served, settings, fields, image, coverage))

    @router.post("/predict/upload", response_model=PredictResponse,
                 summary="Predict one record from an uploaded image file and JSON fields",
                 description="In *Try it out*, `fields` is filled with the model's example "
                             "record; choose the image file (PNG, JPEG, GIF, WebP, BMP) yourself.")
    def predict_upload(
        served: ServedModelDep, settings: SettingsDep,
        image: Annotated[UploadFile | None, File(description="the image file; absent: scored "
                                                 "from the fields alone")] = None,
        fields: Annotated[str | None, Form(description="the record's fields as a JSON object; "
                                           "absent: scored from the image alone",
                                           examples=fields_examples)] = None,
        coverage: CoverageQuery = None,
    ) -> PredictResponse:
        try:
            record = ({} if fields is None else
                      record_model.model_validate(json.loads(fields)).model_dump(exclude_none=True))
        except json.JSONDecodeError as e:
            raise HTTPException(422, detail=[{"loc": ["body", "fields"], "type": "json_invalid",
                                              "msg": f"fields is not valid JSON: {e}"}]) from None
        except RecursionError:  # json.loads recurses once per level of nesting
            raise HTTPException(422, detail=[{"loc": ["body", "fields"], "type": "json_invalid",
                                              "msg": "fields is nested too deeply"}]) from None
        except ValidationError as e:
            raise HTTPException(422, detail=[{"loc": ["body", "fields", *err["loc"]],
                                              "type": err["type"], "msg": err["msg"]}
                                             for err in e.errors()]) from None
        except ValueError as e:  # json.loads' own limits (a 5000-digit integer, ...)
            raise HTTPException(422, detail=[{"loc": ["body", "fields"], "type": "json_invalid",
                                              "msg": f"fields is not valid JSON: {e}"}]) from None
        data = None if image is None else image.file.read(settings.max_image_bytes + 1)
        return score_one(served, settings, record, data, coverage, "image", ("fields",))

    _add_batch_route(router, record_model, example)
    return router


def _add_batch_route(router: APIRouter, record_model: type[BaseModel],
                     example: dict | None) -> None:
    # /v1/predict/batch: rows validated one by one, bad rows answered as error entries.
    @router.post("/predict/batch", response_model=BatchResponse,
                 summary="Predict a list of records; bad rows come back as errors")
    def predict_batch(rows: Annotated[list[BatchRow], Body(openapi_examples=(
                          batch_examples(record_model, example) if example else None))],
                      served: ServedModelDep, settings: SettingsDep,
                      coverage: CoverageQuery = None) -> BatchResponse:
        if not rows:
            raise HTTPException(422, detail=[{"loc": ["body"], "type": "too_short",
                                              "msg": "batch is empty; send 1 or more rows"}])
        if len(rows) > settings.max_batch_rows:
            raise HTTPException(413, detail=f"batch has {len(rows)} rows; the limit is "
                                            f"{settings.max_batch_rows} (use /v1/jobs or "
                                            "`modalfuse predict` for larger files)")
        images: list[bytes | None] = []
        pre_errors: dict[int, dict[str, str]] = {}
        for i, r in enumerate(rows):
            try:
                images.append(None if r.image_base64 is None
                              else decode_base64_image(r.image_base64))
            except ImageError:
                images.append(None)
                pre_errors[i] = {"image_base64": "not valid base64"}
        # A row whose image is not base64 is an error row, never scored from its fields alone.
        scored = [i for i in range(len(rows)) if i not in pre_errors]
        ids = new_prediction_ids(len(scored))
        results = served.predictor.predict(
            [rows[i].fields for i in scored], [images[i] for i in scored], prediction_ids=ids,
            max_total_pixels=settings.max_request_pixels, coverage=coverage)
        by_row = dict(zip(scored, zip(results, ids, strict=True), strict=True))
        items = []
        for i in range(len(rows)):
            if i in pre_errors:
                items.append(BatchItem(error=pre_errors[i]))
                continue
            res, pid = by_row[i]
            # Only a scored row has an id: an error row was never logged.
            items.append(BatchItem(**res, prediction_id=None if "error" in res else pid))
        return BatchResponse(model_version=served.version, predictions=items,
                             errors=sum(1 for it in items if it.error))

    predict_batch.__doc__ = "Rows are validated one by one. Limit: MODALFUSE_MAX_BATCH_ROWS rows."
