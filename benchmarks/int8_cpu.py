"""CPU latency of the INT8 purifier (``export --int8``) against the FP32 one, interleaved in one run.

    python benchmarks/int8_cpu.py [--export DIR] [--forms fast accurate openvino] [--size 224] [--batches 1 8]
                                  [--rounds 10] [--no-nncf] [--out FILE]

Exports the ``ncis`` preset with ``--int8`` once per ``--int8-form`` in ``--forms`` (default: every form; or reads
``--export DIR``, one form), then times, round after round in turn: ONNX Runtime CPU on purifier.onnx (FP32) and on
each purifier_int8.onnx (through the package's session, i.e. the lossless uint8 re-encoding ORT's x86 kernels need),
and OpenVINO's CPU plugin on them (f32, each int8, and where the CPU has BF16 natively bf16 as the openvino runner
runs it, the BSN typed bf16, and as OpenVINO's own bf16 hint, label ``bf16/all``; compiled for static
shapes and a batch run in chunks of one 224² image, as the openvino runner does: ``runners.openvino.StaticShapes``;
ORT runs the batch whole, as its runner does). Every speed-up is the
median over rounds of FP32-ORT time / that backend's time in the same round, so load that changes during the run
(these machines are shared) hits both sides. ORT's thread pools do not spin between runs here: a spinning pool of
one session would steal the cores of the next one.

With ``nncf`` installed (``pip install nncf``; not a dependency of the package) it also times OpenVINO's own int8:
the FP32 ONNX quantized by NNCF's post-training quantization on the same bundled calibration photos, with the same
parts kept float as ``export --int8`` keeps (``quantize.float_nodes``), 7-bit weights as there, the rest left to
NNCF's placement for OpenVINO; run with f32 and with bf16 for what stays float. Its PSNR vs FP32 on the hold-out
photos and its blind spot (NNCF's quantization of the BSN alone, one pixel changed) are recorded beside the timings.

Writes ``--out`` (default benchmarks/results/int8-cpu.json) with the CPU model and ISA flags, and the quality guards
the export recorded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ncis_deploy import cpu
from ncis_deploy.exporters import quantize
from ncis_deploy.exporters.manifest import ONNX, ONNX_INT8, open_export
from ncis_deploy.exporters.pipeline import ExportOptions, export, versions
from ncis_deploy.exporters.quantize import INT8_FORMS
from ncis_deploy.fileio import write_json
from ncis_deploy.quality import psnr_or_none
from ncis_deploy.runners.onnxruntime import open_session
from ncis_deploy.runners.openvino import StaticShapes, prepare_bf16

RESULT = Path(__file__).parent / "results" / "int8-cpu.json"


def ort_backend(path: Path, threads: int):
    s = open_session(path, "cpu", threads=threads, options={"session.intra_op.allow_spinning": "0"})
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def _ov_config(hint: str, threads: int) -> dict:
    return {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}


def openvino_backends(fp32: Path, int8: dict[str, Path], threads: int) -> dict:
    try:
        import openvino as ov
    except ImportError:
        print("openvino is not installed: OpenVINO rows skipped", file=sys.stderr)
        return {}
    core = ov.Core()
    # int8 comes from the Q/DQ, f32 elsewhere
    todo = [("openvino f32", fp32, "f32")] + [(f"openvino int8/{form}", p, "f32") for form, p in int8.items()]
    if "bf16" in cpu.native_precisions():  # the runner's bf16 (the BSN typed bf16) and OpenVINO's own bf16 hint
        todo += [("openvino bf16", fp32, "bsn"), ("openvino bf16/all", fp32, "bf16")]
    out = {}
    for label, path, hint in todo:
        model = core.read_model(str(path))
        if hint == "bsn":  # as the runner
            _, hint = prepare_bf16(model)
        out[label] = StaticShapes(core, model, _ov_config(hint, threads)).infer
    return out


def nncf_quantize(onnx_model, batches: list[np.ndarray]):
    """The OpenVINO model of ``onnx_model`` quantized by NNCF (default preset: symmetric int8) on ``batches``, weights
    in 7 bits like ``export --int8``'s (``overflow_fix``): NNCF's default 8-bit weights saturate the int16 sums of
    CPUs without VNNI (on an AVX2-only EPYC: 59.1 dB vs FP32 instead of 63.7; on avx512_vnni 64.0)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    m = ov.Core().read_model(onnx_model.SerializeToString(), b"")
    floats = quantize.float_nodes(onnx_model)
    # OpenVINO names a conv with bias "<onnx name>/WithoutBiases" + an Add "<onnx name>"
    names = [op.get_friendly_name() for op in m.get_ops() if op.get_friendly_name().split("/")[0] in floats]
    items = [b[i:i + 1] for b in batches for i in range(len(b))]
    return nncf.quantize(m, nncf.Dataset(items), subset_size=len(items),
                         ignored_scope=nncf.IgnoredScope(names=names, validate=False),
                         advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE))


def holdout_error(infer, cases, refs: np.ndarray) -> dict:
    """PSNR (None: identical) and max |error| of ``infer`` on the hold-out ``cases`` against ``refs``, the
    reference's outputs on them."""
    got = np.concatenate([infer(x) for _, x in cases])
    p = psnr_or_none(got, refs)
    return {"psnr_db": None if p is None else round(p, 2), "max_abs": float(np.abs(got - refs).max())}


def nncf_backends(fp32_path: Path, threads: int, h: int, w: int, cases, refs: np.ndarray,
                  bf16=None) -> tuple[dict, dict]:
    """({label: infer}, quality record) for NNCF's int8 with f32 and (where native) bf16 for what stays float,
    scored against ``refs`` (ORT FP32 on the hold-out ``cases``), beside ``bf16`` (OpenVINO bf16 of the FP32 model:
    the baseline) when given."""
    try:
        import nncf
        import onnx
        import openvino as ov
    except ImportError:
        print("nncf (or openvino) is not installed: NNCF rows skipped (pip install nncf)", file=sys.stderr)
        return {}, {}
    fp32 = onnx.load(str(fp32_path))
    print("quantizing with NNCF ...", file=sys.stderr)
    batches = quantize.calibration_set(None, h, w).batches
    model = nncf_quantize(fp32, batches)
    core = ov.Core()
    hints = ["f32"] + (["bf16"] if "bf16" in cpu.native_precisions() else [])
    bsn = quantize.bsn_subgraph(fp32)
    bsn_q = nncf_quantize(bsn, [x[:, :, :quantize.BLIND_SPOT_MAX_SIDE, :quantize.BLIND_SPOT_MAX_SIDE]
                                for x in batches])
    out, quality = {}, {"nncf": nncf.__version__, "calibration": "the bundled training photos, as export --int8",
                        "float": "as export --int8 (first masked layers, baselines), plus GS and everything from "
                                 "the head block on; NNCF places the rest", "reference": "fp32 ONNX on onnxruntime-cpu"}

    for hint in hints:
        cfg = _ov_config(hint, threads)
        label = f"openvino int8/nncf+{hint}"
        out[label] = StaticShapes(core, model, cfg).infer
        quality[f"nncf+{hint}"] = holdout_error(out[label], cases, refs) | {
            "blind_spot_max_abs_change_at_pixel": _blind_spot(core, bsn_q, cfg)}
        print(f"  nncf+{hint}: {quality[f'nncf+{hint}']}", file=sys.stderr)
    if bf16 is not None:  # the baseline these compete with: the FP32 model run in bf16
        quality["bf16 (no int8)"] = holdout_error(bf16, cases, refs)
    return out, quality


def _blind_spot(core, bsn, cfg: dict) -> float:
    """The largest move of the quantized BSN's output at a pixel when that input pixel changes (0 = blind)."""
    request = core.compile_model(bsn, "CPU", cfg).create_infer_request()
    side = quantize.BLIND_SPOT_MAX_SIDE
    return max(quantize.blind_spot_moves(lambda x: request.infer({0: x})[0], side, side)[1])


def measure(backends: dict, x: np.ndarray, rounds: int) -> dict[str, list[float]]:
    for fn in backends.values():  # warm-up: first-run allocations and kernel selection
        fn(x)
    times = {k: [] for k in backends}
    order = list(backends)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):  # alternate who goes first
            t = time.perf_counter()
            backends[k](x)
            times[k].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, default=None, help="an export with purifier_int8.onnx (default: export "
                                                               "the ncis preset with --int8 into a temporary folder)")
    ap.add_argument("--forms", nargs="+", choices=list(INT8_FORMS), default=list(INT8_FORMS),
                    help="--int8-form of each export (without --export)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds per batch size (each runs every backend)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--no-nncf", action="store_true", help="skip NNCF's int8 rows (needs nncf installed)")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.export is not None:
            exports = [open_export(args.export)]
        else:
            exports = []
            for form in args.forms:
                d = Path(tmp) / form
                print(f"exporting ncis at {args.size}x{args.size} with --int8 --int8-form {form} ...", file=sys.stderr)
                export(ExportOptions(out=str(d), height=args.size, width=args.size, int8=True, int8_form=form,
                                     tensorrt=False), progress=lambda m: print(f"  {m}", file=sys.stderr))
                exports.append(open_export(d))
        forms = {ex.int8_form: ex for ex in exports}
        fp32 = exports[0].path(ONNX)
        int8 = {form: ex.path(ONNX_INT8) for form, ex in forms.items()}
        h, w = exports[0].input_shape[2:]
        backends = {"onnxruntime fp32": ort_backend(fp32, args.threads)}
        backends |= {f"onnxruntime int8/{form}": ort_backend(p, args.threads) for form, p in int8.items()}
        cases = quantize.holdout_cases(h, w)
        refs = np.concatenate([backends["onnxruntime fp32"](x) for _, x in cases])
        nncf_quality = {}
        if not args.no_openvino:
            backends |= openvino_backends(fp32, int8, args.threads)
            if not args.no_nncf:
                more, nncf_quality = nncf_backends(fp32, args.threads, h, w, cases, refs, backends.get("openvino bf16"))
                backends |= more
        bf16_quality = {k.partition("/")[2] or "bsn": holdout_error(backends[k], cases, refs)
                        for k in ("openvino bf16", "openvino bf16/all") if k in backends}
        load_before = os.getloadavg()
        rows = []
        for b in args.batches:
            x = np.random.default_rng(0).random((b, 3, h, w), dtype=np.float32)
            times = measure(backends, x, args.rounds if b == 1 else max(3, args.rounds // 2))
            ref = times["onnxruntime fp32"]
            for k, t in times.items():
                backend, precision = k.split()
                precision, _, form = precision.partition("/")
                source = {"quantized_by": "nncf", "float_parts": form.split("+")[1]} if form.startswith("nncf") else (
                    {"bf16_scope": form or "bsn"} if precision == "bf16" else {"int8_form": form} if form else {})
                rows.append({"backend": backend, "precision": precision, "batch": b, **source,
                             "ms_per_batch_median": round(1e3 * statistics.median(t), 1),
                             "ms_per_batch_min": round(1e3 * min(t), 1),
                             "images_per_s": round(b / statistics.median(t), 2),
                             "speedup_vs_onnxruntime_fp32": round(statistics.median(
                                 [r / v for r, v in zip(ref, t)]), 2), "rounds": len(t)})
                print(f"batch {b}  {k:27s} {rows[-1]['ms_per_batch_median']:8.1f} ms  "
                      f"{rows[-1]['images_per_s']:6.2f} img/s  x{rows[-1]['speedup_vs_onnxruntime_fp32']:.2f}")
        report = {"machine": cpu.cpu_record(), "load_average_1min": [load_before[0], os.getloadavg()[0]],
                  "versions": versions() | {"openvino": _ov_version()}, "input": [h, w], "threads": args.threads,
                  "results": rows,
                  "int8_quality_vs_fp32": {form: {k: v for k, v in ex.manifest["parity"]["int8"].items()
                                                  if k != "cases"} for form, ex in forms.items()},
                  "int8_artifact": {form: ex.artifacts[ONNX_INT8]["quantization"] for form, ex in forms.items()},
                  "nncf_int8_quality_vs_fp32": nncf_quality or None,
                  "bf16_quality_vs_fp32": bf16_quality or None,  # by bf16_scope: bsn (the runner's), all (the hint)
                  "method": "interleaved rounds, order alternating; speed-up = median over rounds of the FP32 ORT "
                            "time / the backend's time in the same round; ORT thread pools not spinning; OpenVINO compiled "
                            "for static shapes, batches in chunks of <= 224^2 pixels (runners.openvino.StaticShapes)"}
    write_json(args.out, report)
    print(f"wrote {args.out}", file=sys.stderr)


def _ov_version() -> str | None:
    try:
        import openvino

        return openvino.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
