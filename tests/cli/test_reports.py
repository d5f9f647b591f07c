"""The two reports (docs/report.md in English, docs/informe.md in Spanish): `modalfuse report build`
fills the same tables with the same numbers in both, and no number outside a generated table is
typed by hand."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modalfuse.cli import app
from modalfuse.report_tables import BLOCK, TABLES, Phrases, language_of

DOCS = Path(__file__).resolve().parents[2] / "docs"
REPORTS = {"en": DOCS / "report.md", "es": DOCS / "informe.md"}
# A reference to numbered sections in the prose, in either language.
SECTION_REF = re.compile(r"\b(?:sections?|secci[oó]n(?:es)?|§)\s*\d+(?:(?:\s*,\s*|\s+(?:and|or|y|o)\s+)\d+)*",
                         re.I)
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?\s*%?(?![\w])")
# Design parameters a reader needs in the prose; everything else comes from a generated table
# or sits in code (`PHASH_THRESHOLD = 8`). Written without spaces ("20 %" and "20%" are one).
ALLOWED = {
    "96",  # px: the sprite size (IMAGE_SIZE)
    "8",  # bits: the near-duplicate pHash threshold (PHASH_THRESHOLD)
    "20%",  # the test split's share (test_size)
    "5",  # grouped CV folds (n_folds), and the sprites' generation
}


def numbers(text: str) -> list[str]:
    """Every number in `text`, spaces removed ("20 %" -> "20%")."""
    return [re.sub(r"\s+", "", n) for n in NUMBER.findall(text)]


def hand_typed(text: str) -> list[str]:
    """The numbers of `text` that no command wrote: outside generated blocks, code, link targets,
    images (their alt text is numbered by scripts/render_diagrams.py) and section numbers."""
    text = BLOCK.sub("", text)
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.M | re.S)  # fenced code
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"`[^`]+`", "", text)  # inline code, which may wrap a line
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)  # images
    text = re.sub(r"\[\d+(?:\.\d+)*\]\(#[^)]*\)", "", text)  # links to a numbered section
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"^(#+\s*)\d+(?:\.\d+)*\.?", r"\1", text, flags=re.M)  # heading numbers
    text = SECTION_REF.sub("", text)  # "section 6", "secciones 3 y 6"
    return [n for n in numbers(text) if n not in ALLOWED]


def block_numbers(text: str) -> dict[str, Counter[str]]:
    """Each generated block's name -> the multiset of the numbers inside it."""
    return {m["name"]: Counter(numbers(m["body"])) for m in BLOCK.finditer(text)}


def test_language_follows_the_file_name():
    assert language_of(Path("docs/informe.md")) == "es"
    assert language_of(Path("docs/report.md")) == "en"
    assert Phrases("es")("Produced by") == "Generado por"
    with pytest.raises(ValueError, match="en, es"):
        Phrases("fr")


def test_both_reports_show_the_same_numbers(tmp_path, monkeypatch):
    """Built from the committed sources only (an empty data folder): every table is in both
    reports, and each holds the same numbers in English and in Spanish."""
    shutil.copytree(DOCS, tmp_path / "docs")
    monkeypatch.setenv("MODALFUSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "build"])
    assert result.exit_code == 0, result.output

    english = (tmp_path / "docs" / "report.md").read_text()
    assert "<sub>Produced by `modalfuse report decisions`; refreshed by" in english
    assert "_Not measured yet: run `modalfuse data build`" in english  # no data folder here
    en_blocks = block_numbers(english)
    assert set(en_blocks) == set(TABLES)
    if not REPORTS["es"].exists():
        pytest.skip("docs/informe.md is not written yet")

    spanish = (tmp_path / "docs" / "informe.md").read_text()
    assert "<sub>Generado por `modalfuse report decisions`; actualizado por" in spanish
    assert "_Aún sin medir: ejecute `modalfuse data build`" in spanish
    es_blocks = block_numbers(spanish)
    assert set(es_blocks) == set(TABLES)
    for name in TABLES:
        assert es_blocks[name] == en_blocks[name], name


@pytest.mark.parametrize("lang", sorted(REPORTS))
def test_no_number_is_typed_by_hand(lang):
    path = REPORTS[lang]
    if not path.exists():
        pytest.skip(f"{path.name} is not written yet")
    found = hand_typed(path.read_text())
    assert not found, (f"{path.name}: numbers outside generated tables {found}; take them from a "
                       f"table, put a design parameter in code (`PHASH_THRESHOLD = 8`) or, if it "
                       f"must stay prose, add it to ALLOWED")


def test_the_checker_sees_what_it_should():
    text = ("## 2. Leakage\nWe got 0.617 and 12 %, see [2](#2-leakage) and [x](a/b-3.md).\n"
            "`line 1` `mlflow\nmodels 2` ![report diagram 4](img/report-4.svg) p50 gen-5 "
            "1e-6 96 px, sección 3, secciones 3 y 6, section 2\n```bash\nrun --rows 2000\n```\n"
            "<!-- BEGIN table:soak -->\n7\n<!-- END table:soak -->\n")
    assert hand_typed(text) == ["0.617", "12%", "6"]


def test_the_pdf_page_names_no_path_of_the_machine_that_builds_it():
    """The HTML printed to PDF embeds its images and unlinks other files: no absolute path."""
    import importlib.util

    repo = DOCS.parent
    script = repo / "scripts" / "report_pdf.py"
    spec = importlib.util.spec_from_file_location("report_pdf", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = module.to_html(DOCS / "report.md")
    assert "file://" not in page and str(repo) not in page
    assert "<img" in page and "data:image/" in page
