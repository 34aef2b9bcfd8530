#!/usr/bin/env python3
"""Purify images with an ncis-deploy ONNX export, using only numpy + Pillow + onnxruntime (no torch).

Copy this file into your own pipeline. The model takes float32 (or float16) NCHW [N, 3, H, W] RGB in [0, 1] and
returns the same; ``purify()`` below is the whole contract.

    python purify_onnx.py MODEL.onnx IN.png OUT.png
    python purify_onnx.py MODEL.onnx IN_FOLDER OUT_FOLDER        # every image below IN_FOLDER, as PNG
    python purify_onnx.py MODEL.onnx IN.jpg OUT.png --providers cuda

A model exported for a fixed size refuses other sizes unless --resize is given (resize to the model size,
purify, resize back with bicubic interpolation; the resizing blurs a little). Exit code 2 = a problem with the
inputs, printed on one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


class InputError(Exception):
    """Something the user can fix; printed on one line, exit code 2."""


def open_session(model: Path, providers: str) -> ort.InferenceSession:
    if not model.is_file():
        raise InputError(f"model {model} does not exist")
    wanted = PROVIDERS[providers]
    try:
        sess = ort.InferenceSession(str(model), providers=wanted)
    except Exception as e:  # corrupt / truncated / not ONNX
        raise InputError(f"onnxruntime cannot load {model}: {str(e).strip().splitlines()[0]}") from None
    missing = [p for p in wanted if p not in sess.get_providers()]
    if missing:  # get_available_providers() lists GPU providers even when their CUDA libraries are missing
        raise InputError(f"{', '.join(missing)} did not load (running on {', '.join(sess.get_providers())}); "
                         "install onnxruntime-gpu instead of onnxruntime and the CUDA/cuDNN libraries it needs, "
                         "or use --providers cpu")
    return sess


def model_input(sess: ort.InferenceSession) -> tuple[str, np.dtype, int | None, int | None]:
    """(name, dtype, fixed H or None, fixed W or None) of the model's single NCHW input."""
    inp = sess.get_inputs()[0]
    if len(inp.shape) != 4:
        raise InputError(f"model input {inp.name} has shape {inp.shape}; expected NCHW [N, 3, H, W]")
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    h, w = (d if isinstance(d, int) and d > 0 else None for d in inp.shape[2:])
    return inp.name, np.dtype(dtype), h, w


def load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise InputError(f"cannot read image {path}: {e}") from None


def purify(sess: ort.InferenceSession, rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> purified uint8 HxWx3 RGB (the image must already have a size the model accepts)."""
    name, dtype, _, _ = model_input(sess)
    x = (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].astype(dtype)  # [1, 3, H, W] in [0, 1]
    y = sess.run(None, {name: np.ascontiguousarray(x)})[0][0].astype(np.float32)
    return (np.clip(y, 0.0, 1.0).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)


def purify_file(sess: ort.InferenceSession, src: Path, dst: Path, resize: bool) -> None:
    _, _, fh, fw = model_input(sess)
    im = load_rgb(src)
    size = im.size  # (W, H)
    if min(size) < 2:
        raise InputError(f"image {src} is {size[1]}x{size[0]}; the purifier needs at least 2x2 pixels")
    if (fh is not None and fh != size[1]) or (fw is not None and fw != size[0]):
        want = f"{fh if fh is not None else 'any'}x{fw if fw is not None else 'any'}"
        if not resize:
            raise InputError(f"image {src} is {size[1]}x{size[0]} (HxW) but the model takes {want}; pass --resize "
                             "to resize it (and resize the result back), or export the model with dynamic H/W")
        im = im.resize((fw or size[0], fh or size[1]), Image.BICUBIC)
    out = Image.fromarray(purify(sess, np.asarray(im)))
    if out.size != size:
        out = out.resize(size, Image.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, format="PNG")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Purify images with an ncis-deploy ONNX model (numpy+Pillow+ORT).")
    ap.add_argument("model", type=Path, help="the .onnx file")
    ap.add_argument("input", type=Path, help="an image, or a folder of images")
    ap.add_argument("output", type=Path, help="output PNG (for an image) or folder (for a folder)")
    ap.add_argument("--providers", choices=sorted(PROVIDERS), default="cpu", help="execution provider (default cpu)")
    ap.add_argument("--resize", action="store_true", help="resize images to a fixed-size model's input and back")
    args = ap.parse_args(argv)
    try:
        sess = open_session(args.model, args.providers)
        print(f"providers: {', '.join(sess.get_providers())}")
        if args.input.is_dir():
            files = sorted(p for p in args.input.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
            if not files:
                raise InputError(f"no images ({', '.join(EXTENSIONS)}) under {args.input}")
            if args.output.exists() and not args.output.is_dir():
                raise InputError(f"output {args.output} exists and is not a folder")
            for f in files:
                purify_file(sess, f, args.output / f.relative_to(args.input).with_suffix(".png"), args.resize)
            print(f"wrote {len(files)} image(s) to {args.output}")
        elif args.input.is_file():
            purify_file(sess, args.input, args.output, args.resize)
            print(f"wrote {args.output}")
        else:
            raise InputError(f"input {args.input} does not exist")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
