"""The Gradio UI at /ui: predict and explain one record, score a batch file, see the model.

It is built from the API app itself and calls that app's Predictor and Explainer, so what
the UI shows is what `/v1/predict` and `/v1/explain` answer, for the same model_version.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from fastapi import FastAPI
from PIL import Image

from modalfuse.config import Settings
from modalfuse.features.image import ImageError, load_first_frame
from modalfuse.inference.batch import BatchInputError, iter_row_chunks, load_image, score_frame
from modalfuse.inference.explain import (
    DEFAULT_OPACITY,
    Explainer,
    Explanation,
    heatmap_overlay_png,
)
from modalfuse.inference.predictor import PredictionInputError, Predictor, table_records
from modalfuse.inference.safe_csv import write_csv
from modalfuse.inference.uploads import (
    UploadError,
    UploadLimits,
    check_table,
    public_message,
    safe_extract_zip,
)
from modalfuse.markdown import markdown_table
from modalfuse.spec import DatasetSpec, FieldKind, FieldSpec
from modalfuse.ui.views import (
    CONTRIBUTION_COLUMNS,
    contributions_frame,
    legend_html,
    share_html,
    status_markdown,
    top_classes_html,
    trust_html,
)

log = logging.getLogger("modalfuse.ui")

UI_PATH = "/ui"
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"]
SCRATCH_MAX_AGE_S = 3600
SCORE_CHUNK_ROWS = 256  # rows scored (and read) at a time in the Batch tab
PREVIEW_ROWS = 50


def scratch_root() -> Path:
    """Where the UI's per-request folders go: under the system temp folder, since gradio
    serves files only from there or its cache."""
    return Path(tempfile.gettempdir()) / "modalfuse-ui"


def scratch_dir(prefix: str, base: Path | None = None) -> Path:
    """A fresh folder for one UI request under `base` (default `scratch_root()`); earlier
    requests' folders older than an hour are removed."""
    base = scratch_root() if base is None else Path(base)
    base.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in base.iterdir():
        try:
            if now - old.stat().st_mtime > SCRATCH_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue  # removed by a concurrent request
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


# ---- one record ----------------------------------------------------------------------

BOOLEAN_CHOICES = ["true", "false"]  # a dropdown, not a checkbox: "not given" is a value too
PROMPT = ("Fill in the fields, upload an image, or both (see which inputs this model takes "
          "on the left), then press **Predict and explain**.")
EMPTY_FORM = "**Empty form.** Fill it in, or prefill it from the dataset or the bundle's example."


def record_from_inputs(spec: DatasetSpec, values: list[Any]) -> dict[str, Any]:
    """UI widget values (in spec.fields order) -> a raw record; empty widgets are left out."""
    record: dict[str, Any] = {}
    for f, v in zip(spec.fields, values, strict=True):
        if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
            continue
        if f.kind == FieldKind.boolean and isinstance(v, str):
            v = v.strip().lower() == "true"
        elif f.kind == FieldKind.numeric and isinstance(v, str):
            v = _number(v.strip())
        record[f.name] = list(v) if f.kind == FieldKind.multi and isinstance(v, list | tuple) else v
    return record


def _number(text: str) -> float | str:
    """A numeric box's text as a number; text that is none stays text, for the record's
    validation to name."""
    try:
        return float(text)
    except ValueError:
        return text


def input_values(spec: DatasetSpec, record: dict[str, Any]) -> list[Any]:
    """A raw record -> widget values in spec.fields order (numbers as text, "" when absent;
    multi-valued fields as lists; booleans as "true"/"false"; None where there is no value)."""
    out: list[Any] = []
    for f in spec.fields:
        v = record.get(f.name)
        if isinstance(v, float) and np.isnan(v):
            v = None
        if f.kind == FieldKind.multi:
            v = [s for s in v.split("|") if s] if isinstance(v, str) else list(v or [])
        elif f.kind == FieldKind.boolean:
            v = None if v is None else ("true" if bool(v) else "false")
        elif f.kind == FieldKind.numeric:
            v = "" if v is None else f"{v:g}" if isinstance(v, int | float) else str(v)
        out.append(v)
    return out


def empty_values(spec: DatasetSpec) -> list[Any]:
    """The widget values of an empty form."""
    return input_values(spec, {})


def prefill(table: pd.DataFrame, images_dir: Path, spec: DatasetSpec, display: str,
            name: str) -> tuple[str, list[Any]]:
    """(path of a copy of the row's image, widget values) of the dataset row called `name`."""
    rows = table[table[display].astype(str) == str(name)]
    if rows.empty:
        raise UploadError(f"no row with {display} {name!r} in the dataset")
    row = rows.iloc[:1]
    image_name = row[spec.image_column].iloc[0]
    data = load_image(images_dir, image_name)
    if data is None:
        raise UploadError(f"the image {image_name!r} of {name!r} is missing from the dataset")
    path = scratch_dir("prefill-") / Path(str(image_name)).name
    path.write_bytes(data)
    return str(path), input_values(spec, table_records(spec, row)[0])


def preview_image(predictor: Predictor, data: bytes | None, size: int = 192
                  ) -> tuple[Image.Image | None, str]:
    """(the uploaded image, its first frame enlarged to about `size` pixels, or None; a
    caption) within the Predictor's image limits, so a preview never decodes more."""
    if not data:
        return None, ("No image: the prediction is made from the fields alone, if this "
                      "model can (see above).")
    try:
        header = predictor.open_header(data)
        fmt = header.format or "image"
        img = load_first_frame(header, predictor.max_image_pixels)
    except ImageError as e:
        return None, f"This file cannot be read as an image: {e}"
    w, h = img.size
    caption = f"Uploaded image: {w} × {h} px, {fmt}."
    img = img.convert("RGBA")
    factor = max(1, size // max(w, h))  # pixel art is enlarged by a whole factor, sharp
    if factor > 1:
        img = img.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    return img, caption


def modalities_markdown(predictor: Predictor) -> str:
    """Which inputs the served model can predict from."""
    ok = predictor.modalities
    cases = ["fields + image"] + [name for mode, name in (("fields", "fields alone"),
                                                          ("image", "image alone")) if ok[mode]]
    return ("This model predicts from: **" + "**, **".join(cases) + "**."
            + ("" if ok["fields"] else " An image is required.")
            + ("" if ok["image"] else " The required fields (*) are needed."))


@dataclass
class PredictView:
    """Everything the Predict tab shows of one request; `heat` is what the opacity slider
    redraws the heatmap from (None without a heatmap)."""

    status: str
    trust: str = ""
    top: str = ""
    heatmap: Image.Image | None = None
    legend: str = ""
    share: str = ""
    contributions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=CONTRIBUTION_COLUMNS))
    heat: dict[str, Any] | None = None
    explanation: Explanation | None = None

    def outputs(self) -> list[Any]:
        """The values of the tab's output components, in `PREDICT_OUTPUTS` order."""
        return [self.status, self.trust, self.top, self.heatmap, self.legend, self.share,
                self.contributions, self.heat]


def heatmap_image(heat: dict[str, Any] | None, opacity: float) -> Image.Image | None:
    """The image and its heatmap side by side at `opacity`, from a PredictView's `heat`."""
    if heat is None:
        return None
    png = heatmap_overlay_png(heat["image"], heat["heatmap"], heat["patch"], scale=3,
                              opacity=opacity, beside=True)
    return Image.open(io.BytesIO(png))


def explain_one(explainer: Explainer, image: bytes | None, values: list[Any], top_k: int = 5,
                opacity: float = DEFAULT_OPACITY) -> PredictView:
    """One explained prediction as the Predict tab shows it; a missing image or missing
    fields are scored from the other modality when the model can."""
    predictor = explainer.predictor
    spec = predictor.spec
    record = record_from_inputs(spec, values)
    if not image and not record:
        return PredictView("**Nothing to predict from:** upload an image, fill in the "
                           "fields, or both.")
    if not image and not predictor.supports("fields"):
        return PredictView("**Upload an image first** (PNG, JPEG, GIF, WebP or BMP): this "
                           "model cannot predict from the fields alone.")
    try:
        e = explainer.explain(record, image or None)
    except PredictionInputError as err:
        problems = "\n".join(f"- **{k}**: {v}" for k, v in err.errors[0].items())
        return PredictView(f"**This input cannot be scored:**\n{problems}")
    heat = None
    if e.heatmap is not None:
        heat = {"image": e.image, "heatmap": e.heatmap, "patch": e.patch_size}
    return PredictView(
        status=status_markdown(e),
        trust=trust_html(e.prediction),
        top=top_classes_html(e.prediction["probabilities"], top_k),
        heatmap=heatmap_image(heat, opacity),
        legend=legend_html(e),
        share=share_html(e),
        contributions=contributions_frame(e, spec.image_column),
        heat=heat,
        explanation=e,
    )


# ---- batch ---------------------------------------------------------------------------

def score_upload(predictor: Predictor, table_path: str | None, zip_path: str | None,
                 out_dir: Path, progress: Any = None, settings: Settings | None = None
                 ) -> tuple[str, str | None, pd.DataFrame]:
    """(summary, path of the predictions CSV, preview) for an uploaded table + zip of images.

    The upload is checked and unpacked by `inference.uploads` with the same limits as
    `/v1/jobs` (the row limit lowered to `max_ui_batch_rows`), its rows read a chunk at a
    time. `out_dir` is this request's own folder: only the predictions stay in it, and it
    is removed whole unless scoring succeeded. A refusal or a failure is a message without
    server paths, never a traceback.
    """
    spec = predictor.spec
    if not table_path:
        return "**Upload a table** (.csv or .parquet) with one row per record.", None, pd.DataFrame()
    if not zip_path:
        return (f"**Upload a zip of the images** named in the `{spec.image_column}` column.",
                None, pd.DataFrame())
    settings = Settings() if settings is None else settings
    limits = UploadLimits.from_settings(settings, max_rows=settings.max_ui_batch_rows)
    table, table_name = Path(table_path), Path(table_path).name
    images_dir = out_dir / "images"
    scored = False
    try:
        shape = check_table(table, table_name, spec.image_column, limits.max_rows)
        safe_extract_zip(Path(zip_path), images_dir, limits, Path(zip_path).name)
        out = out_dir / "predictions.csv"
        try:
            summary, preview = _score_to_csv(predictor, table, images_dir, out, shape.rows,
                                             progress)
        except BatchInputError as e:  # a table that breaks after its header and footer
            raise UploadError(public_message(str(e), table, table_name)) from None
        scored = True
        return summary, str(out), preview
    except UploadError as e:
        return f"**This upload cannot be scored:** {e}", None, pd.DataFrame()
    except Exception:  # a server fault: logged with its traceback, shown without internals
        log.exception("UI batch scoring failed")
        return ("**This upload could not be scored** because of an error on the server; it "
                "has been logged."), None, pd.DataFrame()
    finally:
        shutil.rmtree(images_dir, ignore_errors=True)  # only the predictions are kept
        if not scored:
            shutil.rmtree(out_dir, ignore_errors=True)


def _score_to_csv(predictor: Predictor, table: Path, images_dir: Path, out: Path, total: int,
                  progress: Any) -> tuple[str, pd.DataFrame]:
    """Score a table chunk by chunk into a CSV; (summary, its first rows)."""
    spec = predictor.spec
    done, errors = 0, 0
    preview: list[pd.DataFrame] = []
    for chunk in iter_row_chunks(table, SCORE_CHUNK_ROWS):
        result = score_frame(predictor, chunk.rows, images_dir,
                             from_text=table.suffix.lower() == ".csv")  # see parse_record
        result.insert(0, "row", np.arange(chunk.start, chunk.start + len(result)))
        write_csv(result, out, mode="a" if done else "w", header=not done)  # escaped cells
        done += len(result)
        errors += int(result["error"].notna().sum())
        if sum(len(p) for p in preview) < PREVIEW_ROWS:
            cols = [c for c in (spec.id_column, "row", "predicted", "error") if c in result]
            preview.append(result[cols])
        if progress is not None:
            progress(done / max(total, 1), desc="scoring")
    summary = (f"Scored **{done}** rows with model `{predictor.model_version}`: "
               f"{done - errors} predicted, {errors} with an error (see the `error` column).")
    first = pd.concat(preview, ignore_index=True) if preview else pd.DataFrame()
    return summary, first.head(PREVIEW_ROWS)


def batch_upload(predictor: Predictor, settings: Settings, table_path: str | None,
                 zip_path: str | None, progress: Any = None, base: Path | None = None
                 ) -> tuple[str, str | None, pd.DataFrame]:
    """What the Batch tab runs: `score_upload` in a fresh folder under `base` (default
    `scratch_root()`), which is gone again unless the predictions are in it."""
    return score_upload(predictor, table_path, zip_path, scratch_dir("batch-", base), progress,
                        settings)


# ---- model ---------------------------------------------------------------------------

def model_markdown(predictor: Predictor) -> str:
    """The model card shown in the UI: kind, dataset, classes and its CV and test metrics."""
    meta = predictor.bundle.meta
    ds = meta.get("dataset", {})
    lines = [f"### Model `{predictor.model_version}`",
             f"- kind: `{meta.get('model', {}).get('kind')}`; created {meta.get('created_at')}",
             f"- dataset: `{ds.get('name')}` version `{ds.get('version')}`; "
             f"{ds.get('train_rows')} training rows, {ds.get('test_rows')} test rows",
             f"- classes ({len(predictor.labels)}): {', '.join(predictor.labels)}", ""]
    metrics = meta.get("metrics") or {}
    cv, test = metrics.get("cv") or {}, metrics.get("test") or {}
    if cv or test:
        rows = []
        for key in ("accuracy", "macro_f1", "ece", "log_loss"):
            c = cv.get(key)
            cv_text = f"{c['mean']:.3f} ± {c['sd']:.3f}" if c else "-"
            test_text = f"{test[key]:.3f}" if key in test else "-"
            rows.append([key, cv_text, test_text])
        lines.append(markdown_table(["metric", "grouped CV (mean ± sd)", "test"], rows))
        lines.append("\n(the metrics saved in the bundle by `modalfuse train`)")
    return "\n".join(lines)


async def model_card_markdown(app: FastAPI) -> str:
    """The model card the API publishes at GET /v1/model/card, if it publishes one."""
    import httpx

    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://ui") as client:
            r = await client.get("/v1/model/card")
    except Exception as e:  # the card is optional; the tab must still render
        log.warning("model card request failed: %s", e)
        return f"The model card could not be read: {e}"
    if r.status_code == 404:
        return "No model card is published for this model (GET /v1/model/card: 404)."
    if r.status_code != 200:
        return f"The model card is not available (GET /v1/model/card: {r.status_code})."
    if "json" not in r.headers.get("content-type", ""):
        return r.text  # the card is markdown
    card = r.json()
    if isinstance(card, dict) and isinstance(card.get("markdown"), str):
        return card["markdown"]
    return "```json\n" + json.dumps(card, indent=2, default=str) + "\n```"


# ---- the app -------------------------------------------------------------------------

def _widget(f: FieldSpec, vocab: list[str], value: Any) -> gr.Textbox | gr.Dropdown:
    """The input of one field. A number is typed in a text box: gradio's Number box cannot
    be empty (it sends 0), and an absent value must stay absent."""
    label = f"{f.name}" + (" *" if f.required else "")
    info = f.description or None
    elem_id = f"mf-field-{f.name}"
    if f.kind == FieldKind.numeric:
        rng = f" ({f.min:g}-{f.max:g})" if f.min is not None and f.max is not None else ""
        return gr.Textbox(value=value, label=label, info=(info or "") + rng, elem_id=elem_id,
                          placeholder="(not given)", max_lines=1)
    if f.kind == FieldKind.boolean:
        return gr.Dropdown(choices=BOOLEAN_CHOICES, value=value, label=label, info=info,
                           elem_id=elem_id)
    choices = list(f.categories or [v for v in vocab if v != "__other__"])
    if f.kind == FieldKind.categorical:
        return gr.Dropdown(choices=choices, value=value, label=label, info=info,
                           allow_custom_value=not f.categories, elem_id=elem_id)
    return gr.Dropdown(choices=choices, value=value or [], multiselect=True, label=label,
                       info=info, allow_custom_value=not f.categories, elem_id=elem_id)


def dataset_rows(predictor: Predictor, settings: Settings) -> tuple[pd.DataFrame, Path] | None:
    """The bundle's dataset table, if that dataset is present under the data folder."""
    name = predictor.bundle.meta.get("dataset", {}).get("name") or predictor.spec.name
    root = settings.dataset_dir(name)
    spec = predictor.spec
    try:
        table = pd.read_parquet(root / spec.table)
    except (FileNotFoundError, OSError, ValueError):
        return None
    if spec.image_column not in table or not (root / "images").is_dir():
        return None
    return table, root / "images"


def header_markdown(predictor: Predictor) -> str:
    """The page heading: what the UI predicts and which model version answers."""
    spec = predictor.spec
    return (f"## modalfuse · predict **{spec.target}** of a `{spec.name}` record\n"
            f"Model `{predictor.model_version}` — the same one the API serves.")


def build_ui(app: FastAPI) -> gr.Blocks:
    """The UI of an API app. Every call reads the model the app's holder serves then, so
    after an /admin/reload the UI explains the newly served model too."""
    holder = app.state.model_holder
    predictor: Predictor = holder.current.predictor  # for the form: a reload keeps the inputs
    settings: Settings = app.state.settings
    # delete_cache: gradio's copies of uploads and results go after an hour.
    with gr.Blocks(title=f"modalfuse · {predictor.spec.name}", analytics_enabled=False,
                   delete_cache=(SCRATCH_MAX_AGE_S, SCRATCH_MAX_AGE_S)) as demo:
        header = gr.Markdown(header_markdown(predictor), elem_id="mf-header")
        with gr.Tab("Predict", id="predict"):
            predict_tab(holder, predictor, settings)
        with gr.Tab("Batch", id="batch"):
            batch_tab(holder, settings, predictor.spec)
        with gr.Tab("Model", id="model"):
            model_md = model_tab(app, predictor)

        def _current():
            served = holder.current.predictor  # one model for both panes
            return header_markdown(served), model_markdown(served)

        demo.load(_current, [], [header, model_md])
    return demo


def predict_tab(holder, predictor: Predictor, settings: Settings) -> None:
    """The Predict tab (inside a gr.Blocks): image, fields, prefill, and the explained answer."""
    spec = predictor.spec
    vocab = predictor.bundle.preprocessor.tabular_.vocab_ or {}
    example = predictor.bundle.meta.get("example") or {}
    blank = empty_values(spec)
    data = dataset_rows(predictor, settings)
    display = spec.display_column or spec.id_column
    names: list[str] = [str(v) for v in data[0][display]] if data is not None else []
    with gr.Row():
        with gr.Column(scale=1):
            source_md = gr.Markdown(EMPTY_FORM, elem_id="mf-source")
            source = gr.State(EMPTY_FORM)  # where the form was filled from, before any edit
            gr.Markdown(modalities_markdown(predictor), elem_id="mf-modes")
            row_choice = (gr.Dropdown(choices=names, value=None, label=f"Prefill from the "
                                      f"dataset ({display})", elem_id="mf-species")
                          if names else None)
            with gr.Row():
                example_btn = gr.Button("Load the bundle's example", size="sm",
                                        elem_id="mf-example")
                clear_btn = gr.Button("Clear the form", size="sm", elem_id="mf-clear")
            with gr.Row():
                image_file = gr.File(label="Image (PNG, JPEG, GIF, WebP, BMP)", type="binary",
                                     file_types=IMAGE_TYPES, elem_id="mf-sprite")
                preview = gr.Image(label="Uploaded image", type="pil", format="png",
                                   interactive=False, height=200, elem_id="mf-preview")
            preview_caption = gr.Markdown("No image uploaded.", elem_id="mf-preview-caption")
            with gr.Accordion("Fields (* required)", open=True):
                widgets = []
                for i in range(0, len(spec.fields), 3):  # three to a row keeps it on screen
                    with gr.Row():
                        widgets += [_widget(f, vocab.get(f.name, []), v) for f, v in
                                    zip(spec.fields[i:i + 3], blank[i:i + 3], strict=True)]
            go = gr.Button("Predict and explain", variant="primary", elem_id="mf-go")
        with gr.Column(scale=1):
            status = gr.Markdown(PROMPT, elem_id="mf-status")
            trust = gr.HTML("", elem_id="mf-trust")
            top = gr.HTML("", elem_id="mf-top")
            heat = gr.Image(label="Heatmap (occlusion): the image, and the heatmap over it "
                            "in grey", type="pil", format="png", interactive=False,
                            elem_id="mf-heatmap")
            legend = gr.HTML("", elem_id="mf-legend")
            opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05,
                                label="Heatmap opacity", elem_id="mf-opacity")
            share = gr.HTML("", elem_id="mf-share")
            contrib = gr.Dataframe(value=pd.DataFrame(columns=CONTRIBUTION_COLUMNS),
                                   label="Contributions (percentage points of the predicted "
                                   "class's probability)", interactive=False,
                                   elem_id="mf-contrib")
            heat_state = gr.State(None)
    outputs = [status, trust, top, heat, legend, share, contrib, heat_state]
    cleared = PredictView(PROMPT).outputs()

    def _predict(image_bytes, alpha, *values):
        return explain_one(holder.current.explainer, image_bytes, list(values),
                           opacity=alpha).outputs()

    go.click(_predict, [image_file, opacity, *widgets], outputs)
    opacity.change(heatmap_image, [heat_state, opacity], [heat], show_progress="hidden")

    # Any change of an input (by the user or a prefill) clears the answer to the old input.
    def _image_changed(image_bytes):
        return [*preview_image(holder.current.predictor, image_bytes), *cleared]

    image_file.change(_image_changed, [image_file], [preview, preview_caption, *outputs],
                  show_progress="hidden")
    gr.on([w.change for w in widgets], lambda: cleared, [], outputs, show_progress="hidden")
    # An edit by hand says so under the form's source.
    gr.on([image_file.upload, image_file.clear, *[w.input for w in widgets]],
          lambda src: src if src == EMPTY_FORM else f"{src} *Edited since.*",
          [source], [source_md], show_progress="hidden")

    def _fill(path: str | None, values: list[Any], text: str) -> list[Any]:
        return [path, *values, text, text]

    def _example():
        path = None
        if example.get("image_base64"):
            path = scratch_dir("example-") / "example.png"
            path.write_bytes(base64.b64decode(example["image_base64"]))
        text = "**Filled from the bundle's example record** (its fields and image)."
        return _fill(str(path) if path else None, input_values(spec, example.get("fields", {})),
                     text)

    form = [image_file, *widgets, source_md, source]
    example_btn.click(_example, [], form)
    clear_btn.click(lambda: _fill(None, blank, EMPTY_FORM), [], form)
    if row_choice is not None and data is not None:
        table, images_dir = data

        def _prefill(name):
            if not name:
                return [gr.update()] * len(form)
            try:
                path, values = prefill(table, images_dir, spec, display, name)
            except UploadError as e:
                raise gr.Error(str(e)) from None
            return _fill(path, values, f"**Filled from the dataset row {display} = "
                                       f"{name}** (its fields and image).")

        row_choice.change(_prefill, [row_choice], form)


def batch_tab(holder, settings: Settings, spec: DatasetSpec) -> None:
    """The Batch tab (inside a gr.Blocks): a table and a zip of images in, a CSV out."""
    gr.Markdown(f"Score a table (.csv or .parquet, one row per record, the image file "
                f"name in column `{spec.image_column}`) with a zip of the images. Bad "
                "rows get an `error`; every other row is scored.")
    with gr.Row():
        table_file = gr.File(label="Table (.csv, .parquet)", type="filepath",
                             file_types=[".csv", ".parquet"], elem_id="mf-batch-table")
        zip_file = gr.File(label="Images (.zip)", type="filepath", file_types=[".zip"],
                           elem_id="mf-batch-zip")
    run = gr.Button("Score the file", variant="primary", elem_id="mf-batch-go")
    batch_status = gr.Markdown(elem_id="mf-batch-status")
    batch_out = gr.File(label="Predictions (CSV)", interactive=False,
                        elem_id="mf-batch-out")
    batch_preview = gr.Dataframe(value=pd.DataFrame(columns=["row", "predicted", "error"]),
                                 label="First rows", interactive=False)

    def _batch(tpath, zpath, progress=gr.Progress()):
        return batch_upload(holder.current.predictor, settings, tpath, zpath, progress)

    run.click(_batch, [table_file, zip_file], [batch_status, batch_out, batch_preview])


def model_tab(app: FastAPI, predictor: Predictor) -> gr.Markdown:
    """The Model tab (inside a gr.Blocks): version, metrics and the model card on request;
    returns the pane the page refreshes on load."""
    model_md = gr.Markdown(model_markdown(predictor), elem_id="mf-model")
    card = gr.Markdown("Press the button to read the model card, if one is published.")
    card_btn = gr.Button("Show the model card", size="sm")

    async def _card():
        return await model_card_markdown(app)

    card_btn.click(_card, [], [card])
    return model_md


def mount_ui(app: FastAPI, path: str = UI_PATH) -> FastAPI:
    """Mount the UI into the API app (same process, same Predictor)."""
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return gr.mount_gradio_app(app, build_ui(app), path=path, theme=theme, ssr_mode=False,
                               footer_links=["api"], mcp_server=False)
