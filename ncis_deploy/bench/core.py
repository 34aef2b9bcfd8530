"""``ncis-deploy bench``: what to measure (source, backends, batches), measuring it, and the report.

:func:`run_bench` takes :class:`BenchOptions` and returns the report as plain JSON-able data matching
:data:`ncis_deploy.bench.schema.SCHEMA`; :mod:`ncis_deploy.bench.report` renders it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import gc
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ncis_deploy.bench import harness
from ncis_deploy.bench.schema import FORMAT, FORMAT_VERSION, validate
from ncis_deploy.bench.stats import CONVENTIONS, scale, summarize
from ncis_deploy.bench.targets import FP32, PRECISIONS, BackendSpec, MemoryProbe, make_target
from ncis_deploy.errors import UserError
from ncis_deploy.quality import LOW_PRECISION_PSNR_DB as PSNR_GUARD_DB
from ncis_deploy.exporters.manifest import DEFAULT_DIR as DEFAULT_EXPORT
from ncis_deploy.exporters.manifest import ENGINE, ONNX, ONNX_INT8, Export, open_export, sha256_file
from ncis_deploy.runners import precision_name
from ncis_deploy.runners.openvino import bf16_hint_note

DEFAULT_BATCHES = (1, 8)
DEFAULT_WARMUP_MS = 200.0  # trtexec's default warm-up
DEFAULT_DURATION_S = 2.0  # trtexec uses 3 s; 2 s keeps the zero-argument run on a 2-core CPU under 2 minutes
MIN_ITERATIONS = 3
DEFAULT_HW = 224

BACKEND_DEVICES = {"torch": ("cpu", "cuda"), "onnxruntime": ("cpu", "cuda", "tensorrt"), "tensorrt": ("cuda",),
                   "openvino": ("cpu",)}
DEVICE_ALIASES = {"gpu": "cuda", "trt": "tensorrt"}
# the precisions other than FP32 each (backend, device) runs; bf16 and int8 are CPU paths (issue 12)
LOW_PRECISIONS = {("onnxruntime", "cpu"): ("int8",), ("openvino", "cpu"): ("bf16", "int8")}


def _precision(text: str) -> str:
    """bench's name of a precision: FP32 is spelt ``fp32`` in its specs and JSON (``f32`` elsewhere)."""
    p = precision_name(text)
    return FP32 if p == "f32" else p


REFERENCE = BackendSpec("onnxruntime", "cpu")  # ratios and quality guards are against ORT FP32 on the CPU
QUALITY_SPLIT = "holdout"  # the bundled photos the quality guards run on (never trained or calibrated on)
NO_VS = "none"  # --vs none: backends one after another, no ratios


@dataclass
class BenchOptions:
    export_dir: str | None = None  # None (and no preset): ./ncis_export, exported first if missing
    preset: str | None = None
    backends: tuple[str, ...] = ()  # empty: every backend × precision usable here
    batches: tuple[int, ...] = DEFAULT_BATCHES
    height: int | None = None
    width: int | None = None
    warmup_ms: float = DEFAULT_WARMUP_MS
    duration_s: float | None = None  # None: DEFAULT_DURATION_S unless iterations is given
    iterations: int | None = None
    min_iterations: int = MIN_ITERATIONS
    threads: int | None = None
    cuda_graph: bool = False
    data_transfers: bool = True
    stages: bool = False
    vs: str | None = None  # None: onnxruntime:cpu (FP32) when the list was defaulted and holds it; "none": no --vs
    diffpure: bool = True
    diffpure_width: int = 256
    diffpure_size: int = 256
    diffpure_steps: int = 150
    seed: int = 0
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- validation
def check_options(o: BenchOptions) -> None:
    if o.export_dir is not None and o.preset is not None:
        raise UserError("give either an export directory or --preset, not both")
    if not o.batches:
        raise UserError("--batch needs at least one batch size")
    for b in o.batches:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise UserError(f"--batch must be >= 1, got {b}")
    for name, v in (("--height", o.height), ("--width", o.width)):
        if v is not None and v < 2:
            raise UserError(f"{name} must be >= 2 (the purifier reflect-pads), got {v}")
    if o.duration_s is not None and o.iterations is not None:
        raise UserError("give either --duration or --iterations, not both")
    if o.duration_s is not None and not (o.duration_s > 0 and np.isfinite(o.duration_s)):
        raise UserError(f"--duration must be a positive number of seconds, got {o.duration_s:g}")
    if o.iterations is not None and o.iterations < 1:
        raise UserError(f"--iterations must be >= 1, got {o.iterations}")
    if not (o.warmup_ms >= 0 and np.isfinite(o.warmup_ms)):
        raise UserError(f"--warmup must be >= 0 milliseconds, got {o.warmup_ms:g}")
    if o.threads is not None and o.threads < 1:
        raise UserError(f"--threads must be >= 1, got {o.threads}")
    if o.min_iterations < 1:
        raise UserError("min_iterations must be >= 1")
    if o.diffpure and (o.diffpure_width < 1 or o.diffpure_size < 8 or o.diffpure_steps < 1):
        raise UserError("--diffpure-width must be >= 1, --diffpure-size >= 8 and --diffpure-steps >= 1")


# --------------------------------------------------------------------------------------------------- backends
def availability(doc: dict) -> dict[str, tuple[bool, str]]:
    """'backend:device' -> (usable, why) from :func:`ncis_deploy.doctor.report`."""
    out: dict[str, tuple[bool, str]] = {}
    t, o = doc.get("torch", {}), doc.get("onnxruntime", {})
    if not t.get("installed"):
        out["torch:cpu"] = out["torch:cuda"] = (False, f"torch does not import ({t.get('error')})")
    else:
        out["torch:cpu"] = (True, "torch on the CPU")
        out["torch:cuda"] = ((True, "torch on " + ", ".join(t.get("gpus", [])))
                             if t.get("cuda_available") else
                             (False, f"PyTorch {t.get('version')} sees no CUDA GPU"
                                     + ("" if t.get("cuda_build") else " (it is a CPU-only build)")))
    eps = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
    for dev, ep in eps.items():
        key = f"onnxruntime:{dev}"
        if not o.get("installed"):
            out[key] = (False, f"onnxruntime does not import ({o.get('error')})")
        elif ep not in o.get("available_providers", []):
            dists = ", ".join(o.get("distributions", {})) or "onnxruntime"
            hint = "; install onnxruntime-gpu in its place: pip uninstall onnxruntime && pip install " \
                   "'ncis-deploy[gpu]'" if dev != "cpu" else ""
            out[key] = (False, f"{ep} is not in this onnxruntime build ({dists}){hint}")
        else:
            p = o.get("providers", {}).get(ep, {"live": False, "detail": "not probed"})
            out[key] = (True, "live session") if p["live"] else (False, f"{ep} does not open a live session: "
                                                                        f"{p['detail']}")
    trt = doc.get("backends", {}).get("tensorrt", {"usable": False, "reason": "not probed"})
    out["tensorrt:cuda"] = (bool(trt["usable"]), trt["reason"])
    out.update(_precision_availability(doc, out))
    return out


def _precision_availability(doc: dict, out: dict) -> dict[str, tuple[bool, str]]:
    """openvino:cpu and the low-precision labels: bf16 only where the CPU computes it natively (doctor's ISA
    verdict), int8 wherever the runtime runs (whether the source has the int8 artifact is decided per source)."""
    from ncis_deploy.cpu import BF16_FLAGS, native_precisions

    cpu = doc.get("cpu", {})
    native = cpu.get("native_precisions") or native_precisions()
    ov = doc.get("backends", {}).get("openvino", {"usable": False, "reason": "not probed"})
    res = {"openvino:cpu": (bool(ov["usable"]), f"OpenVINO: {ov['reason']}")}
    for (backend, dev), precisions in LOW_PRECISIONS.items():
        base = f"{backend}:{dev}"
        ok, why = res.get(base) or out[base]
        for p in precisions:
            label = f"{base}:{p}"
            if not ok:
                res[label] = (False, why)
            elif p == "bf16" and "bf16" not in native:
                isa = ", ".join(cpu.get("isa") or []) or "none found"
                res[label] = (False, f"this CPU ({cpu.get('model', '?')}) has no native BF16 (neither "
                                     f"{' nor '.join(BF16_FLAGS)} among its ISA flags: {isa}); emulated bf16 would be "
                                     "neither fast nor what the label says")
            elif p == "int8":
                res[label] = (True, f"runs the export's {ONNX_INT8}" + ("" if "int8" in native else
                                                                         " (no VNNI/AMX here: the slow int8 path)"))
            else:
                res[label] = (True, f"{p} is native on this CPU")
    return res


def _default_device(name: str, avail: dict, precision: str = FP32) -> str:
    if name == "tensorrt":
        return "cuda"
    if precision != FP32:  # the first device that runs this precision
        return next((d for d in BACKEND_DEVICES[name] if precision in LOW_PRECISIONS.get((name, d), ())), "cpu")
    return "cuda" if avail.get(f"{name}:cuda", (False,))[0] else "cpu"


def _precisions(name: str, dev: str) -> tuple[str, ...]:
    return (FP32, *LOW_PRECISIONS.get((name, dev), ()))


def usable_summary(avail: dict) -> str:
    names = [b for b in BACKEND_DEVICES if avail[f"{b}:{_default_device(b, avail)}"][0]]
    labels = [k for k, (ok, _) in avail.items() if ok]
    return f"{', '.join(names) or 'none'} (by device: {', '.join(labels) or 'none'})"


def parse_backend(text: str, avail: dict, what: str = "backend") -> BackendSpec:
    """``backend[:device][:precision]``: ``torch``, ``onnxruntime:cuda`` (as before), ``openvino:bf16``,
    ``onnxruntime:cpu:int8``. A second part that is a precision and not a device is the precision."""
    from ncis_deploy.runners import ALIASES

    raw = str(text).strip().lower()
    name, *rest = raw.split(":")
    name = ALIASES.get(name, name)
    if name not in BACKEND_DEVICES:
        raise UserError(f"unknown {what} {text!r}; usable here: {usable_summary(avail)}")
    if len(rest) > 2:
        raise UserError(f"{what} {text!r} has too many parts; write backend[:device][:precision], e.g. "
                        "onnxruntime:cpu:int8")
    dev = prec = ""
    if len(rest) == 2:
        dev, prec = rest
    elif rest:
        one = rest[0]
        is_prec = _precision(one) in PRECISIONS and DEVICE_ALIASES.get(one, one) not in \
            BACKEND_DEVICES[name]
        dev, prec = ("", one) if is_prec else (one, "")
    prec = _precision(prec) if prec else FP32
    if prec not in PRECISIONS:
        raise UserError(f"unknown precision {prec!r} in {what} {text!r}; choose one of {', '.join(PRECISIONS)}")
    dev = DEVICE_ALIASES.get(dev, dev) if dev else _default_device(name, avail, prec)
    if name == "tensorrt" and dev == "tensorrt":
        dev = "cuda"
    if dev not in BACKEND_DEVICES[name]:
        raise UserError(f"unknown device {dev!r} for {name} in {what} {text!r}; {name} runs on "
                        f"{', '.join(BACKEND_DEVICES[name])}")
    if prec not in _precisions(name, dev):
        runs = [f"{b}:{d}:{p}" for (b, d), ps in LOW_PRECISIONS.items() for p in ps if p == prec]
        raise UserError(f"{name}:{dev} runs in {', '.join(_precisions(name, dev))} only, not {prec}; {prec} runs on "
                        f"{', '.join(runs) or 'no backend'}")
    spec = BackendSpec(name, dev, prec)
    ok, why = avail[spec.label]
    if not ok:
        raise UserError(f"{what} {spec.label} is not usable here: {why}; usable here: {usable_summary(avail)}")
    return spec


def default_backends(avail: dict) -> list[BackendSpec]:
    """Every backend (on its default device) at FP32, then every lower precision it runs, where usable here."""
    specs = []
    for b in BACKEND_DEVICES:
        specs.append(BackendSpec(b, _default_device(b, avail)))
        specs += [BackendSpec(b, d, p) for (bb, d), ps in LOW_PRECISIONS.items() if bb == b for p in ps]
    return [s for s in specs if avail[s.label][0]]


def resolve_backends(opts: BenchOptions, avail: dict) -> tuple[list[BackendSpec], BackendSpec | None, bool]:
    """(backends to run, the --vs backend or None, whether the list was defaulted).

    Without --vs a defaulted list that holds onnxruntime:cpu is measured interleaved with it: every ratio is then
    against ORT FP32, measured in the same run. ``--vs none`` measures the backends one after another."""
    no_vs = opts.vs is not None and str(opts.vs).strip().lower() == NO_VS
    vs = parse_backend(opts.vs, avail, "--vs backend") if opts.vs and not no_vs else None
    if opts.backends:
        specs = [parse_backend(b, avail) for b in opts.backends]
        defaulted = False
    else:
        specs = default_backends(avail)
        defaulted = True
        if vs is None and not no_vs and REFERENCE in specs and len(specs) > 1:
            vs = REFERENCE
    uniq: list[BackendSpec] = []
    for s in specs + ([vs] if vs else []):
        if s not in uniq:
            uniq.append(s)
    if vs and len(uniq) < 2:
        raise UserError(f"--vs {vs.label} needs another backend to compare with; add --backend")
    return uniq, vs, defaulted


# ----------------------------------------------------------------------------------------------------- source
@dataclass
class Source:
    description: str
    config: dict
    height: int
    width: int
    fixed_hw: bool
    purifier: object | None  # the torch purifier (CPU), None when it cannot be rebuilt
    torch_reason: str = ""
    export_dir: Path | None = None
    exported_now: bool = False
    weights_sha256: str | None = None
    onnx_path: Path | None = None
    engine_path: Path | None = None
    engine_reason: str = ""
    artifacts: dict = field(default_factory=dict)
    preset: str | None = None
    plugin: str = ""  # the export's GS runs as a TensorRT plugin node (onnxruntime cannot run it)
    plugin_libraries: tuple[str, ...] = ()
    export: Export | None = None  # the opened export directory, when the source is one


def load_export(d: Path, opts: BenchOptions) -> Source:
    """Open and check an export directory; any problem is a one-line UserError naming the fix."""
    from ncis_deploy.exporters.onnx import weights_sha256
    from ncis_deploy.model.purifier import DEFAULT_PRESET, load_purifier

    ex = open_export(d)
    onnx_path = ex.path(ONNX)
    config, shape, options = ex.config, ex.input_shape, ex.options
    fixed = all(isinstance(v, int) for v in shape[2:])
    if fixed:
        h, w = int(shape[2]), int(shape[3])
        for name, want, have in (("--height", opts.height, h), ("--width", opts.width, w)):
            if want is not None and want != have:
                raise UserError(f"export {d} is fixed at {h}x{w}, so {name} {want} cannot run on it; re-export with "
                                f"--dynamic-hw (any size) or at that size, or drop {name}")
    else:
        h = opts.height or int(options.get("height", DEFAULT_HW))
        w = opts.width or int(options.get("width", DEFAULT_HW))
    src = Source(description=f"export {d}", config=config, height=h, width=w, fixed_hw=fixed, purifier=None,
                 export_dir=d, export=ex, weights_sha256=ex.manifest["purifier"].get("weights_sha256"),
                 onnx_path=onnx_path)
    src.artifacts["onnxruntime"] = {"file": str(onnx_path), "sha256": ex.artifacts[ONNX]["sha256"]}
    if ex.plugin is not None:
        src.plugin = str(ex.plugin.get("op_type", "plugin"))
        lib = (ex.plugin.get("library") or {}).get("path")
        src.plugin_libraries = (str(lib),) if lib else ()
    if ex.has(ENGINE):
        src.engine_path = d / ENGINE
    else:
        why = ex.manifest.get("tensorrt", {}).get("reason", "")
        src.engine_reason = f"export {d} has no TensorRT engine" + (f" ({why})" if why else "") + \
            f"; build one with: ncis-deploy export --tensorrt --out {d}"
    # torch: rebuild the purifier the export came from and check it is the same one (config and weights hash)
    origin = ex.manifest["purifier"].get("source", DEFAULT_PRESET)
    try:
        p = load_purifier(origin if not str(origin).startswith("{") else config, weights=options.get("weights"))
        if p.config != config or weights_sha256(p) != src.weights_sha256:
            raise UserError(f"its source {origin!r} now holds a different purifier than the one exported")
        src.purifier = p
    except UserError as e:
        src.torch_reason = f"cannot rebuild the exported purifier in PyTorch: {e}"
    if src.purifier is not None:
        src.artifacts["torch"] = {"file": str(origin), "sha256": src.weights_sha256}
    return src


def preset_source(opts: BenchOptions) -> Source:
    from ncis_deploy.exporters.onnx import weights_sha256
    from ncis_deploy.model.purifier import PRESETS, load_purifier

    if opts.preset not in PRESETS:
        raise UserError(f"unknown preset {opts.preset!r}; choose one of: {', '.join(PRESETS)}")
    p = load_purifier(opts.preset)
    h, w = opts.height or DEFAULT_HW, opts.width or DEFAULT_HW
    src = Source(description=f"preset {opts.preset}", config=p.config, height=h, width=w, fixed_hw=True, purifier=p,
                 weights_sha256=weights_sha256(p), preset=opts.preset)
    src.artifacts["torch"] = {"file": f"preset {opts.preset}", "sha256": src.weights_sha256}
    return src


def _preset_onnx(src: Source, tmp: Path) -> Path:
    if src.onnx_path is None:
        import onnx

        import ncis_deploy
        from ncis_deploy.exporters.onnx import build_onnx

        path = tmp / ONNX
        onnx.save(build_onnx(src.purifier, src.height, src.width, version=ncis_deploy.__version__), str(path))
        src.onnx_path = path
        src.artifacts["onnxruntime"] = {"file": f"built from preset {src.preset} at {src.height}x{src.width}",
                                        "sha256": sha256_file(path)}
    return src.onnx_path


def _preset_engine(src: Source, tmp: Path, batches, say) -> Path:  # needs TensorRT and a GPU (tensorrt-marked tests)
    if src.engine_path is None:
        from ncis_deploy.exporters.tensorrt import DEFAULT_TIMING_CACHE, EngineSpec, build_engine

        onnx_path = _preset_onnx(src, tmp)
        shape = lambda b: (b, 3, src.height, src.width)  # noqa: E731
        spec = EngineSpec(min_shape=shape(min(batches)), opt_shape=shape(max(batches)), max_shape=shape(max(batches)),
                          timing_cache=DEFAULT_TIMING_CACHE.expanduser())
        say(f"building a TensorRT engine for preset {src.preset} (batch {min(batches)}..{max(batches)})")
        build_engine(onnx_path, tmp / ENGINE, spec, log=None)
        src.engine_path = tmp / ENGINE
        src.artifacts["tensorrt"] = {"file": "built from the preset ONNX", "sha256": sha256_file(src.engine_path)}
    return src.engine_path


def _int8_onnx(spec: BackendSpec, src: Source, say) -> Path:
    """The export's quantized ONNX (explicit Q/DQ): a preset has none, bench does not quantize on the fly (the
    calibration and the quantized graph's checks are the exporter's). Says so when its Q/DQ placement is not the one
    ``spec``'s runtime runs fastest."""
    from ncis_deploy.exporters.quantize import FASTEST_FORM

    if src.export is None:
        raise UserError(f"{src.description} has no int8 artifact: {spec.label} runs the Q/DQ {ONNX_INT8} that "
                        f"`ncis-deploy export --int8` writes; bench such an export instead: ncis-deploy export "
                        f"--preset {src.preset} --int8 --height {src.height} --width {src.width} --out DIR, then "
                        "ncis-deploy bench DIR")
    path = src.export.path(ONNX_INT8, f"write one with: ncis-deploy export --int8 --out {src.export_dir}")
    form, best = src.export.int8_form, FASTEST_FORM.get(spec.backend)
    src.artifacts[spec.label] = {"file": str(path), "sha256": src.export.artifacts[ONNX_INT8]["sha256"],
                                 "int8_form": form, "int8_weight_bits": src.export.int8_weight_bits}
    if best is not None and form != best:
        closer = (" (the closest to FP32, the only one within the eval's 99 % agreement guard)"
                  if form == "accurate" else "")
        say(f"note: {spec.label} runs this export's int8 form '{form}'{closer}; {spec.backend} runs --int8-form "
            f"{best} fastest (docs/export.md): ncis-deploy export --int8 --int8-form {best}")
    return path


def artifact_for(spec: BackendSpec, src: Source, tmp: Path, batches, say):
    """What make_runner takes for ``spec``, or raise UserError saying why this source cannot run on it."""
    if spec.backend == "torch":
        if src.purifier is None:
            raise UserError(src.torch_reason)
        return src.purifier if spec.device == "cpu" else copy.deepcopy(src.purifier)
    if spec.backend in ("onnxruntime", "openvino"):
        if src.plugin:
            runtime = "OpenVINO" if spec.backend == "openvino" else "onnxruntime"
            raise UserError(f"export {src.export_dir} runs GS as the TensorRT plugin node {src.plugin}, which "
                            f"{runtime} cannot run; export without --smoothing plugin for {spec.backend}")
        if spec.precision == "int8":
            return _int8_onnx(spec, src, say)
        path = _preset_onnx(src, tmp)
        if spec.backend == "openvino":
            src.artifacts.setdefault("openvino", dict(src.artifacts["onnxruntime"]))
            note = bf16_hint_note(path, spec.label) if spec.precision == "bf16" else None
            if note:
                say(f"note: {note}")
        return path
    if src.preset is not None:
        return _preset_engine(src, tmp, batches, say)
    if src.engine_path is None:
        raise UserError(src.engine_reason)
    src.export.path(ENGINE, f"re-export it with: ncis-deploy export --tensorrt --out {src.export_dir}")
    sha = src.export.artifacts[ENGINE]["sha256"]
    src.artifacts["tensorrt"] = {"file": str(src.engine_path), "sha256": sha}
    return src.engine_path


# ---------------------------------------------------------------------------------------------------- machine
def machine(doc: dict) -> dict:
    import ncis_deploy
    from ncis_deploy.cpu import cpu_isa, cpu_model, native_precisions

    cpu = cpu_model()

    versions = {"ncis_deploy": ncis_deploy.__version__, "numpy": np.__version__}
    for key in ("torch", "onnx", "onnxruntime", "tensorrt", "cuda_python", "openvino"):
        d = doc.get(key, {})
        if d.get("installed"):
            versions[key] = str(d.get("version"))
    if doc.get("torch", {}).get("cuda_build"):
        versions["torch_cuda"] = str(doc["torch"]["cuda_build"])
    isa = cpu_isa()
    return {"cpu": cpu, "isa": isa, "native_precisions": native_precisions(isa), "cores": os.cpu_count(),
            "gpus": list(doc.get("torch", {}).get("gpus", [])), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions, "load_average": {"before": _load()}}


def _load() -> list[float] | None:
    """1-, 5- and 15-minute load averages: how busy the (often shared) machine was around the figures."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- quality guards
class QualityGuards:
    """Every non-FP32 target against ORT FP32 (the same purifier's FP32 ONNX on the CPU) on the bundled
    hold-out photos, centre-cropped to the bench's H×W: max / mean absolute error (through
    :func:`ncis_deploy.runners.compare.compare`) and PSNR. The FP32 outputs are computed once and reused."""

    def __init__(self, src: Source, opts: BenchOptions, tmp: Path):
        self.src, self.opts, self.tmp = src, opts, tmp
        self._cases: list[tuple[str, np.ndarray]] | None = None
        self._reference: list[np.ndarray] | None = None

    def cases(self) -> list[tuple[str, np.ndarray]]:
        if self._cases is None:
            from ncis_deploy.data import ImageSet

            photos = ImageSet.bundled(QUALITY_SPLIT)
            h, w = self.src.height, self.src.width
            self._cases = []
            for name, im in zip(photos.names, photos.images):
                ih, iw = im.shape[:2]
                ch, cw = min(h, ih), min(w, iw)
                y, x = (ih - ch) // 2, (iw - cw) // 2
                crop = im[y:y + ch, x:x + cw]
                if (ch, cw) != (h, w):  # a bench size larger than the photo: tile it up to H×W
                    crop = np.pad(crop, ((0, h - ch), (0, w - cw), (0, 0)), mode="wrap")
                self._cases.append((name, np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)))
        return self._cases

    def measure(self, target) -> tuple[dict | None, str | None]:
        """(the guard record, or None with why not) for ``target``'s active runner."""
        from ncis_deploy.runners import make_runner
        from ncis_deploy.runners.compare import compare

        cases = self.cases()
        why = target.accepts(cases[0][1].shape)
        if why:
            return None, why
        ref = self._reference
        if ref is None:
            ref = make_runner("onnxruntime", _preset_onnx(self.src, self.tmp), providers="cpu",
                              threads=self.opts.threads)
        comp = compare({REFERENCE.label: ref, target.label: target.runner}, cases)
        self._reference = comp.outputs[REFERENCE.label]
        got = comp.outputs[target.label]
        pair = comp.pairs[0]
        rows = [{"photo": name, "max_abs": d.max_abs, "mean_abs": d.mean_abs, "psnr_db": _psnr(a, b)}
                for (name, _), d, a, b in zip(cases, pair.cases, self._reference, got)]
        overall = _psnr(np.concatenate(self._reference), np.concatenate(got))
        return {"label": target.label, "precision": target.spec.precision, "reference": REFERENCE.label,
                "photos": QUALITY_SPLIT, "images": pair.images, "height": self.src.height, "width": self.src.width,
                "max_abs": pair.max_abs, "mean_abs": float(np.mean([d.mean_abs for d in pair.cases])),
                "psnr_db": overall, "per_photo": rows, "guard_psnr_db": PSNR_GUARD_DB,
                "ok": overall is None or overall >= PSNR_GUARD_DB}, None


def _psnr(ref: np.ndarray, got: np.ndarray) -> float | None:
    from ncis_deploy.quality import psnr_or_none

    return psnr_or_none(got, ref)


def _guard(guards: QualityGuards, target, report: dict, say) -> None:
    if target.spec.precision == FP32:
        return
    rec, why = guards.measure(target)
    if rec is None:
        report["warnings"].append(f"{target.label}: no quality guard ({why})")
        return
    report["quality"].append(rec)
    psnr = "identical" if rec["psnr_db"] is None else f"PSNR {rec['psnr_db']:.1f} dB"
    say(f"{target.label} vs {REFERENCE.label} on {rec['images']} hold-out photos: max |Δ| {rec['max_abs']:.2e}, "
        f"mean |Δ| {rec['mean_abs']:.2e}, {psnr}")
    if not rec["ok"]:
        report["warnings"].append(f"{target.label}: {psnr} against {REFERENCE.label} on the hold-out photos, below "
                                  f"the {PSNR_GUARD_DB:g} dB quality guard")


# ---------------------------------------------------------------------------------------------------- measure
def _say_case(say, rec: dict) -> None:
    lat = rec["latency_ms"]
    say(f"{rec['label']} batch {rec['batch']}: {rec['iterations']} iterations, median {lat['median']:.2f} ms, "
        f"{rec['throughput_ips']:.2f} img/s")


def _time_stages(target, src: Source, rec: dict, x: np.ndarray, opts: BenchOptions, duration, tmp: Path,
                 stage_timers: dict, report: dict) -> None:
    from ncis_deploy.bench.stages import StageTimer

    spec = target.spec
    if spec.backend == "tensorrt":
        report["notes"].append("--stages: TensorRT engines are not cut into stages (use trtexec --dumpProfile)")
        return
    if spec.backend == "openvino" or spec.precision != FP32:
        note = f"--stages: {spec.label} is not cut into stages (torch and onnxruntime FP32 only)"
        if note not in report["notes"]:
            report["notes"].append(note)
        return
    if src.purifier is None:
        report["notes"].append(f"--stages on {spec.label}: {src.torch_reason}")
        return
    if not src.config["stages"]:
        return
    st = stage_timers.get(spec.label)
    if st is None:
        if spec.backend == "torch":
            st = StageTimer("torch", spec.device, target.runner.purifier, height=src.height, width=src.width,
                            tmpdir=tmp)
        else:
            st = StageTimer("onnxruntime", spec.device, src.purifier, height=src.height, width=src.width, tmpdir=tmp,
                            providers=spec.device, threads=opts.threads)
        stage_timers[spec.label] = st
    st.prepare(x)
    per_stage = []
    for j in range(len(st.plan)):  # one stage at a time (see ncis_deploy.bench.stages)
        once = lambda j=j: st.run_stage(j)  # noqa: E731
        harness.warm_up(once, once, opts.warmup_ms)
        per_stage.append(harness.run_timed(once, None if duration is None else duration / len(st.plan),
                                           opts.iterations, opts.min_iterations))
    rec["stages"] = harness.stage_record(st.plan, per_stage, rec["latency_ms"]["median"], st.how)


def run_bench(opts: BenchOptions, progress: Callable[[str], None] | None = None, command: str | None = None) -> dict:
    """Measure every requested backend × batch (and the stand-in context); return the report."""
    say = progress or (lambda msg: None)
    check_options(opts)
    from ncis_deploy.doctor import report as doctor_report

    doc = doctor_report()
    avail = availability(doc)
    specs, vs, defaulted = resolve_backends(opts, avail)
    any_gpu = any(s.on_gpu for s in specs)
    if opts.cuda_graph and not any_gpu:
        raise UserError("--cuda-graph applies to GPU backends, and none of the selected backends runs on a GPU here "
                        f"(usable: {usable_summary(avail)})")
    if not opts.data_transfers and not any_gpu:
        raise UserError("--no-data-transfers applies to GPU backends, and none of the selected backends runs on a "
                        f"GPU here (usable: {usable_summary(avail)})")
    duration = None if opts.iterations is not None else (opts.duration_s or DEFAULT_DURATION_S)

    import torch

    threads_before = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    report: dict = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "machine": machine(doc), "settings": {}, "purifier": {}, "results": [],
        "comparisons": [], "quality": [], "context": [], "skipped": [], "warnings": [], "notes": list(opts.notes),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="ncis-bench-") as tmpname:
            tmp = Path(tmpname)
            src = _open_source(opts, say)
            report["purifier"] = {"source": src.description, "export_dir": str(src.export_dir) if src.export_dir
                                  else None, "exported_now": src.exported_now, "config": src.config,
                                  "weights_sha256": src.weights_sha256, "fixed_hw": src.fixed_hw, "artifacts": {}}
            report["settings"] = {
                "warmup_ms": float(opts.warmup_ms), "duration_s": duration, "iterations": opts.iterations,
                "min_iterations": opts.min_iterations, "threads": opts.threads,
                "torch_threads": torch.get_num_threads(),
                "cuda_graph": opts.cuda_graph, "data_transfers": opts.data_transfers, "stages": opts.stages,
                "vs": vs.label if vs else None, "vs_default": vs is not None and opts.vs is None,
                "batches": list(opts.batches), "height": src.height,
                "width": src.width, "seed": opts.seed, "statistics": CONVENTIONS,
            }
            targets = []
            for spec in specs:
                try:
                    artifact = artifact_for(spec, src, tmp, opts.batches, say)
                except UserError as e:
                    if not defaulted or spec == vs:
                        raise UserError(f"backend {spec.label} cannot run {src.description}: {e}") from None
                    report["skipped"].append({"backend": spec.label, "batch": None, "reason": str(e)})
                    say(f"skipping {spec.label}: {e}")
                    continue
                targets.append(make_target(spec, artifact, threads=opts.threads, cuda_graph=opts.cuda_graph,
                                           data_transfers=opts.data_transfers, batches=tuple(opts.batches),
                                           hw=(src.height, src.width), cache_dir=tmp,
                                           trt_plugins=src.plugin_libraries))
            guards = QualityGuards(src, opts, tmp)
            if vs is not None and vs not in [t.spec for t in targets]:  # the default --vs was skipped
                vs = report["settings"]["vs"] = None
                report["settings"]["vs_default"] = False
            if vs is not None:
                _measure_interleaved(targets, vs, src, opts, duration, tmp, report, say, guards, defaulted)
            else:
                _measure_sequential(targets, src, opts, duration, tmp, report, say, guards, defaulted)
            report["purifier"]["artifacts"] = src.artifacts
            if opts.diffpure:
                report["context"].append(diffpure_context(opts, duration, report["results"], any_gpu and
                                                          avail["torch:cuda"][0], say))
    finally:
        torch.set_num_threads(threads_before)
    if not any(r["device"] != "cpu" for r in report["results"]):
        report["notes"].append("CPU only: latency is the host time of a synchronous query; the trtexec H2D / compute "
                               "/ D2H split applies to GPU backends")
    report["notes"].append("peak RSS is the whole process (Python, torch, onnxruntime and every loaded model)")
    if report["settings"].get("vs_default"):
        report["notes"].append(f"every backend was measured interleaved with {REFERENCE.label} (ORT FP32), the "
                               "reference of the ratios and quality guards; --vs none measures them one after "
                               "another")
    report["machine"]["load_average"]["after"] = _load()
    for r in report["results"]:
        report["warnings"] += [f"{r['label']} batch {r['batch']}: {w}" for w in r["warnings"]]
    validate(report)  # a mismatch is a bug in this module, not a user error
    return report


def _open_source(opts: BenchOptions, say) -> Source:
    if opts.preset is not None:
        return preset_source(opts)
    d = Path(opts.export_dir or DEFAULT_EXPORT)
    exported_now = False
    if opts.export_dir is None and not d.exists():
        from ncis_deploy.exporters.pipeline import ExportOptions, export

        say(f"no export in ./{DEFAULT_EXPORT}: exporting the default purifier first (as `ncis-deploy export`)")
        export(ExportOptions(out=str(d), height=opts.height or DEFAULT_HW, width=opts.width or DEFAULT_HW),
               progress=lambda m: say(f"  export: {m}"))
        exported_now = True
    src = load_export(d, opts)
    src.exported_now = exported_now
    return src


def _input(opts: BenchOptions, batch: int, src: Source) -> np.ndarray:
    # random values in [0, 1), never zeros: a constant input can run faster than real data
    return np.random.default_rng(opts.seed + batch).random((batch, 3, src.height, src.width), dtype=np.float32)


def _refused(target, x: np.ndarray, batch: int, report: dict, say) -> bool:
    """True (and the skip recorded and said) when the target's artifact does not accept this input shape."""
    why = target.accepts(x.shape)
    if why:
        report["skipped"].append({"backend": target.label, "batch": batch, "reason": why})
        say(f"skipping {target.label} batch {batch}: {why}")
    return bool(why)


def _activate(target, report: dict, say, optional: bool) -> bool:
    """Activate ``target``; a defaulted backend that its runtime refuses here is skipped (and said), not fatal."""
    try:
        target.activate()
        return True
    except UserError as e:
        if not optional:
            raise
        target.close()
        report["skipped"].append({"backend": target.label, "batch": None, "reason": str(e)})
        say(f"skipping {target.label}: {e}")
        return False


def _measure_sequential(targets, src, opts, duration, tmp, report, say, guards: QualityGuards,
                        defaulted: bool = False) -> None:
    stage_timers: dict = {}
    for target in targets:
        if not _activate(target, report, say, defaulted):
            continue
        try:
            _guard(guards, target, report, say)
            for b in opts.batches:
                x = _input(opts, b, src)
                if _refused(target, x, b, report, say):
                    continue
                probe = target.memory_probe("case").start()
                warm = harness.warm_up(lambda: target.prepare(x), target.run_once, opts.warmup_ms)
                samples = harness.run_timed(target.run_once, duration, opts.iterations, opts.min_iterations)
                memory = probe.stop()
                rec = harness.result_record(target, b, (src.height, src.width), samples, warm, memory, False)
                target.release()
                if opts.stages:
                    _time_stages(target, src, rec, x, opts, duration, tmp, stage_timers, report)
                report["results"].append(rec)
                _say_case(say, rec)
        finally:
            st = stage_timers.pop(target.label, None)
            if st is not None:
                st.close()
            target.close()
            gc.collect()


def _measure_interleaved(targets, vs: BackendSpec, src, opts, duration, tmp, report, say,
                         guards: QualityGuards, defaulted: bool = False) -> None:
    stage_timers: dict = {}
    try:
        targets = [t for t in list(targets) if _activate(t, report, say, defaulted and t.spec != vs)]
        if len(targets) < 2:  # every other defaulted backend was refused: nothing to interleave with
            _measure_sequential(targets, src, opts, duration, tmp, report, say, guards, defaulted)
            return
        for t in targets:
            _guard(guards, t, report, say)
        for b in opts.batches:
            x = _input(opts, b, src)
            live = [t for t in targets if not _refused(t, x, b, report, say)]
            if len(live) < 2 or all(t.spec != vs for t in live):
                report["skipped"].append({"backend": ", ".join(t.label for t in targets), "batch": b,
                                          "reason": "fewer than two backends can run this batch: nothing to compare"})
                continue
            torch_cuda = any(t.spec.backend == "torch" and t.spec.on_gpu for t in live)
            probe = MemoryProbe("group", torch_cuda=torch_cuda).start()
            warms = [harness.warm_up(lambda t=t: t.prepare(x), t.run_once, opts.warmup_ms) for t in live]
            samples = harness.run_interleaved([t.run_once for t in live], duration, opts.iterations,
                                              opts.min_iterations)
            memory = probe.stop()
            recs = {}
            for t, warm, s in zip(live, warms, samples):
                recs[t.label] = harness.result_record(t, b, (src.height, src.width), s, warm, dict(memory), True)
                t.release()
            base = samples[[t.spec for t in live].index(vs)]
            for t, s in zip(live, samples):
                if t.spec != vs:
                    report["comparisons"].append({"backend": t.label, "vs": vs.label, "batch": b,
                                                  **harness.paired_ratio(s, base)})
            for t in live:
                if opts.stages:
                    _time_stages(t, src, recs[t.label], x, opts, duration, tmp, stage_timers, report)
                report["results"].append(recs[t.label])
                _say_case(say, recs[t.label])
            for c in report["comparisons"]:
                if c["batch"] == b:
                    say(f"{c['backend']} vs {c['vs']} batch {b}: {c['ratio']:.2f}x throughput "
                        f"(paired {c['paired']['min']:.2f}..{c['paired']['max']:.2f}, {c['rounds']} rounds)")
    finally:
        for st in stage_timers.values():
            st.close()
        for t in targets:
            t.close()
        gc.collect()


# -------------------------------------------------------------------------------------------------- context
def diffpure_context(opts: BenchOptions, duration: float | None, results: list[dict], cuda: bool, say) -> dict:
    """Time one evaluation of the DiffPure-class UNet stand-in at batch 1 and extrapolate × steps."""
    import time

    import torch

    from ncis_deploy.bench.diffpure import build_unet, parameter_count

    device = "cuda" if cuda else "cpu"
    precision = "float16" if cuda else "float32"  # DiffPure's guided-diffusion ImageNet model runs with use_fp16
    t0 = time.perf_counter()
    say(f"stand-in: building a DiffPure-class UNet (width {opts.diffpure_width}, {opts.diffpure_size}², "
        "random weights)")
    model = build_unet(opts.diffpure_width, opts.diffpure_size, seed=opts.seed)
    params = parameter_count(model)
    model = model.to(device, torch.float16 if cuda else torch.float32)
    gen = torch.Generator().manual_seed(opts.seed)
    x = torch.rand(1, 3, opts.diffpure_size, opts.diffpure_size, generator=gen) * 2 - 1  # DiffPure's [-1, 1] range
    x = x.to(device, model.out[2].weight.dtype)
    t = torch.tensor([opts.diffpure_steps], device=device)
    build_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def once() -> float:
        s = time.perf_counter()
        with torch.inference_mode():
            model(x, t)
        sync()
        return time.perf_counter() - s

    probe = MemoryProbe("case", torch_cuda=cuda).start()
    warm = harness.warm_up(once, once, opts.warmup_ms)
    # time-based like the rest, but at least ONE step: a full-size step takes seconds on a CPU
    samples = harness.run_timed(once, duration if duration is not None else DEFAULT_DURATION_S, None, 1)
    memory = probe.stop()
    del model
    gc.collect()
    step = summarize([s * 1e3 for s in samples])
    per_image = scale(step, opts.diffpure_steps)
    n = len(samples)
    label = (f"stand-in, not DiffPure: DiffPure-class UNet ({params / 1e6:.0f}M params, random weights, "
             f"{opts.diffpure_size}², {precision}), {n} step{'s' if n > 1 else ''} timed × "
             f"{opts.diffpure_steps} steps")
    say(f"stand-in: {n} step(s) timed, median {step['median'] / 1e3:.2f} s per step (built in {build_s:.1f} s)")
    rel = []
    best: dict[str, dict] = {}  # per backend on the stand-in's kind of device: its smallest batch
    for r in results:
        if (r["device"] != "cpu") == cuda and (r["label"] not in best or r["batch"] < best[r["label"]]["batch"]):
            best[r["label"]] = r
    for lbl, r in best.items():
        ncis = r["latency_ms"]["median"] / r["batch"]
        rel.append({"label": lbl, "batch": r["batch"], "ncis_per_image_ms": ncis,
                    "ratio": per_image["median"] / ncis if ncis > 0 else 0.0})
    from ncis_deploy.bench.diffpure import UNetConfig

    return {"kind": "diffpure-stand-in", "stand_in": True, "label": label,
            "architecture": UNetConfig(image_size=opts.diffpure_size, width=opts.diffpure_width).as_dict(),
            "parameters": params, "image_size": opts.diffpure_size, "batch": 1, "steps": opts.diffpure_steps,
            "timed_steps": n, "warmup_steps": warm[0], "backend": "torch", "device": device, "precision": precision,
            "step_ms": step, "per_image_ms": per_image,
            "throughput_ips": 1e3 / per_image["median"] if per_image["median"] > 0 else 0.0,
            "memory": memory, "relative_to_ncis": rel}
