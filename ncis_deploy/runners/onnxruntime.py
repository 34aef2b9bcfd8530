"""The ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

Two traps it exists to close:

* ``onnxruntime.get_available_providers()`` lists what the *package* was built with, not what can load: an
  onnxruntime-gpu without matching CUDA/cuDNN libraries lists ``CUDAExecutionProvider`` and then silently runs on
  CPU. After creating the session we compare ``session.get_providers()`` with what was asked for and refuse to
  run on a fallback (a benchmark of "CUDA" that was really CPU is worse than an error).
* A corrupt or truncated ``.onnx`` makes ORT raise its own exception types with a multi-line message; they become
  one :class:`UserError` naming the file.

On a GPU provider the input is copied once into an ``OrtValue`` on the device and the output is bound to the device
(IO binding, :class:`DeviceBinding`), so ``run`` itself does no host transfers; the result is copied back to numpy at
the end. The benchmark times the same binding's three steps one by one.

Every ``onnxruntime.InferenceSession`` of the package is made by :func:`open_session`, so a session option (log level,
threads, profiling) is set in one place.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ncis_deploy.errors import UserError, missing_package
from ncis_deploy.runners.base import ORT_TYPES, Runner, input_spec_from_shape, whole_number

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
SHORT_NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TRT, "trt": TRT}
GPU_PROVIDERS = (CUDA, TRT)

ProviderArg = "str | Sequence[str | tuple[str, dict]]"


def _ep_name(p: str) -> str:
    full = SHORT_NAMES.get(p.lower(), p)
    if not full.endswith("ExecutionProvider"):
        raise UserError(f"unknown onnxruntime provider {p!r}; use cpu, cuda, tensorrt or a full name like "
                        f"{CUDA}")
    return full


def shape_string(name: str, shape: Sequence[int]) -> str:
    """The TensorRT EP profile format: ``input:1x3x224x224``."""
    return f"{name}:{'x'.join(str(int(d)) for d in shape)}"


def cuda_options(device_id: int = 0, cudnn_conv_algo_search: str = "EXHAUSTIVE") -> dict[str, str]:
    algo = str(cudnn_conv_algo_search).upper()
    if algo not in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
        raise UserError(f"cudnn_conv_algo_search must be EXHAUSTIVE, HEURISTIC or DEFAULT, "
                        f"got {cudnn_conv_algo_search!r}")
    return {"device_id": str(device_id), "cudnn_conv_algo_search": algo}


def tensorrt_options(device_id: int = 0, cache_dir: str | os.PathLike | None = None, fp16: bool = False,
                     profile: tuple[Sequence[int], Sequence[int], Sequence[int]] | None = None,
                     input_name: str = "input") -> dict[str, str]:
    """TensorRT EP options. Booleans are spelled "True"/"False": the Python binding rejects other spellings.

    ``cache_dir`` turns on the engine cache and the timing cache there (the first session builds the engine,
    later ones load it in seconds). ``profile`` = (min, opt, max) NCHW shapes for the optimization profile; without
    it the EP rebuilds the engine whenever it sees a shape outside the ones it has built for.
    """
    opts = {"device_id": str(device_id)}
    if cache_dir is not None:
        d = Path(cache_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the TensorRT cache directory {d}: {e.strerror or e}") from None
        opts.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(d),
                     "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(d)})
    if fp16:
        opts["trt_fp16_enable"] = "True"
    if profile is not None:
        if len(profile) != 3:
            raise UserError("a TensorRT profile is three shapes: (min, opt, max)")
        for key, shape in zip(("min", "opt", "max"), profile):
            opts[f"trt_profile_{key}_shapes"] = shape_string(input_name, shape)
    return opts


def provider_list(providers: ProviderArg = "cpu", *, device_id: int = 0, cudnn_conv_algo_search: str = "EXHAUSTIVE",
                  trt_cache_dir=None, trt_fp16: bool = False, trt_profile=None,
                  input_name: str = "input") -> list[tuple[str, dict[str, str]]]:
    """Normalize ``"cpu" | "cuda" | "tensorrt" | [names or (name, options)]`` into ORT's (name, options) list.

    "cuda" means CUDA then CPU (ORT places the few ops CUDA lacks on CPU); "tensorrt" means TensorRT, then CUDA for
    the nodes TensorRT rejects, then CPU, as ORT's documentation recommends. Options given explicitly in a tuple
    win over the ones built from the keyword arguments.
    """
    if isinstance(providers, str):
        first = _ep_name(providers)
        names: list = {CPU: [CPU], CUDA: [CUDA, CPU], TRT: [TRT, CUDA, CPU]}.get(first, [first, CPU])
    elif isinstance(providers, (list, tuple)) and providers:
        names = list(providers)
    else:
        raise UserError(f"providers must be 'cpu', 'cuda', 'tensorrt' or a non-empty list, got {providers!r}")
    out: list[tuple[str, dict[str, str]]] = []
    for p in names:
        explicit: dict = {}
        if isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[1], dict):
            p, explicit = p
        if not isinstance(p, str):
            raise UserError(f"provider {p!r} must be a name or a (name, options) pair")
        name = _ep_name(p)
        base: dict[str, str] = {}
        if name == CUDA:
            base = cuda_options(device_id, cudnn_conv_algo_search)
        elif name == TRT:
            base = tensorrt_options(device_id, trt_cache_dir, trt_fp16, trt_profile, input_name)
        out.append((name, {**base, **{str(k): str(v) for k, v in explicit.items()}}))
    return out


def _ort_distributions() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            version(dist)
            found.append(dist)
        except PackageNotFoundError:
            pass
    return found


def fallback_hint(missing: str) -> str:
    """How to fix a GPU provider that did not load, from what is installed."""
    dists = _ort_distributions()
    if "onnxruntime-gpu" not in dists:
        fix = ("the CPU-only onnxruntime package is installed: install the GPU build in its place "
               "(pip uninstall onnxruntime && pip install 'ncis-deploy[gpu]')")
    elif "onnxruntime" in dists:
        fix = ("both onnxruntime and onnxruntime-gpu are installed and the CPU one shadows the GPU one: "
               "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    else:
        fix = ("onnxruntime-gpu is installed but could not load its CUDA libraries: check that a GPU is visible "
               "(nvidia-smi) and that the CUDA and cuDNN versions it was built for are installed and on the "
               "library path")
        if missing == TRT:
            fix += ", plus the TensorRT libraries (libnvinfer) for the TensorRT provider"
    return f"{fix}; `ncis-deploy doctor` shows which providers really load"


def open_session(model: "str | os.PathLike | bytes", providers: ProviderArg = "cpu", *, threads: int | None = None,
                 verbose: bool = False, options: dict | None = None, **provider_kw):
    """An ``onnxruntime.InferenceSession`` for ``model`` (a path or serialized bytes) on ``providers``.

    ``threads``: intra-op threads (None: ORT's default, all cores); ``options``: further ``SessionOptions``
    attributes, e.g. ``{"enable_profiling": True}``, and session config entries (keys with a dot, e.g.
    ``{"session.intra_op.allow_spinning": "0"}``); ``provider_kw`` go to :func:`provider_list`. An int8 Q/DQ model
    on the CPU provider runs in its :func:`cpu_qdq_form`. ORT's own exceptions pass through unchanged: the caller
    knows what the model is and words the error.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_package("onnxruntime") from None
    plist = provider_list(providers, **provider_kw)
    so = ort.SessionOptions()
    # errors only unless verbose: a provider that fails to load logs warnings the caller turns into one clear line
    so.log_severity_level = 1 if verbose else 3
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    for key, value in (options or {}).items():
        if "." in key:
            so.add_session_config_entry(key, str(value))
        else:
            setattr(so, key, value)
    if all(name == CPU for name, _ in plist) and (cpu_form := cpu_qdq_form(model)) is not None:
        model = cpu_form
    with warnings.catch_warnings():  # "not in available provider names": callers check get_providers() instead
        warnings.simplefilter("ignore", UserWarning)
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=so,
                                    providers=[n for n, _ in plist], provider_options=[o for _, o in plist])


def cpu_qdq_form(model: "str | os.PathLike | bytes") -> bytes | None:
    """The int8 Q/DQ model re-encoded for ORT's CPU EP, computing the same integers; None when there is nothing to do.

    An explicit-Q/DQ artifact is int8 with zero point 0 (the form TensorRT requires). On x86, ORT fuses Q/DQ into
    QLinear* kernels only for uint8 activations and converts an int8 Q/DQ pair itself only when the Q has a single
    consumer, so every tensor read twice (most of the purifier's) would stay on slow float round trips (measured
    slower than FP32). Re-encoded here, exactly:

    * every activation Q/DQ and every int8 constant of an elementwise op: int8 q ↦ uint8 q + 128, zero point z ↦
      z + 128 (same scale), which maps clamp(round(x/s) + z, -128, 127) onto clamp(round(x/s) + z + 128, 0, 255);
    * a Mul by a positive scalar c whose output scale is its input's times c (the exporter quantizes ``× 0.5`` and
      ``× 1/L`` that way) changes no integer: it is dropped and its readers dequantize the input's integers at the
      output scale;
    * where a float op's output enters the int8 part and is read by something other than a conv, an identity int8
      1×1 conv (weight 127 at scale 1/127, same scale in and out: the integers pass unchanged) is put first:
      ORT's NHWC layout pass only propagates from a conv, and without it every conv of the purifier got a
      transpose on each side (121 of them, a third of the int8 time).

    Weights keep int8 (ORT's u8 × s8 kernels; by default the exporter keeps them within ±63, so the kernels without
    VNNI, which add two u8 × s8 products in int16, cannot saturate; 8-bit weights are refused on such a CPU:
    :func:`ncis_deploy.cpu.check_int8_weights`). A model without int8 Q/DQ comes back as None, unparsed
    beyond a byte search.
    """
    if isinstance(model, bytes):
        data = model
    else:
        try:
            data = Path(model).read_bytes()
        except OSError:
            return None  # ORT's own error names the path
    if b"QuantizeLinear" not in data:
        return None
    import onnx

    try:
        m = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001  (ORT reports a corrupt model in its own words)
        return None
    from ncis_deploy.cpu import check_int8_weights

    check_int8_weights(m, "ONNX Runtime", "the int8 model" if isinstance(model, bytes) else str(model))
    dropped = _drop_identity_muls(m)
    entries = _conv_at_int8_entries(m)
    converted = _activations_to_uint8(m)
    return m.SerializeToString() if dropped or entries or converted else None


def _qdq_parts(node, inits) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, zero point) of a Q/DQ node when both are constant, else None."""
    from onnx import numpy_helper

    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    return numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]])


def _drop_identity_muls(m) -> int:
    from onnx import numpy_helper

    from ncis_deploy.exporters.gate import graph_index

    g = m.graph
    inits = {t.name: t for t in g.initializer}
    producer, readers = graph_index(g)
    graph_outputs = {o.name for o in g.output}
    drop, rewire = set(), {}
    for n in g.node:
        if n.op_type != "Mul" or len(n.input) != 2 or n.output[0] in graph_outputs:
            continue
        dqs = [producer.get(i) for i in n.input]
        if any(d is None or d.op_type != "DequantizeLinear" for d in dqs):
            continue
        const = [d for d in dqs if d.input[0] in inits]
        act = [d for d in dqs if d.input[0] not in inits]
        outs = readers.get(n.output[0], [])
        if len(const) != 1 or len(act) != 1 or len(outs) != 1 or outs[0].op_type != "QuantizeLinear":
            continue
        (c_dq,), (a_dq,), q = const, act, outs[0]
        c_parts, a_parts, q_parts = _qdq_parts(c_dq, inits), _qdq_parts(a_dq, inits), _qdq_parts(q, inits)
        cq = numpy_helper.to_array(inits[c_dq.input[0]])
        if None in (c_parts, a_parts, q_parts) or cq.size != 1 or any(p[0].size != 1 for p in (a_parts, q_parts)):
            continue
        c = np.float32((np.float32(cq.reshape(-1)[0]) - np.float32(c_parts[1].reshape(-1)[0]))
                       * np.float32(c_parts[0].reshape(-1)[0]))
        s_in, s_out = np.float32(a_parts[0].reshape(-1)[0]), np.float32(q_parts[0].reshape(-1)[0])
        same_zero = (a_parts[1].dtype == q_parts[1].dtype and a_parts[1].reshape(-1)[0] == q_parts[1].reshape(-1)[0])
        if not (c > 0 and same_zero and np.float32(s_in * c) == s_out):
            continue
        drop |= {n.output[0], q.output[0], c_dq.output[0]}  # nodes by their (unique) output
        rewire[q.output[0]] = a_dq.input[0]  # readers of the Mul's integers read the input's
    if not drop:
        return 0
    kept = [n for n in g.node if n.output[0] not in drop]
    for n in kept:
        for k, i in enumerate(n.input):
            while i in rewire:
                i = rewire[i]
            n.input[k] = i
    used = {i for n in kept for i in n.input}
    kept = [n for n in kept if not (n.op_type == "DequantizeLinear" and n.output[0] not in used
                                    and n.output[0] not in graph_outputs)]
    del g.node[:]
    g.node.extend(kept)
    return len(drop) // 3


def _conv_at_int8_entries(m) -> int:
    from onnx import helper, numpy_helper, shape_inference

    from ncis_deploy.exporters.gate import graph_index

    g = m.graph
    producer, readers = graph_index(g)
    entries = []
    for n in g.node:
        src = producer.get(n.input[0]) if n.op_type == "QuantizeLinear" else None
        if src is None or any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                              for i in src.input):
            continue  # a graph input, or an op ORT fuses with its Q/DQ
        dq_readers = [r for d in readers.get(n.output[0], []) if d.op_type == "DequantizeLinear"
                      for r in readers.get(d.output[0], [])]
        if any(r.op_type != "Conv" for r in dq_readers):
            entries.append(n)
    if not entries:
        return 0
    try:
        shapes = {v.name: v.type.tensor_type.shape for v in shape_inference.infer_shapes(m).graph.value_info}
    except Exception:  # noqa: BLE001  (without shapes there is no identity weight to build; the model still runs)
        return 0
    added = 0
    for q in entries:
        dims = shapes.get(q.input[0])
        if dims is None or len(dims.dim) != 4 or not dims.dim[1].HasField("dim_value"):
            continue
        c, t = dims.dim[1].dim_value, q.output[0]
        w = np.zeros((c, c, 1, 1), np.int8)
        w[np.arange(c), np.arange(c)] = 127
        g.initializer.extend([numpy_helper.from_array(w, f"{t}@idw"),
                              numpy_helper.from_array(np.full(c, 1 / 127, np.float32), f"{t}@ids"),
                              numpy_helper.from_array(np.zeros(c, np.int8), f"{t}@idz")])
        q.output[0] = f"{t}@entry"
        at = list(g.node).index(q) + 1
        for k, node in enumerate([
                helper.make_node("DequantizeLinear", [f"{t}@entry", q.input[1], q.input[2]], [f"{t}@entry_dq"]),
                helper.make_node("DequantizeLinear", [f"{t}@idw", f"{t}@ids", f"{t}@idz"], [f"{t}@idw_dq"], axis=0),
                helper.make_node("Conv", [f"{t}@entry_dq", f"{t}@idw_dq"], [f"{t}@identity"], kernel_shape=[1, 1]),
                helper.make_node("QuantizeLinear", [f"{t}@identity", q.input[1], q.input[2]], [t])]):
            g.node.insert(at + k, node)
        added += 1
    return added


def _activations_to_uint8(m) -> int:
    from onnx import TensorProto, numpy_helper

    from ncis_deploy.exporters.gate import graph_index

    g = m.graph
    inits = {t.name: t for t in g.initializer}
    _, readers = graph_index(g)
    added: dict[str, str] = {}

    def as_uint8(name: str) -> str:
        if name not in added:
            v = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
            added[name] = f"{name}@uint8"
            g.initializer.append(numpy_helper.from_array(v.astype(np.uint8), added[name]))
        return added[name]

    def int8_scalar(name: str) -> bool:
        t = inits.get(name)
        return t is not None and t.data_type == TensorProto.INT8 and int(np.prod(t.dims)) <= 1

    acts, n_changed = set(), 0
    for n in g.node:
        if n.op_type == "QuantizeLinear" and len(n.input) == 3 and int8_scalar(n.input[2]):
            n.input[2] = as_uint8(n.input[2])
            acts.add(n.output[0])
            n_changed += 1
    weight_slots = {("Conv", 1), ("ConvTranspose", 1), ("MatMul", 1), ("Gemm", 1)}
    for n in g.node:
        if n.op_type != "DequantizeLinear" or len(n.input) != 3 or not int8_scalar(n.input[2]):
            continue
        if n.input[0] in acts:
            n.input[2] = as_uint8(n.input[2])
            n_changed += 1
        elif n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT8 and not any(
                (r.op_type, list(r.input).index(n.output[0])) in weight_slots for r in readers.get(n.output[0], [])):
            n.input[0], n.input[2] = as_uint8(n.input[0]), as_uint8(n.input[2])  # an elementwise op's constant
            n_changed += 1
    return n_changed


class DeviceBinding:
    """One input and one output bound where an active :class:`OnnxRuntimeRunner` computes (ORT's IO binding).

    On a GPU provider the input lives in a device ``OrtValue``: :meth:`update` is the host-to-device copy,
    :meth:`run` computes with no host transfer, :meth:`output` is the device-to-host copy. ``fixed_output``
    preallocates the output on the device (one plain run finds its shape), which a CUDA graph needs: it replays
    with the addresses it captured. On the CPU provider the same calls bind host memory.
    """

    def __init__(self, runner: "OnnxRuntimeRunner", x: np.ndarray, *, fixed_output: bool = False):
        import onnxruntime as ort

        sess, name_in, name_out = runner.session, runner.input_spec.name, runner._output_name
        self._session, self._name_in, self._on_gpu = sess, name_in, runner._on_gpu
        self.binding = sess.io_binding()
        self.x_dev = self.y_dev = None
        if not self._on_gpu:
            self.binding.bind_cpu_input(name_in, x)
            self.binding.bind_output(name_out)
            return
        self.x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", runner.device_id)
        self.binding.bind_ortvalue_input(name_in, self.x_dev)
        if fixed_output:
            y = sess.run([name_out], {name_in: x})[0]
            self.y_dev = ort.OrtValue.ortvalue_from_shape_and_type(list(y.shape), y.dtype.type, "cuda",
                                                                  runner.device_id)
            self.binding.bind_ortvalue_output(name_out, self.y_dev)
        else:
            self.binding.bind_output(name_out, "cuda", runner.device_id)

    def update(self, x: np.ndarray) -> None:
        """Copy a new input of the bound shape into the bound memory."""
        if self._on_gpu:
            self.x_dev.update_inplace(x)
        else:
            self.binding.bind_cpu_input(self._name_in, x)

    def run(self) -> None:
        self._session.run_with_iobinding(self.binding)

    def output(self) -> np.ndarray:
        return self.y_dev.numpy() if self.y_dev is not None else self.binding.copy_outputs_to_cpu()[0]


class OnnxRuntimeRunner(Runner):
    """Run an ``.onnx`` purifier (a path, or the serialized model as bytes) with onnxruntime.

    ``providers``: "cpu", "cuda", "tensorrt" or an explicit list. ``io_binding``: None = on for GPU providers.
    ``trt_cache_dir``: engine + timing cache for the TensorRT EP. ``threads``: intra-op threads (None = ORT's
    default, all cores). After activation ``providers`` lists the providers the session really uses and
    ``metadata`` holds the model's custom metadata (``ncis_deploy.config`` etc.). ``verbose`` shows ORT's warnings
    and info logs (hidden by default). ``trt_profile`` = (min, opt, max) NCHW shapes for the TensorRT EP.
    ``session_options``: further ``onnxruntime.SessionOptions`` attributes (see :func:`open_session`).
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike | bytes, providers: ProviderArg = "cpu",
                 io_binding: bool | None = None, trt_cache_dir: str | os.PathLike | None = None,
                 threads: int | None = None, *, device_id: int = 0, cudnn_conv_algo_search: str = "EXHAUSTIVE",
                 trt_fp16: bool = False, trt_profile=None, verbose: bool = False, check_range: bool = True,
                 session_options: dict | None = None):
        super().__init__(check_range=check_range)
        self.model_bytes = onnx_path if isinstance(onnx_path, bytes) else None
        self.path = None if self.model_bytes is not None else Path(onnx_path)
        self.session_options = session_options
        self.verbose = verbose
        self.requested = providers
        self.io_binding = io_binding
        self.trt_cache_dir = trt_cache_dir
        self.threads = threads
        self.device_id = int(device_id)
        self.cudnn_conv_algo_search = cudnn_conv_algo_search
        self.trt_fp16 = trt_fp16
        self.trt_profile = trt_profile
        if threads is not None:
            whole_number("threads", threads, 1)
        self.session = None
        self.metadata: dict[str, str] = {}
        self._active_providers: list[str] = []
        self._output_name = "output"
        self._on_gpu = False
        self._use_binding = False

    @property
    def providers(self) -> list[str]:
        """The providers the live session uses (empty before activation)."""
        return list(self._active_providers)

    @property
    def _where(self) -> str:
        return str(self.path) if self.path is not None else "the in-memory ONNX model"

    # ---- lifecycle
    def activate_impl(self) -> None:
        if self.path is not None and not self.path.is_file():
            raise UserError(f"ONNX model {self.path} does not exist" if not self.path.exists()
                            else f"ONNX model {self.path} is not a file")
        plist = provider_list(self.requested, device_id=self.device_id,
                              cudnn_conv_algo_search=self.cudnn_conv_algo_search, trt_cache_dir=self.trt_cache_dir,
                              trt_fp16=self.trt_fp16, trt_profile=self.trt_profile)
        try:
            session = open_session(self.model_bytes if self.path is None else self.path, plist, threads=self.threads,
                                   verbose=self.verbose, options=self.session_options)
        except UserError:
            raise
        except Exception as e:  # onnxruntime's pybind exceptions (InvalidProtobuf, Fail, ...) derive Exception
            raise UserError(self._load_error(e, [n for n, _ in plist])) from None
        active = session.get_providers()
        missing = [n for n, _ in plist if n not in active]
        if missing:
            raise UserError(f"onnxruntime did not activate {', '.join(missing)} for {self._where} (it fell back "
                            f"to {', '.join(active)}): {fallback_hint(missing[0])}")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{self._where} has {len(inputs)} inputs and {len(outputs)} outputs; the onnxruntime "
                            "runner takes one input (an NCHW image batch) and one output")
        dtype = ORT_TYPES.get(inputs[0].type)
        if dtype is None:
            raise UserError(f"{self._where} input '{inputs[0].name}' is {inputs[0].type}; expected float or float16")
        self.input_spec = input_spec_from_shape(inputs[0].name, inputs[0].shape, dtype, f"ONNX model {self._where}")
        self._output_name = outputs[0].name
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        self._active_providers = active
        self._on_gpu = active[0] in GPU_PROVIDERS
        self._use_binding = self._on_gpu if self.io_binding is None else bool(self.io_binding)
        self.session = session

    def _load_error(self, e: Exception, providers: list[str]) -> str:
        kind = type(e).__name__
        first = (str(e).strip().splitlines() or [kind])[0]
        if kind in ("InvalidProtobuf", "DecodeError") or "Protobuf parsing failed" in first:
            return (f"{self._where} is not a valid ONNX model (corrupt, truncated or not ONNX at all); "
                    "re-export or re-copy it")
        if kind == "NoSuchFile":
            return f"ONNX model {self._where} does not exist"
        gpu = [p for p in providers if p in GPU_PROVIDERS]
        if gpu:  # some builds raise (instead of falling back) when a provider's libraries are missing
            return (f"onnxruntime cannot create a session for {self._where} with {', '.join(gpu)}: {first}; if the "
                    f"provider is the problem: {fallback_hint(gpu[0])}")
        return f"onnxruntime cannot load {self._where}: {first}"

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        if not self._use_binding:
            return self.session.run([self._output_name], {self.input_spec.name: x})[0]
        bound = self.bind(x)
        bound.run()
        return bound.output()

    def bind(self, x: np.ndarray, *, fixed_output: bool = False) -> DeviceBinding:
        """Bind ``x`` (and the output) where the session computes; see :class:`DeviceBinding`."""
        return DeviceBinding(self, x, fixed_output=fixed_output)

    def deactivate_impl(self) -> None:
        self.session = None
        self._active_providers = []
