"""Data tier: the split audit catches bad splits (issue [byo] part 3).

The planted case: 36 flag-like images, each in its own group and all of one class, drift one
pixel at a time, so each is a near-duplicate of the next and the merging chains all 36 groups
into one that lands whole in the test part.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from fixture_data import make_fixture_dataset
from modalfuse.cli import app
from modalfuse.data.audit import PHASH_THRESHOLD, SplitContext
from modalfuse.data.checks.class_share_gap import ClassShareGapCheck
from modalfuse.data.checks.held_out_share import HeldOutShareCheck
from modalfuse.data.checks.near_duplicate import NearDuplicateCheck
from modalfuse.data.dataset import Dataset, load_dataset, write_dataset
from modalfuse.data.split import SplitError, make_splits, merge_near_duplicates, plan_splits
from modalfuse.features.image import encode_png, to_square_rgba

N_FLAGS = 36
FLAG_CLASS = "Normal"


def flag(k: int) -> Image.Image:
    """A red flag with a white band k pixels lower than flag 0's and a blue disc."""
    img = Image.new("RGBA", (96, 64), (200, 30, 40, 255))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 8 + k, 95, 28 + k), fill=(240, 240, 240, 255))
    d.ellipse((60, 4, 90, 34), fill=(20, 60, 160, 255))
    return img


@pytest.fixture(scope="module")
def flags_data_dir(tmp_path_factory) -> Path:
    """A data dir holding one dataset, "flags": the fixture data plus N_FLAGS chained flags,
    ids 1000.., each its own family."""
    d = tmp_path_factory.mktemp("flags-data")
    base = load_dataset(make_fixture_dataset(d / "base"))
    spec = base.spec
    table = base.table.copy()
    images = {n: base.image_bytes(n) for n in table[spec.image_column]}
    template = table[table[spec.target] == FLAG_CLASS].iloc[0]
    rows = []
    for k in range(N_FLAGS):
        r = template.copy()
        r[spec.id_column], r["name"], r[spec.group_column] = 1000 + k, f"Flag{k}", 1000 + k
        r[spec.image_column] = f"flag{k}.png"
        images[r[spec.image_column]] = encode_png(to_square_rgba(flag(k), 96))
        rows.append(r)
    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    write_dataset(d / "datasets" / "flags", spec, table, images, None, {"test": "chained flags"})
    return d


@pytest.fixture(scope="module")
def flags(flags_data_dir: Path) -> Dataset:
    """The planted dataset."""
    return load_dataset(flags_data_dir / "datasets" / "flags")


def by_name(audit: dict) -> dict:
    """The audit's check results by check name."""
    return {c["name"]: c for c in audit["checks"]}


def test_merging_records_the_links_and_a_cap_refuses_a_join():
    # Three groups: A-B and B-C are 4 bits apart, A-C 8: a chain at threshold 5.
    bits = np.zeros((3, 64), dtype=bool)
    bits[1, :4] = True
    bits[2, :8] = True
    groups = np.array(["A", "B", "C"])
    m = merge_near_duplicates(groups, bits, threshold=5)
    assert len(set(m.labels)) == 1
    assert [(x.row_a, x.row_b, x.bits) for x in m.links] == [(0, 1, 4), (1, 2, 4)]
    assert m.refused == []
    capped = merge_near_duplicates(groups, bits, threshold=5, max_group_share=2 / 3)
    assert capped.labels[0] == capped.labels[1] != capped.labels[2]
    assert [(x.row_a, x.row_b, x.bits) for x in capped.refused] == [(1, 2, 4)]


def test_merging_without_a_cap_joins_exactly_the_connected_groups():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(3)
    base = rng.random((6, 64)) < 0.5
    bits = base[rng.integers(0, 6, 200)] ^ (rng.random((200, 64)) < 0.04)
    groups = rng.integers(0, 120, 200)
    m = merge_near_duplicates(groups, bits, PHASH_THRESHOLD)
    # The same partition from a graph library: rows linked by a near pair or a shared group.
    d = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    near = (d <= PHASH_THRESHOLD) | (groups[:, None] == groups[None, :])
    _, expected = connected_components(coo_matrix(near), directed=False)
    assert len(np.unique(m.labels)) == len(np.unique(expected))
    assert pd.crosstab(m.labels, expected).astype(bool).sum(axis=1).eq(1).all()
    assert len(m.links) == len(np.unique(groups)) - len(np.unique(m.labels))


def test_a_good_split_passes_every_check(fixture_dataset):
    audit = json.loads((fixture_dataset.root / "split_audit.json").read_text())
    checks = by_name(audit)
    assert {"test_share", "class_share_gap", "merged_groups"} <= set(checks)
    assert all(c["passed"] for c in audit["checks"]), [c["name"] for c in audit["checks"]
                                                       if not c["passed"]]
    share = checks["test_share"]["summary"]
    assert share["requested"] == 0.2 and abs(share["realised"] - 0.2) < 0.05
    assert checks["class_share_gap"]["summary"]["max_share_gap"] < 0.05
    merged = checks["merged_groups"]["summary"]
    # The fixture has one near-duplicate pair across two families: one link, no chain.
    assert merged["links"] == merged["merged_groups"] == 1
    assert merged["largest_group_original_groups"] <= 2 and merged["flagged_groups"] == []
    assert audit["params"]["max_group_share"] is None


def test_chained_flags_fail_the_test_share_and_the_class_gap(flags):
    s = plan_splits(flags, seed=0)
    checks = by_name(s.audit)
    n = len(flags.table)

    share = checks["test_share"]
    assert share["blocking"] and not share["passed"]
    assert share["summary"]["realised"] > 0.3 and share["summary"]["gap"] >= 0.1

    gap = checks["class_share_gap"]
    assert gap["blocking"] and not gap["passed"]
    normal = gap["summary"]["classes_over_limit"][FLAG_CLASS]
    assert normal["test_share"] - normal["train_share"] > 0.15
    assert normal["test_rows"] >= N_FLAGS

    merged = checks["merged_groups"]
    assert not merged["blocking"] and not merged["passed"]
    assert merged["summary"]["largest_group_rows"] == N_FLAGS
    assert merged["summary"]["largest_group_share"] == round(N_FLAGS / n, 4) > 0.02
    group = merged["summary"]["flagged_groups"][0]
    assert group["original_groups"] == N_FLAGS and group["side"] == "test"
    assert group["links_total"] == N_FLAGS - 1 and len(group["links"]) == 10
    for link in group["links"]:
        assert all(1000 <= i < 1000 + N_FLAGS for i in link["ids"])
        assert link["groups"][0] != link["groups"][1] and link["bits"] <= PHASH_THRESHOLD
    assert group["span_bits"] > PHASH_THRESHOLD  # the chain joined images that are not alike
    assert s.audit["largest_groups"][0]["rows"] == N_FLAGS

    with pytest.raises(SplitError, match="test_share") as e:
        make_splits(flags, seed=0)
    assert "class_share_gap" in str(e.value) and FLAG_CLASS in str(e.value)


def test_a_group_cap_breaks_the_chain(flags):
    n = len(flags.table)
    s = plan_splits(flags, seed=0, max_group_share=0.02)
    checks = by_name(s.audit)
    merged = checks["merged_groups"]["summary"]
    assert checks["merged_groups"]["passed"] and merged["flagged_groups"] == []
    assert merged["largest_group_rows"] <= 0.02 * n and merged["refused_links"] > 0
    assert checks["test_share"]["passed"] and checks["class_share_gap"]["passed"]
    # What the cap costs: flags it kept apart now sit on both sides, and the audit says so.
    near = checks["near_duplicate_crossing"]
    assert not near["passed"] and near["summary"]["pairs_crossing"] > 0
    assert near["summary"]["pairs_crossing_kept_apart_by_group_cap"] == near["summary"]["pairs_crossing"]


def split_table(spec, counts: dict[tuple[str, str], int]) -> pd.DataFrame:
    """A table with `counts[(class, split)]` rows of each class in each split, one group a row."""
    parts = [(cls, part) for (cls, part), k in counts.items() for _ in range(k)]
    return pd.DataFrame({spec.id_column: [f"r{i}" for i in range(len(parts))],
                         spec.target: [cls for cls, _ in parts],
                         spec.group_column: range(len(parts)),
                         "split": [part for _, part in parts],
                         "fold": [0 if part == "train" else -1 for _, part in parts]})


@pytest.mark.parametrize(("test_rows", "passed"), [(29, True), (30, False), (40, False), (11, True)])
def test_test_share_fails_at_ten_points_off(fixture_dataset, test_rows, passed):
    spec = fixture_dataset.spec
    t = split_table(spec, {("Fire", "train"): 100 - test_rows, ("Fire", "test"): test_rows})
    result = HeldOutShareCheck().run(SplitContext(spec, t, None, {"test_size": 0.2}))
    assert result.passed is passed and result.blocking
    assert result.summary["realised"] == test_rows / 100
    assert result.rows["flag"].all() is not passed and len(result.rows) == test_rows


def test_class_share_gap_names_the_classes_over_the_limit(fixture_dataset):
    spec = fixture_dataset.spec
    # Fire: 50 % of train, 70 % of test (gap 0.2); Water the other way round.
    t = split_table(spec, {("Fire", "train"): 40, ("Water", "train"): 40,
                           ("Fire", "test"): 14, ("Water", "test"): 6})
    result = ClassShareGapCheck().run(SplitContext(spec, t, None))
    assert not result.passed and result.blocking
    assert result.summary["classes_over_limit"] == {
        "Fire": {"train_share": 0.5, "test_share": 0.7, "train_rows": 40, "test_rows": 14},
        "Water": {"train_share": 0.5, "test_share": 0.3, "train_rows": 40, "test_rows": 6},
    }
    # A 10-point gap passes.
    t = split_table(spec, {("Fire", "train"): 40, ("Water", "train"): 40,
                           ("Fire", "test"): 12, ("Water", "test"): 8})
    ok = ClassShareGapCheck().run(SplitContext(spec, t, None))
    assert ok.passed and ok.summary["max_share_gap"] == 0.1 and ok.summary["classes_over_limit"] == {}


def test_class_share_gap_allows_one_row_of_a_small_test_part(fixture_dataset):
    spec = fixture_dataset.spec
    # 5 test rows: one row is 0.2 of the share, so a 0.17 gap is rounding, a 0.3 one is not.
    t = split_table(spec, {("Fire", "train"): 7, ("Water", "train"): 12,
                           ("Fire", "test"): 1, ("Water", "test"): 4})
    ok = ClassShareGapCheck().run(SplitContext(spec, t, None))
    assert ok.passed and ok.summary["allowed"] == 0.2 and 0.16 < ok.summary["max_share_gap"] < 0.2
    t = split_table(spec, {("Fire", "train"): 10, ("Water", "train"): 10,
                           ("Water", "test"): 5})
    bad = ClassShareGapCheck().run(SplitContext(spec, t, None))
    assert not bad.passed and set(bad.summary["classes_over_limit"]) == {"Fire", "Water"}


def test_near_duplicate_summary_keeps_string_ids(fixture_dataset):
    spec = fixture_dataset.spec
    t = pd.DataFrame({spec.id_column: ["e007a3b0bd5", "f1c2", "aa9"], spec.target: "Fire",
                      spec.group_column: [1, 2, 3], "split": ["test", "train", "train"],
                      "fold": [-1, 0, 1]})
    bits = np.zeros((3, 64), dtype=bool)
    bits[2, :32] = True  # far from the other two
    result = NearDuplicateCheck().run(SplitContext(spec, t, bits))
    assert not result.passed
    assert result.summary["examples"] == [["e007a3b0bd5", "f1c2"]]
    assert json.loads(json.dumps(result.summary))["examples"][0][0] == "e007a3b0bd5"


def dataset_files(flags_data_dir: Path) -> set[str]:
    """The names of the files in the flags dataset's folder."""
    return {p.name for p in (flags_data_dir / "datasets" / "flags").iterdir()}


def test_split_explain_prints_the_chain_and_writes_nothing(flags_data_dir, monkeypatch):
    monkeypatch.setenv("MODALFUSE_DATA_DIR", str(flags_data_dir))
    before = dataset_files(flags_data_dir)
    runner = CliRunner()

    res = runner.invoke(app, ["data", "split", "-d", "flags", "--explain"], terminal_width=200)
    assert res.exit_code == 1, res.output
    out = res.output
    assert "largest groups after near-duplicate merging" in out
    assert "FAIL test_share" in out and "FAIL class_share_gap" in out and "warn merged_groups" in out
    assert f"merged group of {N_FLAGS} rows" in out and "(group 1000) ~" in out
    assert "dry run (--explain): nothing written" in out
    assert "splits.parquet" not in before and dataset_files(flags_data_dir) == before

    capped = runner.invoke(app, ["data", "split", "-d", "flags", "--explain",
                                 "--max-group-share", "0.02"], terminal_width=200)
    assert "pass merged_groups" in capped.output and "pass test_share" in capped.output
    assert "FAIL near_duplicate_crossing" in capped.output
    assert dataset_files(flags_data_dir) == before

    # Without --explain a failing split is printed, not saved, and exits 1.
    plain = runner.invoke(app, ["data", "split", "-d", "flags"], terminal_width=200)
    assert plain.exit_code == 1 and "FAIL test_share" in plain.output
    assert "chained by:" in plain.output and "1000 (group 1000) ~ 1001 (group 1001)" in plain.output
    assert "nothing saved" in plain.output and dataset_files(flags_data_dir) == before

    bad = runner.invoke(app, ["data", "split", "-d", "flags", "--max-group-share", "1.5"])
    assert bad.exit_code == 1 and "max_group_share 1.5 is not allowed" in bad.output


def test_split_options_reach_the_audit(flags_data_dir, monkeypatch):
    monkeypatch.setenv("MODALFUSE_DATA_DIR", str(flags_data_dir))
    res = CliRunner().invoke(app, ["data", "split", "-d", "flags", "--explain",
                                   "--phash-threshold", "3"], terminal_width=200)
    assert "(within 3 bits; cap none)" in res.output
    assert '"threshold_hamming_bits": 3' in res.output
