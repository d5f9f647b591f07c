"""`modalfuse data import` takes images as people store them, and the dataset is remembered.

Images named after the id (`<id>.png`, no image column), a column of absolute paths and URLs,
missing and broken files: each imports with one documented option or stops with a message that
names the option and the first path tried. With one dataset in the data folder, later commands
need no `-d`; with several, `modalfuse data use` or MODALFUSE_DATASET chooses.
"""

from __future__ import annotations

import functools
import http.server
import io
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from modalfuse.cli import app as cli_app
from modalfuse.config import Settings
from modalfuse.data.dataset import load_dataset

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def png(rgb, rng, fmt="PNG") -> bytes:
    """A small picture: a coloured square on white, with noise."""
    a = np.full((40, 40, 3), 255, dtype=np.uint8)
    a[8:32, 8:32] = np.clip(np.array(rgb) + rng.normal(0, 12, (24, 24, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def said(res) -> str:
    """What a command told the user: its output, or the error `modalfuse.cli.main` prints (the
    test runner calls the app without `main`, so a ModalfuseError arrives as the exception)."""
    return flat(res.output + " " + (str(res.exception) if res.exception else ""))


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty data folder of its own: which datasets exist is part of what is tested."""
    d = tmp_path / "data"
    monkeypatch.setenv("MODALFUSE_DATA_DIR", str(d))
    monkeypatch.delenv("MODALFUSE_DATASET", raising=False)
    return d


@pytest.fixture
def id_named(tmp_path):
    """24 rows whose images are `<id>.png` or `<id>.jpg` beside the table; no image column."""
    rng = np.random.default_rng(0)
    root = tmp_path / "shop"
    root.mkdir()
    rows = []
    for i in range(24):
        colour = list(COLOURS)[i % 3]
        rid = f"e{i:03d}b0bd5"
        fmt, ext = ("JPEG", ".jpg") if i % 4 == 0 else ("PNG", ".png")
        (root / (rid + ext)).write_bytes(png(COLOURS[colour], rng, fmt))
        rows.append({"id": rid, "colour": colour, "weight": float(rng.normal(10, 2))})
    pd.DataFrame(rows).to_csv(root / "items.csv", index=False)
    return root


def run(*args: str):
    """Run the CLI and return its result."""
    return CliRunner().invoke(cli_app, list(args))


def test_images_named_after_the_id_import_with_a_pattern(id_named, data_dir):
    table = str(id_named / "items.csv")
    res = run("data", "import", "--table", table, "--name", "shop", "--target", "colour")
    assert res.exit_code == 1
    out = flat(res.output)
    assert "has no column 'image'" in out and "--image-pattern '{id}.png'" in out
    assert "--image-column" in out

    # the id column names the files only with an extension added: a short error with the hint
    res = run("data", "import", "--table", table, "--name", "shop", "--target", "colour",
              "--image-column", "id")
    assert res.exit_code == 1
    out = flat(res.output)
    assert "24 of 24 rows have no usable image (found 0, missing 24, undecodable 0)" in out
    assert f"tried {id_named / 'e000b0bd5'}" in out
    assert "and 19 more missing" in out and len(res.output.splitlines()) < 20
    assert "try --image-pattern '{id}.png'" not in out  # e000 is a .jpg: .png does not fit all
    assert "--skip-missing" in out

    # no extension in the pattern: .png, then .jpg, ... are tried in order
    res = run("data", "import", "--table", table, "--name", "shop", "--target", "colour",
              "--image-pattern", "{id}")
    assert res.exit_code == 0, res.output
    assert "images: 24 found, 0 missing, 0 undecodable" in flat(res.output)
    ds = load_dataset(Settings().dataset_dir("shop"))
    assert ds.spec.image_column == "image" and "image" not in {f.name for f in ds.spec.fields}
    assert ds.table["image"].tolist()[:2] == ["e000b0bd5.jpg", "e001b0bd5.png"]
    assert ds.manifest["images"] == 24

    # the only dataset in the folder: split needs no -d and says which dataset it used
    res = run("data", "split", "--folds", "2")
    assert res.exit_code == 0, res.output
    assert "dataset shop (the only dataset in" in flat(res.output)
    assert "pokemon" not in res.output.lower() and "pokémon" not in res.output.lower()


def test_a_pattern_with_an_extension_tries_that_file_only(id_named, data_dir):
    res = run("data", "import", "--table", str(id_named / "items.csv"), "--name", "shop",
              "--target", "colour", "--image-pattern", "{id}.png")
    assert res.exit_code == 1
    out = flat(res.output)
    assert "missing 6" in out and f"tried {id_named / 'e000b0bd5.png'}" in out
    res = run("data", "import", "--table", str(id_named / "items.csv"), "--name", "shop",
              "--target", "colour", "--image-pattern", "{id}.png", "--skip-missing")
    assert res.exit_code == 0, res.output
    assert "18 found, 6 missing, 0 undecodable; 6 row(s) left out (--skip-missing)" in flat(res.output)
    assert len(load_dataset(Settings().dataset_dir("shop")).table) == 18
    res = run("data", "import", "--table", str(id_named / "items.csv"), "--name", "shop2",
              "--target", "colour", "--image-pattern", "{sku}.png")
    assert res.exit_code == 1 and "names column(s) ['sku']" in flat(res.output)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test's output stays readable
        pass


def test_paths_urls_missing_and_broken_images(tmp_path, data_dir):
    rng = np.random.default_rng(1)
    served, local = tmp_path / "served", tmp_path / "local"
    served.mkdir()
    local.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    rows = []
    try:
        for i in range(12):
            colour = list(COLOURS)[i % 3]
            data = png(COLOURS[colour], rng)
            if i % 3 == 0:
                (served / f"{i}.png").write_bytes(data)
                where = f"{base}/{i}.png"
            elif i % 3 == 1:
                (local / f"{i}.png").write_bytes(data)
                where = (local / f"{i}.png").as_uri()
            else:
                (local / f"{i}.png").write_bytes(data)
                where = str(local / f"{i}.png")
            rows.append({"id": f"r{i}", "colour": colour, "picture": where})
        rows += [{"id": "gone", "colour": "red", "picture": str(local / "gone.png")},
                 {"id": "broken", "colour": "red", "picture": "broken.png"},
                 {"id": "escape", "colour": "red", "picture": "../outside.png"}]
        (tmp_path / "broken.png").write_bytes(b"not an image at all")
        pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
        args = ("data", "import", "--table", str(tmp_path / "t.csv"), "--name", "mixed",
                "--target", "colour", "--image-column", "picture")
        res = run(*args)
        assert res.exit_code == 1
        out = flat(res.output)
        assert "found 12, missing 2, undecodable 1" in out
        assert f"line 14 (id 'gone'): missing, tried {local / 'gone.png'}" in out
        assert "line 15 (id 'broken'): undecodable" in out
        assert "a relative path may not leave" in out
        res = run(*args, "--skip-missing")
        assert res.exit_code == 0, res.output
        assert "12 found, 2 missing, 1 undecodable, 4 downloaded; 3 row(s) left out" in flat(res.output)
    finally:
        server.shutdown()
    ds = load_dataset(Settings().dataset_dir("mixed"))
    assert len(ds.table) == 12 and set(ds.table["id"]) == {f"r{i}" for i in range(12)}
    # images from outside the table's folder are stored by content, inside the dataset
    assert all(len(n.split(".")[0]) == 20 for n in ds.table["picture"])
    assert all(ds.image_path(n).is_file() for n in ds.table["picture"])


def test_several_datasets_need_a_choice(id_named, data_dir, monkeypatch):
    for name in ("shop", "shop_b"):
        res = run("data", "import", "--table", str(id_named / "items.csv"), "--name", name,
                  "--target", "colour", "--image-pattern", "{id}")
        assert res.exit_code == 0, res.output
    assert "`modalfuse data use shop_b` makes it the default" in flat(res.output)
    res = run("data", "split")
    assert res.exit_code == 1
    out = said(res)
    assert "2 datasets in" in out and "(shop, shop_b) and none chosen" in out
    assert "modalfuse data use NAME" in out and "MODALFUSE_DATASET" in out
    res = run("data", "use", "shop_b")
    assert res.exit_code == 0 and "using shop_b by default (also here: shop)" in flat(res.output)
    res = run("data", "split", "--folds", "2")
    assert res.exit_code == 0, res.output
    assert "dataset shop_b (set by `modalfuse data use shop_b`)" in flat(res.output)
    assert (data_dir / "datasets" / "shop_b" / "splits.parquet").is_file()
    assert not (data_dir / "datasets" / "shop" / "splits.parquet").exists()
    monkeypatch.setenv("MODALFUSE_DATASET", "shop")
    res = run("data", "split", "--folds", "2")
    assert res.exit_code == 0 and "dataset shop (MODALFUSE_DATASET)" in flat(res.output)
    res = run("data", "use", "nope")
    assert res.exit_code == 1 and "no dataset 'nope'" in flat(res.output)


def test_an_empty_data_folder_says_how_to_get_a_dataset(data_dir):
    res = run("data", "split")
    assert res.exit_code == 1
    out = said(res)
    assert "no dataset in" in out and "modalfuse data import" in out


def test_batch_rows_the_pattern_cannot_name_become_error_rows(id_named, data_dir):
    from modalfuse.errors import InvalidInput
    from modalfuse.inference.batch import image_source_missing, row_image_names

    res = run("data", "import", "--table", str(id_named / "items.csv"), "--name", "shop",
              "--target", "colour", "--image-pattern", "{id}")
    assert res.exit_code == 0, res.output
    spec = load_dataset(Settings().dataset_dir("shop")).spec
    assert spec.image_pattern == "{id}"
    rows = pd.DataFrame({"id": ["e000b0bd5", "e001b0bd5", "../../etc/passwd", "nope"],
                         "weight": [1.0, 2.0, 3.0, 4.0]})
    assert image_source_missing(spec, list(rows.columns)) is None
    assert "lacks ['id']" in image_source_missing(spec, ["weight"])
    names = row_image_names(spec, rows, id_named)
    assert names[:2] == ["e000b0bd5.jpg", "e001b0bd5.png"]
    assert isinstance(names[2], InvalidInput) and "leaves the images folder" in str(names[2])
    assert names[3] == "nope.png"  # not there: the first name tried, for the row's error
    fmt = spec.model_copy(update={"image_pattern": "{weight:d}"})
    assert isinstance(row_image_names(fmt, rows, id_named)[0], InvalidInput)
