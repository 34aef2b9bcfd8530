"""Evaluation images and labels.

- A folder with one sub-folder per class (the folder name is the class index, optionally followed by ``_name``,
  e.g. ``281_tabby``), or a CSV of ``path,label`` rows (paths relative to the CSV). Labels are ground truth, so the
  report says *accuracy*.
- No data: the bundled photos, several crops each, labelled by the undefended classifier's clean top-1. Those
  labels are the classifier's own opinion, so the report says *agreement*, never accuracy.

Each image is resized (short side ``resize``) and cropped to ``size``², the usual ImageNet evaluation view.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ncis_deploy.data import bundled_photos, list_images, load_image
from ncis_deploy.errors import UserError


def subset_index(n: int, k: int) -> torch.Tensor:
    """k indices spread evenly over range(n): the rule of :meth:`EvalSet.subset` and of the adaptive attack's images."""
    return torch.arange(n) if k >= n else torch.linspace(0, n - 1, k).round().long()


@dataclass
class EvalSet:
    images: torch.Tensor  # [N, 3, size, size] in [0, 1]
    labels: torch.Tensor | None  # [N] int64; None until labelled by the classifier
    names: list[str]
    metric: str  # "accuracy" (ground-truth labels) or "agreement" (labels = the undefended clean top-1)
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int) -> "EvalSet":
        """n images spread over the whole set (not the first n: those would all be crops of the same photos)."""
        if n >= len(self):
            return self
        return self.select(subset_index(len(self), n))

    def select(self, idx: torch.Tensor, source: str | None = None) -> "EvalSet":
        return EvalSet(self.images[idx], None if self.labels is None else self.labels[idx],
                       [self.names[i] for i in idx.tolist()], self.metric, source or self.source)


def _resize_short(img: torch.Tensor, short: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    s = short / min(h, w)
    return F.interpolate(img[None], size=(max(short, round(h * s)), max(short, round(w * s))), mode="bilinear",
                         antialias=True, align_corners=False)[0]


def center_crop(img: torch.Tensor, size: int, resize: int) -> torch.Tensor:
    r = _resize_short(img, resize)
    h, w = r.shape[-2:]
    y, x = (h - size) // 2, (w - size) // 2
    return r[:, y : y + size, x : x + size]


def bundled(crops: int = 2, size: int = 224, seed: int = 0, split: str = "all") -> EvalSet:
    """The bundled photos of ``split`` (all 11 by default; ``holdout``: the two the BSN never trains on); crop 0 is
    the centre view, crops 1.. are seeded random views at random scales."""
    rng = np.random.default_rng(seed)
    imgs, names = [], []
    for name, arr in bundled_photos(split):
        t = torch.from_numpy(arr).permute(2, 0, 1)
        imgs.append(center_crop(t, size, int(size * 8 / 7)))
        names.append(f"{name}#0")
        for c in range(1, crops):
            r = _resize_short(t, int(rng.integers(int(size * 8 / 7), int(size * 12 / 7) + 1)))
            h, w = r.shape[-2:]
            y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            imgs.append(r[:, y : y + size, x : x + size])
            names.append(f"{name}#{c}")
    which = "bundled photos" if split == "all" else f"bundled {split} photos"
    return EvalSet(torch.stack(imgs).contiguous(), None, names, "agreement", f"{which} ({crops} crops each)")


_CLASS_DIR = re.compile(r"^(\d+)(?:[_\- ].*)?$")


def from_folder(root: str | os.PathLike, labels_csv: str | os.PathLike | None = None, size: int = 224) -> EvalSet:
    root = Path(root)
    pairs: list[tuple[Path, int]] = []
    if labels_csv is not None:
        csv_path = Path(labels_csv)
        if not csv_path.is_file():
            raise UserError(f"labels CSV {csv_path} does not exist")
        with open(csv_path, newline="") as fh:
            for i, row in enumerate(csv.reader(fh), 1):
                if not row or row[0].startswith("#") or (i == 1 and row[0].strip().lower() == "path"):
                    continue
                if len(row) < 2 or not row[1].strip().lstrip("-").isdigit():
                    raise UserError(f"{csv_path}:{i}: expected 'path,label' with an integer class index, got {row}")
                p = Path(row[0].strip())
                pairs.append((p if p.is_absolute() else csv_path.parent / p, int(row[1])))
        if not pairs:
            raise UserError(f"labels CSV {csv_path} has no 'path,label' rows")
        for p, _ in pairs:
            if not p.is_file():
                raise UserError(f"{csv_path}: image {p} does not exist")
    else:
        files = list_images(root)  # raises "no images" for an empty folder
        for p in files:
            rel = p.relative_to(root)
            m = _CLASS_DIR.match(rel.parts[0]) if len(rel.parts) > 1 else None
            if m is None:
                raise UserError(f"{p}: with no --labels CSV, each image must sit in a class folder named by its "
                                "class index (e.g. 281 or 281_tabby)")
            pairs.append((p, int(m.group(1))))
    imgs = [center_crop(torch.from_numpy(load_image(p)).permute(2, 0, 1), size, int(size * 8 / 7)) for p, _ in pairs]
    return EvalSet(torch.stack(imgs).contiguous(), torch.tensor([lab for _, lab in pairs]),
                   [str(p) for p, _ in pairs], "accuracy", str(labels_csv or root))


def check_labels(ds: EvalSet, num_classes: int | None, classifier: str) -> None:
    if ds.labels is None or num_classes is None:
        return
    bad = [(n, int(lab)) for n, lab in zip(ds.names, ds.labels) if not 0 <= lab < num_classes]
    if bad:
        raise UserError(f"{len(bad)} label(s) outside the {num_classes} classes of {classifier} "
                        f"(first: {bad[0][0]} has label {bad[0][1]}); labels are class indices 0..{num_classes - 1}")
