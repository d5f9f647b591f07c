"""The one way an uploaded table and zip of images are checked and unpacked.

Both `POST /v1/jobs` and the UI's batch tab call these functions, with the same limits
from `Settings`, so a hostile upload is refused the same way by both. Every refusal is an
`UploadError` (a ValueError) whose message names the upload, the entry or the limit and
says what is allowed; it never shows a server path. Tables are sized from their metadata
before anything is loaded (`check_table`); zips are checked entry by entry and their sizes
enforced while unpacking, since a hostile archive can lie in its headers
(`safe_extract_zip`).
"""

from __future__ import annotations

import re
import stat
import struct
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modalfuse.config import Settings
from modalfuse.errors import InvalidInput
from modalfuse.inference.batch import BatchInputError, count_rows, iter_row_chunks, table_columns

# Compression methods zipfile can unpack, with the names users know them by.
SUPPORTED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
                     zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
# Entries this small are never refused for their compression ratio: a blank image can
# shrink 1000x, but cannot fill a disk. The archive's total size is capped separately.
RATIO_FLOOR_BYTES = 1 << 20
# What Linux file systems take: 255 bytes a name, and a sane depth and length overall.
MAX_PART_BYTES = 255
MAX_NAME_BYTES = 1024
MAX_DEPTH = 32
_READ_BYTES = 1 << 16
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\"/:,;]+/)+[^\s'\"/:,;]*")


class UploadError(InvalidInput):
    """An uploaded file that cannot be used; the message says what is allowed."""


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may hold: entries and unpacked bytes of a zip, compression ratio, rows."""

    max_members: int
    max_unpacked_bytes: int
    max_ratio: float
    max_rows: int

    @classmethod
    def from_settings(cls, settings: Settings, max_rows: int | None = None) -> UploadLimits:
        """The server's limits; `max_rows` lowers the row limit (the UI scores while a
        browser waits)."""
        rows = settings.max_job_rows if max_rows is None else min(max_rows, settings.max_job_rows)
        return cls(max_members=settings.max_zip_members,
                   max_unpacked_bytes=settings.max_zip_unpacked_bytes,
                   max_ratio=settings.max_zip_ratio, max_rows=rows)


@dataclass(frozen=True)
class TableShape:
    """What `check_table` learnt from a table's metadata: its columns and its row count."""

    columns: list[str]
    rows: int


def public_message(text: str, path: Path | str, name: str) -> str:
    """`text` (often a library's message) with the server path of an upload replaced by the
    name the user gave it, and any other absolute path left out."""
    for p in {str(path), str(Path(path).resolve())}:
        text = text.replace(p, name)
    return _ABSOLUTE_PATH.sub("<path>", text)


def _show(name: str, limit: int = 80) -> str:
    """An entry name as messages quote it: repr, and cut if very long."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


# ---- tables --------------------------------------------------------------------------

def check_table(path: Path, name: str, image_column: str, max_rows: int) -> TableShape:
    """Columns and row count of an uploaded table, from its header or footer and a streamed
    count, refusing it before it is loaded if it is unreadable, lacks the image column,
    is empty or has more than `max_rows` rows.

    A CSV that passes is then parsed once in chunks (bounded memory), so the row count is
    the one the scoring will see and a malformed line is refused now, not mid-job.
    """
    path = Path(path)
    try:
        columns = table_columns(path)
        if image_column not in columns:
            raise UploadError(f"table {name!r} has no image column {image_column!r}; its "
                              f"columns are {columns[:50]}")
        rows = count_rows(path, stop_after=max_rows)
        if rows > max_rows:
            over = "more than " if path.suffix.lower() == ".csv" else ""
            raise UploadError(f"table {name!r} has {over}{max_rows if over else rows} rows; "
                              f"the limit is {max_rows}")
        if rows and path.suffix.lower() == ".csv":
            rows = sum(len(c.rows) for c in iter_row_chunks(path, 8192))
    except BatchInputError as e:
        raise UploadError(public_message(str(e), path, name)) from None
    if rows == 0:
        raise UploadError(f"table {name!r} has no rows; send 1 or more")
    return TableShape(columns, rows)


# ---- zips ----------------------------------------------------------------------------

def declared_entries(zip_path: Path) -> int | None:
    """The entry count an archive's end record declares, read without parsing its central
    directory (which for a huge count would take memory); None if there is no end record."""
    size = zip_path.stat().st_size
    with open(zip_path, "rb") as f:
        tail_len = min(size, 22 + 0xFFFF)  # the end record, then at most a 64 KiB comment
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        total: int = struct.unpack_from("<H", tail, at + 10)[0]
        locator = at - 20
        if total == 0xFFFF and locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
            f.seek(struct.unpack_from("<Q", tail, locator + 8)[0])  # the zip64 end record
            record = f.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                total = struct.unpack_from("<Q", record, 32)[0]
    return total


def entry_parts(raw: str, upload: str) -> tuple[str, ...]:
    """The path components an entry name unpacks to, refusing names that could escape the
    folder or that a file system cannot hold."""
    shown = f"{upload}: entry {_show(raw)}"
    if any(unicodedata.category(c) == "Cc" for c in raw):  # NUL, newlines, escapes, ...
        raise UploadError(f"{shown} has control characters in its name; names must be "
                          "printable")
    name = raw.replace("\\", "/")
    parts = PurePosixPath(name).parts  # drops "." and empty components
    if name.startswith("/") or (parts and parts[0].endswith(":")) or ".." in parts:
        raise UploadError(f"{shown} escapes the archive folder: absolute paths, drives and "
                          "'..' point outside it; entries must be relative paths")
    if not parts:
        raise UploadError(f"{shown} names no file (it is empty or '.'); give each entry a "
                          "file name")
    if (len(raw.encode()) > MAX_NAME_BYTES or len(parts) > MAX_DEPTH
            or any(len(p.encode()) > MAX_PART_BYTES for p in parts)):
        raise UploadError(f"{shown} has a name too long or too deep; the limits are "
                          f"{MAX_NAME_BYTES} bytes, {MAX_PART_BYTES} bytes a component and "
                          f"{MAX_DEPTH} folders")
    return parts


def _check_entry(m: zipfile.ZipInfo, shown: str, limits: UploadLimits) -> None:
    """Refuse links, special files, encrypted entries, unknown methods and zip bombs."""
    kind = stat.S_IFMT(m.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise UploadError(f"{shown} is a symbolic link; only regular files are allowed")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UploadError(f"{shown} is a special file (mode {oct(kind)}); only regular files "
                          "are allowed")
    if m.is_dir():
        return
    if m.flag_bits & 0x1:
        raise UploadError(f"{shown} is encrypted; only unencrypted entries can be unpacked "
                          "(zip the images again without a password)")
    if m.compress_type not in SUPPORTED_METHODS:
        allowed = ", ".join(f"{v} ({k})" for k, v in SUPPORTED_METHODS.items())
        raise UploadError(f"{shown} uses compression method {m.compress_type}, which cannot be "
                          f"unpacked; allowed: {allowed}")
    if m.file_size > max(limits.max_ratio * m.compress_size, RATIO_FLOOR_BYTES):
        raise UploadError(f"{shown} expands {m.file_size / max(m.compress_size, 1):.0f}x "
                          f"(limit {limits.max_ratio:g}x): refused as a zip bomb")


def _claim(parts: tuple[str, ...], is_dir: bool, files: set[tuple[str, ...]],
           folders: set[tuple[str, ...]], shown: str) -> None:
    """Record where an entry goes, refusing one that collides with an earlier entry (the
    same name twice, a file where a folder is, or a file under a file)."""
    for i in range(1, len(parts)):
        if parts[:i] in files:
            raise UploadError(f"{shown} goes under {'/'.join(parts[:i])!r}, which is a file "
                              "earlier in the archive; names must not collide")
        folders.add(parts[:i])
    if is_dir:
        if parts in files:
            raise UploadError(f"{shown} is a folder with the name of a file earlier in the "
                              "archive; names must not collide")
        folders.add(parts)
        return
    if parts in files or parts in folders:
        what = "a file" if parts in files else "a folder"
        raise UploadError(f"{shown} has the name of {what} earlier in the archive; names must "
                          "not collide")
    files.add(parts)


# zipfile raises these when it cannot even start on an entry (damaged local header,
# encryption, a method it lacks); reading the data can also raise zlib/lzma/bz2 errors.
_ENTRY_ERRORS = (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError,
                 OSError)


def _unpack(zf: zipfile.ZipFile, m: zipfile.ZipInfo, target: Path, shown: str,
            limits: UploadLimits, written: int, budget: int) -> int:
    """Write one entry, enforcing its ratio and the archive's byte budget on the bytes
    actually produced; returns the bytes written so far in the archive."""
    entry_cap = max(limits.max_ratio * m.compress_size, RATIO_FLOOR_BYTES)
    size = 0
    try:
        src = zf.open(m)
    except _ENTRY_ERRORS as e:
        raise UploadError(f"{shown} cannot be unpacked ({type(e).__name__}); only "
                          "unencrypted stored/deflate/bzip2/lzma entries can") from None
    with src, open(target, "wb") as out:
        while True:
            try:
                data = src.read(_READ_BYTES)
            except Exception as e:  # bad CRC, zlib.error, lzma.LZMAError: the upload's fault
                raise UploadError(f"{shown} is corrupt ({type(e).__name__}: the data does not "
                                  "match its headers); zip the images again") from None
            if not data:
                return written
            size += len(data)
            written += len(data)
            if size > entry_cap:
                raise UploadError(f"{shown} expands more than {limits.max_ratio:g}x its "
                                  "packed size (its headers understate it): refused as a zip "
                                  "bomb")
            if written > budget:
                raise UploadError(f"{shown} takes the archive past {budget} unpacked bytes "
                                  "(its headers understate it); the limit is the smaller of "
                                  f"{limits.max_unpacked_bytes} bytes and "
                                  f"{limits.max_ratio:g}x the archive's size")
            out.write(data)


def _open_zip(zip_path: Path, upload: str, limits: UploadLimits) -> zipfile.ZipFile:
    declared = declared_entries(zip_path) if zip_path.is_file() else None
    if declared is not None and declared > limits.max_members:
        raise UploadError(f"{upload} has {declared} entries; the limit is {limits.max_members}")
    try:
        return zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise UploadError(f"{upload} is not a valid zip archive ({e})") from None
    except Exception as e:  # a hostile central directory can make zipfile raise anything
        raise UploadError(f"{upload} is not a valid zip archive ({type(e).__name__})") from None


def safe_extract_zip(zip_path: Path, dest: Path, limits: UploadLimits,
                     name: str = "images zip") -> int:
    """Unpack the regular files of an uploaded zip into dest; returns how many there were.

    Refuses, naming the entry: too many entries, too many bytes (declared, then counted
    while unpacking), entries that expand more than `limits.max_ratio`, links and special
    files, traversal, odd or colliding names, encryption and unknown compression methods.
    `name` is how messages call the upload (the file name the user gave).
    """
    zip_path = Path(zip_path)
    with _open_zip(zip_path, name, limits) as zf:
        members = zf.infolist()
        if len(members) > limits.max_members:
            raise UploadError(f"{name} has {len(members)} entries; the limit is "
                              f"{limits.max_members}")
        files: set[tuple[str, ...]] = set()
        folders: set[tuple[str, ...]] = set()
        plan = []
        for m in members:  # every entry is checked before anything is written
            shown = f"{name}: entry {_show(m.filename)}"
            parts = entry_parts(m.filename, name)
            _check_entry(m, shown, limits)
            _claim(parts, m.is_dir(), files, folders, shown)
            if not m.is_dir():
                plan.append((m, parts, shown))
        declared = sum(m.file_size for m, _, _ in plan)
        packed = zip_path.stat().st_size
        budget = min(limits.max_unpacked_bytes,
                     int(max(limits.max_ratio * packed, RATIO_FLOOR_BYTES)))
        if declared > limits.max_unpacked_bytes:
            raise UploadError(f"{name} unpacks to {declared} bytes; the limit is "
                              f"{limits.max_unpacked_bytes}")
        if declared > budget:
            raise UploadError(f"{name} unpacks to {declared} bytes, {declared / packed:.0f}x "
                              f"its size (limit {limits.max_ratio:g}x): refused as a zip bomb")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = 0
        for m, parts, shown in plan:
            target = root.joinpath(*parts)
            if not target.resolve().is_relative_to(root):  # belt and braces: no links exist
                raise UploadError(f"{shown} escapes the archive folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            written = _unpack(zf, m, target, shown, limits, written, budget)
        return len(plan)
