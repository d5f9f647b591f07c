"""Structured (channel) pruning of the sprite CNN trunk, with fine-tuning, exported to ONNX.

Each conv layer keeps its most important output channels (L1 norm of the filter times
|BatchNorm gamma|, as in network slimming); the net is rebuilt *narrower*, so the saved
ONNX graph does less arithmetic and CPU latency really drops (masks alone would not).
Training and fine-tuning use training-split rows only (the FoldEngine's rows).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modalfuse.errors import InvalidInput
from modalfuse.inference.bundle import ModelBundle, load_bundle, save_bundle, update_bundle_meta
from modalfuse.models.netconfig import NetConfig
from modalfuse.models.neural import OnnxNetModel, net_feeds
from modalfuse.training.folds import FoldEngine
from modalfuse.training.nets import FusionNet, ImageNet, export_onnx, fit_network
from modalfuse.training.train import request_example

ALL_FOLDS: frozenset[int] = frozenset()


def pruned_width(width: int, sparsity: float) -> int:
    """The channel width left after pruning a share `sparsity` of the channels."""
    if not 0 <= sparsity < 1:
        raise InvalidInput(f"sparsity must be in [0, 1), got {sparsity}")
    return max(1, round(width * (1 - sparsity)))


def build_net(kind: str, n_classes: int, n_tabular: int, cfg: NetConfig) -> nn.Module:
    """A fresh network of `kind` ("cnn" or "intermediate") for the data's shapes."""
    if kind == "intermediate":
        return FusionNet(n_classes, n_tabular, cfg)
    if kind == "cnn":
        return ImageNet(n_classes, cfg)
    raise InvalidInput(f"unknown network {kind!r}; choose 'cnn' or 'intermediate'")


def _convs(net: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    layers = list(getattr(net, "trunk").features.modules())  # noqa: B009
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    bns = [m for m in layers if isinstance(m, nn.BatchNorm2d)]
    return list(zip(convs, bns, strict=True))


def channel_prune(net: nn.Module, pruned: nn.Module) -> nn.Module:
    """Copy `net`'s most important channels into `pruned` (same class, narrower trunk)."""
    src, dst = _convs(net), _convs(pruned)
    keep_in = torch.arange(src[0][0].in_channels)
    with torch.no_grad():
        for (conv, bn), (pconv, pbn) in zip(src, dst, strict=True):
            score = conv.weight.abs().sum(dim=(1, 2, 3)) * bn.weight.abs()
            keep = torch.sort(torch.argsort(score, descending=True)[:pconv.out_channels]).values
            pconv.weight.copy_(conv.weight[keep][:, keep_in])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(pbn, name).copy_(getattr(bn, name)[keep])
            keep_in = keep
        # The projection reads [mean-pooled, max-pooled] last-layer channels.
        c = src[-1][0].out_channels
        cols = torch.cat([keep_in, keep_in + c])
        trunk, ptrunk = getattr(net, "trunk"), getattr(pruned, "trunk")  # noqa: B009
        ptrunk.proj[0].weight.copy_(trunk.proj[0].weight[:, cols])
        ptrunk.proj[0].bias.copy_(trunk.proj[0].bias)
        # Everything outside the conv trunk (tabular branch, head) has the same shape.
        rest = {k: v for k, v in net.state_dict().items() if not k.startswith("trunk.")}
        pruned.load_state_dict(rest, strict=False)
    return pruned


def count_params(net: nn.Module) -> int:
    """The number of weights of a network."""
    return sum(p.numel() for p in net.parameters())


def train_net(fitter: FoldEngine, kind: str, cfg: NetConfig, seed: int,
              net: nn.Module | None = None, description: str = "network") -> nn.Module:
    """Fit (or fine-tune, when `net` is given) a network on every training-split row."""
    rows = fitter.rows(ALL_FOLDS)
    batch = fitter.batch(ALL_FOLDS, rows)
    if net is None:
        net = build_net(kind, fitter.n_classes, batch.tabular_dense.shape[1], cfg)
    tab = batch.tabular_dense if kind == "intermediate" else None
    return fit_network(net, fitter.training_images(rows), tab, fitter.raw.y[rows],
                       fitter.n_classes, cfg, seed, description=description)


def to_onnx_model(fitter: FoldEngine, net: nn.Module, image_size: int) -> OnnxNetModel:
    """The network exported to ONNX as a served `onnx_net` model (logits and embedding)."""
    rows = fitter.rows(ALL_FOLDS)[:2]
    inputs = list(getattr(net, "input_names"))  # noqa: B009
    feeds = net_feeds(fitter.batch(ALL_FOLDS, rows), inputs, image_size)
    return OnnxNetModel(export_onnx(net, feeds), inputs, image_size, outputs=["logits", "embedding"])


def save_net_bundle(fitter: FoldEngine, net: nn.Module, kind: str, cfg: NetConfig, out: Path,
                    how: dict) -> ModelBundle:
    """A bundle of one network (no calibration: every variant is compared as trained)."""
    ds, splits = fitter.ds, fitter.splits
    model = to_onnx_model(fitter, net, cfg.image_size)
    bundle = save_bundle(out, ds.spec, fitter.preprocessor(ALL_FOLDS), model, fitter.labels,
                         dataset={"name": ds.spec.name, "version": ds.version,
                                  "split_params": splits.audit.get("params"),
                                  "train_rows": len(fitter.train_pos),
                                  "test_rows": len(splits.ids("test"))},
                         metrics={}, training={"config": {**fitter.cfg.model_dump(mode="json"),
                                                          "model": kind,
                                                          "net": cfg.model_dump(mode="json")},
                                               "optimized": how, "params": count_params(net)})
    update_bundle_meta(out, example=request_example(ds, splits.ids("test")))
    return load_bundle(bundle.path)


def prune_network(fitter: FoldEngine, dense: nn.Module, kind: str, cfg: NetConfig,
                  sparsity: float, finetune_epochs: int, seed: int) -> nn.Module:
    """The dense net pruned to `sparsity` of its trunk channels, then fine-tuned."""
    small_cfg = cfg.model_copy(update={"width": pruned_width(cfg.width, sparsity),
                                       "epochs": finetune_epochs, "lr": cfg.lr / 3})
    n_tab = fitter.batch(ALL_FOLDS, fitter.rows(ALL_FOLDS)[:1]).tabular_dense.shape[1]
    pruned = channel_prune(dense, build_net(kind, fitter.n_classes, n_tab, small_cfg))
    return train_net(fitter, kind, small_cfg, seed + 7, net=pruned,
                     description=f"fine-tuning {int(sparsity * 100)}% pruned {kind}")


def prune_variants(fitter: FoldEngine, out_root: Path, kind: str = "intermediate",
                   sparsities: tuple[float, ...] = (0.25, 0.5), finetune_epochs: int = 8,
                   seed: int = 42, cfg: NetConfig | None = None) -> dict[str, ModelBundle]:
    """Train the dense FP32 network, then prune it at each sparsity and fine-tune; one bundle each."""
    cfg = cfg or fitter.cfg.net
    started = time.perf_counter()
    dense = train_net(fitter, kind, cfg, seed, description=f"dense {kind}")
    out = {"fp32": save_net_bundle(fitter, dense, kind, cfg, out_root / "fp32",
                                   {"method": "dense", "seconds": round(time.perf_counter() - started, 1)})}
    for s in sparsities:
        started = time.perf_counter()
        net = prune_network(fitter, dense, kind, cfg, s, finetune_epochs, seed)
        name = f"pruned{round(s * 100)}"
        out[name] = save_net_bundle(
            fitter, net, kind, cfg.model_copy(update={"width": pruned_width(cfg.width, s)}),
            out_root / name, {"method": "channel_prune", "sparsity": s,
                              "finetune_epochs": finetune_epochs, "from": "fp32",
                              "seconds": round(time.perf_counter() - started, 1)})
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The share of rows on which two probability matrices predict the same class."""
    return float((a.argmax(1) == b.argmax(1)).mean())
