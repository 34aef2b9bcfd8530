"""``ncis-deploy export``."""

from __future__ import annotations

from pathlib import Path

import click

from ncis_deploy.cli import default_help, given, purifier_options, resolve_purifier_source, user_errors, write_outputs
from ncis_deploy.exporters.manifest import MANIFEST
from ncis_deploy.exporters.manifest import int8_form as manifest_int8_form  # `export` has an int8_form option
from ncis_deploy.exporters.manifest import int8_weight_bits as manifest_int8_weight_bits
from ncis_deploy.exporters.pipeline import ExportOptions, parse_batch
from ncis_deploy.exporters.pipeline import export as run_export
from ncis_deploy.exporters.quantize import DEFAULT_WEIGHT_BITS, INT8_FORMS
from ncis_deploy.exporters.tensorrt import DEFAULT_TIMING_CACHE

OPTIONS = ExportOptions  # where this command's defaults live
_d = default_help(OPTIONS)


@click.command(help=f"""Export the fused purifier to ONNX (and a TensorRT engine where possible), check that every
    artifact computes what PyTorch computes, and write {MANIFEST}.

    With no arguments: the ncis preset at {ExportOptions.height}x{ExportOptions.width}, dynamic batch, into
    ./{ExportOptions.out}/.
    """)
@purifier_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Export directory (replaced only by a complete export)." + _d("out"))
@click.option("--height", type=int, default=None, help="Input height (the optimum with --dynamic-hw)." + _d("height"))
@click.option("--width", type=int, default=None, help="Input width (the optimum with --dynamic-hw)." + _d("width"))
@click.option("--dynamic-hw", is_flag=True, default=None,
              help="Any H, W >= 2 at run time (GS matrices built in-graph, still exact).")
@click.option("--batch", default=None,
              help="Batch range MIN:OPT:MAX for the TensorRT profile; the ONNX batch is always dynamic."
                   + _d("batch", lambda b: ":".join(map(str, b))))
@click.option("--opset", type=int, default=None, help="ONNX opset (>= 18)." + _d("opset"))
@click.option("--fp16", is_flag=True, default=None,
              help="Also write an FP16-typed ONNX (and build the engine from it); its error against FP32 is measured "
                   "and recorded.")
@click.option("--int8", is_flag=True, default=None,
              help="Also write an INT8 ONNX with explicit QuantizeLinear/DequantizeLinear (the form TensorRT 10.1+, "
                   "OpenVINO and ONNX Runtime run in int8), calibrated on photos; its error and PSNR against the FP32 "
                   "ONNX on the hold-out photos, its masked taps and its blind spot are checked and recorded.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="--int8: a folder of photos to calibrate on (at most 16 are used) [default: the bundled training "
                   "photos].")
@click.option("--int8-form", type=click.Choice(list(INT8_FORMS)), default=None,
              help="--int8: where Q/DQ goes. accurate = Q/DQ only on the int8 convolutions' inputs (TensorRT's "
                   "recommended placement; 69 dB from FP32, the only form whose classifier top-1 agreement with FP32 "
                   "meets the 99 % guard; on ONNX Runtime slower than FP32); fast = every BSN tensor int8, the "
                   "PReLUs split into int8 kernels (ONNX Runtime's fast int8; 61 dB, about the error of rounding the "
                   "output to 8 bits); openvino = accurate's plus both inputs of every add (the fastest on OpenVINO, "
                   "slow on ONNX Runtime; about fast's error). docs/export.md has the speeds." + _d("int8_form"))
@click.option("--int8-weight-bits", type=click.Choice(["7", "8"]), default=None,
              help="--int8: weight width. 7 computes the same on every CPU; 8 is a little closer to FP32 (accurate "
                   "form: 69.7 vs 69.4 dB) for TensorRT and CPUs with VNNI/AMX, and needs one to export (the CPU "
                   "runners refuse it elsewhere: their int8 kernels would saturate)." + _d("int8_weight_bits"))
@click.option("--tensorrt/--no-tensorrt", default=None,
              help="Build a TensorRT engine. Default: when tensorrt imports and a GPU is present.")
@click.option("--version-compatible", is_flag=True, default=None,
              help="Build a version-compatible TensorRT engine (lean runtime).")
@click.option("--workspace", "workspace_gib", type=float, default=None,
              help="TensorRT builder workspace limit in GiB." + _d("workspace_gib"))
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help=f"TensorRT timing cache, reused across builds [default: {DEFAULT_TIMING_CACHE}].")
@click.option("--classifier", type=click.Path(path_type=Path), default=None,
              help="Classifier ONNX: also write purifier+normalisation+classifier as one graph.")
@click.option("--classifier-mean", type=float, nargs=3, default=None,
              help="Per-channel mean the classifier expects (inputs in [0, 1])." + _d("classifier_mean"))
@click.option("--classifier-std", type=float, nargs=3, default=None,
              help="Per-channel std the classifier expects." + _d("classifier_std"))
@click.option("--smoothing", type=click.Choice(["matmul", "plugin"]), default=None,
              help="How GS stages are exported: matmul = the exact GS matrices in standard ONNX ops (runs everywhere); "
                   "plugin = one TensorRT plugin node per GS stage (NcisGaussianSmooth, the one-launch CUDA kernel), "
                   "for TensorRT with --plugin-lib; checked on the CPU by the ONNX reference evaluator."
                   + _d("smoothing"))
@click.option("--plugin-lib", type=click.Path(path_type=Path), default=None,
              help="The NcisGaussianSmooth TensorRT plugin library (built from kernels/): loaded for the engine build, "
                   "recorded in the manifest.")
@click.option("--triton", is_flag=True, default=None,
              help="Also write a Triton Inference Server model repository (OUT/triton/): the purifier on ONNX Runtime, "
                   "the TensorRT plan when an engine was built, and with --classifier the classifier and a purifier -> "
                   "classifier ensemble; every config.pbtxt is validated (needs ncis-deploy[serve]). max_batch_size "
                   "is --batch MAX, the preferred batch --batch OPT.")
@click.option("--triton-instances", type=int, default=None,
              help="Model instances per model (instance_group count; per GPU on GPU nodes)." + _d("triton_instances"))
@click.option("--triton-queue-delay-us", type=int, default=None,
              help="Dynamic batching: how long a request may wait for others to join its batch."
                   + _d("triton_queue_delay_us"))
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the manifest here.")
@user_errors
def export(preset, config_path, weights, out, height, width, dynamic_hw, batch, opset, fp16, int8, calibration,
           int8_form, int8_weight_bits, tensorrt, version_compatible, workspace_gib, timing_cache, classifier,
           classifier_mean, classifier_std, smoothing, plugin_lib, triton, triton_instances, triton_queue_delay_us,
           json_path):
    opts = ExportOptions(**given(
        source=resolve_purifier_source(preset, config_path, weights), weights=str(weights) if weights else None,
        out=str(out) if out else None, height=height, width=width, dynamic_hw=dynamic_hw,
        batch=parse_batch(batch) if batch is not None else None, opset=opset, fp16=fp16, int8=int8,
        calibration=str(calibration) if calibration else None, int8_form=int8_form,
        int8_weight_bits=int(int8_weight_bits) if int8_weight_bits else None, tensorrt=tensorrt,
        version_compatible=version_compatible, workspace_gib=workspace_gib,
        timing_cache=str(timing_cache) if timing_cache else None, classifier=str(classifier) if classifier else None,
        classifier_mean=tuple(classifier_mean) if classifier_mean else None,
        classifier_std=tuple(classifier_std) if classifier_std else None, smoothing=smoothing,
        plugin_lib=str(plugin_lib) if plugin_lib else None, triton=triton, triton_instances=triton_instances,
        triton_queue_delay_us=triton_queue_delay_us))
    m = run_export(opts, progress=lambda msg: click.echo(f"  {msg}", err=True))
    click.echo(render_manifest(m, Path(opts.out)))
    write_outputs(m, json_path)


def render_manifest(m: dict, out: Path) -> str:
    lines = [f"export written to {out}/ in {m['export_seconds']} s", "", f"{'artifact':<28} {'bytes':>12}  sha256"]
    lines += [f"{a['file']:<28} {a['bytes']:>12,}  {a['sha256'][:16]}…" for a in m["artifacts"]]
    plugin = "plugin" in m
    title = "parity (reference evaluator)" if plugin else "parity (vs PyTorch, ORT CPU)"
    lines += ["", f"{title:<34} {'max abs':>10}"]
    for k in ("fp32", "fp16"):
        if k in m["parity"]:
            p = m["parity"][k]
            tol = f"(tolerance {p['tolerance']:g})" if p["tolerance"] else "(recorded)"
            vs = f" vs {p['reference']}" if plugin else ""
            lines.append(f"{k + ', ' + str(len(p['cases'])) + ' cases':<34} {p['max_abs']:>10.2e}  {tol}{vs}")
    if "int8" in m["parity"]:
        p = m["parity"]["int8"]
        verdict = "met" if p["meets_psnr_target"] else "MISSED"
        bits = manifest_int8_weight_bits(m)
        form = manifest_int8_form(m) + (f", {bits}-bit weights" if bits != DEFAULT_WEIGHT_BITS else "")
        lines.append(f"{'int8 (' + form + '), ' + str(len(p['cases'])) + ' hold-out cases':<34} "
                     f"{p['max_abs']:>10.2e}  PSNR {p['psnr_db']:.1f} dB (target {p['psnr_target_db']:g} dB: "
                     f"{verdict}); blind spot and masked taps intact")
        if "classifier_top1_agreement" in p:
            c = p["classifier_top1_agreement"]
            lines.append(f"{'int8 classifier top-1 vs fp32':<34} {c['agreement']:>10.1%}  ({c['images']} images)")
    if "classifier" in m["parity"]:
        c = m["parity"]["classifier"]
        if "skipped" in c:
            lines.append(f"{'classifier top-1 agreement':<34} {'skipped':>10}  ({c['skipped']})")
        else:
            lines.append(f"{'classifier top-1 agreement':<34} {c['top1_agreement']:>10.1%}  ({c['images']} images)")
    if plugin:
        lib = m["plugin"]["library"]
        lines += ["", f"GS as TensorRT plugin {m['plugin']['op_type']} (namespace {m['plugin']['plugin_namespace']!r}); "
                      + (f"library {lib['path']}" if lib else "no --plugin-lib given")]
    b = m.get("bsn_macs", {})
    if b.get("applicable"):
        lines += ["", f"BSN MACs at {b['input_shape']}: {b['macs_live_taps']:,} live taps vs {b['macs_dense']:,} dense "
                      f"({b['ratio']:.3f}x), outputs equal within {b['max_abs_diff_live_vs_dense']:.1e}"]
    t = m["tensorrt"]
    lines += ["", "TensorRT engine: " + ("built" if t["built"] else f"not built: {t['reason']}")]
    if "triton" in m:
        tr = m["triton"]
        lines += ["", f"Triton model repository {out}/{tr['directory']}/ (max_batch_size {tr['max_batch_size']}, "
                      f"{tr['instances']} instance(s), configs validated): "
                      + ", ".join(f"{x['name']} ({x['platform']})" for x in tr["models"])]
    return "\n".join(lines)
