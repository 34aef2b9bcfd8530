"""``ncis-deploy purify``: images in, purified PNGs out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ncis_deploy.data import IMAGE_EXTENSIONS, bundled_photos, load_image
from ncis_deploy.errors import UserError
from ncis_deploy.exporters.manifest import BACKEND_ARTIFACT, DEFAULT_DIR, ONNX_INT8
from ncis_deploy.fileio import atomic_path, ensure_writable_dir


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


def side_by_side_image(x: np.ndarray, y: np.ndarray, gap: int = 4) -> torch.Tensor:
    """Input | purified ([3, H, W] each, [0, 1]) at the same scale, a white gap between them."""
    a, b = torch.as_tensor(np.asarray(x, dtype=np.float32)), torch.as_tensor(np.asarray(y, dtype=np.float32))
    return torch.cat([a, torch.ones(3, a.shape[1], gap), b], dim=2)


DEFAULT_ARTIFACTS = {b: Path(DEFAULT_DIR) / name for b, name in BACKEND_ARTIFACT.items()}  # where `export` writes


def purify_paths(inputs: list[Path], out: os.PathLike, source=None, weights=None, device: str = "cpu",
                 backend: str = "torch", model: os.PathLike | None = None,
                 plugin_libraries: tuple[os.PathLike, ...] = (), precision: str = "auto",
                 side_by_side: bool = False) -> list[Path]:
    """Purify image files / folders (none: the bundled hold-out photos) into PNGs under ``out`` via one backend.

    ``source``/``weights`` pick the purifier for the torch backend; ``model`` is the exported artifact (.onnx or
    .engine) for the others, by default the one ``ncis-deploy export`` wrote into ./ncis_export/ (for openvino at
    ``precision`` int8: the quantized one). ``precision`` (auto, f32, bf16, int8) applies to openvino only.
    ``side_by_side`` also writes ``NAME_compare.png``: the input and the purified image side by side, same scale.
    """
    from tqdm.auto import tqdm

    from ncis_deploy.runners import make_runner

    items = _collect(inputs)
    if side_by_side:
        clash = sorted({n for n, _ in items} & {f"{n}_compare" for n, _ in items})
        if clash:
            raise UserError(f"--side-by-side would overwrite the purified {clash[0]}.png with another image's "
                            "comparison; rename that input")
    if backend != "openvino" and precision != "auto":
        raise UserError(f"--precision only applies to the openvino backend, not {backend}")
    if backend == "torch":
        if model is not None:
            raise UserError("--model is for the onnxruntime, openvino and tensorrt backends; the torch backend takes "
                            "--preset/--config/--weights")
        runner = make_runner("torch", source, device=device, weights=weights)
    else:
        if source is not None or weights is not None:
            raise UserError(f"--preset/--config/--weights only apply to the torch backend; the {backend} backend runs "
                            "the exported artifact given with --model")
        artifact = Path(model) if model is not None else DEFAULT_ARTIFACTS.get(backend)
        if model is None and backend == "openvino" and precision == "int8":
            artifact = Path(DEFAULT_DIR) / ONNX_INT8
        if artifact is not None and not artifact.exists():
            raise UserError(f"{artifact} does not exist; run `ncis-deploy export` first or pass --model")
        if plugin_libraries and backend != "tensorrt":
            raise UserError("--plugin-lib only applies to the tensorrt backend")
        kw = {"providers": "tensorrt"} if backend == "onnxruntime" and device == "tensorrt" else {}
        if plugin_libraries:
            kw["plugin_libraries"] = tuple(plugin_libraries)
        if backend == "openvino":
            kw["precision"] = precision
        runner = make_runner(backend, artifact, device="cuda" if device == "tensorrt" else device, **kw)
    written = []
    with runner:  # loading happens here: a bad artifact fails before anything is written
        out = ensure_writable_dir(out)
        for name, src in tqdm(items, desc="purify", unit="img", disable=len(items) < 2):
            arr = load_image(src) if isinstance(src, Path) else src
            x = np.ascontiguousarray(arr.transpose(2, 0, 1)[None])
            try:
                y = runner.infer(x)
            except UserError as e:
                raise UserError(f"{name}: {e}") from None
            dest = Path(out) / f"{name}.png"
            save_png(dest, torch.from_numpy(y[0]))
            if side_by_side:
                save_png(Path(out) / f"{name}_compare.png", side_by_side_image(x[0], y[0]))
            written.append(dest)
    return written
