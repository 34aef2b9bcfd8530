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
from ncis_deploy.runners.base import ORT_TYPES, Runner, input_spec_from_shape

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
    attributes, e.g. ``{"enable_profiling": True}``; ``provider_kw`` go to :func:`provider_list`. ORT's own
    exceptions pass through unchanged: the caller knows what the model is and words the error.
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
        setattr(so, key, value)
    with warnings.catch_warnings():  # "not in available provider names": callers check get_providers() instead
        warnings.simplefilter("ignore", UserWarning)
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=so,
                                    providers=[n for n, _ in plist], provider_options=[o for _, o in plist])


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
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UserError(f"threads must be a positive integer, got {threads!r}")
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
