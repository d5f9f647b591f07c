"""PyTorch networks (sprite CNN, intermediate fusion), their seeded training loop and ONNX export.

Training only: the serving install has no torch. A trained network is exported to ONNX
(dynamic batch axis) and served by `models.neural.OnnxNetModel` through ONNX Runtime.
Augmentation (kornia) runs inside the training loop, on training rows only.
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from modalfuse.errors import InvalidInput
from modalfuse.features.image_tensor import IMAGE_CHANNELS
from modalfuse.models.netconfig import NetConfig
from modalfuse.progress import SILENT, ProgressReporter


class DeviceError(InvalidInput):
    """A device was asked for that this machine (or this torch build) does not have."""


def resolve_device(name: str) -> torch.device:
    """The torch device for `--device` (`auto` uses a GPU only if there is one); `DeviceError` if unusable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"--device cuda was asked for, but torch {torch.__version__} sees no CUDA GPU on this "
            "machine; use --device cpu (or --device auto to take a GPU only when there is one)")
    if name not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}; choose one of ['cpu', 'cuda', 'auto']")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch alike so a training run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ImageTrunk(nn.Module):
    """Three conv blocks, then mean- and max-pooling (shape and the strongest colour cue)."""

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        c = width
        self.features = nn.Sequential(_block(IMAGE_CHANNELS, c), _block(c, 2 * c), _block(2 * c, 4 * c))
        self.proj = nn.Sequential(nn.Linear(8 * c, embed_dim), nn.ReLU(inplace=True))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The image embedding of a batch of image tensors."""
        f = self.features(image)
        return self.proj(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1))


class ImageNet(nn.Module):
    """Image only: trunk -> dropout -> linear. Returns (logits, embedding)."""

    input_names = ("image",)

    def __init__(self, n_classes: int, cfg: NetConfig):
        super().__init__()
        self.trunk = ImageTrunk(cfg.width, cfg.embed_dim)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.embed_dim, n_classes))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and the image embedding they were computed from."""
        emb = self.trunk(image)
        return self.head(emb), emb


class FusionNet(nn.Module):
    """Intermediate fusion: image embedding ⊕ tabular encoding -> one shared head, end to end."""

    input_names = ("image", "tabular")

    def __init__(self, n_classes: int, n_tabular: int, cfg: NetConfig):
        super().__init__()
        self.trunk = ImageTrunk(cfg.width, cfg.embed_dim)
        self.tabular = nn.Sequential(nn.Dropout(cfg.tab_dropout / 2), nn.Linear(n_tabular, cfg.tab_hidden),
                                     nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.embed_dim + cfg.tab_hidden, n_classes))
        # Image branch dropout: without it the head leans on the (easier) tabular side only.
        self.image_drop = nn.Dropout(cfg.dropout)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and the fused (image ⊕ tabular) embedding the head saw."""
        emb = torch.cat([self.image_drop(self.trunk(image)), self.tabular(tabular)], dim=1)
        return self.head(emb), emb


def make_augment(cfg: NetConfig) -> nn.Module:
    """The GPU-side training augmentation: flips and small affine moves, colours left alone."""
    import kornia.augmentation as K

    # Geometry only plus a mild brightness change: hue carries the type, so it is left alone.
    return nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(degrees=12.0, translate=(0.08, 0.08), scale=(0.85, 1.15), p=0.8),
    )


@dataclass
class TrainingImages:
    """Every training image (front and extra views) with the training row each belongs to."""

    pixels: np.ndarray  # (v, 4, s, s) float32, from image_tensor
    owner: np.ndarray  # (v,) index into the training rows

    def sampler(self, n_rows: int):
        """A `draw(rng, k)` picking `k` random images of each training row; returns image and row indices."""
        order = np.argsort(self.owner, kind="stable")
        counts = np.bincount(self.owner, minlength=n_rows)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        if (counts == 0).any():
            raise InvalidInput("every training row needs at least one image")

        def draw(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
            rows = np.repeat(np.arange(n_rows), k)
            pick = starts[rows] + (rng.random(len(rows)) * counts[rows]).astype(int)
            return order[pick], rows

        return draw


def fit_network(net: nn.Module, images: TrainingImages, tabular: np.ndarray | None,
                y: np.ndarray, n_classes: int, cfg: NetConfig, seed: int,
                description: str = "network", reporter: ProgressReporter = SILENT) -> nn.Module:
    """Seeded training with class-balanced loss, AdamW and a one-cycle schedule; returns eval-mode
    net. Each epoch is an `epoch` step to `reporter`, named by `description` and its mean loss."""
    seed_everything(seed)
    # Re-draw the initial weights from the seed: the result depends on `seed` alone, not on
    # whatever the global generator did before the network was built.
    for module in net.modules():
        reset = getattr(module, "reset_parameters", None)
        if module is not net and callable(reset):
            reset()
    device = resolve_device(cfg.device)
    if cfg.checkpoint is not None:
        state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
        trunk = getattr(net, "trunk")  # noqa: B009
        missing = trunk.load_state_dict(state, strict=False)
        if missing.missing_keys and len(missing.missing_keys) == len(trunk.state_dict()):
            raise InvalidInput(f"checkpoint {cfg.checkpoint} has no weights for the image trunk; "
                             f"expected keys like {list(trunk.state_dict())[:3]}")
    net = net.to(device)
    augment = make_augment(cfg).to(device) if cfg.augment else None
    rng = np.random.default_rng(seed)
    draw = images.sampler(len(y))
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    weight = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(np.sqrt(weight), dtype=torch.float32,
                                                      device=device),
                                  label_smoothing=cfg.label_smoothing)
    steps = int(np.ceil(len(y) * cfg.views_per_epoch / cfg.batch_size))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps)
    pixels = torch.from_numpy(images.pixels)
    y_t = torch.from_numpy(y.astype(np.int64))
    tab_t = torch.from_numpy(tabular.astype(np.float32)) if tabular is not None else None
    reporter.on_step("epoch", description, 0, cfg.epochs)
    for epoch in range(cfg.epochs):
        net.train()
        img_idx, rows = draw(rng, cfg.views_per_epoch)
        perm = rng.permutation(len(rows))
        img_idx, rows = img_idx[perm], rows[perm]
        total, seen = 0.0, 0
        for s in range(steps):
            sl = slice(s * cfg.batch_size, (s + 1) * cfg.batch_size)
            if len(rows[sl]) < 2:
                continue  # BatchNorm needs two rows
            x = pixels[img_idx[sl]].to(device)
            if augment is not None:
                x = augment(x)
            target = y_t[rows[sl]].to(device)
            inputs = [x] if tab_t is None else [x, tab_t[rows[sl]].to(device)]
            logits, _ = net(*inputs)
            loss = loss_fn(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(target)
            seen += len(target)
        reporter.on_step("epoch", f"{description}, loss {total / max(seen, 1):.3f}", epoch + 1,
                         cfg.epochs)
    return net.eval().cpu()


def time_training_step(cfg: NetConfig, n_classes: int = 18, repeats: int = 5) -> float:
    """Seconds one training step of a full batch (augmentation, forward, backward, update) of
    the image network takes on this machine, warm, on random pixels: the measured rate an
    ablation's estimate scales its networks by. Leaves torch's random state as it found it."""
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ImageNet(n_classes, cfg).to(device).train()
        augment = make_augment(cfg).to(device) if cfg.augment else None
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
        x = torch.rand(cfg.batch_size, IMAGE_CHANNELS, cfg.image_size, cfg.image_size, device=device)
        y = torch.randint(0, n_classes, (cfg.batch_size,), device=device)
        seconds = []
        for _ in range(repeats + 2):  # two steps warm up (allocations, lazy kernels)
            t0 = time.perf_counter()
            logits, _ = net(augment(x) if augment is not None else x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()  # waits for the device
            seconds.append(time.perf_counter() - t0)
    return float(np.median(seconds[2:]))


@torch.no_grad()
def torch_outputs(net: nn.Module, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The network's outputs computed by torch (for parity checks against ONNX Runtime)."""
    names = getattr(net, "input_names")  # noqa: B009
    logits, emb = net.eval()(*[torch.from_numpy(feeds[n]) for n in names])
    return {"logits": logits.numpy(), "embedding": emb.numpy()}


def export_onnx(net: nn.Module, feeds: dict[str, np.ndarray]) -> bytes:
    """ONNX bytes of a network, inputs named as in `feeds`, outputs `logits` and `embedding`,
    with a dynamic batch axis on every input and output."""
    import tempfile
    from pathlib import Path

    names = list(getattr(net, "input_names"))  # noqa: B009
    example = tuple(torch.from_numpy(feeds[n][:2]) for n in names)
    dynamic = {n: {0: "batch"} for n in [*names, "logits", "embedding"]}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "net.onnx"
        # The TorchScript exporter: these plain conv nets need nothing newer, and it exports
        # in about a second where the dynamo exporter takes 25-35 s on two cores, once per
        # fitted network (a stacked model fits six). Parity with torch is tested to 1e-5.
        torch.onnx.export(net.eval().cpu(), example, str(path), input_names=names,
                          output_names=["logits", "embedding"], dynamic_axes=dynamic,
                          opset_version=17, dynamo=False)
        data = path.read_bytes()
    return data
