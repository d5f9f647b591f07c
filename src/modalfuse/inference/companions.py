"""What a bundle carries besides its model, so a prediction can say how far to trust it.

* **Modality models.** A request may lack its image (an upload failed, no photo yet) or its
  fields. Each such case is served by a model *trained* for it, never by a made-up image:
  `fields` (the table alone) and `image` (the image alone), each calibrated like the main
  model. The main model serves requests with both.
* **Conformal calibration**, per modality case: the held-out scores that turn probabilities
  into prediction sets at a stated coverage (`inference/conformal.py`).
* **OOD detectors**: the image detector with its out-of-fold threshold and the fields'
  training ranges and values (`inference/ood.py`).

Everything is fitted at training on the training split (out of fold where it is judged),
saved under `companions/` in the bundle folder, counted in the bundle's content hash, and
described in bundle.json under `companions`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from modalfuse.inference.conformal import Conformal
from modalfuse.inference.ood import FieldOOD, ImageOOD
from modalfuse.models.registry import Model, load_model

# The three cases of a request: both modalities, the table only, the image only.
BOTH, FIELDS, IMAGE = "both", "fields", "image"
MODES = (BOTH, FIELDS, IMAGE)
USED = {BOTH: ["fields", "image"], FIELDS: ["fields"], IMAGE: ["image"]}
DIR = "companions"


@dataclass
class Companions:
    """A bundle's modality models, conformal calibrations and OOD detectors."""

    models: dict[str, Model] = field(default_factory=dict)  # FIELDS / IMAGE -> model
    model_info: dict[str, dict] = field(default_factory=dict)  # recipe, CV summary, temperature
    conformal: dict[str, Conformal] = field(default_factory=dict)  # mode -> calibration
    image_ood: ImageOOD | None = None
    field_ood: FieldOOD | None = None
    ood_info: dict = field(default_factory=dict)

    def supports(self, mode: str) -> bool:
        """Whether requests of this case can be scored (the main model serves `both`)."""
        return mode == BOTH or mode in self.models

    def save(self, directory: Path) -> dict:
        """Write everything under `directory/companions`; return the meta `load` reads."""
        root = directory / DIR
        root.mkdir(parents=True, exist_ok=True)
        models = {}
        for mode, model in self.models.items():
            sub = root / mode
            sub.mkdir(exist_ok=True)
            models[mode] = {"dir": f"{DIR}/{mode}", "model": model.save(sub),
                            **self.model_info.get(mode, {})}
        (root / "conformal.json").write_text(json.dumps(
            {mode: c.to_dict() for mode, c in self.conformal.items()}))
        ood = {"image": self.image_ood.to_dict() if self.image_ood else None,
               "fields": self.field_ood.to_dict() if self.field_ood else None}
        (root / "ood.json").write_text(json.dumps(ood))
        conformal = {mode: {k: v for k, v in c.to_dict().items() if k != "scores"}
                     for mode, c in self.conformal.items()}
        return {"models": models, "conformal": conformal, "ood": self.ood_info}

    @classmethod
    def load(cls, directory: Path, meta: dict | None) -> Companions:
        """The companions `save` wrote (none for a bundle written before they existed)."""
        if not meta:
            return cls()
        models = {mode: load_model(directory / m["dir"], m["model"])
                  for mode, m in meta.get("models", {}).items()}
        info = {mode: {k: v for k, v in m.items() if k not in ("dir", "model")}
                for mode, m in meta.get("models", {}).items()}
        root = directory / DIR
        conformal = {}
        if (root / "conformal.json").exists():
            conformal = {mode: Conformal.from_dict(d)
                         for mode, d in json.loads((root / "conformal.json").read_text()).items()}
        image_ood = field_ood = None
        if (root / "ood.json").exists():
            ood = json.loads((root / "ood.json").read_text())
            image_ood = ImageOOD.from_dict(ood["image"]) if ood.get("image") else None
            field_ood = FieldOOD.from_dict(ood["fields"]) if ood.get("fields") else None
        return cls(models, info, conformal, image_ood, field_ood, meta.get("ood", {}))
