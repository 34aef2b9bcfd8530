"""``ncis-deploy export``: purifier → ONNX (+ FP16 ONNX, + purifier+classifier ONNX, + TensorRT engine) + manifest.

Everything is written into a temporary sibling directory and moved into place only when every artifact is written
and every check passed, so a failed or interrupted export leaves nothing half written and an existing export is
only ever replaced by a complete one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from ncis_deploy.errors import UserError
from ncis_deploy.exporters import onnx as onnx_export
from ncis_deploy.exporters import plugin_ref
from ncis_deploy.exporters.parity import FP32_TOLERANCE, check_parity, classifier_agreement, parity_inputs
from ncis_deploy.fileio import write_json
from ncis_deploy.model.purifier import load_purifier

MANIFEST = "manifest.json"
ONNX_NAME, ONNX_FP16_NAME, ONNX_CLASSIFIER_NAME, ENGINE_NAME = (
    "purifier.onnx", "purifier_fp16.onnx", "purifier_classifier.onnx", "purifier.engine")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ExportOptions:
    source: object = None  # preset name, purifier directory, config file or dict; None = "ncis"
    weights: str | None = None
    out: str = "ncis_export"
    height: int = 224
    width: int = 224
    dynamic_hw: bool = False
    batch: tuple[int, int, int] = (1, 8, 32)  # TensorRT optimization profile MIN:OPT:MAX (the ONNX batch is dynamic)
    opset: int = 18
    fp16: bool = False
    tensorrt: bool | None = None  # None: build an engine when TensorRT and a GPU are usable
    version_compatible: bool = False
    workspace_gib: float = 4.0
    timing_cache: str | None = None  # None: ~/.cache/ncis-deploy/tensorrt-timing.cache
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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).exists())):
        raise UserError(f"--out {out} exists and is not an ncis-deploy export (no {MANIFEST}); "
                        "choose another directory or remove it")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent):
            pass
    except OSError as e:
        raise UserError(f"cannot write next to --out {out}: {e.strerror or e}; choose a writable directory") from None


@contextlib.contextmanager
def staged_directory(out: Path):
    """Yield a temporary sibling of ``out``; on success swap it into place, on any failure remove it."""
    tmp = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.tmp-"))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the export gets the usual permissions
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.old-"))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _save_onnx(model: onnx.ModelProto, path: Path) -> bytes:
    data = model.SerializeToString()
    path.write_bytes(data)
    return data


def load_classifier(path: str, opset: int) -> onnx.ModelProto:
    """The user's classifier ONNX, checked and converted to the export's opset (merging needs one opset)."""
    from onnx import version_converter

    try:
        cls = onnx.load(path)
        onnx.checker.check_model(cls)
    except FileNotFoundError:
        raise UserError(f"--classifier {path} does not exist") from None
    except Exception as e:
        raise UserError(f"--classifier {path} is not a valid ONNX model ({str(e).splitlines()[0]})") from None
    if len(cls.graph.input) != 1:
        raise UserError(f"--classifier {path} must have exactly one input (an NCHW image batch), "
                        f"it has {len(cls.graph.input)}")
    batch_dim = cls.graph.input[0].type.tensor_type.shape.dim[:1]
    if batch_dim and batch_dim[0].HasField("dim_value"):
        raise UserError(f"--classifier {path} has a fixed batch size {batch_dim[0].dim_value}, but the purifier takes "
                        "any batch (dynamic batching needs a dynamic first (batch) dimension): re-export the classifier "
                        "with a symbolic batch axis, e.g. torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}})")
    cls_opset = next((o.version for o in cls.opset_import if o.domain in ("", "ai.onnx")), opset)
    if cls_opset != opset:
        cls = version_converter.convert_version(cls, opset)
    return cls


def merge_classifier(purifier_model: onnx.ModelProto, cls: onnx.ModelProto, mean, std) -> onnx.ModelProto:
    """One graph: purifier → (x - mean) / std → classifier (its names prefixed with ``classifier/``)."""
    from onnx import compose, helper, numpy_helper

    # purifier output → (x - mean) / std → classifier input
    pm = onnx.ModelProto()
    pm.CopyFrom(purifier_model)
    g = pm.graph
    g.initializer.extend([numpy_helper.from_array(np.asarray(mean, np.float32).reshape(1, 3, 1, 1), "norm_mean"),
                          numpy_helper.from_array(np.asarray(std, np.float32).reshape(1, 3, 1, 1), "norm_std")])
    g.node.extend([helper.make_node("Sub", ["output", "norm_mean"], ["norm_centered"], name="norm_sub"),
                   helper.make_node("Div", ["norm_centered", "norm_std"], ["normalized"], name="norm_div")])
    g.output[0].name = "normalized"
    cls = onnx.ModelProto.FromString(cls.SerializeToString())
    cls.ir_version = pm.ir_version
    cls_prefixed = compose.add_prefix(cls, "classifier/")
    merged = compose.merge_models(pm, cls_prefixed, io_map=[("normalized", cls_prefixed.graph.input[0].name)],
                                  outputs=[o.name for o in cls_prefixed.graph.output])
    del merged.metadata_props[:]
    onnx.helper.set_model_props(merged, {p.key: p.value for p in purifier_model.metadata_props} |
                                {onnx_export.META_PREFIX + "classifier_normalisation": json.dumps({"mean": list(mean), "std": list(std)})})
    return merged


def bsn_tap_report(purifier, height: int, width: int) -> dict:
    """MACs of the live-tap BSN export vs a dense export of the same masked convs, and their output difference."""
    if purifier.bsn is None:
        return {"applicable": False}
    from ncis_deploy.exporters.parity import ort_session
    from ncis_deploy.model.purifier import Purifier

    bsn_only = Purifier({"stages": [{"type": "bsn", "iterations": 1}], "bsn": purifier.config["bsn"], "clamp": False})
    bsn_only.bsn.load_state_dict(purifier.bsn.state_dict())
    bsn_only.eval()
    live = onnx_export.build_onnx(bsn_only, height, width)
    dense = onnx_export.build_onnx(bsn_only, height, width, dense_bsn=True)
    shape = (1, 3, height, width)
    m_live, m_dense = onnx_export.count_macs(live, shape)["total"], onnx_export.count_macs(dense, shape)["total"]
    x = np.random.default_rng(1).random((1, 3, min(height, 64), min(width, 64)), dtype=np.float32)
    small_live = ort_session(onnx_export.build_onnx(bsn_only, x.shape[2], x.shape[3]).SerializeToString())
    small_dense = ort_session(onnx_export.build_onnx(bsn_only, x.shape[2], x.shape[3], dense_bsn=True).SerializeToString())
    diff = float(np.abs(small_live.run(None, {"input": x})[0] - small_dense.run(None, {"input": x})[0]).max())
    return {"applicable": True, "input_shape": list(shape), "macs_live_taps": m_live, "macs_dense": m_dense,
            "ratio": m_live / m_dense, "max_abs_diff_live_vs_dense": diff, "diff_checked_at": list(x.shape)}


def export(opts: ExportOptions, progress=None) -> dict:
    """Run the whole export; returns the manifest (also written as ``manifest.json`` in ``opts.out``)."""
    say = progress or (lambda msg: None)
    from ncis_deploy.exporters.gate import check_tensorrt_compatible
    from ncis_deploy.exporters.tensorrt import EngineSpec, build_engine, tensorrt_status

    out = Path(opts.out)
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
    _check_out(out)
    purifier = load_purifier(opts.source, weights=opts.weights)
    classifier = load_classifier(opts.classifier, opts.opset) if opts.classifier else None
    import ncis_deploy

    t0 = time.perf_counter()
    h, w = opts.height, opts.width
    plugins = plugin_ref.PLUGINS if plugin else frozenset()
    model = onnx_export.build_onnx(purifier, h, w, dynamic_hw=opts.dynamic_hw, opset=opts.opset,
                                   version=ncis_deploy.__version__, smoothing=opts.smoothing)
    onnx.checker.check_model(model, full_check=True)
    check_tensorrt_compatible(model, plugins)
    manifest: dict = {"format": "ncis-deploy/export", "format_version": 1,
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "purifier": {"config": purifier.config, "weights_sha256": onnx_export.weights_sha256(purifier),
                                   "source": str(opts.source if opts.source is not None else "ncis")},
                      "input": {"name": onnx_export.INPUT, "dtype": "float32", "layout": "NCHW", "range": [0.0, 1.0],
                                "shape": ["batch", 3, "height" if opts.dynamic_hw else h, "width" if opts.dynamic_hw else w]},
                      "output": {"name": onnx_export.OUTPUT, "dtype": "float32", "range": [0.0, 1.0]},
                      "options": {k: v for k, v in asdict(opts).items() if k != "extra"} | {"batch": list(opts.batch)},
                      "artifacts": [], "versions": versions()}
    if plugin:
        manifest["plugin"] = {"op_type": plugin_ref.PLUGIN_NAME, "domain": onnx_export.PLUGIN_DOMAIN,
                              "plugin_version": plugin_ref.PLUGIN_VERSION,
                              "plugin_namespace": plugin_ref.PLUGIN_NAMESPACE,
                              "library": ({"path": str(Path(opts.plugin_lib).resolve()),
                                           "sha256": sha256_file(Path(opts.plugin_lib))} if opts.plugin_lib else None)}

    with staged_directory(out) as stage:
        def record(name: str, kind: str, m: onnx.ModelProto | None = None, **extra) -> None:
            entry = {"file": name, "kind": kind, "sha256": sha256_file(stage / name), "bytes": (stage / name).stat().st_size}
            if m is not None:
                entry |= _io(m)
            manifest["artifacts"].append(entry | extra)

        say("ONNX: written, checked (onnx.checker full_check) and TensorRT-gated")
        data = _save_onnx(model, stage / ONNX_NAME)
        record(ONNX_NAME, "onnx", model, precision="fp32", opset=opts.opset, nodes=len(model.graph.node))

        cases = parity_inputs(h, w, opts.dynamic_hw, opts.large_batch)
        if plugin:  # ONNX Runtime cannot run the plugin node: the reference evaluator runs the graph instead
            say("parity: plugin ONNX on the ONNX reference evaluator vs the standard export on ONNX Runtime CPU")
            manifest["parity"] = {"fp32": plugin_ref.reference_parity(
                purifier, model, h, w, dynamic_hw=opts.dynamic_hw, large_batch=min(opts.large_batch, 2),
                tolerance=PLUGIN_TOLERANCE)}
        else:
            say("parity: ONNX Runtime CPU vs PyTorch")
            manifest["parity"] = {"fp32": check_parity(purifier, data, cases, FP32_TOLERANCE)}
        manifest["bsn_macs"] = bsn_tap_report(purifier, h, w)
        if manifest["bsn_macs"].get("applicable") and not manifest["bsn_macs"]["max_abs_diff_live_vs_dense"] <= 1e-5:
            raise UserError(f"live-tap and dense BSN exports differ by {manifest['bsn_macs']['max_abs_diff_live_vs_dense']:.3g}; "
                            "this is a bug, please report it")

        if opts.fp16:
            say("FP16 ONNX: written and measured against the FP32 reference")
            m16 = onnx_export.build_onnx(purifier, h, w, dynamic_hw=opts.dynamic_hw, opset=opts.opset, fp16=True,
                                         version=ncis_deploy.__version__, smoothing=opts.smoothing)
            onnx.checker.check_model(m16, full_check=True)
            check_tensorrt_compatible(m16, plugins)
            d16 = _save_onnx(m16, stage / ONNX_FP16_NAME)
            manifest["parity"]["fp16"] = (
                plugin_ref.reference_parity(purifier, m16, h, w, dynamic_hw=opts.dynamic_hw, large_batch=1,
                                            tolerance=None, fp16=True) if plugin
                else check_parity(purifier, d16, cases, tolerance=None, label="FP16 ONNX"))
            record(ONNX_FP16_NAME, "onnx", m16, precision="fp16", opset=opts.opset, nodes=len(m16.graph.node))

        if opts.classifier:
            say("purifier + classifier: one graph")
            merged = merge_classifier(model, classifier, opts.classifier_mean, opts.classifier_std)
            onnx.checker.check_model(merged, full_check=True)
            dm = _save_onnx(merged, stage / ONNX_CLASSIFIER_NAME)
            if plugin:  # ONNX Runtime cannot run the merged graph; the purifier part was checked above
                manifest["parity"]["classifier"] = {"skipped": (
                    "onnxruntime cannot run the plugin node and the reference evaluator is too slow for a classifier; "
                    "the purifier graph is checked above and the merge is the one the standard exports check")}
            else:
                manifest["parity"]["classifier"] = classifier_agreement(
                    purifier, classifier.SerializeToString(), dm, cases, opts.classifier_mean, opts.classifier_std)
            record(ONNX_CLASSIFIER_NAME, "onnx", merged, precision="fp32",
                   normalisation={"mean": list(opts.classifier_mean), "std": list(opts.classifier_std)})

        if opts.tensorrt is False:
            manifest["tensorrt"] = {"built": False, "reason": "disabled with --no-tensorrt"}
        elif not trt_ok:
            manifest["tensorrt"] = {"built": False, "reason": trt_reason}
        elif plugin and not opts.plugin_lib:
            manifest["tensorrt"] = {"built": False, "reason": "--smoothing plugin needs --plugin-lib PATH (the "
                                    f"{plugin_ref.PLUGIN_NAME} library built from kernels/) to build an engine"}
        else:
            say("TensorRT: building the engine")
            lo, opt, hi = opts.batch
            hw = lambda f: (max(2, h // 2), max(2, w // 2)) if f == "min" else ((2 * h, 2 * w) if f == "max" else (h, w))
            spec = EngineSpec(
                min_shape=(lo, 3, *(hw("min") if opts.dynamic_hw else (h, w))),
                opt_shape=(opt, 3, h, w),
                max_shape=(hi, 3, *(hw("max") if opts.dynamic_hw else (h, w))),
                workspace_bytes=int(opts.workspace_gib * (1 << 30)), fp16_onnx=opts.fp16,
                version_compatible=opts.version_compatible,
                timing_cache=Path(opts.timing_cache) if opts.timing_cache else
                Path.home() / ".cache" / "ncis-deploy" / "tensorrt-timing.cache",
                plugin_libraries=(opts.plugin_lib,) if plugin else ())
            src = stage / (ONNX_FP16_NAME if opts.fp16 else ONNX_NAME)
            info = build_engine(src, stage / ENGINE_NAME, spec)
            manifest["tensorrt"] = {"built": True, **_jsonable(info)}
            record(ENGINE_NAME, "tensorrt-engine", None, built_from=src.name)

        if opts.triton:
            from ncis_deploy.exporters.triton import write_repository

            say("Triton model repository: written and validated (ModelConfig + model I/O)")
            built = manifest["tensorrt"]["built"]
            manifest["triton"] = write_repository(
                stage, purifier_onnx=stage / ONNX_NAME, engine=stage / ENGINE_NAME if built else None,
                engine_onnx=stage / (ONNX_FP16_NAME if opts.fp16 else ONNX_NAME), classifier=classifier,
                mean=opts.classifier_mean, std=opts.classifier_std, max_batch_size=opts.batch[2],
                preferred_batch=opts.batch[1], instances=opts.triton_instances,
                queue_delay_us=opts.triton_queue_delay_us, opset=opts.opset)

        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        write_json(stage / MANIFEST, manifest)
    return manifest


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
