"""The OpenVINO backend: an exported ``.onnx`` purifier compiled by OpenVINO's CPU plugin, in f32, bf16 or int8.

Precision is a compile-time hint, and OpenVINO is quiet about how it treats one, so this runner decides and checks
instead of hoping:

* The CPU plugin's own default is *bf16* on any CPU it thinks runs bf16 natively (this AMD EPYC with avx512_bf16
  included), so ``f32`` is always asked for explicitly; otherwise an "f32" number would be a bf16 one.
* ``bf16`` on a CPU without native BF16 (neither avx512_bf16 nor amx_bf16 in its flags) is refused: OpenVINO would
  emulate it or fall back to f32 without saying so, and a figure labelled bf16 would be neither fast nor bf16.
* ``int8`` means the model carries explicit QuantizeLinear/DequantizeLinear (the ``export --int8`` artifact);
  OpenVINO turns them into FakeQuantize and runs the quantized convolutions on int8 kernels (fastest with
  ``export --int8 --int8-form openvino``, whose adds fold into them: docs/export.md). Whatever hint is given,
  such a model runs in int8, so asking f32/bf16 of it is refused too (the label would be wrong), and so is int8 of a
  model without Q/DQ (there is nothing to quantize it with: calibration is the exporter's job).
* ``auto``: int8 for a Q/DQ model, else bf16 where the CPU has it natively, else f32.
* ``bf16`` types each BSN pass bf16, from its first masked conv to its head conv (``bf16_scope="bsn"``, the
  default: :func:`type_bf16`), and compiles with the f32 hint, so GS, the blind baseline, the sum of baseline and
  correction and the clip stay f32. OpenVINO's own bf16 hint (``bf16_scope="all"``) rounds every op but the graph's
  tail, and on the image's scale that costs most of the error: GS's second matrix product (a FullyConnected), the
  baseline's gathers (convolutions) and the head conv with the baseline added in. Shipped ``ncis``, 224², hold-out
  photos, vs f32: 68.5 dB against 62.2 (max error 2.2e-3 vs 4.8e-3), the same speed (33.2 vs 33.8 ms). Nodes
  marked ``disable_fp16_compression`` were rounded all the same: the mark is lost where the plugin's passes
  rebuild a node. Which nodes are the BSN's the export says (metadata ``ncis_deploy.bf16_nodes``, also read by
  the C++ consumer); a model without that list (no BSN: the ``gs`` preset; or an older export) runs on the hint.

After compiling, the precision OpenVINO really chose is read back (``INFERENCE_PRECISION_HINT`` of the compiled
model, and the runtime precision of every Convolution/MatMul/FullyConnected in its execution graph) into
:attr:`OpenVINORunner.record`, which bench and eval report next to their figures.

One synchronous infer request with the LATENCY hint (one stream using every thread): a sync request runs on one
stream, so THROUGHPUT's several streams would only split the threads it could have used.

The exported purifier has a dynamic batch (and with ``--dynamic-hw`` dynamic height and width), and OpenVINO's CPU
plugin runs it fastest in static-shaped pieces of about one 224² image (measured interleaved on a Zen 5 AMD EPYC
with avx512_bf16, the ``ncis`` purifier, bf16; docs/bench.md):

* a static shape beats the dynamic model: 27.8 vs 31.6 ms at batch 1, 249 vs 275 ms at batch 8 (the int8 artifact
  6-10 %; compiling costs ≈ 0.15 s). So each input shape met is compiled once more as a static model, the
  ``static_shapes`` most recently used kept, the way a TensorRT engine gets an optimization profile per shape; a
  fixed-size export compiles its one-image shape at activation instead of the dynamic model (activation and first
  224² image: bf16 0.37 → 0.24 s, f32 0.55 → 0.43 s);
* per image, larger batches run slower (bench's "batch split" measurement; a batch's activations outgrow the caches
  sooner): at 224², 8 images run as 8 batches of 1 at 34.7 img/s, as one batch of 8 at 27.5 (f32 21.0 vs 15.3,
  the int8 artifact 32.4 vs 28.9); at 112² the best piece is 4 images (bf16 130 img/s, 128 as 8, 123 as 1). So a
  batch runs in chunks of at most ``chunk_pixels`` pixels (default 224², whole images, at least one).

:class:`StaticShapes` does both.
"""

from __future__ import annotations

import json
import os
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from ncis_deploy import cpu
from ncis_deploy.errors import UserError, missing_package
from ncis_deploy.exporters.manifest import BF16_NODES_KEY, META_PREFIX, ONNX, ONNX_INT8
from ncis_deploy.runners import precision_name
from ncis_deploy.runners.base import Runner, input_spec_from_shape, whole_number

PRECISIONS = ("auto", "f32", "bf16", "int8")
_HINTS = {"f32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: what is not quantized stays f32, for accuracy
BF16_SCOPES = ("bsn", "all")  # bf16: the BSN passes typed bf16, the image-scale ops f32 | OpenVINO's own bf16 hint
_COMPUTE_LAYERS = ("Convolution", "MatMul", "FullyConnected")
_INT8_TYPES = ("u8", "i8")
_ELEMENT_DTYPES = {"f32": "float32", "f16": "float16"}
STATIC_SHAPES = 4  # compiled static shapes kept per runner; ≈ 0.15 s and one copy of the weights each
CHUNK_PIXELS = 224 * 224  # the largest piece of a batch run at once (module docstring: measured optimum)


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise missing_package("openvino", "openvino") from None
    return openvino


def normalize_precision(precision: str) -> str:
    p = precision_name(precision)
    if p not in PRECISIONS:
        raise UserError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return p


def resolve_precision(requested: str, *, quantized: bool, where: str = "the model") -> str:
    """The precision to run ``requested`` at here, or a UserError saying why this CPU / model cannot.

    The CPU's native precisions come from :func:`ncis_deploy.cpu.native_precisions` (its ISA flags).
    """
    p = normalize_precision(requested)
    if quantized:
        if p in ("auto", "int8"):
            return "int8"
        raise UserError(f"{where} is quantized (QuantizeLinear/DequantizeLinear), so OpenVINO runs it in int8 "
                        f"whatever precision is asked for; run it with precision int8 (or auto), or pass the FP32 "
                        f"{ONNX} for {p}")
    if p == "int8":
        raise UserError(f"{where} has no QuantizeLinear/DequantizeLinear nodes, so there is nothing to run in int8; "
                        f"pass the {ONNX_INT8} that `ncis-deploy export --int8` writes, or choose f32, bf16 or auto")
    native = cpu.native_precisions()
    if p == "auto":
        return "bf16" if "bf16" in native else "f32"
    if p == "bf16" and "bf16" not in native:
        isa = ", ".join(cpu.cpu_isa()) or "none found"
        raise UserError(f"this CPU ({cpu.cpu_model()}) has no native BF16 (neither "
                        f"{' nor '.join(cpu.BF16_FLAGS)} among its flags: {isa}); OpenVINO would emulate bf16 or "
                        "silently fall back to f32, so it is refused: choose precision f32 or auto")
    return p


def _first_line(e: Exception) -> str:
    """The informative line of an OpenVINO exception (they open with 'Exception from src/...:NN:' lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(e).__name__])[-1]


def type_bf16(model, names: set[str]) -> int:
    """Type the ops of the ONNX nodes ``names`` bfloat16 in ``model`` (an ``openvino.Model``, changed in place) and
    leave the rest f32: a Convert goes on every float edge into or out of them. Returns how many ops were typed.

    An ONNX node keeps its name in OpenVINO (its parts as ``name/...``). Compiled with the f32 hint, the CPU plugin
    then runs exactly these ops in bf16; the bf16 hint instead rounds every op but the graph's tail to bf16, GS's
    matrix product, the baseline's gathers and the correction's sum with it included (module docstring)."""
    from openvino import opset13

    typed = {op.get_name() for op in model.get_ops() if op.get_friendly_name().split("/")[0] in names
             and op.get_type_name() not in ("Parameter", "Result", "Constant")}
    for op in model.get_ordered_ops():
        inside = op.get_name() in typed
        for port in op.inputs():
            src = port.get_source_output()
            if (src.get_node().get_name() in typed) == inside or src.get_element_type().get_type_name() != "f32" \
                    or op.get_type_name() == "ShapeOf":
                continue
            port.replace_source_output(opset13.convert(src, "bf16" if inside else "f32").output(0))
    model.validate_nodes_and_infer_types()
    return len(typed)


def type_bsn_bf16(model) -> int:
    """:func:`type_bf16` of the nodes the export lists under ``ncis_deploy.bf16_nodes`` (each BSN pass, first masked
    conv to head conv); 0 (nothing typed) for a model without that list (no BSN, or exported before it existed)."""
    key = ["framework", BF16_NODES_KEY]  # where OpenVINO's ONNX reader keeps the model's metadata_props
    if not model.has_rt_info(key):
        return 0
    return type_bf16(model, set(model.get_rt_info(key).astype(str).split(",")))


def prepare_bf16(model) -> tuple[int, str]:
    """The openvino runner's bf16 on ``model`` (changed in place): (ops typed by :func:`type_bsn_bf16`, the
    inference-precision hint to compile with). f32 where anything was typed, so the image-scale ops stay f32;
    OpenVINO's own bf16 hint where nothing was (an export without the list)."""
    typed = type_bsn_bf16(model)
    return typed, "f32" if typed else "bf16"


def bf16_hint_note(model, label: str) -> str | None:
    """What to tell the user when ``label``'s bf16 run of ``model`` (an ONNX path or bytes) falls back to OpenVINO's
    own hint although its purifier has a BSN: it was exported before ``ncis_deploy.bf16_nodes``. None otherwise."""
    import onnx

    m = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    stages = json.loads(meta.get(META_PREFIX + "config", "{}")).get("stages", [])
    if BF16_NODES_KEY in meta or not any(st.get("type") == "bsn" and st.get("iterations", 0) > 0 for st in stages):
        return None
    return (f"{label} runs OpenVINO's own bf16 hint, which rounds GS and the blind baseline too (about 62 dB from "
            f"FP32 instead of 69 for the shipped ncis): the model has no {BF16_NODES_KEY} list, so it was exported "
            "before there was one; re-export it for bf16 that keeps them f32")


class StaticShapes:
    """``infer(x)``: ``model`` on ``x`` in chunks of at most ``chunk_pixels`` pixels (whole images, at least one; 0:
    the whole batch), each compiled for its exact shape: one compile per new shape, the ``keep`` most recently used
    kept. ``fallback`` (the model compiled as it is) runs every shape when ``keep`` is 0 or the model's input shape
    is static already; chunks only where the batch dimension is dynamic.

    ``model`` is an ``openvino.Model`` (not changed: each shape compiles a clone), ``config`` the compile config."""

    def __init__(self, core, model, config: dict, *, keep: int = STATIC_SHAPES, chunk_pixels: int = CHUNK_PIXELS,
                 fallback=None):
        self.core, self.model, self.config = core, model, dict(config)
        shape = model.inputs[0].get_partial_shape()
        self.keep = keep if shape.is_dynamic else 0
        self.chunk_pixels = chunk_pixels if shape[0].is_dynamic else 0
        self.fallback = fallback if fallback is not None or self.keep else core.compile_model(model, "CPU", config)
        self._requests: OrderedDict[tuple, tuple] = OrderedDict()
        self._fallback_request = None

    @property
    def shapes(self) -> list[list[int]]:
        """The shapes compiled as static models, least recently used first."""
        return [list(k) for k in self._requests]

    def chunk(self, shape) -> int:
        """How many images of an input of ``shape`` (N, C, H, W) run at once."""
        n, _, h, w = shape
        return n if not self.chunk_pixels else max(1, min(n, self.chunk_pixels // max(1, h * w)))

    def _request(self, shape: tuple) -> tuple:
        """(infer request, output port, compiled model) for ``shape``, compiling it first if it is new."""
        if not self.keep:
            if self._fallback_request is None:
                self._fallback_request = (self.fallback.create_infer_request(), self.fallback.output(0), self.fallback)
            return self._fallback_request
        if shape in self._requests:
            self._requests.move_to_end(shape)
            return self._requests[shape]
        model = self.model.clone()
        model.reshape({model.inputs[0].get_any_name(): list(shape)})
        compiled = self.core.compile_model(model, "CPU", self.config)
        if len(self._requests) >= self.keep:
            self._requests.popitem(last=False)
        self._requests[shape] = (compiled.create_infer_request(), compiled.output(0), compiled)
        return self._requests[shape]

    def compiled(self, shape) -> object:
        """The compiled model that runs ``shape`` (compiled now if it is new, and kept like any other)."""
        return self._request(tuple(shape))[2]

    def _run(self, x: np.ndarray) -> np.ndarray:
        request, output, _ = self._request(tuple(x.shape))
        return np.asarray(request.infer({0: x}, share_inputs=True)[output])

    def infer(self, x: np.ndarray) -> np.ndarray:
        n, step = len(x), self.chunk(x.shape)
        if step >= n:
            return self._run(x)
        out = None
        for i in range(0, n, step):
            y = self._run(x[i:i + step])
            if out is None:
                out = np.empty((n, *y.shape[1:]), y.dtype)
            out[i:i + len(y)] = y
        return out


class OpenVINORunner(Runner):
    """Run an ONNX purifier (a path, serialized bytes or an ``onnx.ModelProto``) with OpenVINO on the CPU.

    ``precision``: auto | f32 | bf16 | int8 (see the module docstring). ``threads``: ``INFERENCE_NUM_THREADS``
    (None: OpenVINO's default, every physical core). After activation, :attr:`precision` is the precision that ran,
    :attr:`inference_precision` the hint read back from the compiled model, :attr:`layer_precisions` the runtime
    precisions of its compute layers, and :attr:`record` all of it as plain data. ``static_shapes``: how many input
    shapes to keep compiled as static models (None: :data:`STATIC_SHAPES`; 0: run the dynamic model as it is);
    ``chunk_pixels``: the most pixels of a batch run at once (None: :data:`CHUNK_PIXELS`; 0: the whole batch).
    ``bf16_scope`` (precision bf16): "bsn" (None) types the export's BSN nodes bf16 and keeps the rest f32, "all" is
    OpenVINO's own bf16 hint (module docstring); :attr:`record` says which ran.
    """

    name = "openvino"

    def __init__(self, model, *, precision: str = "auto", threads: int | None = None, device: str = "CPU",
                 check_range: bool = True, static_shapes: int | None = None, chunk_pixels: int | None = None,
                 bf16_scope: str | None = None):
        super().__init__(check_range=check_range)
        self.bf16_scope = BF16_SCOPES[0] if bf16_scope is None else bf16_scope
        if self.bf16_scope not in BF16_SCOPES:
            raise UserError(f"bf16_scope must be one of {', '.join(BF16_SCOPES)}, got {bf16_scope!r}")
        self.bf16_ops = 0
        if threads is not None:
            whole_number("threads", threads, 1)
        self.static_shapes = whole_number("static_shapes", STATIC_SHAPES if static_shapes is None else static_shapes)
        self.chunk_pixels = whole_number("chunk_pixels", CHUNK_PIXELS if chunk_pixels is None else chunk_pixels)
        if str(device).upper() != "CPU":
            raise UserError(f"the openvino backend runs on the CPU only, not {device!r}")
        self.requested_precision = normalize_precision(precision)
        self.threads = threads
        self.device = "CPU"
        if isinstance(model, (bytes, str, os.PathLike)):
            self.model = model
        else:  # an onnx.ModelProto (anything with SerializeToString)
            serialize = getattr(model, "SerializeToString", None)
            if serialize is None:
                raise UserError(f"the openvino backend takes an .onnx path, its bytes or an onnx.ModelProto, "
                                f"got {type(model).__name__}")
            self.model = serialize()
        self.path = None if isinstance(self.model, bytes) else Path(self.model)
        self.precision: str | None = None
        self.inference_precision: str | None = None
        self.layer_precisions: dict[str, dict[str, int]] = {}
        self.openvino_version: str | None = None
        self.compiled = None
        self._shapes: StaticShapes | None = None

    @property
    def _where(self) -> str:
        return str(self.path) if self.path is not None else "the in-memory ONNX model"

    @property
    def record(self) -> dict:
        """What ran, for a report: requested and effective precision, the compiled hint, layer precisions, ISA."""
        return {"backend": self.name, "device": self.device, "openvino": self.openvino_version,
                "requested_precision": self.requested_precision, "precision": self.precision,
                "inference_precision_hint": self.inference_precision, "layer_precisions": self.layer_precisions,
                "bf16_scope": (self.bf16_scope if self.bf16_ops else "all") if self.precision == "bf16" else None,
                "bf16_ops": self.bf16_ops,
                "threads": self.threads, "static_shapes": self.static_shapes, "chunk_pixels": self.chunk_pixels,
                "compiled_shapes": self._shapes.shapes if self._shapes is not None else [],
                "cpu": cpu.cpu_model(), "isa": cpu.cpu_isa()}

    # ---- lifecycle
    def activate_impl(self) -> None:
        ov = import_openvino()
        if self.path is not None and not self.path.is_file():
            raise UserError(f"ONNX model {self.path} does not exist" if not self.path.exists()
                            else f"ONNX model {self.path} is not a file")
        core = ov.Core()
        try:
            model = core.read_model(self.model if self.path is None else str(self.path))
        except RuntimeError as e:
            raise UserError(f"OpenVINO cannot read {self._where} as an ONNX model ({_first_line(e)}); re-export "
                            "or re-copy it") from None
        inputs, outputs = model.inputs, model.outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{self._where} has {len(inputs)} inputs and {len(outputs)} outputs; the openvino runner "
                            "takes one input (an NCHW image batch) and one output")
        port = inputs[0]
        etype = port.get_element_type().get_type_name()
        dtype = _ELEMENT_DTYPES.get(etype)
        if dtype is None:
            raise UserError(f"{self._where} input '{port.get_any_name()}' is {etype}; expected float or float16")
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic:
            raise UserError(f"{self._where} input '{port.get_any_name()}' has no fixed rank; ncis-deploy artifacts "
                            "take NCHW [N, 3, H, W]")
        dims = [d.get_length() if d.is_static else None for d in shape]
        spec = input_spec_from_shape(port.get_any_name(), dims, dtype, f"ONNX model {self._where}")
        quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
        precision = resolve_precision(self.requested_precision, quantized=quantized, where=self._where)
        if precision == "int8":
            cpu.check_int8_weights(self._onnx_proto, "OpenVINO", self._where)
        expected, self.bf16_ops = _HINTS[precision], 0
        if precision == "bf16" and self.bf16_scope == "bsn":
            self.bf16_ops, expected = prepare_bf16(model)
        config = {"INFERENCE_PRECISION_HINT": expected, "PERFORMANCE_HINT": "LATENCY"}
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        # a fixed-size export with a dynamic batch: compile its one-image shape now, which its queries run in (and
        # which the checks below read), instead of the dynamic model too; else the model as it is, the fallback
        warm = [1, *dims[1:]] if self.static_shapes and dims[0] is None and None not in dims[1:] else None
        try:
            if warm:
                shapes = StaticShapes(core, model, config, keep=self.static_shapes, chunk_pixels=self.chunk_pixels)
                compiled = shapes.compiled(warm)
            else:
                compiled = core.compile_model(model, self.device, config)
                shapes = StaticShapes(core, model, config, keep=self.static_shapes, chunk_pixels=self.chunk_pixels,
                                      fallback=compiled)
        except RuntimeError as e:
            raise UserError(f"OpenVINO cannot compile {self._where} for the CPU in {precision}: "
                            f"{_first_line(e)}") from None
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        layers = self._layer_precisions(compiled)
        ran = Counter(p for per in layers.values() for p, n in per.items() for _ in range(n))
        if hint != expected:
            raise UserError(f"OpenVINO compiled {self._where} with inference precision {hint}, not the "
                            f"{expected} asked for ({precision}); `ncis-deploy doctor` shows this CPU's "
                            "native precisions")
        if precision == "bf16" and not ran["bf16"]:
            raise UserError(f"OpenVINO runs no compute layer of {self._where} in bf16 (they ran as {dict(ran)}), so "
                            "a bf16 figure would be an f32 one; choose precision f32")
        if precision == "int8" and not any(ran[t] for t in _INT8_TYPES):
            raise UserError(f"OpenVINO runs no layer of {self._where} in int8 although it has Q/DQ nodes (its "
                            f"compute layers ran as {dict(ran)}); re-export it with `ncis-deploy export --int8`")
        self.input_spec = spec
        self.compiled, self._shapes = compiled, shapes
        self.precision, self.inference_precision, self.layer_precisions = precision, hint, layers
        self.openvino_version = str(getattr(ov, "__version__", "?")).split("-")[0]  # "2026.4.1-22982-...": the release

    def _onnx_proto(self):
        """The model as an ``onnx.ModelProto`` (None where onnx cannot parse what OpenVINO read)."""
        import onnx

        try:
            return onnx.load_from_string(self.model) if self.path is None else \
                onnx.load(str(self.path), load_external_data=False)
        except Exception:  # noqa: BLE001  (OpenVINO read it; onnx cannot, so there are no weights to look at)
            return None

    @staticmethod
    def _layer_precisions(compiled) -> dict[str, dict[str, int]]:
        """Layer type -> runtime precision -> count, for the compute layers of the compiled execution graph."""
        out: dict[str, Counter] = {}
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else None
            if kind in _COMPUTE_LAYERS and "runtimePrecision" in info:
                out.setdefault(kind, Counter())[info["runtimePrecision"].astype(str)] += 1
        return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self._shapes.infer(x)

    def deactivate_impl(self) -> None:
        self._shapes = self.compiled = None
