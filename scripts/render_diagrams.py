"""Render every ```mermaid block of the docs to docs/img/<doc>-<n>.svg and .png (`make report-img`).

Uses the pinned @mermaid-js/mermaid-cli of docs/tools/package.json (installed into .cache/node by
the Makefile) with the system Chromium (docs/tools/puppeteer.json). Right after each block it
writes one image line, `![<doc> diagram n](img/<doc>-<n>.svg)` ("diagrama" in informe*.md), so
the diagram shows where Mermaid is not rendered; running it again replaces that line, never
adds a second one. A diagram whose source has not changed since its last render is skipped.

    python scripts/render_diagrams.py [DOC.md ...] [--force]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DEFAULT_DOCS = [DOCS / n for n in ("report.md", "informe.md", "architecture.md", "operations.md")]
MMDC = ROOT / ".cache" / "node" / "node_modules" / ".bin" / "mmdc"
PUPPETEER_CONFIG = DOCS / "tools" / "puppeteer.json"
CACHE = ROOT / ".cache" / "mermaid"  # the source each image was last rendered from
MERMAID = re.compile(r"^```mermaid[ \t]*\n(?P<src>.*?)^```[ \t]*\n", re.M | re.S)


def image_line_pattern(doc: str) -> re.Pattern[str]:
    """An image line this script wrote for `doc`, with the blank line before it."""
    return re.compile(rf"\A\n?!\[{re.escape(doc)} diagrama? \d+\]\(img/{re.escape(doc)}-\d+\.svg\)[ \t]*\n")


def image_line(doc: str, n: int) -> str:
    """The line that shows diagram `n` of `doc` as a picture, in the doc's language."""
    word = "diagrama" if doc.startswith("informe") else "diagram"
    return f"![{doc} {word} {n}](img/{doc}-{n}.svg)\n"


def render(source: str, stem: str, force: bool) -> bool:
    """Write docs/img/<stem>.svg and .png from the Mermaid `source`; False when already current."""
    cached = CACHE / f"{stem}.mmd"
    outputs = [DOCS / "img" / f"{stem}.{ext}" for ext in ("svg", "png")]
    if not force and cached.exists() and cached.read_text() == source and all(
            o.exists() for o in outputs):
        return False
    CACHE.mkdir(parents=True, exist_ok=True)
    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"{stem}.input.mmd"
    work.write_text(source)
    for out in outputs:
        extra = ["--scale", "2"] if out.suffix == ".png" else []
        subprocess.run([str(MMDC), "--quiet", "--puppeteerConfigFile", str(PUPPETEER_CONFIG),
                        "--backgroundColor", "white", "--input", str(work), "--output", str(out),
                        *extra], check=True)
    cached.write_text(source)
    return True


def process(path: Path, force: bool) -> tuple[int, int]:
    """Render the diagrams of one doc and keep its image lines; (diagrams, rendered)."""
    doc, text = path.stem, path.read_text()
    pattern = image_line_pattern(doc)
    parts, pos, n, rendered = [], 0, 0, 0
    for m in MERMAID.finditer(text):
        n += 1
        rendered += render(m["src"], f"{doc}-{n}", force)
        old = pattern.match(text[m.end():])  # the line a previous run wrote, if any
        parts += [text[pos:m.end()], "\n", image_line(doc, n)]
        pos = m.end() + (old.end() if old else 0)
    parts.append(text[pos:])
    new = "".join(parts)
    if new != text:
        path.write_text(new)
    return n, rendered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("docs", nargs="*", type=Path, help="Markdown files (default: the four "
                        "docs with diagrams; a missing informe.md is skipped)")
    parser.add_argument("--force", action="store_true", help="render even unchanged diagrams")
    args = parser.parse_args()
    if not MMDC.exists():
        sys.stderr.write(f"{MMDC} is missing: run `make report-img`, which installs it\n")
        return 1
    started = time.perf_counter()
    for path in args.docs or [p for p in DEFAULT_DOCS if p.exists()]:
        n, rendered = process(path.resolve(), args.force)
        sys.stdout.write(f"{path.name}: {n} diagrams, {rendered} rendered, {n - rendered} unchanged\n")
    sys.stdout.write(f"diagrams done in {time.perf_counter() - started:.1f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
