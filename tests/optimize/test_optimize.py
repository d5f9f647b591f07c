"""Model tier: quantized, pruned and distilled bundles load, serve through the Predictor, and stay
close to the model they came from; calibration and distillation read training rows only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalfuse.models.netconfig import NetConfig

TINY = {"image_size": 16, "width": 8, "embed_dim": 8, "epochs": 2, "batch_size": 32,
        "tab_hidden": 8, "views_per_epoch": 1, "augment": False}


@pytest.fixture(scope="module")
def fitter(fixture_dataset, fixture_splits):
    from modalfuse.training.folds import FoldEngine
    from modalfuse.training.train import TrainConfig

    labels = sorted(fixture_dataset.table.set_index("id").loc[fixture_splits.ids("train"),
                                                              "primary_type"].unique())
    cfg = TrainConfig(model="gbm", seed=0, num_boost_round=20, net=TINY)
    return FoldEngine(fixture_dataset, fixture_splits, cfg, labels)


@pytest.fixture(scope="module")
def variants(fitter, tmp_path_factory):
    from modalfuse.optimize.prune import prune_variants

    return prune_variants(fitter, tmp_path_factory.mktemp("opt"), "intermediate",
                          sparsities=(0.5,), finetune_epochs=1, seed=0)


def _test_proba(bundle, ds, splits):
    from modalfuse.inference.evaluate import predict_dataset_rows
    from modalfuse.inference.predictor import Predictor

    return predict_dataset_rows(Predictor.from_path(bundle.path), ds, splits.ids("test"))


def test_calibration_rows_come_from_the_training_split(variants, fixture_dataset, fixture_splits):
    from modalfuse.optimize import training_batch

    ids, batch = training_batch(variants["fp32"], fixture_dataset, fixture_splits, rows=20)
    assert len(ids) == len(batch) == 20
    assert set(ids) <= set(fixture_splits.ids("train"))
    assert not set(ids) & set(fixture_splits.ids("test"))


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantized_bundle_is_int8_and_close(mode, variants, fixture_dataset, fixture_splits, tmp_path):
    import onnx

    from modalfuse.inference.bundle import load_bundle
    from modalfuse.optimize import onnx_parts
    from modalfuse.optimize.quantize import quantize_bundle

    fp32 = variants["fp32"]
    q = quantize_bundle(fp32, fixture_dataset, fixture_splits, tmp_path / mode, mode=mode,
                        calibration_rows=40)
    loaded = load_bundle(q.path)
    assert loaded.meta["model"]["kind"] == fp32.meta["model"]["kind"]  # same kind, served unchanged
    assert loaded.meta["training"]["optimized"]["method"] == f"int8_{mode}"
    (_, part), = onnx_parts(loaded.model)
    ops = {n.op_type for n in onnx.load_from_string(part.onnx_bytes).graph.node}
    assert ("QuantizeLinear" in ops) if mode == "static" else ("DynamicQuantizeLinear" in ops
                                                                 or "MatMulInteger" in ops)
    a, b = _test_proba(fp32, fixture_dataset, fixture_splits), _test_proba(loaded, fixture_dataset,
                                                                          fixture_splits)
    assert a.shape == b.shape
    assert np.abs(a - b).max() < 0.1
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.8


def test_quantize_refuses_a_bundle_without_networks(fixture_bundle, fixture_dataset, fixture_splits,
                                                    tmp_path):
    from modalfuse.optimize.quantize import quantize_bundle

    with pytest.raises(ValueError, match="no ONNX network"):
        quantize_bundle(fixture_bundle, fixture_dataset, fixture_splits, tmp_path / "q")
    with pytest.raises(ValueError, match="choose one of"):
        quantize_bundle(fixture_bundle, fixture_dataset, fixture_splits, tmp_path / "q", mode="fp8")


def test_channel_pruning_keeps_the_function_when_nothing_is_removed(fitter):
    from modalfuse.models.neural import net_feeds
    from modalfuse.optimize.prune import build_net, channel_prune

    cfg = NetConfig(**TINY)
    batch = fitter.batch(frozenset(), fitter.rows(frozenset())[:5])
    dense = build_net("intermediate", fitter.n_classes, batch.tabular_dense.shape[1], cfg).eval()
    same = channel_prune(dense, build_net("intermediate", fitter.n_classes,
                                          batch.tabular_dense.shape[1], cfg)).eval()
    feeds = net_feeds(batch, ["image", "tabular"], cfg.image_size)
    x = [torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["tabular"])]
    with torch.no_grad():
        assert torch.allclose(dense(*x)[0], same(*x)[0], atol=1e-5)


def test_pruned_bundle_is_narrower_and_close(variants, fixture_dataset, fixture_splits):
    from modalfuse.inference.bundle import load_bundle

    dense, pruned = variants["fp32"], load_bundle(variants["pruned50"].path)
    assert pruned.meta["training"]["config"]["net"]["width"] == TINY["width"] // 2
    assert pruned.meta["training"]["params"] < dense.meta["training"]["params"]
    assert len((pruned.path / "net.onnx").read_bytes()) < len((dense.path / "net.onnx").read_bytes())
    a, b = _test_proba(dense, fixture_dataset, fixture_splits), _test_proba(pruned, fixture_dataset,
                                                                           fixture_splits)
    assert a.shape == b.shape and np.allclose(b.sum(1), 1, atol=1e-5)
    assert np.abs(a - b).mean() < 0.1


def test_student_learns_from_out_of_fold_teacher_targets(fitter, fixture_bundle, fixture_dataset,
                                                        fixture_splits, tmp_path):
    from modalfuse.inference.bundle import load_bundle
    from modalfuse.optimize.distill import STUDENT, distill, teacher_soft_targets

    rows, soft = teacher_soft_targets(fitter, fixture_bundle)
    assert np.array_equal(rows, fitter.rows(frozenset()))  # training rows only, in order
    assert np.allclose(soft.sum(1), 1)
    # Out of fold: the soft targets are not the teacher's in-sample predictions.
    in_sample = fixture_bundle.model.predict_proba(fitter.batch(frozenset(), rows))
    assert not np.allclose(soft, in_sample)
    cfg = STUDENT.model_copy(update={"epochs": 2, "augment": False})
    student = load_bundle(distill(fitter, fixture_bundle, tmp_path / "student", cfg).path)
    assert student.meta["training"]["optimized"]["teacher"] == fixture_bundle.model_version
    p = _test_proba(student, fixture_dataset, fixture_splits)
    assert p.shape == (len(fixture_splits.ids("test")), len(fixture_bundle.labels))


def test_bench_models_measures_every_variant_against_the_baseline(variants, fixture_dataset,
                                                                   fixture_splits, tmp_path):
    from modalfuse.optimize.bench import bench_models, save_report

    report = bench_models([(n, b.path) for n, b in variants.items()], fixture_dataset,
                          fixture_splits, baseline="fp32", rounds=1, batch=8,
                          versus=[("pruned50", "fp32")])
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"fp32", "pruned50"}
    assert rows["fp32"]["speedup_p50"] == 1.0 and rows["fp32"]["macro_f1_delta_pts"] == 0.0
    for r in rows.values():
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["throughput_rps"] > 0
        assert r["n_test"] == len(fixture_splits.ids("test"))
    j, md = save_report(report, tmp_path)
    assert "pruned50" in md.read_text() and j.is_file()
    with pytest.raises(ValueError, match="baseline"):
        bench_models([("a", variants["fp32"].path)], fixture_dataset, fixture_splits, baseline="b")


def test_quantized_bundle_is_served_by_the_api_unchanged(variants, fixture_dataset, fixture_splits,
                                                         tmp_path):
    from fastapi.testclient import TestClient

    from modalfuse.config import Settings
    from modalfuse.inference.predictor import Predictor
    from modalfuse.optimize.quantize import quantize_bundle
    from modalfuse.serve.app import create_app

    q = quantize_bundle(variants["fp32"], fixture_dataset, fixture_splits, tmp_path / "q",
                        calibration_rows=20)
    client = TestClient(create_app(Settings(), predictor=Predictor.from_path(q.path)))
    r = client.post("/v1/predict", json=q.meta["example"])
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == q.model_version
