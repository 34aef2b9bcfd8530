"""ONNX -> serialized TensorRT engine, for TensorRT 10.x and 11.x, through the documented Python API.

Precision is where the two majors differ, and the major version (from ``tensorrt.__version__``) decides:

* TensorRT 11 networks are always strongly typed and ``BuilderFlag.FP16/BF16/INT8`` no longer exist, so an FP16
  engine needs an FP16-typed ONNX; this module never names those flags on 11.x (and passes creation flags ``0``: the
  ``STRONGLY_TYPED`` creation flag is accepted there but ignored).
* TensorRT 10 networks are weakly typed by default (``EXPLICIT_BATCH`` is deprecated and ignored since 10.0, so the
  creation flags are ``0``); an FP16-typed ONNX then gets ``BuilderFlag.FP16`` so TensorRT may pick FP16 kernels,
  which is what ``trtexec --fp16`` does. ``EngineSpec.strongly_typed`` opts 10.x into the 11.x behaviour instead
  (``STRONGLY_TYPED`` creation flag, no precision flags, which TensorRT rejects on a strongly typed network).

``tensorrt`` is imported lazily and every call goes through the module object, with no ``isinstance`` checks against
TensorRT classes, so the tests drive :func:`build_engine` with a recording fake module on machines without a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ncis_deploy.errors import UserError, missing_package
from ncis_deploy.fileio import atomic_path

SUPPORTED_MAJORS = (10, 11)
INSTALL_HINT = "pip install 'ncis-deploy[trt]'"
DEFAULT_TIMING_CACHE = Path("~/.cache/ncis-deploy/tensorrt-timing.cache")  # shared by every build on this machine

Shape = tuple[int, int, int, int]


class EngineBuildError(UserError):
    """TensorRT refused the ONNX or could not build an engine from it; the message carries TensorRT's own words."""


@dataclass
class EngineSpec:
    """What to build: one optimization profile for the NCHW input, memory, precision and portability."""

    min_shape: Shape
    opt_shape: Shape
    max_shape: Shape
    workspace_bytes: int = 4 << 30
    fp16_onnx: bool = False  # the ONNX itself is FP16-typed (I/O and weights)
    version_compatible: bool = False  # engine runs on later TensorRT (lean runtime embedded unless excluded)
    timing_cache: Path | None = None  # read before and written back after every build
    input_name: str = "input"
    exclude_lean_runtime: bool = False  # with version_compatible: ship the lean runtime separately
    strongly_typed: bool = False  # 10.x only (11.x is always strongly typed)
    tf32: bool = True  # TensorRT's default; False clears BuilderFlag.TF32 for exact-as-possible float32 parity
    # Plugin libraries (e.g. kernels/ -> libncis_trt_plugins.so) loaded into the builder's registry before parsing, so
    # the ONNX parser finds their creators; serialised into the engine when it is version compatible (TensorRT's
    # plugins_to_serialize), otherwise the application loads them at run time (export/cpp --plugin-lib).
    plugin_libraries: tuple[str, ...] = ()

    def validate(self) -> None:
        shapes = {"min": self.min_shape, "opt": self.opt_shape, "max": self.max_shape}
        for which, s in shapes.items():
            if len(s) != 4 or not all(isinstance(d, int) and d >= 1 for d in s):
                raise UserError(f"TensorRT {which} shape {tuple(s)} must be 4 positive integers (N, C, H, W)")
        for axis, name in enumerate("NCHW"):
            lo, mid, hi = (s[axis] for s in shapes.values())
            if not lo <= mid <= hi:
                raise UserError(f"TensorRT profile axis {name} must satisfy min <= opt <= max, got {lo}, {mid}, {hi}")
        if len({s[1] for s in shapes.values()}) != 1:
            raise UserError("TensorRT profile shapes must agree on the channel count C")
        if self.workspace_bytes <= 0:
            raise UserError(f"the TensorRT workspace must be > 0 bytes, got {self.workspace_bytes}")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise UserError("excluding the lean runtime only applies to version-compatible engines; "
                            "also pass --version-compatible")

    @property
    def plugins_serialized(self) -> bool:
        """Plugin libraries travel inside the engine only when it is version compatible."""
        return bool(self.plugin_libraries) and self.version_compatible


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise UserError(f"cannot read the TensorRT version {version!r}; reinstall with {INSTALL_HINT}") from None


def _cuda_problem() -> str | None:
    """Why no CUDA GPU is usable, or None. torch (a core dependency) answers when it is a CUDA build."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.version.cuda is not None:
        return None if torch.cuda.is_available() else "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    try:  # CPU-only torch next to a GPU TensorRT: ask the CUDA runtime directly (cuda-python, the [trt] extra)
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
    except ImportError:
        return f"PyTorch is a CPU-only build and cuda-python is not installed to find a GPU ({INSTALL_HINT})"
    err, count = cudart.cudaGetDeviceCount()
    return None if int(err) == 0 and count > 0 else "no CUDA GPU is visible to the CUDA runtime"


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise missing_package("tensorrt", "trt") from None
    except Exception as e:  # noqa: BLE001  (a wheel without its CUDA libraries fails with OSError and friends)
        raise UserError(f"the tensorrt package is installed but failed to load ({e}); "
                        f"reinstall with {INSTALL_HINT}") from None
    return tensorrt


def tensorrt_status() -> tuple[bool, str]:
    """``(usable, reason)``: can this machine build engines? Never raises; ``reason`` is one line either way."""
    try:
        trt = _import_tensorrt()
    except UserError as e:
        if "not installed" in str(e):
            return False, f"the tensorrt package is not installed ({INSTALL_HINT})"
        return False, str(e)
    version = str(getattr(trt, "__version__", "?"))
    try:
        major = _major(version)
    except UserError as e:
        return False, str(e)
    if major not in SUPPORTED_MAJORS:
        return False, f"TensorRT {version} is not supported (ncis-deploy builds with TensorRT 10.x or 11.x)"
    problem = _cuda_problem()
    if problem:
        return False, f"TensorRT {version} is installed but {problem}"
    return True, f"TensorRT {version} with a CUDA GPU"


def _make_logger(trt, echo: Callable[[str], None] | None):
    """An ``ILogger`` that keeps warnings/errors (for error messages and the build report) and echoes them."""
    base = trt.ILogger
    warning, error = int(base.Severity.WARNING), int(base.Severity.ERROR)

    class _Logger(base):
        def __init__(self):
            base.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, msg):
            level = int(severity)
            if level > warning:
                return
            line = " ".join(str(msg).split())
            (self.errors if level <= error else self.warnings).append(line)
            if echo is not None:
                echo(f"TensorRT {'error' if level <= error else 'warning'}: {line}")

    return _Logger()


def _call(obj, name: str):
    """``obj.name()`` if the binding has it (ParserError grew node_name/node_operator in 10.x), else None."""
    fn = getattr(obj, name, None)
    try:
        return fn() if callable(fn) else fn
    except Exception:  # noqa: BLE001
        return None


def _parser_failure(parser, onnx_path: Path) -> EngineBuildError:
    items = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        desc = " ".join(str(_call(err, "desc") or err).split())
        name, op, index = _call(err, "node_name"), _call(err, "node_operator"), _call(err, "node")
        if name or op:
            where = f"node '{name}' ({op})" if name else f"a {op} node"
        else:
            where = f"node #{index}" if isinstance(index, int) and index >= 0 else "the graph"
        items.append(f"{where}: {desc}")
    shown = "; ".join(items[:5]) + (f" (and {len(items) - 5} more)" if len(items) > 5 else "")
    return EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path} with {len(items)} error(s): "
                            f"{shown or 'no details reported'}; fix the graph or re-export it (ncis-deploy export)")


def _check_input(network, spec: EngineSpec) -> None:
    """The profile must name the ONNX input, and fixed ONNX dims must not vary in the profile."""
    inputs = [network.get_input(i) for i in range(int(network.num_inputs))]
    names = [t.name for t in inputs]
    if spec.input_name not in names:
        raise EngineBuildError(f"the ONNX has input(s) {names}, not '{spec.input_name}'; pass the right input name")
    for t in inputs:
        shape = tuple(int(d) for d in t.shape)
        if t.name != spec.input_name:
            if any(d < 0 for d in shape):
                raise EngineBuildError(f"ONNX input '{t.name}' {shape} is dynamic but only '{spec.input_name}' gets a "
                                       "TensorRT optimization profile; export with a single input")
            continue
        if len(shape) != 4:
            raise EngineBuildError(f"ONNX input '{t.name}' has rank {len(shape)}; the purifier engine needs NCHW")
        for axis, d in enumerate(shape):
            lo, hi = spec.min_shape[axis], spec.max_shape[axis]
            if d >= 0 and not lo == spec.opt_shape[axis] == hi == d:
                raise EngineBuildError(
                    f"ONNX input '{t.name}' has fixed {'NCHW'[axis]} = {d}, but the profile asks for {lo}..{hi}; "
                    f"use {d} there or re-export with that axis dynamic (--dynamic-hw for H and W)")


def _load_plugin_libraries(trt, builder, libraries) -> None:
    """Register every plugin library's creators (its getCreators() entry point) before the ONNX parser runs."""
    if not libraries:
        return
    registry = builder.get_plugin_registry() if hasattr(builder, "get_plugin_registry") else trt.get_plugin_registry()
    for lib in libraries:
        path = Path(lib)
        if not path.is_file():
            raise UserError(f"plugin library {path} does not exist; build it from kernels/ (kernels/README.md)")
        try:
            handle = registry.load_library(str(path.resolve()))
        except Exception as e:  # noqa: BLE001  (the bindings raise on a library TensorRT cannot load)
            handle, why = None, " ".join(str(e).split())
        else:
            why = "TensorRT returned no handle"
        if handle is None:
            raise EngineBuildError(f"TensorRT could not load the plugin library {path} ({why}); was it built against "
                                   "this TensorRT version?")


def _attach_timing_cache(config, path: Path | None, say: Callable[[str], None]) -> bool:
    """Give the builder the cache from ``path`` (True) or an empty one (False) when absent, unreadable or foreign."""
    data = b""
    if path is not None and path.is_file():
        try:
            data = path.read_bytes()
        except OSError as e:
            say(f"TensorRT timing cache {path} is unreadable ({e.strerror or e}); starting an empty one")
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # noqa: BLE001  (a truncated cache file must not stop the build)
            cache = None
        # ignore_mismatch=False: a cache tuned on another GPU model or TensorRT version is refused, not misused
        if cache is not None and config.set_timing_cache(cache, False):
            return True
        say(f"TensorRT timing cache {path} does not match this TensorRT/GPU (or is damaged); starting an empty one")
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return False


def _save_timing_cache(config, path: Path, say: Callable[[str], None]) -> bool:
    try:
        data = memoryview(config.get_timing_cache().serialize())
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return True
    except OSError as e:  # a read-only cache location costs the next build time, not this engine
        say(f"could not save the TensorRT timing cache to {path} ({e.strerror or e}); the engine is fine")
        return False


def build_engine(onnx_path, engine_path, spec: EngineSpec, trt=None, log: Callable[[str], None] | None = None) -> dict:
    """Build ``engine_path`` from ``onnx_path``; return what was done (version, flags, profile, cache, seconds).

    ``trt``: the ``tensorrt`` module (default: imported here, with a GPU check). ``log``: receives one-line progress
    notes and TensorRT's warnings/errors. The engine file is replaced atomically and only after a successful build,
    so a failed build leaves the previous engine (if any) untouched.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    say = log or (lambda msg: None)
    trt, version, major = _checked_tensorrt(onnx_path, spec, trt)
    strongly_typed = major >= 11 or spec.strongly_typed
    logger = _make_logger(trt, log)
    builder, network, network_flags = _parse_network(trt, logger, onnx_path, spec, major, strongly_typed)
    config, flags_set, flags_cleared = _builder_config(trt, builder, spec, strongly_typed)
    cache_reused = _attach_timing_cache(config, spec.timing_cache, say) if spec.timing_cache is not None else False
    say(f"TensorRT {version}: building the engine for {spec.min_shape}..{spec.max_shape} (can take minutes)")
    data, seconds = _build_plan(builder, network, config, logger, onnx_path)
    _write_engine(engine_path, data)
    cache_saved = _save_timing_cache(config, spec.timing_cache, say) if spec.timing_cache is not None else False
    return {
        "tensorrt_version": version, "strongly_typed": strongly_typed, "network_flags": network_flags,
        "builder_flags": flags_set, "cleared_builder_flags": flags_cleared,
        "precision": "fp16" if spec.fp16_onnx else "fp32", "tf32": spec.tf32,
        "profile": {"input": spec.input_name, "min": list(spec.min_shape), "opt": list(spec.opt_shape),
                    "max": list(spec.max_shape)},
        "workspace_bytes": int(spec.workspace_bytes), "version_compatible": spec.version_compatible,
        "exclude_lean_runtime": spec.exclude_lean_runtime,
        "timing_cache": str(spec.timing_cache) if spec.timing_cache is not None else None,
        "timing_cache_reused": cache_reused, "timing_cache_saved": cache_saved, "build_seconds": round(seconds, 3),
        "engine": str(engine_path), "engine_bytes": data.nbytes, "tensorrt_warnings": logger.warnings[-10:],
        "plugin_libraries": [str(Path(p).resolve()) for p in spec.plugin_libraries],
        "plugins_serialized": spec.plugins_serialized,
    }


def _checked_tensorrt(onnx_path: Path, spec: EngineSpec, trt) -> tuple[object, str, int]:
    """Check the spec and the ONNX file, then ``(tensorrt module, version, major)``; ``trt=None`` imports TensorRT
    and needs a GPU. Everything here fails before any TensorRT object is created."""
    spec.validate()
    if not onnx_path.is_file():
        raise UserError(f"ONNX file {onnx_path} does not exist; run `ncis-deploy export` first")
    if trt is None:
        trt = _import_tensorrt()
        if problem := _cuda_problem():
            raise UserError(f"cannot build a TensorRT engine: {problem}")
    version = str(trt.__version__)
    major = _major(version)
    if major not in SUPPORTED_MAJORS:
        raise UserError(f"TensorRT {version} is not supported; install TensorRT 10.x or 11.x ({INSTALL_HINT})")
    return trt, version, major


def _parse_network(trt, logger, onnx_path: Path, spec: EngineSpec, major: int, strongly_typed: bool):
    """``(builder, network, network creation flags)``: the ONNX parsed (plugin creators registered first) and its
    input checked against the profile."""
    builder = trt.Builder(logger)
    if builder is None:
        raise EngineBuildError(f"TensorRT could not create a builder ({'; '.join(logger.errors) or 'no CUDA device?'})")
    if major == 10 and strongly_typed:
        network_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    else:  # 10.x weakly typed, or 11.x where every network is strongly typed and the flag is ignored
        network_flags = 0
    network = builder.create_network(network_flags)
    _load_plugin_libraries(trt, builder, spec.plugin_libraries)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external-data weights resolve
        raise _parser_failure(parser, onnx_path)
    _check_input(network, spec)
    return builder, network, network_flags


def _builder_config(trt, builder, spec: EngineSpec, strongly_typed: bool) -> tuple[object, list[str], list[str]]:
    """``(config, builder flags set, builder flags cleared)``: workspace, the one profile, precision and portability
    flags, and the plugin libraries to serialise into the engine."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_bytes))
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input_name, tuple(spec.min_shape), tuple(spec.opt_shape), tuple(spec.max_shape))
    config.add_optimization_profile(profile)
    flags_set: list[str] = []
    flags_cleared: list[str] = []
    if spec.fp16_onnx and not strongly_typed:  # only reachable on 10.x: the flag does not exist in 11.x
        config.set_flag(trt.BuilderFlag.FP16)
        flags_set.append("FP16")
    if not spec.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
        flags_cleared.append("TF32")
    if spec.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        flags_set.append("VERSION_COMPATIBLE")
        if spec.exclude_lean_runtime:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
            flags_set.append("EXCLUDE_LEAN_RUNTIME")
    if spec.plugins_serialized:
        config.plugins_to_serialize = [str(Path(p).resolve()) for p in spec.plugin_libraries]
    return config, flags_set, flags_cleared


def _build_plan(builder, network, config, logger, onnx_path: Path) -> tuple[memoryview, float]:
    """The serialized engine (never empty) and the seconds the build took."""
    t0 = time.perf_counter()
    try:
        plan = builder.build_serialized_network(network, config)
    except RuntimeError as e:  # some bindings raise instead of returning None
        logger.errors.append(" ".join(str(e).split()))
        plan = None
    seconds = time.perf_counter() - t0
    data = memoryview(plan) if plan is not None else None
    if data is None or data.nbytes == 0:
        detail = " | ".join(logger.errors[-3:]) or "TensorRT logged no error"
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path}: {detail}; "
                               "check the workspace size (--workspace) and the profile shapes")
    return data, seconds


def _write_engine(engine_path: Path, data: memoryview) -> None:
    try:
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(engine_path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise UserError(f"cannot write the TensorRT engine to {engine_path}: {e.strerror or e}") from None
