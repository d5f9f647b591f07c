"""Words from the dataset, not from Pokémon: what a user of another table reads.

A 'fruit' table (JPEG photos, no views, no Pokédex) is imported, split and trained through
the CLI; then every page and message that names the data is rendered for it (the train
message, the ablation page, the decisions page, the model card, predict / explain /
reliability output, the UI's labels and answers) and searched for Pokémon words.
"""

from __future__ import annotations

import asyncio
import json
import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from fixture_data import make_fruit_dataset
from modalfuse.cli import app as cli_app
from modalfuse.config import Settings
from modalfuse.data.builders.custom import build_custom
from modalfuse.data.dataset import load_dataset
from modalfuse.data.split import load_splits, make_splits, save_splits

POKEMON_WORDS = ("pokemon", "pokémon", "pokedex", "pokédex", "sprite", "species", "evolution",
                 "shiny", "type 1", "primary type", "abilities")
"""Words that belong to the built-in Pokémon dataset: none may reach the user of another
table (matched case-insensitively at the start of a word: "sprites" counts, "probabilities"
does not)."""

WORD = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in POKEMON_WORDS) + ")", re.IGNORECASE)


def pokemon_words(text: str) -> list[str]:
    """Each Pokémon word in `text`, with some context around it."""
    return [text[max(0, m.start() - 40):m.end() + 40] for m in WORD.finditer(text)]


def assert_neutral(text: str, where: str) -> None:
    """Fail, quoting the context, if `text` (one rendered output) has a Pokémon word."""
    found = pokemon_words(text)
    assert not found, f"Pokémon words in {where}: {found}"


@pytest.fixture(scope="module")
def fruit(tmp_path_factory):
    """(data dir, source folder) of the fruit dataset, imported and split in a data dir of
    its own (the session's holds the Pokémon-format fixture)."""
    data = tmp_path_factory.mktemp("fruit-data")
    src = make_fruit_dataset(tmp_path_factory.mktemp("fruit-src"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODALFUSE_DATA_DIR", str(data))
        mp.delenv("MODALFUSE_DATASET", raising=False)
        mp.setenv("MODALFUSE_TRACKING", "false")
        result = build_custom(src / "fruit.csv", Settings().dataset_dir("fruit"), "fruit", "fruit",
                              images_dir=src / "photos", image_column="photo", id_column="sku",
                              group_column="orchard")
        ds = load_dataset(result.path)
        save_splits(make_splits(ds, seed=1), ds.root)
        yield data, src


@pytest.fixture(scope="module")
def trained(fruit):
    """The output of `modalfuse train -d fruit` and the bundle it wrote."""
    res = CliRunner().invoke(cli_app, ["train", "-d", "fruit", "--no-track", "--rounds", "20"])
    assert res.exit_code == 0, res.output
    return res.output, Settings().default_bundle("fruit")


def test_the_words_are_found_where_they_are():
    assert pokemon_words("a Sprite of one species") and pokemon_words("the Pokédex record")
    assert not pokemon_words("a photo of one row")


# Import, split and train the fruit table (about 10 s), then render from it: 28 s in all here.
@pytest.mark.slow
def test_the_train_message_does_not_quote_another_dataset(trained):
    output, _ = trained
    assert_neutral(output, "`modalfuse train` output")
    said = " ".join(output.split())  # the console wraps long lines
    why = said[:said.index("trains another")]
    assert "chosen on another dataset's ablation" in why and "modalfuse ablation -d fruit" in why
    assert not re.search(r"\d", why.replace("-d fruit", ""))  # none of the other dataset's numbers


def test_recipe_descriptions_use_neutral_words_by_default():
    from modalfuse.spec import DatasetWords
    from modalfuse.training import recipes

    words = DatasetWords()  # what an imported table gets
    for name in recipes.names():
        assert_neutral(recipes.get(name).describe(words), f"recipe {name}")


@pytest.mark.slow
def test_ablation_and_decisions_pages(fruit, tmp_path):
    from modalfuse.training.ablation import run_ablation, to_markdown
    from modalfuse.training.config import TrainConfig
    from modalfuse.training.decisions import measure
    from modalfuse.training.decisions import to_markdown as decisions_markdown

    ds = load_dataset(Settings().dataset_dir("fruit"))
    splits = load_splits(ds)
    report = run_ablation(ds, splits, tmp_path / "ablation",
                          TrainConfig(model="gbm", seed=0, num_boost_round=20),
                          ("gbm_tabular", "gbm", "gbm_image"))
    page = to_markdown(report, "modalfuse ablation -d fruit", "ablation.png", "trust.png")
    assert "## Out-of-distribution images" in page and "test images flagged" in page
    assert "views front" not in page  # the fruit table has no extra views
    assert_neutral(page, "the ablation page")
    assert_neutral(json.dumps(report, default=str), "ablation.json")
    assert_neutral(decisions_markdown(measure(ds, splits, seed=0), "modalfuse report decisions"),
                   "the decisions page")


@pytest.mark.slow
def test_model_card_predict_explain_and_reliability(fruit, trained, tmp_path):
    from modalfuse.inference.bundle import load_bundle
    from modalfuse.tracking.model_card import bundle_card, write_card

    _, src = fruit
    _, bundle_dir = trained
    ds = load_dataset(Settings().dataset_dir("fruit"))
    bundle = load_bundle(bundle_dir)
    path, _ = write_card(bundle, ds, load_splits(ds))
    assert_neutral(path.read_text(), "the model card")
    assert_neutral(bundle_card(load_bundle(bundle_dir)), "the served model card")
    assert_neutral(json.dumps(bundle.meta, default=str), "the bundle's metadata")

    runner = CliRunner()
    commands = {
        "predict": ["predict", "-i", str(src / "fruit.csv"), "-o", str(tmp_path / "p.csv"),
                    "--images", str(src / "photos"), "--bundle", str(bundle_dir)],
        "explain --id": ["explain", "-d", "fruit", "--id", "S0001", "--bundle", str(bundle_dir),
                         "--out-dir", str(tmp_path), "--permutations", "2", "--background", "2"],
        "reliability": ["reliability", "-d", "fruit", "--bundle", str(bundle_dir),
                        "--probes", "5"],
    }
    for name, args in commands.items():
        res = runner.invoke(cli_app, args)
        assert res.exit_code == 0, res.output
        assert_neutral(res.output, f"`modalfuse {name}` output")
    assert_neutral(pd.read_csv(tmp_path / "p.csv").to_csv(), "the predictions file")
    res = runner.invoke(cli_app, ["example", "S0001", "-d", "fruit"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    assert_neutral(json.dumps(body["fields"]), "`modalfuse example` output")


def ui_texts(demo) -> list[str]:
    """Every label, info line, placeholder and text value of a gradio app's components."""
    texts = []
    for block in demo.blocks.values():
        for attr in ("label", "info", "placeholder", "value"):
            v = getattr(block, attr, None)
            if isinstance(v, str):
                texts.append(v)
    return texts


@pytest.mark.slow
def test_the_ui_names_the_fruit_data_only(fruit, trained):
    from modalfuse.inference.predictor import Predictor, table_records
    from modalfuse.serve.app import create_app
    from modalfuse.serve.routes.explain import explainer_for
    from modalfuse.ui.app import (
        build_ui,
        explain_one,
        header_markdown,
        input_values,
        model_card_markdown,
        model_markdown,
    )

    _, bundle_dir = trained
    predictor = Predictor.from_path(bundle_dir)
    app = create_app(Settings(), predictor=predictor)
    texts = ui_texts(build_ui(app))
    assert any("Prefill from the dataset" in t for t in texts)
    ds = load_dataset(Settings().dataset_dir("fruit"))
    row = ds.table.iloc[:1]
    view = explain_one(explainer_for(app), ds.row_images(row)[0],
                       input_values(ds.spec, table_records(ds.spec, row)[0]))
    texts += [view.status, view.trust, view.top, view.legend, view.share,
              view.contributions.to_csv(), header_markdown(predictor), model_markdown(predictor),
              asyncio.run(model_card_markdown(app))]
    assert_neutral("\n".join(texts), "the UI")


def test_the_builtin_dataset_keeps_its_words():
    from modalfuse.data.builders.pokemon import pokemon_spec
    from modalfuse.training import recipes

    words = pokemon_spec().words
    assert (words.image_noun, words.record_noun, words.rows) == ("sprite", "Pokédex record",
                                                                  "species")
    assert recipes.get("gbm_tabular").describe(words) == "tabular only: LightGBM on the Pokédex record"
    assert recipes.get("cnn").describe(words) == "image only: sprite CNN trained from scratch"


def test_a_spec_saved_without_words_reads_neutral():
    from modalfuse.spec import DatasetSpec

    spec = DatasetSpec.model_validate({"name": "t", "id_column": "id", "target": "y",
                                       "image_column": "img", "group_column": "g", "fields": []})
    assert (spec.words.image_noun, spec.words.record_noun, spec.words.grouped) == (
        "image", "record", "grouped")
