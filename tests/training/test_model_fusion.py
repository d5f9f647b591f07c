"""Model tier: the sprite CNN and the fused models — ONNX parity, repeatability, bundles, ablation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modalfuse.models.netconfig import NetConfig

TINY = {"image_size": 16, "width": 4, "embed_dim": 8, "epochs": 1, "batch_size": 32,
        "tab_hidden": 8, "views_per_epoch": 1}


def _labels(ds, splits) -> list[str]:
    return sorted(ds.table.set_index("id").loc[splits.ids("train"), "primary_type"].unique())


@pytest.fixture(scope="module")
def fitter(fixture_dataset, fixture_splits):
    from modalfuse.training.folds import FoldEngine
    from modalfuse.training.train import TrainConfig

    cfg = TrainConfig(model="stacking", seed=0, num_boost_round=20, net=TINY)
    return FoldEngine(fixture_dataset, fixture_splits, cfg, _labels(fixture_dataset, fixture_splits))


@pytest.fixture(scope="module")
def fused_bundle(fixture_dataset, fixture_splits, fitter, tmp_path_factory):
    from modalfuse.training.train import train

    out = tmp_path_factory.mktemp("fused") / "stacking"
    return train(fixture_dataset, fixture_splits, out, fitter.cfg, engine=fitter)


def _tiny_nets(n_classes: int, n_tab: int):
    from modalfuse.training.nets import FusionNet, ImageNet, seed_everything

    seed_everything(0)
    cfg = NetConfig(**TINY)
    return ImageNet(n_classes, cfg), FusionNet(n_classes, n_tab, cfg)


def test_torch_and_onnx_runtime_agree(fitter):
    """Every network part, exported with a dynamic batch axis, matches torch within 1e-5."""
    import onnxruntime as ort

    from modalfuse.models.calibration import softmax
    from modalfuse.models.neural import net_feeds
    from modalfuse.training.nets import export_onnx, torch_outputs

    rows = fitter.rows(frozenset())
    batch = fitter.batch(frozenset(), rows)
    for net in _tiny_nets(fitter.n_classes, batch.tabular_dense.shape[1]):
        names = list(net.input_names)
        onnx_bytes = export_onnx(net, net_feeds(batch.take(np.arange(2)), names, 16))
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        for n in (1, 7, len(rows)):  # batch sizes other than the export example's
            feeds = net_feeds(batch.take(np.arange(n)), names, 16)
            got = dict(zip(["logits", "embedding"], session.run(None, feeds), strict=True))
            want = torch_outputs(net, feeds)
            assert got["logits"].shape == (n, fitter.n_classes)
            np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5, rtol=0)
            np.testing.assert_allclose(got["embedding"], want["embedding"], atol=1e-5, rtol=0)
            np.testing.assert_allclose(softmax(got["logits"]), softmax(want["logits"]), atol=1e-5)


def test_training_is_seeded_and_repeatable(fitter):
    """Two fits with the same seed give the same network (same ONNX outputs)."""
    from modalfuse.models.neural import net_feeds
    from modalfuse.training.nets import ImageNet, fit_network, torch_outputs

    rows = fitter.rows(frozenset())
    images = fitter.training_images(rows)
    y = fitter.raw.y[rows]
    cfg = NetConfig(**TINY)
    outs = []
    for _ in range(2):
        net = fit_network(ImageNet(fitter.n_classes, cfg), images, None, y, fitter.n_classes, cfg,
                          seed=3)
        feeds = net_feeds(fitter.batch(frozenset(), rows[:5]), ["image"], 16)
        outs.append(torch_outputs(net, feeds)["logits"])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_cuda_request_without_gpu_is_a_clear_error():
    import torch

    from modalfuse.training.nets import DeviceError, resolve_device

    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(DeviceError, match=r"no CUDA GPU.*--device cpu"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="choose one of"):
        NetConfig(device="tpu")


def test_views_of_test_species_never_reach_training(fitter, fixture_splits):
    _, owner = fitter.view_images()
    test_ids = set(fixture_splits.ids("test").tolist())
    assert len(owner) > 0
    assert not test_ids & set(fitter.raw.ids[owner].tolist())
    # and only the training rows a fit may use: fold 0's views stay out of a fit without fold 0
    rows = fitter.rows(frozenset({0}))
    imgs = fitter.training_images(rows)
    assert imgs.owner.max() < len(rows)
    assert len(imgs.pixels) > len(rows)  # the extra views are there


def test_stacking_meta_learner_uses_out_of_fold_predictions_only(fitter):
    """The meta-learner of a model fitted without fold k is fitted on rows outside fold k,
    each predicted by a part that did not train on it."""
    rows, proba = fitter.heldout("gbm_tabular", frozenset({0}))
    assert not np.isin(rows, fitter.fold_rows(0)).any()
    for k in fitter.folds:
        if k == 0:
            continue
        part = fitter.fit("gbm_tabular", frozenset({0, k}))
        mask = np.isin(rows, fitter.fold_rows(k))
        np.testing.assert_allclose(
            proba[mask], part.predict_proba(fitter.batch(frozenset({0, k}), rows[mask])))


def test_fused_bundle_serves_through_onnx_runtime(fused_bundle, fixture_dataset, fixture_splits):
    from modalfuse.inference.bundle import load_bundle, model_kinds
    from modalfuse.inference.evaluate import predict_dataset_rows
    from modalfuse.inference.predictor import Predictor, table_records

    meta = json.loads((fused_bundle.path / "bundle.json").read_text())
    kinds = model_kinds(meta["model"])
    assert kinds[:2] == ["calibrated", "stacking"]
    assert {"onnx_net", "lightgbm"} <= set(kinds)
    onnx_files = sorted(p.relative_to(fused_bundle.path).as_posix()
                        for p in fused_bundle.path.rglob("*.onnx"))
    # The network, and every LightGBM part (served by ONNX Runtime), each as one ONNX file.
    assert "inner/cnn/net.onnx" in onnx_files
    assert {"inner/gbm/model.onnx", "inner/gbm_tabular/model.onnx"} <= set(onnx_files)
    assert all(f.endswith(("net.onnx", "model.onnx")) for f in onnx_files)
    assert meta["metrics"]["test"]["n"] == len(fixture_splits.ids("test"))

    pred = Predictor(load_bundle(fused_bundle.path))
    ids = fixture_splits.ids("test")[:6]
    p = predict_dataset_rows(pred, fixture_dataset, ids)
    assert p.shape == (6, len(pred.labels))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    # one row at a time gives the same probabilities as the batch
    rows = fixture_dataset.table.set_index("id").loc[ids].reset_index()
    one = pred.predict_proba(table_records(fixture_dataset.spec, rows.iloc[:1]),
                             fixture_dataset.row_images(rows.iloc[:1]))
    np.testing.assert_allclose(one[0], p[0], atol=1e-6)
    # a bad image is an error row, the good row is still scored
    out = pred.predict(table_records(fixture_dataset.spec, rows.iloc[:2]),
                       [b"not an image", fixture_dataset.row_images(rows.iloc[1:2])[0]])
    assert "error" in out[0] and "image" in out[0]["error"]
    assert out[1]["label"] in pred.labels


def test_ablation_table_and_doc(fixture_dataset, fixture_splits, fitter, tmp_path):
    from modalfuse.training.ablation import run_ablation, to_markdown

    report = run_ablation(fixture_dataset, fixture_splits, tmp_path, fitter.cfg,
                          ("gbm_tabular", "gbm", "cnn", "stacking"), engine=fitter)
    names = [r["model"] for r in report["results"]]
    assert names == ["gbm_tabular", "gbm", "cnn", "stacking"]
    gains = {r["model"]: r["gain_over_baseline"] for r in report["results"]}
    assert gains["gbm"]["gain"] == 0 and gains["gbm"]["low"] == gains["gbm"]["high"] == 0
    assert gains["stacking"]["low"] <= gains["stacking"]["gain_mean"] <= gains["stacking"]["high"]
    # The champion's reliability: every modality case, sets and OOD, on the test split.
    rel = report["reliability"]
    assert set(rel["cases"]) == {"both", "fields", "image"} and "ood" in rel
    best_cv = max(report["results"], key=lambda r: r["cv"]["macro_f1"]["mean"])["model"]
    assert report["champion"] == best_cv
    for r in report["results"]:
        assert 0 <= r["test"]["accuracy"] <= 1 and r["latency"]["single_ms"] > 0
        assert r["cv"]["macro_f1"]["sd"] >= 0 and r["temperature"] > 0
    assert (tmp_path / "ablation.png").stat().st_size > 1000
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    md = to_markdown(report, "modalfuse ablation --doc docs/ablation.md", "ablation.png")
    assert "modalfuse ablation" in md and "| `stacking`" in md
    assert "## Missing modalities" in md and "## Prediction sets" in md
    assert "## Out-of-distribution images" in md and "paired bootstrap" in md
    assert json.loads((tmp_path / "ablation.json").read_text())["champion"] == report["champion"]
