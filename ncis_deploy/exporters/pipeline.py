"""``ncis-deploy export``: purifier → ONNX (+ FP16 ONNX, + INT8 ONNX, + purifier+classifier ONNX, + TensorRT engine)
+ manifest.

Everything is written through :func:`.manifest.staged_export` (a temporary sibling moved into place only when every
artifact is written and every check passed), so a failed or interrupted export leaves nothing half written and an
existing export is only ever replaced by a complete one.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import onnx
import torch

from ncis_deploy.errors import UserError
from ncis_deploy.exporters import onnx as onnx_export
from ncis_deploy.exporters import plugin_ref
from ncis_deploy.exporters.manifest import (DEFAULT_DIR, ENGINE, ONNX, ONNX_CLASSIFIER, ONNX_FP16, ONNX_INT8,
                                            ExportWriter, check_out, new_manifest, sha256_file, staged_export)
from ncis_deploy.exporters.classifier import load_classifier, merge_classifier
from ncis_deploy.exporters.quantize import DEFAULT_INT8_FORM, DEFAULT_WEIGHT_BITS, INT8_FORMS, weight_max
from ncis_deploy.exporters.parity import (FP32_TOLERANCE, bsn_tap_report, check_parity, classifier_agreement,
                                          parity_inputs, reference_parity)
from ncis_deploy.model.purifier import DEFAULT_PRESET, load_purifier

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ExportOptions:
    source: object = None  # preset name, purifier directory, config file or dict; None = "ncis"
    weights: str | None = None
    out: str = DEFAULT_DIR
    height: int = 224
    width: int = 224
    dynamic_hw: bool = False
    batch: tuple[int, int, int] = (1, 8, 32)  # TensorRT optimization profile MIN:OPT:MAX (the ONNX batch is dynamic)
    opset: int = 18
    fp16: bool = False
    int8: bool = False  # also write an INT8 ONNX with explicit Q/DQ (exporters/quantize.py)
    calibration: str | None = None  # --int8 calibration image folder; None: the bundled training photos
    int8_form: str = DEFAULT_INT8_FORM  # where --int8 puts Q/DQ: quantize.INT8_FORMS
    int8_weight_bits: int = DEFAULT_WEIGHT_BITS  # --int8 weight width: quantize.WEIGHT_BITS
    tensorrt: bool | None = None  # None: build an engine when TensorRT and a GPU are usable
    version_compatible: bool = False
    workspace_gib: float = 4.0
    timing_cache: str | None = None  # None: exporters.tensorrt.DEFAULT_TIMING_CACHE
    classifier: str | None = None
    classifier_mean: tuple[float, ...] = IMAGENET_MEAN
    classifier_std: tuple[float, ...] = IMAGENET_STD
    large_batch: int = 4
    smoothing: str = "matmul"  # "plugin": one NcisGaussianSmooth TensorRT plugin node per GS stage
    plugin_lib: str | None = None  # the plugin's shared library, for the engine build (and recorded)
    triton: bool = False  # also write a Triton model repository (triton/)
    triton_instances: int = 1  # instance_group count per model
    triton_queue_delay_us: int = 100  # dynamic batching: max_queue_delay_microseconds
    extra: dict = field(default_factory=dict)


def parse_batch(text: str) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' (or one number for all three) → ints with 1 <= MIN <= OPT <= MAX."""
    parts = str(text).split(":")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--batch must be MIN:OPT:MAX integers like 1:8:32, got {text!r}") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise UserError(f"--batch must be MIN:OPT:MAX (three numbers), got {text!r}")
    lo, opt, hi = vals
    if lo < 1:
        raise UserError(f"--batch MIN must be >= 1, got {lo}")
    if not lo <= opt <= hi:
        raise UserError(f"--batch needs MIN <= OPT <= MAX, got {lo}:{opt}:{hi}")
    return lo, opt, hi


def _io(model: onnx.ModelProto) -> dict:
    def one(vi):
        dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        return {"name": vi.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name}
    return {"inputs": [one(v) for v in model.graph.input], "outputs": [one(v) for v in model.graph.output]}


def versions() -> dict:
    import onnxruntime

    import ncis_deploy

    v = {"ncis_deploy": ncis_deploy.__version__, "python": platform.python_version(), "torch": torch.__version__,
         "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    with contextlib.suppress(Exception):
        import tensorrt  # noqa: F401  (only recorded when it really imports)

        v["tensorrt"] = tensorrt.__version__
    return v


def export(opts: ExportOptions, progress=None) -> dict:
    """Run the whole export; returns the manifest (also written into ``opts.out``, see :mod:`.manifest`)."""
    job = _prepare(opts, progress or (lambda msg: None))  # every user error is raised here, before any work
    t0 = time.perf_counter()
    job.model = job.build_onnx(fp16=False)
    with staged_export(Path(opts.out), _new_manifest(job)) as writer:
        manifest = writer.manifest
        _write_fp32(job, writer)
        if opts.fp16:
            _write_fp16(job, writer)
        if opts.int8:
            _write_int8(job, writer)
        if opts.classifier:
            _write_classifier(job, writer)
        manifest["tensorrt"] = _build_engine(job, writer)
        if opts.triton:
            manifest["triton"] = _write_triton(job, writer)
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
    return manifest


@dataclass
class _Job:
    """What the export steps share: the checked options, what they load, and the FP32 graph once built."""

    opts: ExportOptions
    say: Callable[[str], None]
    plugin: bool
    trt_ok: bool
    trt_reason: str
    purifier: object
    classifier: onnx.ModelProto | None
    model: onnx.ModelProto | None = None
    cases: list = field(default_factory=list)
    calibration: object = None  # quantize.Calibration, loaded (and checked) before any work when --int8

    def build_onnx(self, fp16: bool) -> onnx.ModelProto:
        """The purifier graph, checked by onnx.checker and by the TensorRT op gate."""
        import ncis_deploy
        from ncis_deploy.exporters.gate import check_tensorrt_compatible

        o = self.opts
        m = onnx_export.build_onnx(self.purifier, o.height, o.width, dynamic_hw=o.dynamic_hw, opset=o.opset, fp16=fp16,
                                   version=ncis_deploy.__version__, smoothing=o.smoothing)
        onnx.checker.check_model(m, full_check=True)
        check_tensorrt_compatible(m, plugin_ref.PLUGINS if self.plugin else frozenset())
        return m


def _prepare(opts: ExportOptions, say) -> _Job:
    """Validate every option and load the purifier and classifier; nothing is written yet."""
    from ncis_deploy.exporters.tensorrt import tensorrt_status

    trt_ok, trt_reason = tensorrt_status()
    if opts.tensorrt and not trt_ok:  # asked for explicitly: fail before doing any work
        raise UserError(f"--tensorrt was asked for but {trt_reason}")
    if opts.large_batch < 2:
        raise UserError("the parity batch must be >= 2")
    if opts.classifier and (len(opts.classifier_mean) != 3 or len(opts.classifier_std) != 3
                            or min(opts.classifier_std) <= 0):
        raise UserError("--classifier-mean and --classifier-std need 3 values each, every std > 0")
    plugin = _check_plugin_options(opts, trt_ok)
    if opts.triton:
        from ncis_deploy.exporters.triton import model_config_pb2

        if plugin:
            raise UserError("--triton serves the standard export: drop --smoothing plugin (Triton's ONNX Runtime "
                            "backend cannot run the plugin node)")
        model_config_pb2()
    check_out(Path(opts.out))
    purifier = load_purifier(opts.source, weights=opts.weights)
    classifier = load_classifier(opts.classifier, opts.opset) if opts.classifier else None
    job = _Job(opts, say, plugin, trt_ok, trt_reason, purifier, classifier)
    job.calibration = _check_int8_options(opts, plugin, purifier)
    return job


def _new_manifest(job: _Job) -> dict:
    o, h, w = job.opts, job.opts.height, job.opts.width
    manifest = new_manifest(
        purifier={"config": job.purifier.config, "weights_sha256": onnx_export.weights_sha256(job.purifier),
                  "source": str(o.source if o.source is not None else DEFAULT_PRESET)},
        input={"name": onnx_export.INPUT, "dtype": "float32", "layout": "NCHW", "range": [0.0, 1.0],
               "shape": ["batch", 3, "height" if o.dynamic_hw else h, "width" if o.dynamic_hw else w]},
        output={"name": onnx_export.OUTPUT, "dtype": "float32", "range": [0.0, 1.0]},
        options=_jsonable({k: v for k, v in asdict(o).items() if k != "extra"} | {"batch": list(o.batch)}),
        versions=versions())
    if job.plugin:
        manifest["plugin"] = {"op_type": plugin_ref.PLUGIN_NAME, "domain": onnx_export.PLUGIN_DOMAIN,
                              "plugin_version": plugin_ref.PLUGIN_VERSION,
                              "plugin_namespace": plugin_ref.PLUGIN_NAMESPACE,
                              "library": ({"path": str(Path(o.plugin_lib).resolve()),
                                           "sha256": sha256_file(Path(o.plugin_lib))} if o.plugin_lib else None)}
    return manifest


def _save(writer: ExportWriter, name: str, model: onnx.ModelProto) -> bytes:
    data = model.SerializeToString()
    writer.path(name).write_bytes(data)
    return data


def _write_fp32(job: _Job, writer: ExportWriter) -> None:
    """The FP32 ONNX, its parity against PyTorch (or the reference evaluator), and the live-tap MAC report."""
    o, h, w, manifest = job.opts, job.opts.height, job.opts.width, writer.manifest
    job.say("ONNX: written, checked (onnx.checker full_check) and TensorRT-gated")
    data = _save(writer, ONNX, job.model)
    writer.record(ONNX, "onnx", **_io(job.model), precision="fp32", opset=o.opset, nodes=len(job.model.graph.node))
    job.cases = parity_inputs(h, w, o.dynamic_hw, o.large_batch)
    if job.plugin:  # ONNX Runtime cannot run the plugin node: the reference evaluator runs the graph instead
        job.say("parity: plugin ONNX on the ONNX reference evaluator vs the standard export on ONNX Runtime CPU")
        manifest["parity"] = {"fp32": reference_parity(
            job.purifier, job.model, h, w, dynamic_hw=o.dynamic_hw, large_batch=min(o.large_batch, 2),
            tolerance=PLUGIN_TOLERANCE)}
    else:
        job.say("parity: ONNX Runtime CPU vs PyTorch")
        manifest["parity"] = {"fp32": check_parity(job.purifier, data, job.cases, FP32_TOLERANCE)}
    macs = manifest["bsn_macs"] = bsn_tap_report(job.purifier, h, w)
    if macs.get("applicable") and not macs["max_abs_diff_live_vs_dense"] <= 1e-5:
        raise UserError(f"live-tap and dense BSN exports differ by {macs['max_abs_diff_live_vs_dense']:.3g}; "
                        "this is a bug, please report it")


def _write_fp16(job: _Job, writer: ExportWriter) -> None:
    o = job.opts
    job.say("FP16 ONNX: written and measured against the FP32 reference")
    m16 = job.build_onnx(fp16=True)
    data = _save(writer, ONNX_FP16, m16)
    writer.manifest["parity"]["fp16"] = (
        reference_parity(job.purifier, m16, o.height, o.width, dynamic_hw=o.dynamic_hw, large_batch=1,
                         tolerance=None, fp16=True) if job.plugin
        else check_parity(job.purifier, data, job.cases, tolerance=None, label="FP16 ONNX"))
    writer.record(ONNX_FP16, "onnx", **_io(m16), precision="fp16", opset=o.opset, nodes=len(m16.graph.node))


def _check_int8_options(opts: ExportOptions, plugin: bool, purifier):
    """Validate --int8 / --calibration and load the calibration images (a bad folder fails here, before any work)."""
    if opts.calibration is not None and not opts.int8:
        raise UserError("--calibration is only used with --int8")
    if opts.int8_form != DEFAULT_INT8_FORM and not opts.int8:
        raise UserError("--int8-form is only used with --int8")
    if opts.int8_form not in INT8_FORMS:
        raise UserError(f"--int8-form {opts.int8_form!r} is not one of {', '.join(INT8_FORMS)}")
    if opts.int8_weight_bits != DEFAULT_WEIGHT_BITS and not opts.int8:
        raise UserError("--int8-weight-bits is only used with --int8")
    weight_max(opts.int8_weight_bits)
    if not opts.int8:
        return None
    if plugin:
        raise UserError("--int8 is calibrated and checked on ONNX Runtime, which cannot run the plugin node: export "
                        "it with --smoothing matmul")
    if purifier.bsn is None:
        raise UserError("--int8 quantizes the blind-spot network and this purifier has none (it is GS only or the "
                        "identity); export it without --int8")
    if opts.int8_weight_bits > DEFAULT_WEIGHT_BITS:
        from ncis_deploy import cpu

        if "int8" not in cpu.native_precisions():
            raise UserError(f"--int8-weight-bits {opts.int8_weight_bits}: this CPU ({cpu.cpu_model()}) has no "
                            f"{' / '.join(cpu.INT8_FLAGS)}, so ONNX Runtime's int8 kernels saturate such weights "
                            "and the export cannot check the artifact here; export on a CPU with VNNI/AMX, or use 7")
    from ncis_deploy.exporters.quantize import calibration_set

    return calibration_set(opts.calibration, opts.height, opts.width)


def _write_int8(job: _Job, writer: ExportWriter) -> None:
    """The INT8 ONNX (explicit Q/DQ, see exporters/quantize.py) and its guards: masked taps still exactly 0, the
    blind spot of its own BSN, and its error against the FP32 artifact on the hold-out photos."""
    from ncis_deploy.exporters import quantize
    from ncis_deploy.exporters.gate import check_tensorrt_compatible

    o, manifest = job.opts, writer.manifest
    job.say(f"INT8 ONNX: calibrating on {job.calibration.source}, writing explicit Q/DQ (form {o.int8_form}, "
            f"{o.int8_weight_bits}-bit weights), checking it against FP32")
    m8 = quantize.quantize(job.model, job.calibration, form=o.int8_form, weight_bits=o.int8_weight_bits)
    onnx.checker.check_model(m8, full_check=True)
    check_tensorrt_compatible(m8)
    data = _save(writer, ONNX_INT8, m8)
    report = quantize.quality_report(
        writer.path(ONNX).read_bytes(), data, quantize.holdout_cases(o.height, o.width),
        classifier=job.classifier.SerializeToString() if job.classifier is not None else None,
        mean=o.classifier_mean, std=o.classifier_std)
    report["masked_taps"] = quantize.masked_taps_report(job.model, m8)
    report["blind_spot"] = quantize.blind_spot_report(m8, o.height, o.width)
    manifest["parity"]["int8"] = report
    if not report["meets_psnr_target"]:
        job.say(f"warning: INT8 PSNR vs FP32 is {report['psnr_db']} dB, below the {quantize.PSNR_TARGET_DB:g} dB "
                "target (recorded in the manifest)")
    writer.record(ONNX_INT8, "onnx", **_io(m8), precision="int8", opset=o.opset, nodes=len(m8.graph.node),
                  quantization=quantize.structure(m8) | {"calibration": job.calibration.record()})


def _write_classifier(job: _Job, writer: ExportWriter) -> None:
    o = job.opts
    job.say("purifier + classifier: one graph")
    merged = merge_classifier(job.model, job.classifier, o.classifier_mean, o.classifier_std)
    onnx.checker.check_model(merged, full_check=True)
    data = _save(writer, ONNX_CLASSIFIER, merged)
    if job.plugin:  # ONNX Runtime cannot run the merged graph; the purifier part was checked above
        writer.manifest["parity"]["classifier"] = {"skipped": (
            "onnxruntime cannot run the plugin node and the reference evaluator is too slow for a classifier; "
            "the purifier graph is checked above and the merge is the one the standard exports check")}
    else:
        writer.manifest["parity"]["classifier"] = classifier_agreement(
            job.purifier, job.classifier.SerializeToString(), data, job.cases, o.classifier_mean, o.classifier_std)
    writer.record(ONNX_CLASSIFIER, "onnx", **_io(merged), precision="fp32",
                  normalisation={"mean": list(o.classifier_mean), "std": list(o.classifier_std)})


def _build_engine(job: _Job, writer: ExportWriter) -> dict:
    """The manifest's ``tensorrt`` entry: the engine built from the (FP16 or FP32) ONNX, or why there is none."""
    from ncis_deploy.exporters.tensorrt import DEFAULT_TIMING_CACHE, EngineSpec, build_engine

    o, h, w = job.opts, job.opts.height, job.opts.width
    if o.tensorrt is False:
        return {"built": False, "reason": "disabled with --no-tensorrt"}
    if not job.trt_ok:
        return {"built": False, "reason": job.trt_reason}
    if job.plugin and not o.plugin_lib:
        return {"built": False, "reason": "--smoothing plugin needs --plugin-lib PATH (the "
                f"{plugin_ref.PLUGIN_NAME} library built from kernels/) to build an engine"}
    job.say("TensorRT: building the engine")
    lo, opt, hi = o.batch
    lo_hw, hi_hw = ((max(2, h // 2), max(2, w // 2)), (2 * h, 2 * w)) if o.dynamic_hw else ((h, w), (h, w))
    spec = EngineSpec(min_shape=(lo, 3, *lo_hw), opt_shape=(opt, 3, h, w), max_shape=(hi, 3, *hi_hw),
                      workspace_bytes=int(o.workspace_gib * (1 << 30)), fp16_onnx=o.fp16,
                      version_compatible=o.version_compatible,
                      timing_cache=Path(o.timing_cache or DEFAULT_TIMING_CACHE).expanduser(),
                      plugin_libraries=(o.plugin_lib,) if job.plugin else ())
    src = writer.path(ONNX_FP16 if o.fp16 else ONNX)
    info = build_engine(src, writer.path(ENGINE), spec)
    writer.record(ENGINE, "tensorrt-engine", built_from=src.name)
    return {"built": True, **_jsonable(info)}


def _write_triton(job: _Job, writer: ExportWriter) -> dict:
    from ncis_deploy.exporters.triton import write_repository

    o = job.opts
    job.say("Triton model repository: written and validated (ModelConfig + model I/O)")
    built = writer.manifest["tensorrt"]["built"]
    return write_repository(
        writer.stage, purifier_onnx=writer.path(ONNX), engine=writer.path(ENGINE) if built else None,
        engine_onnx=writer.path(ONNX_FP16 if o.fp16 else ONNX), classifier=job.classifier,
        mean=o.classifier_mean, std=o.classifier_std, max_batch_size=o.batch[2],
        preferred_batch=o.batch[1], instances=o.triton_instances,
        queue_delay_us=o.triton_queue_delay_us, opset=o.opset)


PLUGIN_TOLERANCE = 1e-5  # plugin graph (reference evaluator) vs standard graph (ONNX Runtime), float32


def _check_plugin_options(opts: ExportOptions, trt_ok: bool) -> bool:
    """Validate --smoothing / --plugin-lib before any work; True for a plugin export."""
    if opts.smoothing not in onnx_export.SMOOTHING_FORMS:
        raise UserError(f"--smoothing must be one of {', '.join(onnx_export.SMOOTHING_FORMS)}, got {opts.smoothing!r}")
    plugin = opts.smoothing == "plugin"
    if opts.plugin_lib and not plugin:
        raise UserError("--plugin-lib is only used with --smoothing plugin")
    if opts.plugin_lib and not Path(opts.plugin_lib).is_file():
        raise UserError(f"--plugin-lib {opts.plugin_lib} does not exist; build it with `cmake -S kernels -B build/kernels "
                        "&& cmake --build build/kernels` on a machine with TensorRT (kernels/README.md)")
    if plugin and opts.tensorrt and trt_ok and not opts.plugin_lib:
        raise UserError(f"--tensorrt with --smoothing plugin needs --plugin-lib PATH, the {plugin_ref.PLUGIN_NAME} "
                        "plugin library built from kernels/ (kernels/README.md)")
    return plugin


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
