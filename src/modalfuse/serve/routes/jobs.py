"""Async batch job routes: submit a table + images, poll its state, fetch its result.

All need the API key. Inputs are either uploaded (a CSV/Parquet table and a zip of the
images it names) or server-side paths under MODALFUSE_JOBS_ROOT.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from modalfuse.config import Settings
from modalfuse.inference.batch import NO_PARQUET, parquet_available
from modalfuse.inference.uploads import UploadError, UploadLimits
from modalfuse.serve.deps import ChampionDep, SettingsDep
from modalfuse.serve.jobs import (
    IdempotencyConflict,
    JobInputError,
    JobNotFound,
    JobStore,
    JobWorker,
    create_job,
    resolve_under,
)
from modalfuse.serve.retention import describe_duration
from modalfuse.serve.security import AuthDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


class JobResponse(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed"]
    total_rows: int
    done_rows: int
    error_rows: int = Field(description="rows that could not be scored (they get an error)")
    progress: float
    model_version: str = Field(description="the one model that scores every row of the job")
    model_digest: str | None = Field(default=None, description="digest of that model's bundle")
    note: str | None = Field(default=None, description="why the job waits for another model, "
                             "or that it was rescored whole by this one")
    created_at: str
    updated_at: str
    error: str | None = Field(default=None, description="why the job failed, if it did")
    idempotency_key: str | None = None
    attempts: int = Field(description="times a worker started or resumed the job")
    result_url: str | None = None


def _store(request: Request) -> JobStore:
    return request.app.state.job_store


def _response(job: Any) -> dict[str, Any]:
    out = job.public()
    out["result_url"] = f"/v1/jobs/{job.id}/result" if job.state == "succeeded" else None
    return out


def _bad(msg: str, loc: list[str]) -> HTTPException:
    return HTTPException(422, detail=[{"loc": loc, "type": "value_error", "msg": msg}])


def _stage_table(table: UploadFile | None, table_path: str | None, staging: Path,
                 settings: Settings) -> tuple[Path, str]:
    # The table to queue (an upload copied into `staging`, or a file under the jobs root)
    # and its name for messages.
    if table is not None:
        table_name = Path(table.filename or "table.csv").name
        table_file = staging / ("table" + Path(table_name).suffix.lower())
        with open(table_file, "wb") as out:
            shutil.copyfileobj(table.file, out)
        return table_file, table_name
    assert table_path is not None and settings.jobs_root is not None
    try:
        table_file = resolve_under(settings.jobs_root, table_path, "table_path")
    except JobInputError as e:
        raise _bad(str(e), ["body", "table_path"]) from None
    if not table_file.is_file():
        raise _bad(f"table_path {table_path!r} is not a file under the jobs root",
                   ["body", "table_path"])
    return table_file, table_file.name


def _stage_images(images: UploadFile | None, images_path: str | None, staging: Path,
                  settings: Settings) -> tuple[Path | None, Path | None]:
    # (the uploaded zip copied into `staging`, None) or (None, a folder under the jobs root).
    if images is not None:
        zip_file = staging / "images.zip"
        with open(zip_file, "wb") as out:
            shutil.copyfileobj(images.file, out)
        return zip_file, None
    assert images_path is not None and settings.jobs_root is not None
    try:
        images_dir = resolve_under(settings.jobs_root, images_path, "images_path")
    except JobInputError as e:
        raise _bad(str(e), ["body", "images_path"]) from None
    if not images_dir.is_dir():
        raise _bad(f"images_path {images_path!r} is not a folder under the jobs root",
                   ["body", "images_path"])
    return None, images_dir


@router.post("", response_model=JobResponse, status_code=201,
             summary="Submit a batch job: a table plus its images, scored in the background",
             responses={200: {"description": "an earlier job with the same Idempotency-Key"},
                        409: {"description": "Idempotency-Key reused for a different request"}})
def submit_job(
    # The champion, never a canary: the job worker scores with the champion at claim time.
    request: Request, _: AuthDep, served: ChampionDep, settings: SettingsDep,
    table: Annotated[UploadFile | None, File(description="rows (.csv or .parquet)")] = None,
    images: Annotated[UploadFile | None, File(description="zip of the rows' images")] = None,
    table_path: Annotated[str | None, Form(description="server-side table, relative to "
                                           "MODALFUSE_JOBS_ROOT")] = None,
    images_path: Annotated[str | None, Form(description="server-side image folder, relative "
                                            "to MODALFUSE_JOBS_ROOT")] = None,
    idempotency_key: Annotated[str | None, Header(description="retry-safe submission: the same "
                                                  "key returns the same job")] = None,
) -> Response:
    if idempotency_key is not None and not _KEY.match(idempotency_key):
        raise _bad("Idempotency-Key must be 1-128 printable ASCII characters without spaces",
                   ["header", "idempotency-key"])
    if (table is None) == (table_path is None):
        raise _bad("give exactly one of: an uploaded `table` file or a server-side `table_path`",
                   ["body", "table"])
    if (images is None) == (images_path is None):
        raise _bad("give exactly one of: an uploaded `images` zip or a server-side `images_path`",
                   ["body", "images"])
    if (table_path or images_path) and settings.jobs_root is None:
        raise _bad("server-side paths are disabled on this server (MODALFUSE_JOBS_ROOT is not "
                   "set); upload the files instead", ["body", "table_path"])
    store = _store(request)
    staging = Path(tempfile.mkdtemp(prefix="upload-", dir=store.root))
    try:
        table_file, table_name = _stage_table(table, table_path, staging, settings)
        zip_file, images_dir = _stage_images(images, images_path, staging, settings)
        try:
            job, created = create_job(
                store, served.predictor, table_file=table_file, table_name=table_name,
                images_zip=zip_file, images_dir=images_dir, idempotency_key=idempotency_key,
                chunk_rows=settings.job_chunk_rows, limits=UploadLimits.from_settings(settings),
                images_name=Path(images.filename or "images.zip").name if images else "images")
        except UploadError as e:  # a JobInputError too: the inputs, never the server
            raise _bad(str(e), ["body"]) from None
        except IdempotencyConflict as e:
            raise HTTPException(409, detail=str(e)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    worker: JobWorker | None = getattr(request.app.state, "job_worker", None)
    if worker is not None:
        worker.ensure_started()
        worker.wake()
    return JSONResponse(_response(job), status_code=201 if created else 200,
                        headers={"Location": f"/v1/jobs/{job.id}"})


def _get(request: Request, job_id: str):
    if not _JOB_ID.match(job_id):
        raise HTTPException(404, detail=f"no job {job_id!r}: job ids are 32 hex characters")
    try:
        return _store(request).get(job_id)
    except JobNotFound:
        ttl = describe_duration(request.app.state.settings.job_ttl)
        raise HTTPException(404, detail=f"no job {job_id!r}: it never existed, or it finished "
                                        f"more than {ttl} ago (MODALFUSE_JOB_TTL) and was "
                                        "deleted with its results") from None


@router.get("/{job_id}", response_model=JobResponse, summary="State and progress of a job")
def get_job(job_id: str, request: Request, _: AuthDep) -> dict[str, Any]:
    return _response(_get(request, job_id))


@router.get("/{job_id}/result", summary="The scored rows: one per input row, in input order",
            responses={200: {"content": {"application/vnd.apache.parquet": {},
                                         "text/csv": {}}},
                       406: {"description": "Parquet asked of a server without pyarrow"},
                       409: {"description": "the job has not succeeded (yet)"}})
def get_result(job_id: str, request: Request, _: AuthDep,
               format: Annotated[Literal["parquet", "csv"] | None, Query(
                   description="parquet or csv; default parquet where the server has pyarrow "
                               "(the `parquet` extra), else csv")] = None) -> Response:
    job = _get(request, job_id)
    if job.state != "succeeded":
        raise HTTPException(409, detail=f"job {job_id} is {job.state} "
                                        f"({job.done_rows}/{job.total_rows} rows); the result "
                                        "exists once it has succeeded")
    fmt = format or ("parquet" if parquet_available() else "csv")
    if fmt == "parquet" and not parquet_available():
        raise HTTPException(406, detail=f"this server cannot write Parquet: {NO_PARQUET}; ask "
                                        "?format=csv")
    path = _store(request).result_file(job_id, fmt)
    if fmt == "csv":
        return FileResponse(path, media_type="text/csv", filename=f"{job_id}.csv")
    return FileResponse(path, media_type="application/vnd.apache.parquet",
                        filename=f"{job_id}.parquet")
