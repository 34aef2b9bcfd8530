#!/usr/bin/env python3
"""Purify images with a TensorRT engine built from an ncis-deploy export, using only tensorrt + cuda-python +
numpy + Pillow (no torch, no pycuda).

Not verified on real TensorRT in this workplace (no GPU here): written against the documented TensorRT 10/11
Python runtime API (tensors by name, set_input_shape / set_tensor_address / execute_async_v3) and cuda-python's
``cuda.bindings.runtime``, whose calls return ``(err, value)`` tuples.

    python purify_tensorrt.py MODEL.engine IN.png OUT.png
    python purify_tensorrt.py MODEL.engine IN_FOLDER OUT_FOLDER
    python purify_tensorrt.py MODEL.engine IN.png OUT.png --plugin libmyplugins.so

Engines are tied to the GPU and TensorRT version that built them. A fixed-size engine refuses other image sizes
unless --resize is given. Exit code 2 = a problem with the inputs, printed on one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class InputError(Exception):
    """Something the user can fix; printed on one line, exit code 2."""


def check(call: str, result):
    """cuda-python returns (err, *values): raise if err is not cudaSuccess, else return the value(s)."""
    err, values = result[0], result[1:]
    if int(err) != 0:
        raise RuntimeError(f"{call} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else (values or None)


class Engine:
    """One engine, one execution context, one stream; device buffers grow to the largest image seen."""

    def __init__(self, path: Path, plugins: list[Path]):
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as e:
            raise InputError(f"{e.name} is not installed: pip install tensorrt cuda-python") from None
        self.trt, self.cudart = trt, cudart
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count == 0:
            raise InputError("no usable CUDA GPU (check nvidia-smi and the driver)")
        if not path.is_file():
            raise InputError(f"engine {path} does not exist")
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        self.runtime = trt.Runtime(self.logger)
        for lib in plugins:
            if trt.get_plugin_registry().load_library(str(lib)) is None:
                raise InputError(f"cannot load TensorRT plugin library {lib}")
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise InputError(f"TensorRT {trt.__version__} cannot load {path}: corrupt, or built by another TensorRT "
                             "version or for another GPU; rebuild it on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inp = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.out = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.inp)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.out)))
        shape = list(self.engine.get_tensor_shape(self.inp))
        if any(d < 0 for d in shape):  # dynamic dims: the range is the optimization profile's min..max
            lo, _, hi = self.engine.get_tensor_profile_shape(self.inp, 0)
            self.min_hw, self.max_hw = (int(lo[2]), int(lo[3])), (int(hi[2]), int(hi[3]))
        else:
            self.min_hw = self.max_hw = (int(shape[2]), int(shape[3]))
        self.stream = check("cudaStreamCreate", cudart.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        return self.min_hw if self.min_hw == self.max_hw else None

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self.buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                check("cudaFree", self.cudart.cudaFree(ptr))
            ptr = int(check("cudaMalloc", self.cudart.cudaMalloc(nbytes)))
            self.buffers[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def run(self, x: np.ndarray) -> np.ndarray:
        cudart, kind = self.cudart, self.cudart.cudaMemcpyKind
        x = np.ascontiguousarray(x, dtype=self.in_dtype)
        if not self.context.set_input_shape(self.inp, x.shape):
            raise InputError(f"the engine does not accept input shape {list(x.shape)}")
        y = np.empty(tuple(self.context.get_tensor_shape(self.out)), dtype=self.out_dtype)
        d_in, d_out = self._buffer(self.inp, x.nbytes), self._buffer(self.out, y.nbytes)
        check("cudaMemcpyAsync", cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice,
                                                        self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("execute_async_v3 failed; see the TensorRT log above")
        check("cudaMemcpyAsync", cudart.cudaMemcpyAsync(y.ctypes.data, d_out, y.nbytes, kind.cudaMemcpyDeviceToHost,
                                                        self.stream))
        check("cudaStreamSynchronize", cudart.cudaStreamSynchronize(self.stream))
        return y

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers = {}
        self.cudart.cudaStreamDestroy(self.stream)
        self.context = self.engine = self.runtime = None  # context before engine before runtime


def load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None


def purify_file(eng: Engine, src: Path, dst: Path, resize: bool) -> None:
    im = load_rgb(src)
    size = im.size  # (W, H)
    h, w = size[1], size[0]
    ok = eng.min_hw[0] <= h <= eng.max_hw[0] and eng.min_hw[1] <= w <= eng.max_hw[1]
    if not ok:
        allowed = (f"{eng.fixed_hw[0]}x{eng.fixed_hw[1]}" if eng.fixed_hw else
                   f"{eng.min_hw[0]}..{eng.max_hw[0]} x {eng.min_hw[1]}..{eng.max_hw[1]}")
        if not resize:
            raise InputError(f"image {src} is {h}x{w} (HxW) but the engine takes {allowed}; pass --resize to "
                             "resize it (and the result back), or build the engine with a wider profile")
        th, tw = (min(max(h, eng.min_hw[0]), eng.max_hw[0]), min(max(w, eng.min_hw[1]), eng.max_hw[1]))
        im = im.resize((tw, th), Image.BICUBIC)
    x = (np.asarray(im, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
    y = eng.run(x)[0].astype(np.float32)
    out = Image.fromarray((np.clip(y, 0.0, 1.0).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8))
    if out.size != size:
        out = out.resize(size, Image.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, format="PNG")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Purify images with a TensorRT engine (tensorrt + cuda-python).")
    ap.add_argument("engine", type=Path)
    ap.add_argument("input", type=Path, help="an image, or a folder of images")
    ap.add_argument("output", type=Path, help="output PNG (for an image) or folder (for a folder)")
    ap.add_argument("--plugin", type=Path, action="append", default=[], help="a TensorRT plugin library to load")
    ap.add_argument("--resize", action="store_true", help="resize images into the engine's size range and back")
    args = ap.parse_args(argv)
    eng = None
    try:
        eng = Engine(args.engine, args.plugin)
        print(f"TensorRT {eng.trt.__version__}: input {eng.inp} {eng.in_dtype}, H {eng.min_hw[0]}..{eng.max_hw[0]}, "
              f"W {eng.min_hw[1]}..{eng.max_hw[1]}")
        if args.input.is_dir():
            files = sorted(p for p in args.input.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
            if not files:
                raise InputError(f"no images ({', '.join(EXTENSIONS)}) under {args.input}")
            for f in files:
                purify_file(eng, f, args.output / f.relative_to(args.input).with_suffix(".png"), args.resize)
            print(f"wrote {len(files)} image(s) to {args.output}")
        elif args.input.is_file():
            purify_file(eng, args.input, args.output, args.resize)
            print(f"wrote {args.output}")
        else:
            raise InputError(f"input {args.input} does not exist")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if eng is not None:
            eng.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
