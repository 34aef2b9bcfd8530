"""``export --int8``: the explicit-Q/DQ graph's form, its masked taps and blind spot, its error against FP32, ONNX
Runtime's lossless CPU re-encoding, the manifest entry and the calibration folder's errors."""

import importlib.util
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, numpy_helper

from ncis_deploy import cpu
from ncis_deploy.errors import UserError
from ncis_deploy.exporters import quantize as qz
from ncis_deploy.exporters.gate import check_tensorrt_compatible, graph_index
from ncis_deploy.exporters.manifest import ONNX, ONNX_INT8, open_export
from ncis_deploy.exporters.onnx import build_onnx
from ncis_deploy.model.purifier import Purifier
from ncis_deploy.runners import make_runner
from ncis_deploy.runners.onnxruntime import cpu_qdq_form

from conftest import write_png
from test_cli import assert_user_error
from test_export import run, small_purifier

H, W = 24, 20


def bsn_only(layers=4, filters=8, seed=0):
    """A BSN-only purifier (mean4 baseline, no clamp) with random weights: its output at a pixel must never depend
    on the input there."""
    p = Purifier({"stages": [{"type": "bsn", "iterations": 1}], "clamp": False,
                  "bsn": {"channels": 3, "layers": layers, "filters": filters, "baseline": "mean4"}})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in p.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.2)
    return p.eval()


@pytest.fixture(scope="module")
def small():
    """(FP32 graph, its ranges) of the tiny purifier of test_export, calibrated on the bundled photos."""
    m = build_onnx(small_purifier(), H, W)
    return m, qz.ranges(m, qz.calibration_set(None, H, W).batches)


def _by_output(model):
    return {o: n for n in model.graph.node for o in n.output}


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_int8_graph_is_explicit_qdq_in_tensorrt_form(small):
    m, amax = small
    q = qz.quantize_with(m, amax, float_layers=0, form="fast")  # the form with the most int8 ops
    onnx.checker.check_model(q, full_check=True)
    check_tensorrt_compatible(q)
    (producer, readers), inits = graph_index(q.graph), _inits(q)
    # TensorRT's form: every Q/DQ int8 with zero point 0 (no uint8, no int32 bias), constant positive scales
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = inits[n.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), n.name
            assert (inits[n.input[1]] > 0).all(), n.name
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            assert inits[n.input[0]].dtype == np.int8, n.name
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    # float with no float masked layer: the exact baseline (none in this purifier) and each pass's head block (its
    # residual block's two convs and the head conv), whose rounding nothing after it smooths
    head_block = {n.name for n in convs if n.name.startswith("bsn_head")}
    assert qz.float_convs(m, 0) == head_block | {n.name for n in convs if n.name.startswith("mean4")}
    assert len(head_block) == 2 * 3 and not qz.bsn_body(m) & head_block  # 2 passes
    for n in convs:
        if n.name.startswith(("mean4", "bsn_head")):
            assert n.input[1] in inits and inits[n.input[1]].dtype == np.float32, n.name  # float weights
            assert all(r.op_type != "QuantizeLinear" for r in readers.get(n.output[0], [])), n.name
            continue
        x, w = producer[n.input[0]], producer[n.input[1]]
        assert x.op_type == "DequantizeLinear" and inits[x.input[1]].size == 1, n.name  # activations per tensor
        assert w.op_type == "DequantizeLinear" and inits[w.input[0]].dtype == np.int8, n.name
        assert np.abs(inits[w.input[0]].astype(int)).max() <= 63  # 7 bits by default: no int16 saturation in u8 x s8
        axis = next(a.i for a in w.attribute if a.name == "axis")
        assert axis == 0 and inits[w.input[1]].shape == (inits[w.input[0]].shape[0],), n.name  # per out channel
        if len(n.input) > 2:
            assert n.input[2] in inits and inits[n.input[2]].dtype == np.float32  # float bias: TensorRT wants it so
        assert [r.op_type for r in readers.get(n.output[0], [])] == ["QuantizeLinear"], n.name
    ops = {n.op_type for n in q.graph.node}
    body = qz.bsn_body(m)
    assert "Mul" in ops and not any(n.name in body for n in q.graph.node if n.op_type == "PRelu")  # body's all split
    assert all(next(a.f for a in n.attribute if a.name == "alpha") == qz.NEG_GAIN
               for n in q.graph.node if n.op_type == "LeakyRelu")
    # by default the first masked layers stay float too, weights and all, and nothing else does
    d = qz.quantize_with(m, amax)
    floats = {n.name for n in d.graph.node if n.op_type == "Conv" and n.input[1] in _inits(d)}
    # 2 passes x (3x3, knight, corners; head block)
    assert floats == qz.float_convs(m) and len(floats) == 2 * (1 + 3 + 2 + 3)
    assert qz.structure(d)["float_convs"] == len(floats) and qz.structure(d)["int8_convs"] > 0


def test_accurate_form_rounds_only_what_convs_read(small):
    m, amax = small
    fast, acc = (qz.quantize_with(m, amax, float_layers=0, form=f) for f in ("fast", "accurate"))
    onnx.checker.check_model(acc, full_check=True)
    check_tensorrt_compatible(acc)
    (producer, readers), inits = graph_index(acc.graph), _inits(acc)
    convs = [n for n in acc.graph.node if n.op_type == "Conv" and not n.name.startswith(("mean4", "bsn_head"))]
    for n in convs:  # every BSN conv but the head block's int8 in, float out
        x, w = producer[n.input[0]], producer[n.input[1]]
        assert x.op_type == "DequantizeLinear" and inits[x.input[1]].size == 1, n.name
        assert w.op_type == "DequantizeLinear" and inits[w.input[0]].dtype == np.int8, n.name
        assert all(r.op_type != "QuantizeLinear" for r in readers.get(n.output[0], [])), n.name
    quantized = {n.input[0] for n in acc.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == {producer[n.input[0]].input[0].removesuffix("@q") for n in convs}  # nothing else rounds
    ops = [n.op_type for n in acc.graph.node]
    assert "LeakyRelu" not in ops and ops.count("PRelu") == sum(n.op_type == "PRelu" for n in m.graph.node)
    assert ops.count("QuantizeLinear") < [n.op_type for n in fast.graph.node].count("QuantizeLinear") / 2
    s = qz.structure(acc)
    assert s["int8_form"] == "accurate" and s["int8_convs"] == len(convs) and "PRelu" not in s["form"]
    assert qz.structure(fast)["int8_form"] == "fast"
    # closer to FP32 than the fast form on the hold-out photos, blind spot and zero taps intact
    cases = qz.holdout_cases(H, W)
    err = {f: qz.quality_report(m.SerializeToString(), q.SerializeToString(), cases)["psnr_db"]
           for f, q in (("fast", fast), ("accurate", acc))}
    assert err["accurate"] > err["fast"] + 0.5, err  # this tiny random BSN: +0.7 dB; the shipped one: +5 dB
    assert qz.masked_taps_report(m, acc)["all_still_zero"]
    assert qz.blind_spot_report(acc, H, W)["max_abs_change_at_pixel"] == 0.0


def test_openvino_form_adds_both_inputs_of_every_bsn_add(small):
    m, amax = small
    acc, ov = (qz.quantize_with(m, amax, float_layers=0, form=f) for f in ("accurate", "openvino"))
    onnx.checker.check_model(ov, full_check=True)
    check_tensorrt_compatible(ov)
    producer = _by_output(ov)
    quantized = {n.input[0] for n in ov.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized > {n.input[0] for n in acc.graph.node if n.op_type == "QuantizeLinear"}  # accurate's and more
    body, inside, named = [], False, qz.bsn_body(ov)
    for n in ov.graph.node:  # a BSN pass's body: from its first masked conv to (not including) its head conv
        inside = (inside or n.name.startswith("bsn_conv")) and not n.name.startswith("bsn_head")
        assert inside == (n.name in named), n.name
        if n.op_type == "Add":
            reads = [producer[i].op_type for i in n.input]
            assert (reads == ["DequantizeLinear"] * 2) == inside, (n.name, reads)
            body += [n.name] if inside else []
    assert len(body) >= 2 * 4  # 2 passes, residual and branch sums
    convs = [n for n in ov.graph.node if n.op_type == "Conv" and not n.name.startswith(("mean4", "bsn_head"))]
    assert all(producer[n.input[0]].op_type == "DequantizeLinear" for n in convs)
    assert "LeakyRelu" not in {n.op_type for n in ov.graph.node}  # PRelu stays float, as in accurate
    assert qz.structure(ov)["int8_form"] == "openvino"
    assert qz.masked_taps_report(m, ov)["all_still_zero"]
    assert qz.blind_spot_report(ov, H, W)["max_abs_change_at_pixel"] == 0.0
    assert qz.quality_report(m.SerializeToString(), ov.SerializeToString(), qz.holdout_cases(H, W))["psnr_db"] > 40


@pytest.mark.openvino
def test_openvino_form_runs_in_int8_on_openvino(small):
    from ncis_deploy.runners.compare import compare

    m, amax = small
    q = qz.quantize_with(m, amax, form="openvino").SerializeToString()
    with make_runner("openvino", q, precision="int8") as r:
        assert set(r.layer_precisions["Convolution"]) & {"u8", "i8"}, r.layer_precisions
        result = compare({"onnxruntime": make_runner("onnxruntime", q), "openvino": r}, qz.holdout_cases(H, W),
                         1e-2)
    assert result.ok, result.pairs[0].rows()
    with pytest.raises(ValueError, match="unknown INT8 form"):
        qz.quantize_with(m, amax, form="fastest")


def test_masked_taps_stay_exactly_zero(small):
    m, amax = small
    q = qz.quantize_with(m, amax, float_layers=0)
    report = qz.masked_taps_report(m, q)
    assert report["all_still_zero"] and report["zero_taps"] >= 2 * 8 * 3  # the first conv's centre tap, 2 passes
    producer, inits = _by_output(q), _inits(q)
    first = next(n for n in q.graph.node if n.op_type == "Conv" and n.name.startswith("bsn_conv"))
    w = inits[producer[first.input[1]].input[0]]
    assert w.dtype == np.int8 and not w[:, :, 1, 1].any() and w[:, :, 0, 0].any()
    # the check can fail: a live centre tap is reported
    tensor = next(t for t in q.graph.initializer if t.name == producer[first.input[1]].input[0])
    w = w.copy()
    w[0, 0, 1, 1] = 5
    tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
    with pytest.raises(UserError, match="nonzero where the FP32 ones are 0"):
        qz.masked_taps_report(m, q)


def test_blind_spot_holds_exactly_on_the_quantized_bsn():
    p = bsn_only()
    m = build_onnx(p, H, W)
    q = qz.quantize(m, qz.calibration_set(None, H, W), float_layers=0)  # every BSN conv in int8
    sub = qz.bsn_subgraph(q)
    assert sub.graph.input[0].name == m.graph.input[0].name  # a BSN-only graph: its BSN is the whole graph
    x = np.random.default_rng(3).random((1, 3, H, W), dtype=np.float32)
    y, xp = 7, 11
    x2 = x.copy()
    x2[0, :, y, xp] = 1.0 - x2[0, :, y, xp]
    with make_runner("onnxruntime", sub.SerializeToString(), check_range=False) as r:
        a, b = r.infer(x), r.infer(x2)
    assert np.array_equal(a[0, :, y, xp], b[0, :, y, xp])  # exactly: the pixel is never read
    assert not np.array_equal(a[0, :, y, xp + 1], b[0, :, y, xp + 1])  # its neighbour is (the test can see a change)
    assert qz.blind_spot_report(q, H, W)["max_abs_change_at_pixel"] == 0.0
    # ... and a network that does read the centre is caught
    producer = _by_output(q)
    first = next(n for n in q.graph.node if n.op_type == "Conv" and n.name.startswith("bsn_conv"))
    tensor = next(t for t in q.graph.initializer if t.name == producer[first.input[1]].input[0])
    w = numpy_helper.to_array(tensor).copy()
    w[:, :, 1, 1] = 100
    tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
    with pytest.raises(UserError, match="not blind"):
        qz.blind_spot_report(q, H, W)


def test_int8_error_against_fp32_is_bounded(small):
    m, amax = small
    cases = qz.holdout_cases(H, W)
    for form in qz.INT8_FORMS:  # this tiny random purifier: 79.7-93.5 dB, max |error| <= 3.3e-4
        for layers in (0, qz.FLOAT_MASKED_LAYERS):
            q = qz.quantize_with(m, amax, float_layers=layers, form=form)
            r = qz.quality_report(m.SerializeToString(), q.SerializeToString(), cases)
            assert r["psnr_db"] >= 75 and r["max_abs"] <= 1e-3 and r["meets_psnr_target"], (form, layers, r)
            assert [c["case"] for c in r["cases"]] == [c for c, _ in cases] and "hold-out" in cases[0][0]
        # the bound has teeth: 30x too coarse a scale falls below it (46-68 dB)
        coarse = qz.quantize_with(m, {t: v * 30 for t, v in amax.items()}, float_layers=0, form=form)
        assert qz.quality_report(m.SerializeToString(), coarse.SerializeToString(), cases)["psnr_db"] < 75, form


def test_cpu_form_is_the_same_integers_and_fully_fused(small, tmp_path):
    m, amax = small
    q = qz.quantize_with(m, amax, form="fast")
    data = q.SerializeToString()
    cpu = cpu_qdq_form(data)
    assert cpu is not None and cpu_qdq_form(m.SerializeToString()) is None  # a float model is left alone
    plain = onnxruntime.SessionOptions()
    plain.log_severity_level = 3
    plain.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # ONNX semantics, no fusion
    x = np.random.default_rng(0).random((2, 3, H, W), dtype=np.float32)
    a = onnxruntime.InferenceSession(data, plain, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    b = onnxruntime.InferenceSession(cpu, plain, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.array_equal(a, b)
    c = onnx.load_from_string(cpu)
    acts = [n for n in c.graph.node if n.op_type == "QuantizeLinear"]
    assert acts and all(_inits(c)[n.input[2]].dtype == np.uint8 for n in acts)
    body = qz.bsn_body(m)  # the body's x0.5 and x1/L change no integer: dropped (the head block's are float)
    assert not any(n.op_type == "Mul" and n.name in body for n in c.graph.node)
    fused = onnxruntime.SessionOptions()
    fused.log_severity_level = 3
    fused.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(cpu, fused, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(fused.optimized_model_filepath).graph.node]
    passes = sum(n.op_type == "Conv" and n.name.startswith("bsn_head") and "_res" not in n.name for n in q.graph.node)
    # every int8 conv fused; NHWC layout kept through each BSN pass (transposes only where float meets int8)
    assert ops.count("QLinearConv") >= qz.structure(q)["int8_convs"] and ops.count("Transpose") <= 4 * passes, ops
    assert "QLinearAdd" in ops and "QLinearLeakyRelu" in ops


def test_dynamic_hw_graph_quantizes_and_runs_at_other_sizes():
    p = small_purifier()
    m = build_onnx(p, dynamic_hw=True)
    q = qz.quantize(m, qz.calibration_set(None, H, W))  # ranges skip the in-graph int64 index maths
    x = np.random.default_rng(1).random((1, 3, 31, 17), dtype=np.float32)
    with make_runner("onnxruntime", q.SerializeToString()) as r8, make_runner("onnxruntime", m.SerializeToString()) as r:
        assert np.abs(r8.infer(x) - r.infer(x)).max() < 3e-3


def test_export_int8_writes_artifact_and_manifest_entry(tmp_path):
    bsn = bsn_only(layers=5)  # the CLI path on a small BSN; the shipped one at 224² is the slow test below
    bsn.save(tmp_path / "p")
    out = tmp_path / "e"
    r = run("export", "--config", tmp_path / "p", "--out", out, "--height", 32, "--width", 32, "--int8",
            "--no-tensorrt")
    assert r.exit_code == 0, r.output
    ex = open_export(out)
    a = ex.artifacts[ONNX_INT8]
    assert a["precision"] == "int8" and ex.path(ONNX_INT8).is_file()
    assert a["inputs"] == ex.artifacts[ONNX]["inputs"] and a["outputs"] == ex.artifacts[ONNX]["outputs"]
    assert a["quantization"]["calibration"]["source"].startswith("bundled training photos")
    assert a["quantization"]["float_masked_layers"] == qz.FLOAT_MASKED_LAYERS
    # float: layers 1-3 (3x3, knight as 3 convs, centre + corners), mean4 and the head block (residual block, head);
    # int8: layers 4-5 (2 convs each) and 5 residual blocks x 2; no PRelu split (the default form is accurate)
    assert a["quantization"]["float_convs"] == 1 + 3 + 2 + 1 + 3
    assert a["quantization"]["int8_convs"] == 2 * 2 + 5 * 2
    p = ex.manifest["parity"]["int8"]
    assert p["reference"].startswith("fp32") and len(p["cases"]) == 2 and p["max_abs"] < 0.05
    assert p["psnr_db"] >= qz.PSNR_TARGET_DB and p["meets_psnr_target"] is True
    assert p["blind_spot"]["max_abs_change_at_pixel"] == 0.0 and p["masked_taps"]["all_still_zero"]
    assert "int8 (accurate), 2 hold-out cases" in r.output and "target 45 dB: met" in r.output
    assert a["quantization"]["int8_form"] == qz.DEFAULT_INT8_FORM == "accurate" == ex.int8_form
    assert a["quantization"]["weight_bits"] == qz.DEFAULT_WEIGHT_BITS == 7 == ex.int8_weight_bits
    m = json.loads((out / "manifest.json").read_text())  # made before --int8-form / -weight-bits: fast, 7 bits
    for key in ("int8_form", "weight_bits"):
        next(x for x in m["artifacts"] if x["file"] == ONNX_INT8)["quantization"].pop(key)
    (out / "manifest.json").write_text(json.dumps(m))
    assert (open_export(out).int8_form, open_export(out).int8_weight_bits) == ("fast", 7)
    # the artifact runs where the manifest says, and is what OpenVINO's int8 precision opens
    assert ex.artifact_for("openvino", "int8") == out / ONNX_INT8
    x = qz.holdout_cases(32, 32)[0][1]
    with make_runner("onnxruntime", ex.path(ONNX_INT8)) as r8, make_runner("onnxruntime", ex.path(ONNX)) as r32:
        assert np.abs(r8.infer(x) - r32.infer(x)).max() == pytest.approx(p["cases"][0]["max_abs"], rel=1e-6)


def test_export_int8_fast_form_is_recorded(tmp_path):
    bsn_only(layers=5).save(tmp_path / "p")
    out = tmp_path / "e"
    r = run("export", "--config", tmp_path / "p", "--out", out, "--height", 32, "--width", 32, "--int8",
            "--int8-form", "fast", "--no-tensorrt")
    assert r.exit_code == 0, r.output
    ex = open_export(out)
    q = ex.artifacts[ONNX_INT8]["quantization"]
    # float as accurate's; int8: accurate's, plus the depthwise conv of each of the 17 PRelus after the float layers
    # and before the head block (PRelu split into int8 kernels)
    assert q["int8_form"] == "fast" == ex.int8_form and q["placement"] == qz.INT8_FORMS["fast"]
    assert q["float_convs"] == 1 + 3 + 2 + 1 + 3 and q["int8_convs"] == 2 * 2 + 5 * 2 + 17
    assert "int8 (fast), 2 hold-out cases" in r.output
    model = onnx.load(ex.path(ONNX_INT8))
    assert {p.key: p.value for p in model.metadata_props}["ncis_deploy.int8_form"] == "fast"
    p = ex.manifest["parity"]["int8"]
    assert p["meets_psnr_target"] and p["blind_spot"]["max_abs_change_at_pixel"] == 0.0


def test_bad_calibration_folder_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "e"
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_text("not an image")
    (tmp_path / "file.png").write_text("x")
    cases = [(tmp_path / "missing", "does not exist"), (tmp_path / "file.png", "is not a directory"),
             (empty, "holds no images"), (junk, "can be decoded")]
    for folder, words in cases:
        assert_user_error(run("export", "--int8", "--calibration", folder, "--out", out, "--height", 16, "--width", 16),
                          "--calibration", words)
    assert_user_error(run("export", "--calibration", empty, "--out", out), "only used with --int8")
    assert_user_error(run("export", "--int8-form", "fast", "--out", out), "--int8-form", "only used with --int8")
    assert_user_error(run("export", "--int8-weight-bits", "8", "--out", out), "--int8-weight-bits",
                      "only used with --int8")
    r = run("export", "--int8", "--int8-form", "exact", "--out", out)  # click's own usage error
    assert r.exit_code == 2 and "Invalid value for '--int8-form'" in r.output and "Traceback" not in r.output
    assert_user_error(run("export", "--int8", "--preset", "gs", "--out", out), "--int8", "has none")
    assert_user_error(run("export", "--int8", "--smoothing", "plugin", "--out", out), "--smoothing matmul")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.png", "junk"]


def test_calibration_sources(tmp_path, monkeypatch):
    import ncis_deploy.data as data

    asked = []
    real = data.bundled_photos
    monkeypatch.setattr(data, "bundled_photos", lambda split="train": asked.append(split) or real(split))
    c = qz.calibration_set(None, H, W)
    assert asked == ["train"]  # never the hold-out photos: they measure the result
    assert c.images == len(data.BUNDLED_TRAIN) and sum(len(b) for b in c.batches) == 2 * c.images
    assert all(b.dtype == np.float32 and b.shape[1:] == (3, H, W) and 0 <= b.min() and b.max() <= 1
               for b in c.batches)
    folder = tmp_path / "cal"
    rng = np.random.default_rng(0)
    for i in range(qz.CALIBRATION_MAX_IMAGES + 4):
        write_png(folder / f"{i:02d}.png", (rng.random((12 + i, 9, 3)) * 255).astype(np.uint8))  # smaller than HxW
    (folder / "broken.jpg").write_text("x")
    c = qz.calibration_set(folder, H, W)
    assert c.images == qz.CALIBRATION_MAX_IMAGES and c.source == str(folder)
    assert c.record()["inputs"] == 2 * c.images


@pytest.mark.slow
def test_ncis_int8_at_224_meets_the_quality_target(tmp_path):
    """The shipped purifier at the default size: PSNR vs FP32 on the hold-out photos, blind spot, masked taps."""
    r = run("export", "--out", tmp_path / "e", "--int8", "--no-tensorrt")
    assert r.exit_code == 0, r.output
    p = json.loads((tmp_path / "e" / "manifest.json").read_text())["parity"]["int8"]
    assert p["psnr_db"] >= qz.PSNR_TARGET_DB and p["max_abs"] < 0.05
    # the default form with its head block float: 69.4 dB measured (64.0 with the head block int8)
    assert p["psnr_db"] >= 68 and p["cases"] and p["max_abs"] < 3e-3
    assert p["blind_spot"]["max_abs_change_at_pixel"] == 0.0 and p["masked_taps"]["all_still_zero"]


def test_int8_nodes_are_typed_for_tensorrt(small):
    """Every tensor a Q produces is int8 (shape inference agrees), so TensorRT's parser sees an INT8 network."""
    m, amax = small
    q = onnx.shape_inference.infer_shapes(qz.quantize_with(m, amax))
    types = {v.name: v.type.tensor_type.elem_type for v in q.graph.value_info}
    qs = [n.output[0] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert qs and all(types[t] == TensorProto.INT8 for t in qs)


def test_float_nodes_keep_float_what_export_int8_keeps_float(small):
    """What benchmarks/int8_cpu.py hands NNCF to leave float: the float convs of export --int8, GS before the BSN
    and everything from its head block on; the BSN body's other convs are NNCF's to quantize."""
    m = small[0]
    scope = qz.float_nodes(m)
    names = [n.name for n in m.graph.node]
    starts = [i for i, n in enumerate(names) if n.startswith("bsn_conv")] + [len(names)]
    heads = [next(i for i in range(s, e) if names[i].startswith("bsn_head")) for s, e in zip(starts, starts[1:])]
    assert len(heads) == 2 == len(starts) - 1  # this purifier runs two BSN passes
    assert qz.float_convs(m) <= scope and set(names[:starts[0]]) <= scope
    for k, h in enumerate(heads):  # the head block, baseline, reassembly and what lies before the next pass
        assert set(names[h:starts[k + 1]]) <= scope
        body = {n.name for n in m.graph.node[starts[k]:h] if n.op_type == "Conv"} - qz.float_convs(m)
        assert body and not scope & body


def test_8_bit_weights_are_finer_recorded_and_refused_where_they_would_saturate(small, tmp_path, monkeypatch):
    """--int8-weight-bits 8: weights use [-127, 127] (7 bits: [-63, 63]), the artifact says so, its error is smaller
    (onnx's reference evaluator: exact integers on every CPU), and a CPU runner without VNNI/AMX refuses it."""
    m, amax = small
    q7, q8 = (qz.quantize_with(m, amax, form="accurate", weight_bits=b) for b in (7, 8))
    for q, top, bits in ((q7, 63, 7), (q8, 127, 8)):
        assert cpu.widest_int8_weight(q) == top
        assert qz.weight_bits(q) == qz.structure(q)["weight_bits"] == bits
    x = qz.holdout_cases(H, W)[0][1][:1]

    def reference(model):  # the evaluator implements DequantizeLinear from opset 19 (same int8 semantics as 18)
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.opset_import[0].version = 19
        with make_runner("reference", model.SerializeToString()) as r:
            return r.infer(x)

    ref = reference(m)
    err = {bits: float(np.abs(reference(q) - ref).mean()) for bits, q in ((7, q7), (8, q8))}
    assert err[8] < err[7], err
    with pytest.raises(UserError, match="must be one of 7, 8"):
        qz.quantize_with(m, amax, weight_bits=6)
    monkeypatch.setattr(cpu, "cpu_isa", lambda: ["avx2", "fma", "avx512f"])  # no VNNI / AMX
    with pytest.raises(UserError, match="8-bit int8 weights.*--int8-weight-bits 7"):
        make_runner("onnxruntime", q8.SerializeToString()).activate()
    make_runner("onnxruntime", q7.SerializeToString()).activate().deactivate()  # 7 bits: exact anywhere
    if importlib.util.find_spec("openvino") is not None:
        with pytest.raises(UserError, match="OpenVINO's int8 kernels"):
            make_runner("openvino", q8.SerializeToString(), precision="int8").activate()
    # exporting 8 bits needs a CPU that can check them; refused before anything is written
    bsn_only(layers=5).save(tmp_path / "p")
    out = tmp_path / "e"
    args = ("export", "--config", tmp_path / "p", "--out", out, "--height", 32, "--width", 32, "--int8",
            "--int8-form", "accurate", "--int8-weight-bits", "8", "--no-tensorrt")
    assert_user_error(run(*args), "--int8-weight-bits 8", "no avx512_vnni")
    assert not out.exists()
    monkeypatch.setattr(cpu, "cpu_isa", lambda: ["avx2", "fma", "avx512f", "avx512_vnni"])
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert open_export(out).artifacts[ONNX_INT8]["quantization"]["weight_bits"] == 8
    assert "int8 (accurate, 8-bit weights), 2 hold-out cases" in r.output
