"""``ncis-deploy purify``: images in, purified PNGs out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ncis_deploy.data import IMAGE_EXTENSIONS, bundled_photos, load_image
from ncis_deploy.errors import UserError
from ncis_deploy.fileio import atomic_path, ensure_writable_dir
from ncis_deploy.model.purifier import load_purifier


def _collect(inputs: list[Path]) -> list[tuple[str, np.ndarray | Path]]:
    if not inputs:
        return [(n, a) for n, a in bundled_photos("holdout")]
    items: list[tuple[str, np.ndarray | Path]] = []
    for p in inputs:
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {p}")
            items += [(str(f.relative_to(p).with_suffix("")), f) for f in files]
        elif p.is_file():
            items.append((p.stem, p))
        else:
            raise UserError(f"input {p} does not exist; pass image files or folders")
    return items


def save_png(path: Path, img: torch.Tensor) -> None:
    from PIL import Image

    arr = (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def purify_paths(inputs: list[Path], out: os.PathLike, source=None, weights=None, device: str = "cpu") -> list[Path]:
    from tqdm.auto import tqdm

    items = _collect(inputs)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    purifier = load_purifier(source, device=device, weights=weights)
    out = ensure_writable_dir(out)
    written = []
    with torch.inference_mode():
        for name, src in tqdm(items, desc="purify", unit="img", disable=len(items) < 2):
            arr = load_image(src) if isinstance(src, Path) else src
            if min(arr.shape[:2]) < 2:
                raise UserError(f"image {name} is {arr.shape[0]}x{arr.shape[1]}; the purifier needs at least 2x2")
            x = torch.from_numpy(arr).permute(2, 0, 1)[None].to(device)
            dest = Path(out) / f"{name}.png"
            save_png(dest, purifier(x)[0])
            written.append(dest)
    return written
