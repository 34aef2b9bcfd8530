"""The one Runner interface every backend implements, and the input checks they all share.

Modelled on Polygraphy's runners: construction only records what to load (cheap, no heavy import), ``activate()``
acquires the session / engine / GPU memory, ``infer()`` runs one batch, ``deactivate()`` frees everything. A
runner is also a context manager, so ``with make_runner(...) as r: r.infer(x)`` cannot leak a GPU buffer.

Input checks live here rather than in each backend because the backends fail very differently on a bad array
(ORT: a multi-line INVALID_ARGUMENT, TensorRT: garbage or a crash, torch: a shape error deep in a conv). Checking
first turns every such mistake into one :class:`RunnerInputError` line that says how to fix the array.
"""

from __future__ import annotations

import abc
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ncis_deploy.errors import UserError

MIN_DYNAMIC_HW = 2
RANGE_TOLERANCE = 1e-6  # float rounding in a preprocessing step may land a hair outside [0, 1]


class RunnerInputError(UserError):
    """The array passed to ``Runner.infer`` does not fit the artifact; the message says how to fix it."""


class InactiveRunnerError(RuntimeError):
    """``infer`` was called on a runner that is not active (a programming mistake, not a user-fixable input)."""


Range = tuple[int, "int | None"]  # (min, max); max None = unbounded


@dataclass(frozen=True)
class InputSpec:
    """What an artifact accepts: NCHW, a dtype, 3 channels, and a [min, max] range for N, H and W.

    A fixed dimension has ``min == max``; ``None`` as max means unbounded (a symbolic ONNX dim). Dynamic H and W
    start at 2: the purifier's reflect padding needs at least 2 pixels per side (the export's ``--dynamic-hw``
    contract says the same).
    """

    name: str = "input"
    dtype: str = "float32"  # "float32" or "float16"
    channels: int = 3
    batch: Range = (1, None)
    height: Range = (MIN_DYNAMIC_HW, None)
    width: Range = (MIN_DYNAMIC_HW, None)
    value_range: tuple[float, float] = (0.0, 1.0)

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        """(H, W) when the artifact was exported for one image size, else None."""
        if self.height[0] == self.height[1] and self.width[0] == self.width[1]:
            return int(self.height[0]), int(self.width[0])
        return None

    def describe(self) -> str:
        def dim(r: Range, sym: str) -> str:
            lo, hi = r
            return str(lo) if lo == hi else f"{sym}∈[{lo}, {'∞' if hi is None else hi}]"

        return (f"{self.dtype} [{dim(self.batch, 'N')}, {self.channels}, {dim(self.height, 'H')}, "
                f"{dim(self.width, 'W')}] in [{self.value_range[0]:g}, {self.value_range[1]:g}]")


def _fmt_range(r: Range) -> str:
    lo, hi = r
    if lo == hi:
        return f"exactly {lo}"
    return f"{lo}..{hi}" if hi is not None else f">= {lo}"


def _in_range(v: int, r: Range) -> bool:
    return v >= r[0] and (r[1] is None or v <= r[1])


def check_input(x: Any, spec: InputSpec, *, check_range: bool = True) -> None:
    """Raise :class:`RunnerInputError` with a one-line fix if ``x`` does not fit ``spec``; return None if it does.

    The order matters: each check assumes the earlier ones passed, so the message names the *first* problem.
    """
    if not isinstance(x, np.ndarray):
        raise RunnerInputError(f"input must be a numpy array, got {type(x).__name__}; "
                               f"convert it with np.asarray(x, dtype=np.{spec.dtype})")
    want = np.dtype(spec.dtype)
    if x.dtype != want:
        hint = f"x.astype(np.{spec.dtype})"
        if x.dtype == np.uint8:
            hint = f"(x / 255.0).astype(np.{spec.dtype}) (uint8 images are 0..255, the model takes [0, 1])"
        raise RunnerInputError(f"input dtype is {x.dtype} but the model takes {want}; cast with {hint}")
    if x.ndim != 4:
        extra = " (a single image: add the batch axis with x[None])" if x.ndim == 3 else ""
        raise RunnerInputError(f"input must be 4-D [N, {spec.channels}, H, W], got {x.ndim}-D shape "
                               f"{list(x.shape)}{extra}")
    n, c, h, w = x.shape
    if c != spec.channels:
        if w == spec.channels:
            raise RunnerInputError(f"input shape {list(x.shape)} looks like NHWC; the model takes NCHW "
                                   f"[N, {spec.channels}, H, W]: transpose to NCHW with x.transpose(0, 3, 1, 2)")
        raise RunnerInputError(f"input has {c} channels (shape {list(x.shape)}) but the model takes "
                               f"{spec.channels} channels (RGB)")
    for what, v, r in (("batch size", n, spec.batch), ("height", h, spec.height), ("width", w, spec.width)):
        if not _in_range(int(v), r):
            raise RunnerInputError(f"input {what} {v} is outside what this artifact accepts ({_fmt_range(r)}); "
                                   f"shape {list(x.shape)}, allowed {spec.describe()}")
    if x.size == 0:
        return
    xmin, xmax = float(x.min()), float(x.max())  # NaN propagates through min/max: two passes check everything
    if not (np.isfinite(xmin) and np.isfinite(xmax)):
        bad = "NaN" if np.isnan(x).any() else "inf"
        raise RunnerInputError(f"input contains {bad} values ({int((~np.isfinite(x)).sum())} non-finite elements); "
                               "fix the preprocessing that produced them")
    if check_range:
        lo, hi = spec.value_range
        if xmin < lo - RANGE_TOLERANCE or xmax > hi + RANGE_TOLERANCE:
            raise RunnerInputError(f"input values must be in [{lo:g}, {hi:g}] but range over [{xmin:.6g}, "
                                   f"{xmax:.6g}]; scale images to [0, 1] (e.g. x / 255) or pass check_range=False")


# ------------------------------------------------------------------------------------------- spec from a model
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}
_ONNX_ELEM = {1: "float32", 10: "float16"}  # onnx.TensorProto.FLOAT, FLOAT16


def input_spec_from_shape(name: str, shape: Sequence, dtype: str, where: str = "model") -> InputSpec:
    """Build a spec from a declared input shape whose dims are ints (fixed) or str/None/<=0 (dynamic)."""
    if len(shape) != 4:
        raise UserError(f"{where} input '{name}' has shape {list(shape)}; ncis-deploy artifacts take NCHW "
                        "[N, 3, H, W]")

    def rng(d, lo: int = 1) -> Range:
        return (int(d), int(d)) if isinstance(d, (int, np.integer)) and d > 0 else (lo, None)

    c = shape[1]
    return InputSpec(name=name, dtype=dtype, channels=int(c) if isinstance(c, (int, np.integer)) and c > 0 else 3,
                     batch=rng(shape[0]), height=rng(shape[2], MIN_DYNAMIC_HW),
                     width=rng(shape[3], MIN_DYNAMIC_HW))


def input_spec_from_onnx(model: "str | os.PathLike | Any") -> InputSpec:
    """Read the InputSpec of a single-input ONNX model (a path or an ``onnx.ModelProto``).

    Symbolic dims (``dim_param`` like ``"batch"``) and unknown dims become dynamic ranges.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception as e:  # DecodeError, OSError...
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"cannot read ONNX model {model}: {first}; re-export it") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UserError(f"expected an ONNX model with one input, found {len(inputs)}: {[i.name for i in inputs]}")
    inp = inputs[0]
    tt = inp.type.tensor_type
    dtype = _ONNX_ELEM.get(tt.elem_type)
    if dtype is None:
        raise UserError(f"ONNX input '{inp.name}' has element type {tt.elem_type}; expected float32 or float16")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return input_spec_from_shape(inp.name, dims, dtype, "ONNX")


# ------------------------------------------------------------------------------------------------------- runner
def whole_number(name: str, value, minimum: int = 0) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``, else a UserError naming the option: how the runners
    check their counts (threads, compiled shapes, pixels)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"a whole number >= {minimum}"
        raise UserError(f"{name} must be {kind}, got {value!r}")
    return value


class Runner(abc.ABC):
    """Abstract runner: subclasses implement ``activate_impl``, ``infer_impl`` and ``deactivate_impl``.

    ``infer(x)`` takes float NCHW numpy in [0, 1] and returns the purified array (same shape, numpy on the host).
    ``input_spec`` is known after activation (it is read from the artifact) and every input is checked against it.
    """

    name: str = "runner"

    def __init__(self, *, check_range: bool = True):
        self.check_range = check_range
        self.input_spec: InputSpec | None = None
        self.last_inference_time: float | None = None  # seconds of the last infer_impl call, like Polygraphy
        self._active = False

    # ---- lifecycle
    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> "Runner":
        """Load the artifact and acquire its resources; a second call while active does nothing."""
        if not self._active:
            self.activate_impl()
            self._active = True
        return self

    def deactivate(self) -> None:
        """Free the session / engine / buffers. Safe to call twice or on a runner that never activated."""
        if self._active:
            try:
                self.deactivate_impl()
            finally:
                self._active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.deactivate()

    # ---- inference
    def infer(self, x: np.ndarray) -> np.ndarray:
        if not self._active:
            raise InactiveRunnerError(f"{type(self).__name__} is not active: call .activate() first or use it as "
                                      "a context manager (`with runner: runner.infer(x)`)")
        check_input(x, self.input_spec or InputSpec(), check_range=self.check_range)
        x = np.ascontiguousarray(x)
        start = time.perf_counter()
        y = self.infer_impl(x)
        self.last_inference_time = time.perf_counter() - start
        return y

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, x: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def deactivate_impl(self) -> None: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, active={self._active})"
