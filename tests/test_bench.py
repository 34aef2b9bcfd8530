"""`ncis-deploy bench`: statistics against known samples, the report schema, the CLI on tiny inputs, bad input.

Everything here is CPU and small (16-32 px images, GS-only or tiny BSN, fractions of a second per case): these tests
check what the harness reports, not how fast anything is. Performance figures live in benchmarks/results/*.json.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from ncis_deploy.bench import stats
from ncis_deploy.bench.schema import SCHEMA, SchemaError, errors, validate
from ncis_deploy.cli import cli
from ncis_deploy.errors import UserError
from ncis_deploy.model.purifier import PRESETS

from test_cli import assert_user_error  # noqa: E402

FAST = ["--duration", "0.05", "--warmup", "0", "--no-diffpure"]
TINY = ["--height", "16", "--width", "16"]


def run(*args):
    return CliRunner().invoke(cli, ["bench", *map(str, args)])


def usable_defaults() -> list[str]:
    """The labels a zero-argument bench runs here (every backend × precision the doctor finds usable)."""
    from ncis_deploy.bench.core import availability, default_backends
    from ncis_deploy.doctor import report as doctor_report

    return [s.label for s in default_backends(availability(doctor_report()))]




# ---------------------------------------------------------------------------------------------------- statistics
def trtexec_index(p: float, n: int) -> int:
    """TensorRT sampleReporting.cpp findPercentile, in float64 (its float32 can differ at exact boundaries)."""
    exclude = int((1 - p / 100) * n)
    return max(n - 1 - exclude, 0)


def test_stats_known_samples():
    s = stats.summarize([float(v) for v in range(1, 11)])  # 1..10
    assert (s["n"], s["min"], s["max"], s["mean"], s["median"]) == (10, 1.0, 10.0, 5.5, 5.5)
    assert (s["p90"], s["p95"], s["p99"]) == (9.0, 10.0, 10.0)
    assert s["std"] == pytest.approx(math.sqrt(8.25))  # population std, as trtexec
    assert s["cv_pct"] == pytest.approx(math.sqrt(8.25) / 5.5 * 100)
    assert s["drift_pct"] == pytest.approx((8 - 3) / 3 * 100)  # medians of 1..5 and 6..10

    s = stats.summarize(list(range(1, 101)))
    assert (s["median"], s["p90"], s["p95"], s["p99"]) == (50.5, 90, 95, 99)

    s = stats.summarize([3.0, 1.0, 2.0])  # run order kept for drift, sorted for the rest
    assert (s["median"], s["p90"], s["p99"], s["min"], s["max"]) == (2.0, 3.0, 3.0, 1.0, 3.0)
    assert s["drift_pct"] is None  # below 4 samples

    s = stats.summarize([7.0])
    assert s["p99"] == s["median"] == s["min"] == 7.0 and s["cv_pct"] == 0.0


def test_percentile_matches_trtexec_rule_and_numpy_inverted_cdf():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 10, 33, 100, 257):
        x = rng.random(n)
        srt = np.sort(x)
        for p in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
            got = stats.percentile(x, p)
            assert got == np.percentile(x, p, method="inverted_cdf")
            if not float(p * n / 100).is_integer():  # away from the float-rounding boundaries
                assert got == srt[trtexec_index(p, n)]
    assert stats.percentile([5, 1, 4, 2, 3], 50) == 3  # nearest rank, never interpolated
    assert stats.percentile([1.0, 2.0], 50) == 1.0 and stats.median([1.0, 2.0]) == 1.5  # median != p50 for even n
    with pytest.raises(ValueError):
        stats.summarize([])
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_scale_and_variance_warnings():
    s = stats.summarize([10.0, 10.0, 10.0, 30.0])
    t = stats.scale(s, 150)
    assert t["median"] == s["median"] * 150 and t["max"] == 4500 and t["cv_pct"] == s["cv_pct"]
    assert any("coefficient of variation" in w for w in stats.variance_warnings(s, "cpu"))
    steady = stats.summarize([10.0, 10.3, 9.7, 10.0])  # CV 2.1 %
    assert stats.variance_warnings(steady, "cpu") == []
    assert stats.variance_warnings(steady, "gpu")  # trtexec's 1 % threshold for GPU compute time
    drift = stats.summarize([10.0, 10.0, 10.0, 20.0, 20.0, 20.0])
    assert any("drifted" in w for w in stats.variance_warnings(drift, "cpu"))


# -------------------------------------------------------------------------------------------------------- schema
def test_validator_reports_problems():
    good = {"n": 1, "min": 1.0, "mean": 1.0, "median": 1.0, "p90": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0,
            "std": 0.0, "cv_pct": 0.0, "drift_pct": None}
    stats_schema = SCHEMA["properties"]["results"]["items"]["properties"]["latency_ms"]
    assert errors(good, stats_schema) == []
    assert errors({**good, "n": 0}, stats_schema) == ["$.n: must be >= 1, got 0"]
    assert "missing required key 'p99'" in errors({k: v for k, v in good.items() if k != "p99"}, stats_schema)[0]
    assert "unexpected key" in errors({**good, "extra": 1}, stats_schema)[0]
    assert "must be number" in errors({**good, "mean": "1"}, stats_schema)[0]
    assert "must be number" in errors({**good, "mean": True}, stats_schema)[0]
    assert "must be number" in errors({**good, "mean": float("nan")}, stats_schema)[0]
    with pytest.raises(SchemaError):
        validate({"format": "ncis-deploy/bench"})


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """One real run through the CLI: preset gs, 16x16, batches 1 and 2, JSON + PNG."""
    d = tmp_path_factory.mktemp("bench")
    r = run("--preset", "gs", *TINY, "--batch", "1", "--batch", "2", *FAST, "--json", d / "r.json",
            "--plot", d / "r.png")
    assert r.exit_code == 0, r.output
    return r, json.loads((d / "r.json").read_text()), d


def test_tiny_run_table_json_and_plot(tiny_report):
    r, rep, d = tiny_report
    validate(rep)  # the JSON as written (tuples became lists) still matches the schema
    assert rep["format"] == "ncis-deploy/bench" and rep["format_version"] == 1
    # every backend × precision usable here, but int8: a preset has no Q/DQ artifact, skipped with the fix
    ran = [lbl for lbl in usable_defaults() if not lbl.endswith(":int8")]
    assert {"torch:cpu", "onnxruntime:cpu"} <= set(ran)
    assert {(x["label"], x["batch"]) for x in rep["results"]} == {(lbl, b) for lbl in ran for b in (1, 2)}
    int8 = [s for s in rep["skipped"] if s["backend"].endswith(":int8")]
    assert [s["backend"] for s in int8] == [lbl for lbl in usable_defaults() if lbl.endswith(":int8")]
    assert int8 and all("no int8 artifact" in s["reason"] and "export --preset gs --int8" in s["reason"]
                        for s in int8)
    # measured interleaved with ORT FP32: a ratio for every other backend at every batch, in this one run
    assert rep["settings"]["vs"] == "onnxruntime:cpu" and rep["settings"]["vs_default"] is True
    assert all(x["interleaved"] for x in rep["results"])
    assert {(c["backend"], c["batch"]) for c in rep["comparisons"]} == {
        (lbl, b) for lbl in ran if lbl != "onnxruntime:cpu" for b in (1, 2)}
    assert all(c["vs"] == "onnxruntime:cpu" for c in rep["comparisons"])
    for x in rep["results"]:  # FP32 labels read as before; others name their precision
        assert x["label"] == f"{x['backend']}:{x['device']}" + ("" if x["precision"] == "fp32" else
                                                                f":{x['precision']}")
    # a quality guard for every non-FP32 target that ran, none for FP32 ones
    assert sorted(q["label"] for q in rep["quality"]) == sorted(x for x in ran if x.count(":") == 2)
    for x in rep["results"]:
        lat = x["latency_ms"]
        assert x["iterations"] >= 3 and lat["n"] == x["iterations"]
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert x["throughput_ips"] == pytest.approx(x["batch"] * x["iterations"] / x["walltime_s"])
        assert x["h2d_ms"] is None and x["memory"]["rss_peak_mib"] > 0  # CPU: no transfer split
    m = rep["machine"]
    assert m["cores"] >= 1 and m["cpu"] and "torch" in m["versions"] and "onnxruntime" in m["versions"]
    assert m["native_precisions"][0] == "f32" and len(m["load_average"]["before"]) == 3
    assert "| onnxruntime:cpu | 1 |" in r.output and m["cpu"] in r.output
    assert rep["command"].startswith("ncis-deploy bench --preset gs")
    assert "| backend | batch | iters |" in r.output and "| onnxruntime:cpu | 2 |" in r.output
    assert (d / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vs_measures_interleaved_and_reports_the_ratio(tmp_path):
    r = run("--preset", "gs", *TINY, "--batch", "1", "--batch", "2", *FAST, "--backend", "onnxruntime",
            "--vs", "torch", "--json", tmp_path / "v.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "v.json").read_text())
    validate(rep)
    assert rep["settings"]["vs"] == "torch:cpu"
    assert all(x["interleaved"] for x in rep["results"])
    comp = {c["batch"]: c for c in rep["comparisons"]}
    assert set(comp) == {1, 2}
    for b, c in comp.items():
        assert (c["backend"], c["vs"]) == ("onnxruntime:cpu", "torch:cpu")
        res = {x["label"]: x for x in rep["results"] if x["batch"] == b}
        assert c["rounds"] == res["onnxruntime:cpu"]["iterations"] == res["torch:cpu"]["iterations"] >= 3
        assert c["ratio"] == pytest.approx(res["torch:cpu"]["latency_ms"]["median"] /
                                           res["onnxruntime:cpu"]["latency_ms"]["median"])
        assert c["paired"]["min"] <= c["paired"]["median"] <= c["paired"]["max"]
    assert "Interleaved comparison" in r.output


def test_stages_time_gs_and_each_bsn_pass(tmp_path):
    r = run("--preset", "ncis", *TINY, "--batch", "1", *FAST, "--stages", "--json", tmp_path / "s.json",
            "--plot", tmp_path / "s.png")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "s.json").read_text())
    validate(rep)
    assert all(x["stages"] is None for x in rep["results"] if x["backend"] == "openvino")
    for x in (x for x in rep["results"] if x["backend"] != "openvino"):
        st = x["stages"]
        gs = PRESETS["ncis"].stages[0]
        assert [row["name"] for row in st["rows"]] == [
            f"GS k{gs['kernel_size']} σ{gs['sigma']:g} ×{gs['iterations']}", "BSN pass 1/1"], x["label"]
        assert [row["kind"] for row in st["rows"]] == ["gs", "bsn"]
        assert sum(row["share_pct"] for row in st["rows"]) == pytest.approx(100)
        assert st["sum_median_ms"] == pytest.approx(sum(row["latency_ms"]["median"] for row in st["rows"]))
    assert "| torch:cpu | 1 | BSN pass 1/1 |" in r.output and f"| onnxruntime:cpu | 1 | GS k{gs['kernel_size']}" in r.output
    assert (tmp_path / "s.png").stat().st_size > 0


def test_stage_plan_fuses_consecutive_gs_and_splits_bsn_passes():
    from ncis_deploy.bench.stages import stage_plan
    from ncis_deploy.model.purifier import normalize_config

    cfg = normalize_config({"stages": [{"type": "gs", "kernel_size": 3, "sigma": 1.0, "iterations": 2},
                                       {"type": "gs", "kernel_size": 5, "sigma": 2.0, "iterations": 1},
                                       {"type": "bsn", "iterations": 2},
                                       {"type": "gs", "kernel_size": 3, "sigma": 0.5, "iterations": 1}],
                            "bsn": {"channels": 3, "layers": 3, "filters": 8}})
    plan = stage_plan(cfg)
    assert [p["name"] for p in plan] == ["GS k3 σ1 ×2 + k5 σ2 ×1", "BSN pass 1/2", "BSN pass 2/2",
                                         "GS k3 σ0.5 ×1"]
    assert plan[-1].get("last") and not plan[0].get("last")


def test_stand_in_context_row(tmp_path):
    r = run("--preset", "gs", *TINY, "--batch", "1", "--duration", "0.05", "--warmup", "0", "--backend", "torch",
            "--diffpure-width", "32", "--diffpure-size", "32", "--diffpure-steps", "10", "--json", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "c.json").read_text())
    validate(rep)
    (c,) = rep["context"]
    assert c["stand_in"] is True and c["kind"] == "diffpure-stand-in" and "stand-in" in c["label"]
    assert c["steps"] == 10 and c["timed_steps"] >= 1 and c["batch"] == 1
    assert c["per_image_ms"]["median"] == pytest.approx(c["step_ms"]["median"] * 10)
    (rel,) = c["relative_to_ncis"]
    assert rel["label"] == "torch:cpu" and rel["ratio"] > 0
    assert "*stand-in, not DiffPure" in r.output and "× 10 (extrapolated)" in r.output


def test_stand_in_full_size_is_diffpure_class():
    """The default stand-in has the architecture and size class of DiffPure's ImageNet UNet (~552M parameters)."""
    import torch

    from ncis_deploy.bench.diffpure import DiffusionUNet, UNetConfig, parameter_count

    with torch.device("meta"):  # no memory, no init: count only
        full = DiffusionUNet(UNetConfig())
    assert 540e6 < parameter_count(full) < 560e6
    small = DiffusionUNet(UNetConfig(image_size=32, width=32)).eval()
    with torch.inference_mode():
        y = small(torch.rand(2, 3, 32, 32), torch.tensor([10, 20]))
    assert y.shape == (2, 6, 32, 32) and torch.isfinite(y).all()


# --------------------------------------------------------------------------------------- backends and precisions
def fake_doctor(isa=("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"), openvino=True, cuda=False) -> dict:
    """A doctor report with the CPU backends live (ORT CPU, OpenVINO) and the given ISA."""
    from ncis_deploy.cpu import native_precisions

    isa = list(isa)
    ov = {"usable": True, "reason": "OpenVINO 2026 on CPU"} if openvino else \
        {"usable": False, "reason": "the openvino package is not installed: pip install 'ncis-deploy[openvino]'"}
    return {"cpu": {"model": "Test CPU", "isa": isa, "native_precisions": native_precisions(isa)},
            "torch": {"installed": True, "version": "2", "cuda_available": cuda, "gpus": ["GPU"] if cuda else []},
            "onnxruntime": {"installed": True, "available_providers": ["CPUExecutionProvider"],
                            "providers": {"CPUExecutionProvider": {"live": True, "detail": "ok"}}},
            "backends": {"tensorrt": {"usable": False, "reason": "no TensorRT"}, "openvino": ov}}


def test_backend_grammar_keeps_every_old_spec_and_adds_precisions():
    from ncis_deploy.bench.core import availability, parse_backend

    avail = availability(fake_doctor())
    old = {"torch": "torch:cpu", "torch:cpu": "torch:cpu", "pytorch": "torch:cpu", "onnxruntime": "onnxruntime:cpu",
           "ort": "onnxruntime:cpu", "onnxruntime:cpu": "onnxruntime:cpu", " ORT:CPU ": "onnxruntime:cpu"}
    new = {"openvino": "openvino:cpu", "ov": "openvino:cpu", "openvino:cpu": "openvino:cpu",
           "openvino:f32": "openvino:cpu", "openvino:fp32": "openvino:cpu", "openvino:bf16": "openvino:cpu:bf16",
           "ov:cpu:bfloat16": "openvino:cpu:bf16", "openvino:int8": "openvino:cpu:int8",
           "onnxruntime:int8": "onnxruntime:cpu:int8", "ort:cpu:int8": "onnxruntime:cpu:int8",
           "onnxruntime:cpu:fp32": "onnxruntime:cpu"}
    for text, label in {**old, **new}.items():
        spec = parse_backend(text, avail)
        assert spec.label == label, text
        assert spec.precision == (label.split(":")[2] if label.count(":") == 2 else "fp32")
    # GPU devices parse as before (and are refused here only because no GPU is usable)
    for text, words in (("onnxruntime:gpu", "onnxruntime:cuda is not usable"),
                        ("ort:trt", "onnxruntime:tensorrt is not usable"), ("tensorrt", "tensorrt:cuda is not usable"),
                        ("torch:int8", "torch:cpu runs in fp32 only, not int8"),
                        ("onnxruntime:cpu:bf16", "runs in fp32, int8 only, not bf16"),
                        ("openvino:cuda", "unknown device 'cuda' for openvino"),
                        ("openvino:int4", "unknown device 'int4'"), ("openvino:cpu:int4", "unknown precision 'int4'"),
                        ("openvino:cpu:int8:x", "too many parts")):
        with pytest.raises(UserError) as e:
            parse_backend(text, avail)
        assert words in str(e.value), (text, str(e.value))


def test_bf16_only_where_native_and_openvino_only_where_installed():
    from ncis_deploy.bench.core import availability, default_backends, parse_backend

    labels = [s.label for s in default_backends(availability(fake_doctor()))]
    assert labels == ["torch:cpu", "onnxruntime:cpu", "onnxruntime:cpu:int8", "openvino:cpu", "openvino:cpu:bf16",
                      "openvino:cpu:int8"]
    no_bf16 = availability(fake_doctor(isa=("avx2", "fma", "avx512f", "avx512_vnni")))
    assert "openvino:cpu:bf16" not in [s.label for s in default_backends(no_bf16)]
    with pytest.raises(UserError) as e:
        parse_backend("openvino:bf16", no_bf16)
    assert "no native BF16" in str(e.value) and "avx512_bf16" in str(e.value) and "Test CPU" in str(e.value)
    no_ov = availability(fake_doctor(openvino=False))
    assert [s.label for s in default_backends(no_ov)] == ["torch:cpu", "onnxruntime:cpu", "onnxruntime:cpu:int8"]
    with pytest.raises(UserError) as e:
        parse_backend("openvino:int8", no_ov)
    assert "pip install 'ncis-deploy[openvino]'" in str(e.value)


def test_default_run_is_interleaved_with_ort_fp32():
    from ncis_deploy.bench.core import BenchOptions, availability, resolve_backends

    avail = availability(fake_doctor())
    specs, vs, defaulted = resolve_backends(BenchOptions(), avail)
    assert defaulted and vs.label == "onnxruntime:cpu" and vs in specs
    assert resolve_backends(BenchOptions(vs="none"), avail)[1] is None
    assert resolve_backends(BenchOptions(vs="openvino"), avail)[1].label == "openvino:cpu"
    specs, vs, _ = resolve_backends(BenchOptions(backends=("openvino:bf16", "torch")), avail)
    assert vs is None and [s.label for s in specs] == ["openvino:cpu:bf16", "torch:cpu"]  # as before: sequential


def test_int8_of_a_preset_is_refused_with_the_fix():
    assert_user_error(run("--preset", "ncis", *TINY, "--backend", "onnxruntime:int8", *FAST),
                      "preset ncis has no int8 artifact", "ncis-deploy export --preset ncis --int8 --height 16")


# --------------------------------------------------------------------------------------------- int8 and quality
def add_int8(export_dir) -> None:
    """Put a Q/DQ purifier_int8.onnx into a test export (until `export --int8` exists: ORT's static QDQ quantizer
    on the export's own purifier.onnx, calibrated on crops of the bundled training photos) and list it in the
    manifest."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from ncis_deploy.exporters.manifest import MANIFEST, ONNX, ONNX_INT8, sha256_file

    from ncis_deploy.data import ImageSet

    crops = ImageSet.bundled("train").random_crops(np.random.default_rng(0), 4, 16).numpy()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": crops[i:i + 1]} for i in range(len(crops))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(export_dir / ONNX), str(export_dir / ONNX_INT8), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    m = json.loads((export_dir / MANIFEST).read_text())
    m["artifacts"].append({"file": ONNX_INT8, "kind": "onnx", "precision": "int8",
                           "sha256": sha256_file(export_dir / ONNX_INT8),
                           "bytes": (export_dir / ONNX_INT8).stat().st_size})
    (export_dir / MANIFEST).write_text(json.dumps(m))


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    """The ncis preset exported at 16x16 with an int8 artifact (the BSN's convolutions quantized)."""
    from ncis_deploy.exporters.pipeline import ExportOptions, export

    d = tmp_path_factory.mktemp("int8") / "ncis_export"
    if "int8" in ExportOptions.__dataclass_fields__:  # `export --int8` has landed: bench what it writes
        export(ExportOptions(source="ncis", out=str(d), height=16, width=16, int8=True))
    else:
        export(ExportOptions(source="ncis", out=str(d), height=16, width=16))
        add_int8(d)
    return d


def check_guard(q: dict, label: str, precision: str) -> None:
    assert q["label"] == label and q["precision"] == precision and q["reference"] == "onnxruntime:cpu"
    assert q["photos"] == "holdout" and q["images"] == 2 and (q["height"], q["width"]) == (16, 16)
    assert [row["photo"] for row in q["per_photo"]] == ["china", "flower"]
    assert 0 < q["mean_abs"] <= q["max_abs"] < 0.5  # low precision moves the output, by far less than the range
    assert q["max_abs"] == max(row["max_abs"] for row in q["per_photo"])
    assert q["psnr_db"] is not None and 5 < q["psnr_db"] < 90  # a naive test quantization is far from 45 dB
    per = [row["psnr_db"] for row in q["per_photo"]]
    assert min(per) <= q["psnr_db"] <= max(per)
    assert q["ok"] == (q["psnr_db"] >= q["guard_psnr_db"] == 45.0)


def test_int8_export_runs_on_ort_with_a_quality_guard(int8_export, tmp_path):
    r = run(int8_export, "--backend", "onnxruntime", "--backend", "onnxruntime:int8", "--vs", "onnxruntime",
            "--batch", "1", *FAST, "--json", tmp_path / "q.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "q.json").read_text())
    validate(rep)
    (q,) = rep["quality"]
    check_guard(q, "onnxruntime:cpu:int8", "int8")
    art = rep["purifier"]["artifacts"]["onnxruntime:cpu:int8"]
    assert art["file"].endswith("purifier_int8.onnx") and len(art["sha256"]) == 64 and art["int8_form"] == "accurate"
    assert art["int8_weight_bits"] == 7
    (c,) = rep["comparisons"]
    assert (c["backend"], c["vs"], c["batch"]) == ("onnxruntime:cpu:int8", "onnxruntime:cpu", 1)
    assert "**Quality guards**" in r.output and "| onnxruntime:cpu:int8 | onnxruntime:cpu | 2 |" in r.output


def test_quality_guard_flags_a_result_below_it(int8_export, tmp_path, monkeypatch):
    from ncis_deploy.bench import core

    monkeypatch.setattr(core, "PSNR_GUARD_DB", 500.0)  # no real output is this close: the guard must trip
    r = run(int8_export, "--backend", "onnxruntime:int8", "--batch", "1", *FAST, "--json", tmp_path / "g.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "g.json").read_text())
    (q,) = rep["quality"]
    assert q["ok"] is False and q["guard_psnr_db"] == 500.0
    assert any("below the 500 dB quality guard" in w for w in rep["warnings"])


@pytest.mark.openvino
def test_every_precision_of_an_int8_export_on_openvino(int8_export, tmp_path):
    """The zero-option run on an export with an int8 artifact: every backend × precision usable here, OpenVINO's
    record of what it compiled, and a quality guard per low-precision target."""
    r = run(int8_export, "--batch", "1", *FAST, "--json", tmp_path / "o.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "o.json").read_text())
    validate(rep)
    ran = {x["label"]: x for x in rep["results"]}
    assert set(ran) == set(usable_defaults())
    assert {"openvino:cpu", "openvino:cpu:int8", "onnxruntime:cpu:int8"} <= set(ran)
    ov8 = ran["openvino:cpu:int8"]["runtime"]
    assert ov8["precision"] == "int8" and any(p in ("u8", "i8") for per in ov8["layer_precisions"].values()
                                              for p in per)
    assert ran["openvino:cpu"]["runtime"]["precision"] == "f32" and ran["onnxruntime:cpu"]["runtime"] is None
    # the export's form (the default, accurate) is neither runtime's fastest: each is told its own
    for label, best in (("openvino:cpu:int8", "openvino"), ("onnxruntime:cpu:int8", "fast")):
        assert f"{label} runs this export's int8 form 'accurate' (the closest to FP32" in r.output
        assert f"; {label.split(':')[0]} runs --int8-form {best} fastest" in r.output
    if "openvino:cpu:bf16" in ran:  # the export lists its BSN nodes: bf16 keeps GS and the baseline f32, no note
        assert ran["openvino:cpu:bf16"]["runtime"]["bf16_scope"] == "bsn" and "bf16 hint" not in r.output
    guards = {q["label"]: q for q in rep["quality"]}
    assert set(guards) == {lbl for lbl in ran if lbl.count(":") == 2}
    for lbl, q in guards.items():
        check_guard(q, lbl, lbl.split(":")[2])
    assert {c["backend"] for c in rep["comparisons"]} == set(ran) - {"onnxruntime:cpu"}


@pytest.mark.openvino
def test_bf16_of_an_export_without_its_bsn_node_list_says_it_runs_the_hint(int8_export, tiny_export, tmp_path):
    """An export from before ncis_deploy.bf16_nodes: OpenVINO's own bf16 hint runs, and bench says so and how to fix
    it (a gs export has no BSN to list, so nothing to say)."""
    import shutil

    import onnx

    from ncis_deploy.cpu import native_precisions
    from ncis_deploy.exporters.manifest import BF16_NODES_KEY, MANIFEST, ONNX, sha256_file
    from ncis_deploy.runners.openvino import bf16_hint_note

    old = tmp_path / "old_export"
    shutil.copytree(int8_export, old)
    m = onnx.load(str(old / ONNX))
    assert bf16_hint_note(old / ONNX, "x") is None
    props = [p for p in m.metadata_props if p.key != BF16_NODES_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(props)
    onnx.save(m, old / ONNX)
    man = json.loads((old / MANIFEST).read_text())
    next(a for a in man["artifacts"] if a["file"] == ONNX)["sha256"] = sha256_file(old / ONNX)
    (old / MANIFEST).write_text(json.dumps(man))
    assert "re-export it" in bf16_hint_note(old / ONNX, "x")
    assert bf16_hint_note(tiny_export / ONNX, "x") is None  # the gs preset: no BSN, nothing to list
    if "bf16" not in native_precisions():  # bf16 is refused here before any note (test_bf16_only_where_native...)
        return
    r = run(old, "--backend", "openvino:bf16", "--batch", "1", *FAST, "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    assert "openvino:cpu:bf16 runs OpenVINO's own bf16 hint" in r.output and "re-export it" in r.output
    (row,) = json.loads((tmp_path / "b.json").read_text())["results"]
    assert row["runtime"]["bf16_scope"] == "all"


# ----------------------------------------------------------------------------------------------- export directory
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from ncis_deploy.exporters.pipeline import ExportOptions, export

    d = tmp_path_factory.mktemp("exp") / "ncis_export"
    export(ExportOptions(source="gs", out=str(d), height=16, width=16))
    return d


def test_export_dir_and_default_export(tiny_export, tmp_path, monkeypatch):
    r = run(tiny_export, *FAST, "--batch", "2", "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["purifier"]["export_dir"] == str(tiny_export) and not rep["purifier"]["exported_now"]
    assert rep["settings"]["height"] == 16 and rep["purifier"]["fixed_hw"]
    assert rep["purifier"]["artifacts"]["onnxruntime"]["file"].endswith("purifier.onnx")
    ran = {lbl for lbl in usable_defaults() if not lbl.endswith(":int8")}  # this export has no purifier_int8.onnx
    assert {x["label"] for x in rep["results"]} == ran
    # zero arguments: ./ncis_export, batches 1 and 8, every usable backend
    monkeypatch.chdir(tiny_export.parent)
    r = run(*FAST, "--json", tmp_path / "z.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "z.json").read_text())
    assert rep["purifier"]["export_dir"] == "ncis_export"
    assert sorted({x["batch"] for x in rep["results"]}) == [1, 8]
    assert {x["label"] for x in rep["results"]} == ran
    # this export has no engine: where TensorRT is usable it is skipped (and said), elsewhere it is not a default;
    # it has no int8 artifact either: the int8 targets are skipped, naming `export --int8`
    from ncis_deploy.doctor import report as doctor_report

    trt_usable = doctor_report()["backends"]["tensorrt"]["usable"]
    int8 = [lbl for lbl in usable_defaults() if lbl.endswith(":int8")]
    assert sorted(s["backend"] for s in rep["skipped"]) == sorted((["tensorrt:cuda"] if trt_usable else []) + int8)
    assert all("no purifier_int8.onnx" in s["reason"] and "export --int8" in s["reason"]
               for s in rep["skipped"] if s["backend"] in int8)
    # fixed-size export: another size is refused
    assert_user_error(run(tiny_export, *FAST, "--height", "32"), "fixed at 16x16", "--dynamic-hw")


def test_missing_default_export_is_made_on_the_fly(tmp_path, monkeypatch):
    from ncis_deploy.exporters import pipeline

    real = pipeline.export
    calls = []

    def small_export(opts, progress=None):  # the default export, made small so the test stays fast
        calls.append(opts.out)
        opts.source, opts.height, opts.width = "gs", 16, 16
        return real(opts, progress)

    monkeypatch.setattr(pipeline, "export", small_export)
    monkeypatch.chdir(tmp_path)
    r = run(*FAST, "--batch", "1", "--backend", "onnxruntime", "--json", "r.json")
    assert r.exit_code == 0, r.output
    assert calls == ["ncis_export"] and (tmp_path / "ncis_export" / "manifest.json").is_file()
    assert json.loads((tmp_path / "r.json").read_text())["purifier"]["exported_now"] is True


# ----------------------------------------------------------------------------------------------------- bad input
def test_unknown_backend_lists_the_usable_ones():
    line = assert_user_error(run("--preset", "gs", "--backend", "tflite", *FAST), "unknown backend 'tflite'",
                             "usable here")
    assert "torch" in line and "onnxruntime" in line
    assert_user_error(run("--preset", "gs", "--backend", "torch:tpu", *FAST), "unknown device 'tpu'")


def test_backend_not_usable_here_says_why():
    from ncis_deploy.doctor import report

    if report()["backends"]["tensorrt"]["usable"]:
        pytest.skip("TensorRT is usable on this machine")
    assert_user_error(run("--preset", "gs", "--backend", "tensorrt", *FAST), "tensorrt:cuda is not usable here",
                      "tensorrt")
    import torch

    if not torch.cuda.is_available():
        assert_user_error(run("--preset", "gs", "--backend", "torch:cuda", *FAST), "sees no CUDA GPU")
        assert_user_error(run("--preset", "gs", "--cuda-graph", *FAST), "--cuda-graph", "GPU")
        assert_user_error(run("--preset", "gs", "--no-data-transfers", *FAST), "GPU")


@pytest.mark.parametrize("args, words", [
    (["--batch", "0"], ["--batch must be >= 1"]),
    (["--duration", "-1"], ["--duration must be a positive"]),
    (["--duration", "1", "--iterations", "3"], ["either --duration or --iterations"]),
    (["--iterations", "0"], ["--iterations must be >= 1"]),
    (["--warmup", "-5"], ["--warmup"]),
    (["--height", "1"], ["--height must be >= 2"]),
    (["--preset", "nope"], ["unknown preset 'nope'"]),
    (["--vs", "torch", "--backend", "torch"], ["--vs torch:cpu needs another backend"]),
    (["--vs", "tflite"], ["unknown --vs backend"]),
])
def test_bad_options(args, words):
    source = [] if "--preset" in args else ["--preset", "gs"]
    assert_user_error(run(*source, *args, "--no-diffpure"), *words)


def test_missing_and_corrupt_export_dirs(tmp_path, tiny_export):
    import shutil

    assert_user_error(run(tmp_path / "nope", *FAST), "does not exist", "ncis-deploy export --out")
    assert_user_error(run(tiny_export, "--preset", "gs", *FAST), "either an export directory or --preset")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run(empty, *FAST), "not an ncis-deploy export (no manifest.json)")
    garbled = tmp_path / "garbled"
    shutil.copytree(tiny_export, garbled)
    (garbled / "manifest.json").write_text("{not json")
    assert_user_error(run(garbled, *FAST), "corrupt", "re-export")
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_export, tampered)
    data = bytearray((tampered / "purifier.onnx").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "purifier.onnx").write_bytes(bytes(data))
    assert_user_error(run(tampered, *FAST), "corrupt", "SHA-256")
    (tampered / "purifier.onnx").unlink()
    assert_user_error(run(tampered, *FAST), "no purifier.onnx")


def test_schema_flag_prints_the_schema():
    r = run("--schema")
    assert r.exit_code == 0
    assert json.loads(r.output) == json.loads(json.dumps(SCHEMA))


# ------------------------------------------------------------------------------------------------------ GPU paths
@pytest.mark.gpu
def test_gpu_split_and_cuda_graph_torch(tmp_path):
    r = run("--preset", "ncis", "--height", "64", "--width", "64", "--batch", "1", "--batch", "4", "--backend",
            "torch:cuda", "--duration", "0.2", "--cuda-graph", "--no-diffpure", "--json", tmp_path / "g.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "g.json").read_text())
    validate(rep)
    for x in rep["results"]:
        assert x["cuda_graph"] and x["h2d_ms"] and x["compute_ms"] and x["d2h_ms"]
        assert x["latency_ms"]["median"] == pytest.approx(
            x["h2d_ms"]["median"] + x["compute_ms"]["median"] + x["d2h_ms"]["median"], rel=0.5)
        assert x["memory"]["cuda_max_allocated_mib"] > 0
    r = run("--preset", "ncis", "--height", "64", "--width", "64", "--batch", "2", "--backend", "torch:cuda",
            "--duration", "0.2", "--no-data-transfers", "--no-diffpure", "--vs", "torch:cpu")
    assert r.exit_code == 0, r.output


@pytest.mark.tensorrt
def test_tensorrt_backend(tmp_path):
    r = run("--preset", "gs", "--height", "64", "--width", "64", "--batch", "1", "--batch", "4", "--backend",
            "tensorrt", "--duration", "0.2", "--cuda-graph", "--no-diffpure", "--json", tmp_path / "t.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "t.json").read_text())
    assert all(x["compute_ms"] for x in rep["results"])


def test_a_refused_shape_is_recorded_and_said_not_timed():
    from ncis_deploy.bench.core import _refused

    class Target:
        label = "onnxruntime:cpu"

        def accepts(self, shape):
            return None if shape[0] <= 4 else "batch above the artifact's maximum 4"

    report, said = {"skipped": []}, []
    assert not _refused(Target(), np.zeros((4, 3, 8, 8)), 4, report, said.append)
    assert report["skipped"] == [] and said == []
    assert _refused(Target(), np.zeros((8, 3, 8, 8)), 8, report, said.append)
    assert report["skipped"] == [{"backend": "onnxruntime:cpu", "batch": 8,
                                  "reason": "batch above the artifact's maximum 4"}]
    assert said == ["skipping onnxruntime:cpu batch 8: batch above the artifact's maximum 4"]


def test_readme_performance_block_is_generated_from_the_recorded_json():
    """README's performance table is what benchmarks/bench_precisions.py --readme writes from its JSON."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_precisions", root / "benchmarks" / "bench_precisions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    record = json.loads((root / "benchmarks" / "results" / "bench-precisions-cpu.json").read_text())
    validate(record["bench"])
    assert record["bench"]["machine"]["isa"] and record["machine"]["cpu"]
    block = mod.readme_block(record)
    assert block in (root / "README.md").read_text(), \
        "README's perf block is stale: run python benchmarks/bench_precisions.py --readme"
    for line in block.splitlines():  # no link target broken across lines by the wrapping
        assert not re.search(r"\]\([^)]*$", line), line
