"""The EDA report and the `eda` / `explain` commands, on the fixture dataset."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from modalfuse.eda.html_report import cramers_v, eta_squared


def test_statistics_behave():
    y = pd.Series(list("aabb"))
    assert eta_squared(pd.Series([1.0, 1.0, 5.0, 5.0]), y) == pytest.approx(1.0)
    assert eta_squared(pd.Series([1.0, 5.0, 1.0, 5.0]), y) == pytest.approx(0.0)
    assert cramers_v(pd.Series(list("xxyy")), y) == pytest.approx(1.0)
    assert cramers_v(pd.Series(list("xyxy")), y) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def report_html(fixture_dataset, tmp_path_factory):
    from modalfuse.cli import app

    out = tmp_path_factory.mktemp("eda") / "eda.html"
    result = CliRunner().invoke(app, ["eda", "--dataset", "pokemon", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out.read_text(encoding="utf-8")


def test_report_is_self_contained_and_complete(report_html, fixture_dataset):
    text = report_html
    assert "<script" not in text and not re.search(r"(src|href)=['\"]https?:", text)
    titles = re.findall(r"<h2 id='s\d+'>([^<]+)</h2>", text)
    for expected in ("Target balance", "Missing values", "Numeric fields by class",
                     "Multi-valued fields against the target", "Correlations",
                     "Images: size and colour", "Images per class", "Split audit",
                     "Pokémon: per generation", "Pokémon: legendary share",
                     "Pokémon: abilities against type"):
        assert expected in titles
    assert text.count("data:image/png;base64,") >= 12
    assert text.count("What it means for modelling") == len(titles)
    # Numbers come from the data: the row count and the largest class as computed here.
    counts = fixture_dataset.table[fixture_dataset.spec.target].value_counts()
    assert f"{len(fixture_dataset.table)} rows, {len(counts)} classes" in text
    assert f"accuracy of {counts.iloc[0] / counts.sum():.3f}" in text
    assert fixture_dataset.version in text


def test_explain_command_writes_global_plots_and_one_row(fixture_bundle, fixture_dataset,
                                                         tmp_path):
    from modalfuse.cli import app

    runner = CliRunner()
    args = ["explain", "--bundle", str(fixture_bundle.path), "--out-dir", str(tmp_path),
            "--permutations", "4"]
    result = runner.invoke(app, [*args, "--global"])
    assert result.exit_code == 0, result.output
    for name in ("explain_global_pokemon.png", "explain_modality_pokemon.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row_id = str(fixture_dataset.table["id"].iloc[0])
    result = runner.invoke(app, [*args, "--id", row_id])
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"explain_pokemon_{row_id}.png").exists()
    assert runner.invoke(app, [*args, "--id", "999999"]).exit_code == 2
    assert runner.invoke(app, args).exit_code == 2
