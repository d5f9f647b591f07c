"""Served model kinds for neural and fused models: ONNX networks, stacking, CNN-embedding GBMs.

Nothing here imports torch: networks are trained and exported by `training/nets.py`, and
served from their ONNX files by ONNX Runtime, so the slim serving install can run them.
A composite kind stores each of its parts in its own sub-folder of the bundle, with the
part's meta under `parts`, and loads them through the same kind registry (`save_part`,
`load_part`). Temperature calibration (the `calibrated` kind) is in `models/calibration.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from modalfuse.errors import InvalidInput, NotFitted
from modalfuse.features.image_tensor import image_tensor
from modalfuse.features.preprocess import FeatureBatch
from modalfuse.models.calibration import log_proba, softmax
from modalfuse.models.registry import Model, load_part, register, save_part

NET_INPUTS = ("image", "tabular")


def net_feeds(batch: FeatureBatch, inputs: list[str], image_size: int) -> dict[str, np.ndarray]:
    """The arrays a network's named inputs take, from a FeatureBatch (the same code trains it)."""
    feeds: dict[str, np.ndarray] = {}
    for name in inputs:
        if name == "image":
            feeds[name] = image_tensor(batch.images, image_size)
        elif name == "tabular":
            feeds[name] = np.ascontiguousarray(batch.tabular_dense, dtype=np.float32)
        else:
            raise InvalidInput(f"unknown network input {name!r}; known: {list(NET_INPUTS)}")
    return feeds


@register(libraries=("onnxruntime",))
class OnnxNetModel:
    """A network exported to ONNX: named inputs from the FeatureBatch, outputs `logits` (+ `embedding`)."""

    kind: ClassVar[str] = "onnx_net"

    def __init__(self, onnx_bytes: bytes, inputs: list[str], image_size: int,
                 outputs: list[str] | None = None, num_threads: int = 1):
        self.onnx_bytes = onnx_bytes
        self.inputs = list(inputs)
        self.image_size = image_size
        self.outputs = list(outputs or ["logits"])
        self.num_threads = num_threads
        self._session = None

    @property
    def session(self):
        """The ONNX Runtime session, built on first use with one thread."""
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            # One intra-op thread: requests are small and the API runs several workers.
            opts.intra_op_num_threads = self.num_threads
            opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(self.onnx_bytes, opts,
                                                 providers=["CPUExecutionProvider"])
        return self._session

    def run(self, batch: FeatureBatch) -> dict[str, np.ndarray]:
        """The network's named outputs for a batch."""
        feeds = net_feeds(batch, self.inputs, self.image_size)
        values = self.session.run(self.outputs, feeds)
        return dict(zip(self.outputs, values, strict=True))

    def logits(self, batch: FeatureBatch) -> np.ndarray:
        """The network's class logits for a batch."""
        return np.asarray(self.run(batch)["logits"], dtype=np.float64)

    def embedding(self, batch: FeatureBatch) -> np.ndarray:
        """The network's penultimate embedding for a batch (InvalidInput if it exports none)."""
        if "embedding" not in self.outputs:
            raise InvalidInput(f"this network has no 'embedding' output; outputs: {self.outputs}")
        return np.asarray(self.run(batch)["embedding"], dtype=np.float64)

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray:
        """Softmax of the network's logits."""
        return softmax(self.logits(batch))

    def save(self, directory: Path) -> dict:
        """Write the ONNX file; return the meta `load` reads."""
        (directory / "net.onnx").write_bytes(self.onnx_bytes)
        return {"kind": self.kind, "file": "net.onnx", "inputs": self.inputs,
                "image_size": self.image_size, "outputs": self.outputs}

    @classmethod
    def load(cls, directory: Path, meta: dict) -> OnnxNetModel:
        """The network `save` wrote into `directory`."""
        return cls((directory / meta["file"]).read_bytes(), meta["inputs"], meta["image_size"],
                   meta["outputs"])


@register()
class StackingModel:
    """Late fusion: a log-linear pool of the parts' probabilities, fitted on out-of-fold predictions.

    z_c = sum_m w_m log p_m,c + b_c. With a handful of weights and one bias per class it
    cannot memorise the few hundred out-of-fold rows it is fitted on; the biases let it
    rebalance rare classes for macro-F1.
    """

    kind: ClassVar[str] = "stacking"

    def __init__(self, parts: dict[str, Model], l2: float = 1.0, balanced: bool = True):
        self.parts = dict(parts)
        self.l2 = l2
        self.balanced = balanced
        self.weights_: np.ndarray | None = None
        self.bias_: np.ndarray | None = None

    def fit_meta(self, part_probas: list[np.ndarray], y: np.ndarray) -> StackingModel:
        """Fit the pool on out-of-fold part probabilities (never on rows the parts trained on)."""
        from scipy.optimize import minimize

        logs = np.stack([log_proba(p) for p in part_probas])  # (m, n, c)
        m, n, c = logs.shape
        if self.balanced:
            counts = np.bincount(y, minlength=c).astype(float)
            sw = (n / (c * np.maximum(counts, 1)))[y]
        else:
            sw = np.ones(n)
        sw = sw / sw.sum()

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:m], theta[m:]
            z = np.tensordot(w, logs, axes=1) + b
            p = softmax(z)
            nll = -np.sum(sw * np.log(np.clip(p[np.arange(n), y], 1e-12, 1)))
            g = p.copy()
            g[np.arange(n), y] -= 1
            g *= sw[:, None]
            grad_w = np.einsum("nc,mnc->m", g, logs)
            grad_b = g.sum(axis=0) + 2 * self.l2 * b / n
            return nll + self.l2 * float(b @ b) / n, np.concatenate([grad_w, grad_b])

        theta0 = np.concatenate([np.ones(m), np.zeros(c)])
        res = minimize(loss, theta0, jac=True, method="L-BFGS-B")
        self.weights_, self.bias_ = res.x[:m], res.x[m:]
        return self

    def combine(self, part_probas: list[np.ndarray]) -> np.ndarray:
        """The pooled probabilities from the parts' probabilities (in `parts` order)."""
        if self.weights_ is None or self.bias_ is None:
            raise NotFitted("StackingModel is not fitted; call fit_meta() first")
        z = sum(w * log_proba(p) for w, p in zip(self.weights_, part_probas, strict=True))
        return softmax(z + self.bias_)

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray:
        """Pool the parts' probabilities for a batch."""
        return self.combine([part.predict_proba(batch) for part in self.parts.values()])

    def save(self, directory: Path) -> dict:
        """Write each part into its own sub-folder; return the pool's weights and the parts' meta."""
        if self.weights_ is None or self.bias_ is None:
            raise NotFitted("StackingModel is not fitted; call fit_meta() first")
        parts = [save_part(model, directory, name) for name, model in self.parts.items()]
        return {"kind": self.kind, "parts": parts, "weights": self.weights_.tolist(),
                "bias": self.bias_.tolist(), "l2": self.l2, "balanced": self.balanced}

    @classmethod
    def load(cls, directory: Path, meta: dict) -> StackingModel:
        """The stacked model `save` wrote, its parts loaded through the kind registry."""
        m = cls({p["name"]: load_part(directory, p) for p in meta["parts"]}, meta["l2"],
                meta["balanced"])
        m.weights_, m.bias_ = np.array(meta["weights"]), np.array(meta["bias"])
        return m


@register()
class EmbeddingGBMModel:
    """CNN embeddings as features: LightGBM on tabular + image statistics + the network's embedding."""

    kind: ClassVar[str] = "gbm_embed"

    def __init__(self, embedder: OnnxNetModel, gbm: Model):
        self.embedder = embedder
        self.gbm = gbm

    @staticmethod
    def with_embedding(batch: FeatureBatch, emb: np.ndarray) -> FeatureBatch:
        """The batch with the embedding appended to its image statistics (what the GBM was trained on)."""
        # The GBM reads image statistics; the embedding rides along as more of them.
        return FeatureBatch(batch.tabular, batch.tabular_dense,
                            np.hstack([batch.image_stats, emb]), batch.images)

    def predict_proba(self, batch: FeatureBatch) -> np.ndarray:
        """The GBM's probabilities on the batch plus the network's embedding."""
        return self.gbm.predict_proba(self.with_embedding(batch, self.embedder.embedding(batch)))

    def save(self, directory: Path) -> dict:
        """Write the embedder and the GBM into their sub-folders; return their meta."""
        return {"kind": self.kind, "parts": [save_part(self.embedder, directory, "embedder"),
                                             save_part(self.gbm, directory, "gbm")]}

    @classmethod
    def load(cls, directory: Path, meta: dict) -> EmbeddingGBMModel:
        """The model `save` wrote, its parts loaded through the kind registry."""
        parts = {p["name"]: load_part(directory, p) for p in meta["parts"]}
        embedder = parts["embedder"]
        assert isinstance(embedder, OnnxNetModel)
        return cls(embedder, parts["gbm"])
