"""One upload path: hostile zips and oversized tables get the same clear refusal from
`POST /v1/jobs` (a 422) and from the UI's batch tab (a message), no server path in either,
no temporary files left behind, and no table loaded before its size is known."""

from __future__ import annotations

import io
import re
import stat
import struct
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from modalfuse.config import Settings
from modalfuse.inference.batch import count_rows, iter_row_chunks, read_rows
from modalfuse.inference.uploads import UploadError, declared_entries, entry_parts
from modalfuse.serve.app import create_app
from modalfuse.ui import app as ui
from prod_helpers import API_KEY, AUTH, job_inputs

MAX_MEMBERS = 1000
MAX_ROWS = 500
HUGE_ROWS = 20_000_000
# A server path in a message: the usual roots of temp, home and data folders.
SERVER_PATH = re.compile(r"/(tmp|root|home|work|var|srv|private)/")


# ---- hostile archives ----------------------------------------------------------------

def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def _patched(archive: bytes, local_at: int, central_at: int, fmt: str, value: int) -> bytes:
    """The archive (of one entry) with a field set in both its local and central header."""
    b = bytearray(archive)
    central = b.find(b"PK\x01\x02")
    struct.pack_into(fmt, b, local_at, value)
    struct.pack_into(fmt, b, central + central_at, value)
    return bytes(b)


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _one(name: str, size: int = 500) -> bytes:
    return _zip([(name, b"hello" * (size // 5))])


# (id, archive maker, the entry the message must name or None, words it must say)
HOSTILE: list[tuple[str, Callable[[], bytes], str | None, str]] = [
    ("dot", lambda: _zip([(".", b"x")]), ".", "names no file"),
    ("file-then-folder", lambda: _zip([("a", b"x"), ("a/4.png", b"y")]), "a/4.png",
     "which is a file earlier"),
    ("folder-then-file", lambda: _zip([("a/4.png", b"x"), ("a", b"y")]), "a",
     "name of a folder"),
    ("encrypted", lambda: _patched(_one("secret.png"), 6, 8, "<H", 0x1), "secret.png",
     "encrypted"),
    ("method-99", lambda: _patched(_one("odd.png"), 8, 10, "<H", 99), "odd.png",
     "compression method 99"),
    ("traversal", lambda: _zip([("../../evil.png", b"x")]), "../../evil.png", "escapes"),
    ("absolute", lambda: _zip([("/etc/cron.d/evil", b"x")]), "/etc/cron.d/evil", "escapes"),
    ("symlink", lambda: _zip([(_symlink("link.png"), b"/etc/passwd")]), "link.png",
     "symbolic link"),
    ("control-chars", lambda: _zip([("a\x1b[2Jb.png", b"x")]), "a\x1b[2Jb.png",
     "control characters"),
    ("long-name", lambda: _zip([("n" * 300 + ".png", b"x")]), "n" * 80 + "...", "too long"),
    ("ratio-bomb", lambda: _zip([("bomb.png", b"\0" * 20_000_000)]), "bomb.png", "zip bomb"),
    ("many-small-bombs", lambda: _zip([(f"b{i}.png", b"\0" * 900_000) for i in range(60)]),
     None, "zip bomb"),
    ("too-many-entries", lambda: _zip([(f"{i}.png", b"") for i in range(MAX_MEMBERS + 1)]),
     None, f"the limit is {MAX_MEMBERS}"),
    # The headers say 1000 bytes, the data holds a million: zipfile stops at the declared
    # size and the CRC no longer matches.
    ("size-lie", lambda: _patched(_zip([("lie.png", b"\0" * 1_000_000)]), 22, 24, "<I", 1000),
     "lie.png", "corrupt"),
    ("not-a-zip", lambda: b"PK\x03\x04 this is not really a zip", None, "not a valid zip"),
]
IDS = [h[0] for h in HOSTILE]


def assert_clean(msg: str, entry: str | None, words: str, upload: str = "images.zip") -> None:
    assert words in msg, msg
    assert upload in msg, msg
    if entry is not None:
        assert repr(entry) in msg, msg
    assert not SERVER_PATH.search(msg), msg
    assert "Traceback" not in msg, msg


# ---- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("serve-uploads"), api_key=API_KEY,
                    max_job_rows=MAX_ROWS, max_ui_batch_rows=MAX_ROWS,
                    max_zip_members=MAX_MEMBERS, log_predictions=False)


@pytest.fixture(scope="module")
def client(predictor, settings):
    with TestClient(create_app(settings, predictor=predictor),
                    raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def inputs(fixture_dataset):
    return job_inputs(fixture_dataset, 6)


@pytest.fixture(scope="module")
def huge_parquet(tmp_path_factory) -> Path:
    """20 M rows with the image column, a few hundred KB on disk: large row groups of one
    repeated value, which Parquet stores as a run."""
    path = tmp_path_factory.mktemp("huge") / "rows.parquet"
    group = pa.table({"id": pa.array(np.zeros(1_000_000, dtype=np.int64)),
                      "image": pa.array(["x.png"] * 1_000_000)})
    with pq.ParquetWriter(path, group.schema) as w:
        for _ in range(HUGE_ROWS // 1_000_000):
            w.write_table(group, row_group_size=1_000_000)
    return path


def submit(client, table: bytes, images: bytes, name: str = "rows.csv"):
    return client.post("/v1/jobs", headers=AUTH, files={
        "table": (name, table, "application/octet-stream"),
        "images": ("images.zip", images, "application/zip")})


def leftovers(client) -> list[str]:
    """What the job store's folder holds besides its database: job and staging folders."""
    return sorted(p.name for p in client.app.state.job_store.root.iterdir()
                  if not p.name.startswith("jobs.db"))


def ui_upload(tmp_path: Path, table: bytes, archive: bytes, table_name: str = "rows.csv"
              ) -> tuple[str, str]:
    up = tmp_path / "uploads"
    up.mkdir(exist_ok=True)
    (up / table_name).write_bytes(table)
    (up / "images.zip").write_bytes(archive)
    return str(up / table_name), str(up / "images.zip")


class PeakRSS:
    """The largest resident memory of this process while the block runs, sampled every
    2 ms from another thread (a table read whole takes far longer than that)."""

    def __enter__(self) -> PeakRSS:
        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self.growth_mb = (self.peak - self.base) / 1e6


# ---- zips through both paths ---------------------------------------------------------

@pytest.mark.parametrize("case, make, entry, words", HOSTILE, ids=IDS)
def test_hostile_zip_is_a_422_naming_the_entry(client, inputs, case, make, entry, words):
    before = leftovers(client)
    r = submit(client, inputs[0], make())
    assert r.status_code == 422, r.text
    assert_clean(r.json()["detail"][0]["msg"], entry, words)
    assert leftovers(client) == before  # the job folder and the staged upload are gone


@pytest.mark.parametrize("case, make, entry, words", HOSTILE, ids=IDS)
def test_hostile_zip_in_the_ui_is_a_clean_message(predictor, settings, inputs, tmp_path, case,
                                                  make, entry, words):
    table, archive = ui_upload(tmp_path, inputs[0], make())
    scratch = tmp_path / "scratch"
    summary, out, preview = ui.batch_upload(predictor, settings, table, archive, base=scratch)
    assert out is None and preview.empty
    assert summary.startswith("**This upload cannot be scored:**")
    assert_clean(summary, entry, words)
    assert list(scratch.iterdir()) == []  # the request's folder went with its images


def test_entry_names_that_name_nothing_or_hide_bytes_are_refused():
    for raw, words in (("", "names no file"), (".", "names no file"), ("./", "names no file"),
                       ("a\x00b.png", "control characters"), ("C:/x.png", "escapes"),
                       ("a\\..\\..\\x.png", "escapes"), ("/".join(["d"] * 40), "too deep")):
        with pytest.raises(UploadError, match=words):
            entry_parts(raw, "images.zip")
    assert entry_parts("./a//b.png", "images.zip") == ("a", "b.png")


def test_the_entry_count_is_read_before_the_central_directory(tmp_path):
    path = tmp_path / "n.zip"
    path.write_bytes(_zip([(f"{i}.png", b"") for i in range(7)]))
    assert declared_entries(path) == 7
    path.write_bytes(b"no end record here")
    assert declared_entries(path) is None


def test_a_good_zip_with_folders_unpacks_through_the_ui(predictor, settings, fixture_dataset,
                                                        tmp_path, monkeypatch):
    monkeypatch.setattr(ui, "SCORE_CHUNK_ROWS", 16)  # several chunks from a small table
    _, images, frame = job_inputs(fixture_dataset, 40, bad_rows=(5,))
    spec = predictor.spec
    with zipfile.ZipFile(io.BytesIO(images)) as zf:  # the same images under a folder
        nested = _zip([("imgs/", b"")] + [(f"imgs/{n}", zf.read(n)) for n in zf.namelist()])
    frame[spec.image_column] = "imgs/" + frame[spec.image_column].astype(str)
    frame.loc[5, spec.image_column] = "imgs/missing.png"
    paths = ui_upload(tmp_path, frame.to_csv(index=False).encode(), nested)
    scratch = tmp_path / "scratch"
    summary, out, preview = ui.batch_upload(predictor, settings, *paths, base=scratch)
    assert out is not None, summary
    result = pd.read_csv(out)
    assert result["row"].tolist() == list(range(40)) and result["error"].notna().sum() == 1
    assert "**40**" in summary and len(preview) == 40
    (kept,) = scratch.iterdir()  # one request folder, holding only the predictions
    assert [p.name for p in kept.iterdir()] == ["predictions.csv"]


def test_a_failure_after_unpacking_shows_no_internals_and_leaves_nothing(
        predictor, settings, inputs, tmp_path, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("scorer exploded at /srv/modalfuse/secret/model.onnx")

    monkeypatch.setattr(ui, "score_frame", broken)
    scratch = tmp_path / "scratch"
    summary, out, _ = ui.batch_upload(predictor, settings, *ui_upload(tmp_path, *inputs[:2]),
                                      base=scratch)
    assert out is None and "error on the server" in summary
    assert "exploded" not in summary and not SERVER_PATH.search(summary)
    assert list(scratch.iterdir()) == []


# ---- tables: sized before they are read ----------------------------------------------

@pytest.mark.parametrize("table, name, says", [
    (b"\x00\x01garbage", "rows.parquet", "cannot read rows.parquet"),
    (b"", "rows.csv", "cannot read rows.csv: it is empty"),
    (b"id,image\n1,\"unterminated\n", "rows.csv", "cannot read rows.csv"),
    (b"id,image\n\xff\xfe,x.png\n", "rows.csv", "not UTF-8"),
])
def test_unreadable_tables_are_named_without_server_paths(client, predictor, settings, inputs,
                                                          tmp_path, table, name, says):
    r = submit(client, table, inputs[1], name=name)
    assert r.status_code == 422, r.text
    msg = r.json()["detail"][0]["msg"]
    assert says in msg and not SERVER_PATH.search(msg), msg
    summary, out, _ = ui.batch_upload(predictor, settings,
                                      *ui_upload(tmp_path, table, inputs[1], table_name=name),
                                      base=tmp_path / "scratch")
    assert out is None and says in summary and not SERVER_PATH.search(summary), summary


def test_a_20m_row_parquet_is_refused_from_its_footer_by_both_paths(
        client, predictor, settings, inputs, huge_parquet, tmp_path):
    body = huge_parquet.read_bytes()
    assert len(body) < 1_000_000 and pq.ParquetFile(huge_parquet).metadata.num_rows == HUGE_ROWS
    table, archive = ui_upload(tmp_path, body, inputs[1], table_name="rows.parquet")
    growth = {}
    for attempt in ("first", "second"):  # the first also pays for one-time allocations
        with PeakRSS() as api:
            r = submit(client, body, inputs[1], name="rows.parquet")
        with PeakRSS() as page:
            summary, out, _ = ui.batch_upload(predictor, settings, table, archive,
                                              base=tmp_path / "scratch")
        growth[attempt] = (api.growth_mb, page.growth_mb)
        assert r.status_code == 422 and f"has {HUGE_ROWS} rows" in r.text, r.text
        assert out is None and f"{HUGE_ROWS} rows; the limit is {MAX_ROWS}" in summary, summary
    print(f"peak RSS growth refusing {HUGE_ROWS} rows (MB, api/ui): {growth}")
    assert max(max(g) for g in growth.values()) < 50, growth


def test_an_over_limit_csv_is_refused_after_counting_past_the_limit(client, inputs):
    lines = ["id,image"] + [f'{i},"x\n{i}.png"' for i in range(200_000)]  # quoted newlines
    r = submit(client, ("\n".join(lines) + "\n").encode(), inputs[1])
    assert r.status_code == 422 and f"more than {MAX_ROWS} rows" in r.text, r.text


def test_csv_row_counts_match_pandas_and_stop_at_the_limit(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('a,b\n\n1,"two\nlines"\n   \n3,4\n"",\n5,6')
    assert count_rows(path) == len(pd.read_csv(path)) == 4
    assert count_rows(path, stop_after=2) == 3
    path.write_bytes("\ufeffa,b\n1,2\n".encode())
    assert count_rows(path) == 1


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_row_chunks_are_the_table_in_order_and_skip_done_chunks(tmp_path, suffix):
    frame = pd.DataFrame({"id": np.arange(1000), "image": [f"{i}.png" for i in range(1000)]})
    path = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:  # row groups that do not line up with the chunks
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=97)
    whole = read_rows(path)
    for skip in (set(), {0, 1, 2}, set(range(1, 34, 2))):
        chunks = list(iter_row_chunks(path, 30, skip=skip))
        assert [c.number for c in chunks] == [i for i in range(34) if i not in skip]
        for c in chunks:
            assert c.start == 30 * c.number
            pd.testing.assert_frame_equal(
                c.rows, whole.iloc[c.start:c.start + 30].reset_index(drop=True))
