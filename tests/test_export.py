import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ncis_deploy import load_purifier
from ncis_deploy.cli import cli
from ncis_deploy.exporters import pipeline
from ncis_deploy.exporters.gate import check_tensorrt_compatible
from ncis_deploy.exporters.manifest import sha256_file
from ncis_deploy.exporters.onnx import build_onnx, count_macs
from ncis_deploy.exporters.pipeline import ExportOptions, export, parse_batch
from ncis_deploy.errors import UserError
from ncis_deploy.model import bsn as bsn_module
from ncis_deploy.model.purifier import Purifier
from ncis_deploy.runners import make_runner

from test_cli import assert_user_error


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def small_purifier(layers=4, filters=8, gs_iterations=3, seed=0, baseline="none"):
    cfg = {"stages": [{"type": "gs", "kernel_size": 3, "sigma": 1.0, "iterations": gs_iterations},
                      {"type": "bsn", "iterations": 2},
                      {"type": "gs", "kernel_size": 5, "sigma": 0.7, "iterations": 1},
                      {"type": "gs", "kernel_size": 3, "sigma": 1.2, "iterations": 2}],
           "bsn": {"channels": 3, "layers": layers, "filters": filters, "baseline": baseline}}
    p = Purifier(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in p.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.2)
    return p.eval()


def ort(model, x):
    with make_runner("onnxruntime", model.SerializeToString()) as r:
        return r.infer(x)


@pytest.mark.parametrize("baseline", ["none", "mean4", "bilateral"])
def test_onnx_matches_torch_fixed_and_dynamic(baseline):
    p = small_purifier(baseline=baseline)
    with torch.no_grad():
        x = np.random.default_rng(0).random((3, 3, 20, 27), dtype=np.float32)
        ref = p(torch.from_numpy(x)).numpy()
        fixed = build_onnx(p, 20, 27)
        assert np.abs(ort(fixed, x) - ref).max() < 1e-5
        dyn = build_onnx(p, dynamic_hw=True)
        for shape in [(3, 3, 20, 27), (1, 3, 2, 2), (2, 3, 5, 7), (1, 3, 33, 3)]:
            xi = np.random.default_rng(1).random(shape, dtype=np.float32)
            assert np.abs(ort(dyn, xi) - p(torch.from_numpy(xi)).numpy()).max() < 1e-5, shape
    for m in (fixed, dyn):
        onnx.checker.check_model(m, full_check=True)
        check_tensorrt_compatible(m)
        ops = {n.op_type for n in m.graph.node}
        assert not ops & {"Loop", "Scan", "If"}


def test_graph_shape_unrolled_fused_and_tap_free():
    p = small_purifier(layers=4, filters=8)
    m = build_onnx(p, 16, 16)
    ops = [n.op_type for n in m.graph.node]
    # two GS runs (the two trailing stages are fused into one): one MatMul per axis each, nothing else for GS
    assert ops.count("MatMul") == 4 and "Pad" not in ops
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    dil = {c.name: tuple(next(a.ints for a in c.attribute if a.name == "dilations")) for c in convs}
    kernels = sorted({tuple(inits[c.input[1]].shape[2:]) + dil[c.name] for c in convs})
    # 3x3 (layer 1), 1x1 (centres and residual blocks), 2x2 with dilation (2,4)/(4,2) (layer 2), (6,6) (layers 3..L)
    assert kernels == [(1, 1, 1, 1), (2, 2, 2, 4), (2, 2, 4, 2), (2, 2, 6, 6), (3, 3, 1, 1)]
    # two BSN iterations are unrolled with shared weights: every initializer is used, none duplicated
    assert len([c for c in convs if tuple(inits[c.input[1]].shape[2:]) == (3, 3)]) == 2
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["ncis_deploy.config"]) == p.config
    assert meta["ncis_deploy.input_range"] == "[0, 1]" and meta["ncis_deploy.layout"] == "NCHW"
    assert len(meta["ncis_deploy.weights_sha256"]) == 64


def test_graph_is_shaped_for_the_cpu_runtimes():
    """What made OpenVINO/ORT slow, measured (docs/export.md): PRelu slopes of a lower rank than their input (OpenVINO
    ran those chains planar, 1.9x slower in f32), a Softmax over the channel axis, a Split of the 3·T gathered taps."""
    m = build_onnx(small_purifier(baseline="bilateral"), 16, 16)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    prelus = [n for n in m.graph.node if n.op_type == "PRelu"]
    assert prelus and all(inits[n.input[1]].shape == (1, inits[n.input[1]].size, 1, 1) for n in prelus)
    assert not any(n.op_type == "Softmax" for n in m.graph.node)
    splits = [n for n in m.graph.node if n.op_type == "Split"]
    assert splits and all(len(n.output) == 3 and all(inits[n.input[1]] == 1) for n in splits)


def _bilateral_only(dynamic_hw=False, fp16=False):
    """A fresh BSN over the bilateral: its correction starts at 0, so the export computes the baseline alone."""
    p = Purifier({"stages": [{"type": "bsn", "iterations": 1}], "clamp": False,
                  "bsn": {"channels": 3, "layers": 2, "filters": 4, "baseline": "bilateral"}}).eval()
    return p, build_onnx(p, None if dynamic_hw else 12, None if dynamic_hw else 12, dynamic_hw=dynamic_hw, fp16=fp16)


def test_exported_bilateral_is_the_models_and_blind_at_every_pixel():
    """The export writes the bilateral's softmax without its max and its in-image mask as a far-off pad value
    (exporters/onnx.py): the same numbers, still blind at every pixel (borders, where the pad is read, included),
    and finite for input far outside [0, 1], where a plain exp / sum would give 0 / 0."""
    p, m = _bilateral_only()
    gathers = [n for n in m.graph.node if n.op_type == "Conv" and n.name.startswith("bilateral")]
    assert len(gathers) == 3 and "ReduceMax" not in [n.op_type for n in m.graph.node]  # one gather per channel
    x = np.random.default_rng(0).random((1, 3, 12, 12), dtype=np.float32)
    with torch.no_grad():
        assert torch.allclose(p(torch.from_numpy(x)), bsn_module.bilateral(torch.from_numpy(x)), atol=1e-7)
        ref = p(torch.from_numpy(x)).numpy()
    with make_runner("onnxruntime", m.SerializeToString()) as r:
        assert np.abs(r.infer(x) - ref).max() < 1e-6
        same = np.repeat(x, 144, axis=0)
        moved, k, (ii, jj) = same.copy(), np.arange(144), np.divmod(np.arange(144), 12)
        moved[k, :, ii, jj] = 1.0 - moved[k, :, ii, jj]  # image k has its pixel k moved
        assert np.array_equal(r.infer(moved)[k, :, ii, jj], r.infer(same)[k, :, ii, jj])
    with make_runner("onnxruntime", m.SerializeToString(), check_range=False) as r:
        assert np.isfinite(r.infer(x * 255.0)).all()
    for dyn, fp16 in ((True, False), (False, True)):
        _, other = _bilateral_only(dyn, fp16)
        assert ("ReduceMax" in [n.op_type for n in other.graph.node]) == fp16  # fp16 underflows at exp(-17)
        assert np.abs(ort(other, x) - ref).max() < (1e-2 if fp16 else 1e-6)


def test_live_tap_bsn_needs_at_most_062_of_dense_macs():
    bsn = Purifier({"stages": [{"type": "bsn", "iterations": 1}], "bsn": {"channels": 3, "layers": 17, "filters": 32},
                    "clamp": False}).eval()
    live, dense = build_onnx(bsn, 32, 32), build_onnx(bsn, 32, 32, dense_bsn=True)
    ml, md = count_macs(live, (1, 3, 32, 32)), count_macs(dense, (1, 3, 32, 32))
    assert ml["total"] <= 0.62 * md["total"]
    # hand count for L=17, F=32, C=3 per pixel: dense 864 + 25600 + 15*9216 + 18 residuals*2048 + 96
    assert md["total"] == 32 * 32 * (864 + 25 * 1024 + 15 * 9 * 1024 + 18 * 2 * 1024 + 96)
    assert ml["total"] == 32 * 32 * (864 + 9 * 1024 + 15 * 5 * 1024 + 18 * 2 * 1024 + 96)
    x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    assert np.abs(ort(live, x) - ort(dense, x)).max() < 1e-5


@pytest.mark.parametrize("baseline", ["none", "bilateral"])
def test_fp16_export_is_fp16_typed_and_close(baseline):
    p = small_purifier(baseline=baseline)
    m = build_onnx(p, 24, 24, fp16=True)
    onnx.checker.check_model(m, full_check=True)
    float_inits = [t for t in m.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert float_inits and all(t.data_type == TensorProto.FLOAT16 for t in float_inits)
    x = np.random.default_rng(0).random((2, 3, 24, 24), dtype=np.float32)
    err = np.abs(ort(m, x) - p(torch.from_numpy(x)).detach().numpy()).max()
    assert 0 < err < 1e-2


def test_parse_batch():
    assert parse_batch("1:8:32") == (1, 8, 32) and parse_batch("4") == (4, 4, 4)
    for bad, msg in [("0:1:2", ">= 1"), ("8:4:16", "MIN <= OPT <= MAX"), ("1:2", "three"), ("a:b:c", "integers")]:
        with pytest.raises(UserError, match=msg):
            parse_batch(bad)


def tiny_classifier(path, classes=5):
    """GlobalAveragePool → Flatten → Gemm: an ONNX 'classifier' made by hand, opset 17 to exercise conversion."""
    w = np.random.default_rng(0).standard_normal((3, classes)).astype(np.float32) * 5
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["img"], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
         helper.make_node("Gemm", ["flat", "W"], ["logits"])], "cls",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        initializer=[numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_export_cli_default_preset_small(tmp_path):
    cls = tiny_classifier(tmp_path / "cls.onnx")
    r = run("export", "--out", tmp_path / "e", "--height", 40, "--width", 36, "--fp16", "--classifier", cls,
            "--json", tmp_path / "m.json")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert m == json.loads((tmp_path / "m.json").read_text())
    files = {a["file"]: a for a in m["artifacts"]}
    assert set(files) == {"purifier.onnx", "purifier_fp16.onnx", "purifier_classifier.onnx"}
    for name, a in files.items():
        assert a["sha256"] == sha256_file(tmp_path / "e" / name)
    assert files["purifier.onnx"]["inputs"] == [{"name": "input", "shape": ["batch", 3, 40, 36], "dtype": "float32"}]
    assert m["parity"]["fp32"]["max_abs"] <= 1e-4
    assert len(m["parity"]["fp32"]["cases"]) == 3
    assert 0 < m["parity"]["fp16"]["max_abs"] < 1e-2
    assert m["parity"]["classifier"]["top1_agreement"] >= 0.99
    # the masked layers alone need ≤ 0.62 of their dense MACs (test_live_tap_bsn_needs_at_most_062_of_dense_macs);
    # the shipped BSN's bilateral baseline costs the same in both forms, so the whole ratio is a little higher
    assert m["bsn_macs"]["ratio"] <= 0.64 and m["bsn_macs"]["max_abs_diff_live_vs_dense"] <= 1e-5
    assert m["tensorrt"]["built"] is False and m["tensorrt"]["reason"]
    assert m["purifier"]["config"] == load_purifier("ncis").config
    assert {"torch", "onnx", "onnxruntime", "ncis_deploy"} <= set(m["versions"])
    assert "TensorRT engine: not built" in r.output


def test_dynamic_hw_export_checks_other_sizes(tmp_path):
    m = export(ExportOptions(source=None, out=str(tmp_path / "e"), height=24, width=20, dynamic_hw=True, large_batch=2))
    names = [c["case"] for c in m["parity"]["fp32"]["cases"]]
    assert any("97x131" in n for n in names) and any("33x50" in n for n in names)
    assert m["input"]["shape"] == ["batch", 3, "height", "width"]


def test_failure_midway_leaves_previous_export_untouched(tmp_path, monkeypatch):
    out = tmp_path / "e"
    export(ExportOptions(source="gs", out=str(out), height=16, width=16, large_batch=2))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(pipeline, "bsn_tap_report", boom)  # after the ONNX and parity, before the manifest
    with pytest.raises(RuntimeError, match="injected"):
        export(ExportOptions(source=None, out=str(out), height=16, width=16, large_batch=2))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["e"]  # no temporary directory left behind
    # and a fresh --out that fails leaves nothing at all
    with pytest.raises(RuntimeError):
        export(ExportOptions(source=None, out=str(tmp_path / "new"), height=16, width=16, large_batch=2))
    assert not (tmp_path / "new").exists()


def test_export_bad_inputs(tmp_path):
    good = tmp_path / "p"
    Purifier({"stages": [{"type": "bsn", "iterations": 1}], "bsn": {"channels": 3, "layers": 3, "filters": 8}}).save(good)
    other = tmp_path / "q"
    Purifier({"stages": [{"type": "bsn", "iterations": 1}], "bsn": {"channels": 3, "layers": 3, "filters": 4}}).save(other)
    assert_user_error(run("export", "--config", good / "purifier.json", "--weights", other / "bsn.safetensors",
                          "--out", tmp_path / "e"), "do not fit", "architecture")
    assert_user_error(run("export", "--batch", "0:1:2", "--out", tmp_path / "e"), ">= 1")
    assert_user_error(run("export", "--batch", "16:8:4", "--out", tmp_path / "e"), "MIN <= OPT <= MAX")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run("export", "--out", blocker / "sub", "--preset", "gs"), "cannot write")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert_user_error(run("export", "--out", tmp_path / "mine", "--preset", "gs"), "not an ncis-deploy export")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    assert_user_error(run("export", "--tensorrt", "--out", tmp_path / "e", "--preset", "gs"), "--tensorrt")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert_user_error(run("export", "--classifier", tmp_path / "bad.onnx", "--out", tmp_path / "e", "--preset", "gs"),
                      "not a valid ONNX")
    assert not (tmp_path / "e").exists()


# the default export (ncis at 224x224, parity-checked up to batch 32) is slow on a CPU; the fast run changes only
# the image size
@pytest.mark.parametrize("size", [pytest.param(32, id="small-images"),
                                  pytest.param(None, marks=pytest.mark.slow, id="zero-arguments")])
def test_zero_argument_export(tmp_path, monkeypatch, size):
    monkeypatch.chdir(tmp_path)
    r = run("export", *(["--height", size, "--width", size] if size else []))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ncis_export" / "manifest.json").read_text())
    model = onnx.load(tmp_path / "ncis_export" / "purifier.onnx")
    onnx.checker.check_model(model, full_check=True)
    check_tensorrt_compatible(model)
    hw = size or 224
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 3, hw, hw]
    assert m["parity"]["fp32"]["max_abs"] <= 1e-4
    assert m["options"]["batch"] == [1, 8, 32]


# the shipped 17-layer BSN is slow on a CPU; the fast run uses a small BSN between GS stages
@pytest.mark.parametrize("source", ["small", pytest.param("ncis", marks=pytest.mark.slow)])
def test_purify_through_onnxruntime_matches_torch(tmp_path, image_dir, source):
    if source == "small":
        source = str(tmp_path / "small")
        small_purifier().save(source)
    export(ExportOptions(source=source, out=str(tmp_path / "e"), dynamic_hw=True, height=32, width=32, large_batch=2))
    r1 = run("purify", image_dir, "--out", tmp_path / "ort", "--backend", "onnxruntime",
             "--model", tmp_path / "e" / "purifier.onnx")
    assert r1.exit_code == 0, r1.output
    r2 = run("purify", image_dir, "--out", tmp_path / "pt", *(["--config", source] if source != "ncis" else []))
    assert r2.exit_code == 0, r2.output
    from PIL import Image
    for rel in ("a.png", "sub/b.png", "sub/c.png"):
        a = np.asarray(Image.open(tmp_path / "ort" / rel), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "pt" / rel), dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # 8-bit rounding of outputs equal within ~1e-6


def test_purify_backend_bad_inputs(tmp_path, image_dir):
    export(ExportOptions(source="gs", out=str(tmp_path / "e"), height=16, width=16, large_batch=2))
    onnx_path = tmp_path / "e" / "purifier.onnx"
    data = onnx_path.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    for bad in ("cut.onnx", "junk.onnx"):
        assert_user_error(run("purify", image_dir, "--out", tmp_path / "o", "--backend", "onnxruntime",
                              "--model", tmp_path / bad), bad)
    # a fixed 16x16 export refuses other sizes with a hint, naming the image
    assert_user_error(run("purify", image_dir / "a.png", "--out", tmp_path / "o", "--backend", "onnxruntime",
                          "--model", onnx_path), "a:", "16")
    assert_user_error(run("purify", image_dir, "--out", tmp_path / "o", "--backend", "onnxruntime",
                          "--model", tmp_path / "missing.onnx"), "does not exist")
    assert not list((tmp_path / "o").rglob("*"))  # the size check fails before the first PNG is written


def test_runner_rejects_wrong_channel_count(tmp_path):
    from ncis_deploy.runners import RunnerInputError, make_runner

    export(ExportOptions(source="gs", out=str(tmp_path / "e"), height=16, width=16, large_batch=2))
    for backend, artifact in [("onnxruntime", tmp_path / "e" / "purifier.onnx"), ("torch", "gs")]:
        with make_runner(backend, artifact) as r:
            with pytest.raises(RunnerInputError, match="channel"):
                r.infer(np.zeros((1, 4, 16, 16), np.float32) + 0.5)
            with pytest.raises(RunnerInputError, match="transpose"):
                r.infer(np.zeros((1, 16, 16, 3), np.float32) + 0.5)
            assert r.infer(np.full((2, 3, 16, 16), 0.25, np.float32)).shape == (2, 3, 16, 16)
