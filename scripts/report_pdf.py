"""Print docs/report.md and docs/informe.md to PDF for offline reading (`make report-pdf`).

Markdown -> HTML with the `markdown` package (tables, fenced code, GitHub-style heading ids),
each ```mermaid block replaced by its picture from docs/img (made by scripts/render_diagrams.py),
every local image embedded as a data URI and the CSS of docs/tools/report.css inlined, so
nothing is fetched; then the system Chromium prints it. The HTML is kept in .cache/pdf.

    python scripts/report_pdf.py [DOC.md ...]
"""

from __future__ import annotations

import argparse
import base64
import html
import re
import subprocess
import sys
import time
from pathlib import Path

import markdown

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DEFAULT_DOCS = [DOCS / "report.md", DOCS / "informe.md"]
CSS = DOCS / "tools" / "report.css"
WORK = ROOT / ".cache" / "pdf"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--no-pdf-header-footer"]
MERMAID = re.compile(r"^```mermaid[ \t]*\n.*?^```[ \t]*\n", re.M | re.S)
MARKER = re.compile(r"^<!-- (BEGIN|END) table:[a-z_]+ -->[ \t]*$", re.M)
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
# An unindented line of text (not a list item) directly followed by a list item.
LIST_AFTER_TEXT = re.compile(r"^(?![ \t]|(?:[-*+]|\d+\.)[ \t])([^\n]*\S[^\n]*)\n(?=[-*+][ \t])", re.M)
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".gif": "image/gif"}


def github_slug(value: str, separator: str = "-") -> str:
    """Heading ids as GitHub makes them, so the docs' `#1-dataset-...` links work in the PDF."""
    value = re.sub(r"<[^>]+>", "", value).strip().lower()
    return re.sub(r"[^\w\- ]", "", value).replace(" ", separator)


def with_pictures(text: str, doc: str) -> str:
    """`text` with each mermaid block replaced by its PNG and the SVG line that follows it dropped."""
    count = 0

    def picture(m: re.Match) -> str:
        nonlocal count
        count += 1
        png = DOCS / "img" / f"{doc}-{count}.png"
        if not png.exists():
            sys.exit(f"{png} is missing: run `make report-img` first")
        return f"![{doc} {count}](img/{png.name})\n"

    text = MERMAID.sub(picture, text)
    return re.sub(rf"^!\[{re.escape(doc)} diagrama? \d+\]\(img/[^)]+\.svg\)[ \t]*\n", "", text,
                  flags=re.M)


def loosen_lists(text: str) -> str:
    """A blank line before a list that follows a paragraph (GitHub needs none, Python-Markdown does)."""
    out, pos = [], 0
    for m in FENCE.finditer(text):
        out += [LIST_AFTER_TEXT.sub(r"\1\n\n", text[pos:m.start()]), m.group(0)]
        pos = m.end()
    return "".join([*out, LIST_AFTER_TEXT.sub(r"\1\n\n", text[pos:])])


def embed_local(body: str, base: Path) -> str:
    """Local images as data URIs; links to other local files become their text and the file's
    name (no link: a PDF would need an absolute path of the machine that built it)."""
    def image(m: re.Match) -> str:
        target = (base / html.unescape(m["src"])).resolve()
        if not target.exists() or target.suffix.lower() not in MIME:
            return m.group(0)
        data = base64.b64encode(target.read_bytes()).decode()
        return f'{m["pre"]}data:{MIME[target.suffix.lower()]};base64,{data}"'

    def link(m: re.Match) -> str:
        # A PDF cannot follow a relative link; an absolute one would name this machine's
        # folders. The text stays, with the file it names (relative to docs/), unlinked.
        target = html.unescape(m["href"])
        return f'<span class="doc-ref">{m["text"]} <code>{html.escape(target)}</code></span>'

    body = re.sub(r'(?P<pre><img [^>]*src=")(?P<src>(?![a-z]+:)[^"]+)"', image, body)
    return re.sub(r'<a [^>]*href="(?P<href>(?![a-z]+:|#)[^"]+)"[^>]*>(?P<text>.*?)</a>', link, body,
                  flags=re.S)


def to_html(path: Path) -> str:
    """One self-contained HTML page of the Markdown file `path`."""
    text = with_pictures(path.read_text(), path.stem)
    text = loosen_lists(MARKER.sub("", text))
    body = markdown.markdown(text, extensions=["tables", "fenced_code", "toc"],
                             extension_configs={"toc": {"slugify": github_slug}})
    title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), path.stem)
    lang = "es" if path.stem.startswith("informe") else "en"
    return (f'<!doctype html>\n<html lang="{lang}"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{CSS.read_text()}</style></head>\n"
            f"<body>\n{embed_local(body, path.parent)}\n</body></html>\n")


def print_pdf(path: Path) -> Path:
    """docs/<name>.pdf from docs/<name>.md, through an HTML page in .cache/pdf."""
    WORK.mkdir(parents=True, exist_ok=True)
    page = WORK / f"{path.stem}.html"
    page.write_text(to_html(path))
    out = path.with_suffix(".pdf")
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={WORK / 'profile'}",
                    f"--print-to-pdf={out}", page.as_uri()], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("docs", nargs="*", type=Path,
                        help="Markdown files (default: docs/report.md and docs/informe.md)")
    args = parser.parse_args()
    started = time.perf_counter()
    for path in args.docs or [p for p in DEFAULT_DOCS if p.exists()]:
        t0 = time.perf_counter()
        out = print_pdf(path.resolve())
        sys.stdout.write(f"{out}: {out.stat().st_size / 1024:.0f} KiB in "
                         f"{time.perf_counter() - t0:.1f} s\n")
    sys.stdout.write(f"PDFs done in {time.perf_counter() - started:.1f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
