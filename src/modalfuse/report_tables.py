"""Regenerate the tables of docs/report.md (and its Spanish twin docs/informe.md) from the
latest evaluation and benchmark outputs.

The report's prose is written by people; every table sits between
`<!-- BEGIN table:NAME -->` and `<!-- END table:NAME -->` and is rewritten by
`modalfuse report build` from the JSON that a project command produced. A table whose
source is missing says which command makes it, instead of showing a stale number.
Headers and captions go through `Phrases` (English or Spanish); the values are formatted
the same way in both, so the two reports show byte-identical numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from modalfuse.bench.load import CHECK_NAMES
from modalfuse.bench.soak import check_rows
from modalfuse.config import Settings
from modalfuse.errors import InvalidInput, MissingData
from modalfuse.markdown import markdown_table

TableFn = Callable[["Sources", "Phrases"], str]
TABLES: dict[str, tuple[str, TableFn]] = {}  # name -> (command that makes the source, renderer)


class MissingSource(MissingData):
    """The JSON a table is made from has not been produced yet."""


class Sources:
    """Where the measured outputs live: the data folder first, then committed copies in docs/."""

    def __init__(self, settings: Settings, docs: Path, dataset: str = "pokemon"):
        self.settings, self.docs, self.dataset = settings, docs, dataset

    def json(self, *candidates: Path) -> dict:
        """The first of `candidates` that exists, parsed; MissingSource names them all if none does."""
        for p in candidates:
            if p.exists():
                return json.loads(p.read_text())
        raise MissingSource(", ".join(str(c) for c in candidates))

    @property
    def dataset_dir(self) -> Path:
        """The built dataset the report is about."""
        return self.settings.dataset_dir(self.dataset)

    @property
    def bench_dir(self) -> Path:
        """Where `modalfuse bench ...` commands write their measurements."""
        return self.settings.reports_dir / "bench"


LANGUAGES = ("en", "es")

# English text of the tables -> its Spanish wording. Only prose goes through here: values
# (numbers, versions, file names, split and check identifiers) are never translated.
SPANISH: dict[str, str] = {
    # dataset
    "fact": "dato", "value": "valor", "dataset version": "versión del dataset",
    "rows (species)": "filas (especies)", "image files (front + views)":
        "ficheros de imagen (frontal + vistas)", "classes": "clases",
    "largest / smallest class": "clase mayor / menor", "source": "fuente",
    # split audit
    "split": "partición", "rows": "filas", "groups (families)": "grupos (familias)",
    "check": "comprobación", "blocking": "bloqueante", "result": "resultado",
    "numbers": "cifras", "yes": "sí", "no": "no", "pass": "pasa", "FAIL": "FALLA",
    # decisions
    "variant (LightGBM)": "variante (LightGBM)", "grouped-CV acc": "acc CV agrupada",
    "grouped-CV macro-F1": "macro-F1 CV agrupada", "test acc": "acc test",
    "test macro-F1": "macro-F1 test",
    "tabular + image stats, abilities used (default)":
        "tabular + estadísticas de imagen, con habilidades (por defecto)",
    "without abilities": "sin habilidades",
    "without image stats (tabular only)": "sin estadísticas de imagen (solo tabular)",
    "default, random (ungrouped) CV folds": "por defecto, folds de CV aleatorios (sin agrupar)",
    # batch
    "engine": "motor", "rows/s": "filas/s", "× the in-process Predictor": "× el Predictor en proceso",
    "predictor limit": "límite del Predictor", "model only": "solo el modelo",
    "local engine": "motor local", "ray engine": "motor ray",
    "ray engine with startup": "motor ray con arranque",
    "model": "modelo", "1-min load average": "carga media de 1 min",
    # serve
    "target": "objetivo", "concurrency": "concurrencia", "errors": "errores",
    "workers": "procesos", "serve image": "imagen de servicio",
    "API p50 at c=1 (ms)": "p50 de la API con c=1 (ms)",
    "API p99 at c=1 (ms)": "p99 de la API con c=1 (ms)",
    "API p50 / in-process p50 at c=1": "p50 de la API / p50 en proceso con c=1",
    "API req/s / MLflow req/s at c=16, same workers":
        "req/s de la API / req/s de MLflow con c=16, mismos procesos",
    "serve image size (MB, `make container-test`)":
        "tamaño de la imagen de servicio (MB, `make container-test`)",
    "in-process Predictor": "Predictor en proceso",
    # soak (check_rows labels carry numbers, so they are translated piece by piece)
    "measured": "medido", "statuses": "estados",
    "RSS growth after warm-up": "crecimiento de la RSS tras el calentamiento",
    "p99 of /v1/predict, last vs first minute": "p99 de /v1/predict, último frente a primer minuto",
    "prediction log peak": "pico del registro de predicciones", "5xx answers": "respuestas 5xx",
    "job files in the last minute": "ficheros de trabajos en el último minuto",
    "settled": "estable",
    # shadow
    "champion": "campeón", "challenger": "aspirante", "shadow": "sombra",
    "requests": "peticiones", "on": "sí", "off": "no",
    "With the shadow / without": "Con la sombra / sin ella", "Shadow": "Sombra",
    "scored": "puntuadas", "dropped": "descartadas", "Target": "Objetivo",
    "met": "cumplido", "not met": "no cumplido",
    # ablation
    "CV acc": "acc CV", "CV macro-F1": "macro-F1 CV", "CV ECE": "ECE CV",
    "out-of-fold macro-F1 gain over gbm (90 % interval)":
        "ganancia de macro-F1 out-of-fold sobre gbm (intervalo 90 %)",
    "test ECE": "ECE test", "champion (best CV macro-F1)": "campeón (mejor macro-F1 en CV)",
    # trust
    "request": "petición", "image + fields": "imagen + campos",
    "fields only (no image)": "solo campos (sin imagen)",
    "image only (no fields)": "solo imagen (sin campos)",
    "set coverage at 90 %": "cobertura del conjunto al 90 %",
    "ECE of a perfectly calibrated model": "ECE de un modelo perfectamente calibrado",
    "mean set size": "tamaño medio",
    "images": "imágenes", "flagged": "marcadas",
    "fruit photos (custom-dataset fixture)": "fotos de frutas (fixture del dataset propio)",
    "random noise": "ruido aleatorio", "rendered text": "texto renderizado",
    "photos of other things (synthetic scenes)": "fotos de otras cosas (escenas sintéticas)",
    "test sprites as heavy JPEG on white (quality 8)":
        "sprites de test como JPEG fuerte sobre blanco (calidad 8)",
    "test sprites scaled x3 and smoothed": "sprites de test escalados x3 y suavizados",
    "control: test sprites mirrored (in domain)": "control: sprites de test espejados (del dominio)",
    "in-domain test sprites": "sprites de test (del dominio)",
    "fields flagged on the test split": "campos marcados en la partición de test",
    # captions
    "Produced by": "Generado por", "refreshed by": "actualizado por",
    "Not measured yet: run": "Aún sin medir: ejecute", "looked for": "se buscó en",
}
# Pieces of the soak check labels (made by bench.soak.check_rows) that are words, not values.
SOAK_PIECES = ("RSS growth after warm-up", "p99 of /v1/predict, last vs first minute",
               "prediction log peak", "5xx answers", "job files in the last minute", "settled")


class Phrases:
    """The words of the generated tables in one language; values pass through untouched."""

    def __init__(self, lang: str = "en"):
        if lang not in LANGUAGES:
            raise InvalidInput(f"report language {lang!r} is not one of {', '.join(LANGUAGES)}")
        self.lang = lang
        self.words = SPANISH if lang == "es" else {}

    def __call__(self, text: str) -> str:
        """`text` in this language (unchanged when the table has no wording for it)."""
        return self.words.get(text, text)

    def within(self, text: str, pieces: tuple[str, ...]) -> str:
        """`text` with each of `pieces` it contains replaced by its wording (for labels holding values)."""
        for piece in pieces:
            text = text.replace(piece, self(piece))
        return text


def language_of(path: Path) -> str:
    """The language a report file is written in: "es" for informe*.md, else "en"."""
    return "es" if path.name.startswith("informe") else "en"


def table(name: str, command: str) -> Callable[[TableFn], TableFn]:
    """Decorator that registers a renderer for the report table `name`, made from the output of `command`."""
    def deco(fn: TableFn) -> TableFn:
        TABLES[name] = (command, fn)
        return fn

    return deco


def md_table(header: list[str], rows: list[list[object]]) -> str:
    """A report table: `markdown_table` with floats shown to three decimals."""
    return markdown_table(header, [[f"{v:.3f}" if isinstance(v, float) else v for v in r]
                                   for r in rows])


def _mean_sd(d: dict | None) -> str:
    return f"{d['mean']:.3f} ± {d['sd']:.3f}" if d else "-"


@table("dataset", "modalfuse data build")
def _dataset(src: Sources, t: Phrases) -> str:
    m = src.json(src.dataset_dir / "manifest.json")
    classes = sorted(m["classes"].items(), key=lambda kv: -kv[1])
    rows = [[t("dataset version"), m["version"]], [t("rows (species)"), m["rows"]],
            [t("image files (front + views)"), m["images"]], [t("classes"), len(classes)],
            [t("largest / smallest class"), f"{classes[0][0]} {classes[0][1]} / "
                                            f"{classes[-1][0]} {classes[-1][1]}"]]
    rows += [[f"{t('source')}: {k}", v] for k, v in m.get("sources", {}).items()]
    return md_table([t("fact"), t("value")], rows)


@table("split_audit", "modalfuse data split")
def _split(src: Sources, t: Phrases) -> str:
    a = src.json(src.dataset_dir / "split_audit.json")
    rows: list[list[object]] = [[s, v["rows"], v["groups"]] for s, v in a["per_split"].items()]
    out = md_table([t("split"), t("rows"), t("groups (families)")], rows)
    checks = [[c["name"], t("yes" if c["blocking"] else "no"), t("pass" if c["passed"] else "FAIL"),
               ", ".join(f"{k}={v}" for k, v in c["summary"].items()
                         if isinstance(v, int | float) and not isinstance(v, bool))]
              for c in a["checks"]]
    return out + "\n\n" + md_table([t("check"), t("blocking"), t("result"), t("numbers")], checks)


@table("decisions", "modalfuse report decisions")
def _decisions(src: Sources, t: Phrases) -> str:
    m = src.json(src.docs / "decisions.json")
    rows = [[t(k), _mean_sd(v["cv_acc"]), _mean_sd(v["cv_f1"]), v["test_acc"], v["test_f1"]]
            for k, v in m["variants"].items()]
    return md_table([t(h) for h in ("variant (LightGBM)", "grouped-CV acc", "grouped-CV macro-F1",
                                    "test acc", "test macro-F1")], rows)


@table("batch_bench", "modalfuse bench batch")
def _batch(src: Sources, t: Phrases) -> str:
    b = src.json(src.bench_dir / "bench_batch.json", src.docs / "results" / "bench_batch.json")
    rows = [[t(name.replace("_", " ")), e["rows_per_s"], e["ratio_to_limit"]]
            for name, e in b["engines"].items()]
    head = (f"`{b['command']}`, {b['rows']} {t('rows')}, {t('model')} `{b['model_version']}`, "
            f"{t('1-min load average')} {b['machine'].get('load_avg_1m', float('nan')):.1f}\n\n")
    return head + md_table([t("engine"), t("rows/s"), t("× the in-process Predictor")], rows)


@table("serve_bench", "modalfuse bench serve")
def _serve(src: Sources, t: Phrases) -> str:
    b = src.json(src.docs / "benchmarks" / "serve.json")
    rows = [[f"`{r.get('model', b['model_version'])}`", t(r["target"]), r.get("workers", 1),
             r["concurrency"], r["errors"], r["p50_ms"], r["p99_ms"], r["throughput_rps"]]
            for r in b["results"]]
    image = b.get("image")
    size = (f"; {t('serve image')} {image['size_mb']} MB (`make container-test`)"
            if image else "")
    checks = [[t(CHECK_NAMES[c["check"]][0]), f"`{c['model']}`",
               "" if c["workers"] is None else c["workers"],
               CHECK_NAMES[c["check"]][1].format(c["target"]), c["value"],
               t("yes" if c["pass"] else "no")] for c in b.get("checks", [])
              if isinstance(c, dict)]  # a file from before per-model checks has none
    return (f"`{b['command']}`, {b['created_at']}{size}\n\n"
            + md_table([t("model"), t("target"), t("workers"), t("concurrency"), t("errors"),
                        "p50 ms", "p99 ms", "req/s"], rows)
            + "\n\n" + md_table([t("check"), t("model"), t("workers"), t("target"),
                                  t("measured"), t("pass")], checks))


@table("soak", "modalfuse bench soak --minutes 10 --clients 4")
def _soak(src: Sources, t: Phrases) -> str:
    b = src.json(src.docs / "benchmarks" / "soak.json")
    head = (f"`{b['command']}`, {t('model')} `{b['model_version']}`, {t('statuses')} "
            f"{b['statuses']}; RSS {b['rss_start_mb']:.0f} → {b['rss_end_mb']:.0f} MB, p99 "
            f"{b['p99_start_ms']:.1f} → {b['p99_end_ms']:.1f} ms\n\n")
    rows: list[list[object]] = [[t.within(check, SOAK_PIECES), t.within(target, SOAK_PIECES),
                                 measured, t(passed)]
                                for check, target, measured, passed in check_rows(b)]
    return head + md_table([t("check"), t("target"), t("measured"), t("pass")], rows)


@table("shadow", "modalfuse bench shadow --requests 600")
def _shadow(src: Sources, t: Phrases) -> str:
    b = src.json(src.bench_dir / "bench_shadow.json", src.docs / "benchmarks" / "shadow.json")
    rows: list[list[object]] = [
        [r["concurrency"], t("on" if r["shadow"] else "off"), r["requests"], r["errors"],
         r["p50_ms"], r["p99_ms"], r["throughput_rps"]] for r in b["results"]]
    ratios = ", ".join(f"c={c}: p50 ×{v['p50']:.3f}, p99 ×{v['p99']:.3f}"
                       for c, v in b["ratios"].items())
    shadowed = ", ".join(f"c={c}: {v['scored']} {t('scored')}, {v['dropped']} {t('dropped')}"
                         for c, v in b["shadow"].items())
    verdict = t("met") if b["target"]["met"] else f"**{t('not met')}**"
    challenger = b.get("challenger_version", b["challenger"])
    return (f"{t('champion')} `{b['model_version']}`, {t('challenger')} `{challenger}`, "
            f"{b['machine']['cpus']} CPUs, {b['created_at']}\n\n"
            + md_table(["c", t("shadow"), t("requests"), t("errors"), "p50 ms", "p99 ms", "req/s"],
                       rows)
            + f"\n\n{t('With the shadow / without')}: {ratios}. {t('Shadow')}: {shadowed}. "
              f"{t('Target')} p50 ×{b['target']['max_p50_ratio']}: {verdict}.")


ABLATION_COMMAND = ("modalfuse ablation --model gbm_tabular --model gbm --model cnn --model "
                    "gbm_image --model stacking --model gbm_embed --model linear --model gbm_linear "
                    "--epochs 6 --doc docs/ablation.md")


def _gain(r: dict) -> str:
    g = r.get("gain_over_baseline")
    if not g or r["model"] == "gbm":
        return "–"
    return f"{g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"


@table("ablation", ABLATION_COMMAND)
def _ablation(src: Sources, t: Phrases) -> str:
    a = src.json(src.docs / "ablation.json")
    rows: list[list[object]] = [[f"`{r['model']}`" + (f" ({t('champion (best CV macro-F1)')})"
                                   if r["model"] == a["champion"] else ""),
             _mean_sd(r["cv"]["accuracy"]), _mean_sd(r["cv"]["macro_f1"]), _mean_sd(r["cv"]["ece"]),
             _gain(r), f"{r['test']['accuracy']:.3f}", f"{r['test']['macro_f1']:.3f}",
             f"{r['test']['ece']:.3f}"] for r in a["results"]]
    return md_table([t(h) for h in ("model", "CV acc", "CV macro-F1", "CV ECE",
                                    "out-of-fold macro-F1 gain over gbm (90 % interval)",
                                    "test acc", "test macro-F1", "test ECE")], rows)


@table("trust", ABLATION_COMMAND)
def _trust(src: Sources, t: Phrases) -> str:
    rel = src.json(src.docs / "ablation.json")["reliability"]
    names = {"both": "image + fields", "fields": "fields only (no image)",
             "image": "image only (no fields)"}
    rows: list[list[object]] = []
    for mode, m in rel["cases"].items():
        c = rel["conformal"].get(mode, {}).get("0.9")
        floor = m.get("ece_floor")
        rows.append([t(names[mode]), f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}",
                     f"{m['ece']:.3f}", f"{floor['mean']:.3f}" if floor else "-",
                     f"{c['coverage']:.3f}" if c else "-", f"{c['mean_size']:.2f}" if c else "-"])
    out = md_table([t("request"), t("test acc"), t("test macro-F1"), t("test ECE"),
                    t("ECE of a perfectly calibrated model"), t("set coverage at 90 %"),
                    t("mean set size")], rows)
    ood = rel.get("ood")
    if ood:
        fam = [[t("in-domain test sprites"), rel["rows"], "-", f"{ood['test_flag_rate']:.1%}"]]
        fam += [[t(name), f["images"], f"{f['auroc']:.3f}", f"{f['flag_rate']:.1%}"]
                for name, f in ood["families"].items()]
        out += "\n\n" + md_table([t("images"), "n", "AUROC", t("flagged")], fam)
    fo = rel.get("field_ood")
    if fo:
        out += f"\n\n{t('fields flagged on the test split')}: {fo['test_flag_rate']:.1%}"
    return out


def render(src: Sources, name: str, t: Phrases | None = None) -> str:
    """One table's markdown, or a line naming the command to run when its source is missing."""
    t = t or Phrases()
    command, fn = TABLES[name]
    try:
        body = fn(src, t)
    except MissingSource as e:
        return f"_{t('Not measured yet: run')} `{command}` ({t('looked for')} {e})._"
    return (f"{body}\n\n<sub>{t('Produced by')} `{command}`; {t('refreshed by')} "
            f"`modalfuse report build`.</sub>")


BLOCK = re.compile(r"(<!-- BEGIN table:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- END table:(?P=name) -->)",
                   re.DOTALL)


def build_report(path: Path, src: Sources, lang: str | None = None) -> list[str]:
    """Rewrite every table block of `path` in `lang` (default: `language_of(path)`); return
    the names of the tables refreshed."""
    t = Phrases(lang or language_of(path))
    text = path.read_text()
    done: list[str] = []

    def sub(m: re.Match) -> str:
        name = m["name"]
        if name not in TABLES:
            return m.group(0)
        done.append(name)
        return f"{m.group(1)}{render(src, name, t)}\n{m.group(4)}"

    path.write_text(BLOCK.sub(sub, text))
    return done
