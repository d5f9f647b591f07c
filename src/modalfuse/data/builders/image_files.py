"""Find each row's image the way people store them, for `modalfuse data import`.

Three ways to say where a row's image is:

- a column of file names or relative paths, read under the images folder (by default the
  folder of the table itself): `photo = "batch1/f001.jpg"`;
- a column of absolute paths, `file://` URLs or `http(s)://` URLs (downloaded once, at import);
- a file-name pattern over the row's columns, for images named after an id: `{id}.png`. A
  pattern whose name has no extension tries `IMAGE_EXTENSIONS` (or the ones given) in order.

Every row ends with a name under the dataset's `images/` folder, or with the reason it has no
image: missing (with the first path tried) or undecodable (with the decoder's words). The caller
decides whether such rows stop the import or are left out; either way the summary counts them.
"""

from __future__ import annotations

import hashlib
import string
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from modalfuse.errors import InvalidInput
from modalfuse.features.image import ImageError, normalize_image

# Tried in this order when a pattern's file name has no extension.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
URL_SCHEMES = ("http", "https")
MAX_DOWNLOAD_BYTES = 50_000_000
DOWNLOAD_TIMEOUT_S = 30.0
EXAMPLES_SHOWN = 5


@dataclass
class LocatedImages:
    """Where each row's image was found, and what went wrong for the rows without one."""

    names: list[str | None]  # per row: the name under images/, None when the row has no image
    files: dict[str, bytes]  # name under images/ -> bytes
    missing: list[tuple[int, str]] = field(default_factory=list)  # (row, first path tried)
    undecodable: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)
    downloaded: int = 0

    @property
    def found(self) -> int:
        """Rows whose image was found and decodes."""
        return sum(n is not None for n in self.names)

    def summary(self) -> dict[str, int]:
        """Counts for the import's report and the manifest."""
        return {"rows": len(self.names), "found": self.found, "missing": len(self.missing),
                "undecodable": len(self.undecodable), "downloaded": self.downloaded}


def pattern_columns(pattern: str) -> list[str]:
    """The column names a pattern such as `{id}.png` or `{folder}/{id}` refers to."""
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as e:
        raise InvalidInput(f"--image-pattern {pattern!r} is not a valid pattern: {e}") from None
    names = [name for _, name, _, _ in parsed if name is not None]
    if not names:
        raise InvalidInput(f"--image-pattern {pattern!r} names no column: write it like '{{id}}.png', "
                           "a column name in braces")
    return names


def _candidates(name: str, extensions: Sequence[str]) -> list[str]:
    """The file names to try for one row: the name itself, or the name with each extension."""
    return [name] if PurePosixPath(name).suffix else [name + ext for ext in extensions]


def _safe_relative(value: str) -> str | None:
    """`value` as a relative posix path that stays inside its folder, else None."""
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return str(p)


def _stored_name(data: bytes, suffix: str) -> str:
    """A content-addressed name for an image that came from outside the images folder."""
    return hashlib.sha256(data).hexdigest()[:20] + (suffix.lower() or ".img")


def _download(url: str) -> bytes:
    """The bytes at an http(s) URL (raises OSError with the reason)."""
    request = urllib.request.Request(url, headers={"User-Agent": "modalfuse-import"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        data = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise OSError(f"larger than {MAX_DOWNLOAD_BYTES} bytes")
    return data


def _read_value(value: str, images_dir: Path) -> tuple[str | None, bytes | None, str, bool]:
    """One cell of an image column -> (stored name, bytes, the path tried, downloaded)."""
    parsed = urllib.parse.urlparse(value)
    if parsed.scheme in URL_SCHEMES:
        try:
            data = _download(value)
        except OSError as e:
            return None, None, f"{value} ({e})", False
        return _stored_name(data, PurePosixPath(parsed.path).suffix), data, value, True
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
    elif Path(value).is_absolute():
        path = Path(value)
    else:
        rel = _safe_relative(value)
        if rel is None:
            return None, None, f"{value} (a relative path may not leave {images_dir})", False
        p = images_dir / rel
        return (rel, p.read_bytes(), str(p), False) if p.is_file() else (None, None, str(p), False)
    if not path.is_file():
        return None, None, str(path), False
    data = path.read_bytes()
    return _stored_name(data, path.suffix), data, str(path), False


def locate_images(table: pd.DataFrame, images_dir: Path, *, image_column: str | None = None,
                  image_pattern: str | None = None,
                  extensions: Sequence[str] = IMAGE_EXTENSIONS, image_size: int = 96,
                  max_pixels: int = 10_000_000) -> LocatedImages:
    """Find and decode every row's image by its column (`image_column`) or a file-name pattern.

    Exactly one of the two must be given; a pattern's columns must exist in `table`."""
    if (image_column is None) == (image_pattern is None):
        raise InvalidInput("say where each row's image is with one of --image-column or --image-pattern")
    exts = [e if e.startswith(".") else "." + e for e in extensions] or list(IMAGE_EXTENSIONS)
    names: list[str | None] = []
    files: dict[str, bytes] = {}
    located = LocatedImages(names, files)
    if image_pattern is not None:
        unknown = [c for c in pattern_columns(image_pattern) if c not in table.columns]
        if unknown:
            raise InvalidInput(f"--image-pattern {image_pattern!r} names column(s) {unknown} that the "
                               f"table does not have; columns: {list(table.columns)}")
    decoded: dict[str, str | None] = {}  # name -> None if it decodes, else the reason
    for i, row in enumerate(table.to_dict("records")):
        name: str | None = None
        data: bytes | None = None
        if image_pattern is not None:
            try:
                base = image_pattern.format(**{k: "" if pd.isna(v) else v for k, v in row.items()})
            except (ValueError, KeyError, IndexError) as e:
                raise InvalidInput(f"--image-pattern {image_pattern!r} cannot be filled from row "
                                   f"{i + 1}: {e}") from None
            tried = []
            for cand in _candidates(base, exts):
                rel = _safe_relative(cand)
                if rel is None:
                    tried.append(f"{cand} (a pattern may not leave {images_dir})")
                    break
                tried.append(str(images_dir / rel))
                if (images_dir / rel).is_file():
                    name, data = rel, (images_dir / rel).read_bytes()
                    break
            first_tried = tried[0] + (f" (and {len(tried) - 1} other extensions)" if len(tried) > 1 else "")
        else:
            value = row[image_column]
            if pd.isna(value) or not str(value).strip():
                located.missing.append((i, "(empty cell)"))
                names.append(None)
                continue
            name, data, first_tried, was_downloaded = _read_value(str(value).strip(), images_dir)
            located.downloaded += was_downloaded
        if name is None or data is None:
            located.missing.append((i, first_tried))
            names.append(None)
            continue
        if name not in decoded:
            try:
                normalize_image(data, image_size, max_pixels)
                decoded[name] = None
            except ImageError as e:
                decoded[name] = str(e)
        if decoded[name] is not None:
            located.undecodable.append((i, f"{first_tried}: {decoded[name]}"))
            names.append(None)
            continue
        names.append(name)
        files[name] = data
    return located


def pattern_name(row: dict, pattern: str, images_dir: Path,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> str:
    """The file a pattern names for one row: the first candidate that exists under `images_dir`,
    else the first candidate (so the caller's "not found" names what was tried first).
    InvalidInput when the row cannot fill the pattern or the name would leave `images_dir`."""
    try:
        base = pattern.format(**{k: "" if pd.isna(v) else v for k, v in row.items()})
    except (ValueError, KeyError, IndexError) as e:
        raise InvalidInput(f"the row cannot fill the image file-name pattern {pattern!r}: {e}") from None
    names = [n for n in _candidates(base, extensions) if _safe_relative(n) is not None]
    if not names:
        raise InvalidInput(f"the image file name {base!r} (pattern {pattern!r}) leaves the images folder")
    return next((n for n in names if (images_dir / n).is_file()), names[0])


def pattern_hint(table: pd.DataFrame, images_dir: Path, column: str,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> str | None:
    """`--image-pattern '{column}.ext'` when the first rows' values name files with an extension
    added (the images are named after that column), else None."""
    values = table[column].dropna().astype(str).head(5)
    for ext in extensions:
        if len(values) and all((images_dir / (v + ext)).is_file() for v in values):
            return f"--image-pattern '{{{column}}}{ext}'"
    return None


__all__ = ["IMAGE_EXTENSIONS", "LocatedImages", "locate_images", "pattern_columns", "pattern_hint",
           "pattern_name"]
