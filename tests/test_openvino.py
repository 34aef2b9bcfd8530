"""The OpenVINO runner: f32 parity with ONNX Runtime, bf16 really running (or refused where the CPU lacks it), int8
only on a Q/DQ model, dynamic shapes, one-line errors, and `purify --backend openvino`.

Everything here runs on any x86 CPU; the tests that need the package are marked ``openvino`` (CI installs it and
sets NCIS_DEPLOY_REQUIRE_OPENVINO=1, so they never skip there). The missing-package test runs everywhere.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ncis_deploy import cpu
from ncis_deploy.cli import cli
from ncis_deploy.errors import UserError
from ncis_deploy.exporters.manifest import BF16_NODES_KEY, ONNX_INT8
from ncis_deploy.exporters.onnx import build_onnx
from ncis_deploy.runners import RunnerInputError, make_runner
from ncis_deploy.runners.compare import compare
from ncis_deploy.runners.openvino import OpenVINORunner, resolve_precision, type_bsn_bf16

from test_cli import assert_user_error
from test_export import small_purifier

NO_BF16 = ["avx2", "fma", "avx512f", "avx512_vnni"]  # an AVX-512 CPU without BF16 (e.g. Cascade Lake)
SHAPES = [(3, 3, 20, 27), (1, 3, 2, 2), (2, 3, 5, 7), (1, 3, 33, 3)]  # batch, H and W all vary


def cases(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"{list(s)}", rng.random(s, dtype=np.float32)) for s in shapes]


@pytest.fixture(scope="module")
def purifier():
    return small_purifier()


@pytest.fixture(scope="module")
def dyn_path(tmp_path_factory, purifier):
    """A small purifier (GS, BSN with 4 masked layers, GS) with dynamic N, H and W."""
    path = tmp_path_factory.mktemp("ov") / "purifier.onnx"
    onnx.save(build_onnx(purifier, dynamic_hw=True), path)
    return path


@pytest.fixture(scope="module")
def f32(dyn_path):
    """One active f32 runner for the module: compiling takes about a second on this 2-core machine."""
    with make_runner("openvino", dyn_path, precision="f32", threads=1) as r:
        yield r


@pytest.fixture(scope="module")
def qdq_path(tmp_path_factory, purifier):
    """The same purifier at 16x16 with explicit Q/DQ around its convolutions (ORT's static QDQ quantizer), standing
    in for the `export --int8` artifact."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    d = tmp_path_factory.mktemp("ovq")
    onnx.save(build_onnx(purifier, 16, 16), d / "f.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x} for _, x in cases([(1, 3, 16, 16)] * 2)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(d / "f.onnx"), str(d / ONNX_INT8), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return d / ONNX_INT8


@pytest.mark.openvino
def test_f32_equals_onnxruntime_on_dynamic_shapes(dyn_path, purifier, f32):
    result = compare({"onnxruntime": make_runner("onnxruntime", dyn_path), "openvino": f32}, cases(), 1e-4)
    assert result.ok, result.pairs[0].rows()
    x = cases()[0][1]  # and the PyTorch purifier itself
    assert np.abs(f32.infer(x) - purifier(torch.from_numpy(x)).detach().numpy()).max() < 1e-4
    assert (f32.precision, f32.inference_precision) == ("f32", "f32")
    # f32 asked for explicitly: the CPU plugin's own default is bf16 on a BF16 CPU (this one included)
    assert set(f32.layer_precisions["Convolution"]) == {"f32"}, f32.layer_precisions
    assert f32.record["inference_precision_hint"] == "f32" and f32.record["isa"] == cpu.cpu_isa()
    spec = f32.input_spec
    assert (spec.batch, spec.height, spec.width) == ((1, None), (2, None), (2, None))


@pytest.mark.openvino
def test_bytes_and_modelproto_and_input_checks(dyn_path, f32):
    x = cases()[2][1]
    with pytest.raises(RunnerInputError, match="uint8 images"):
        f32.infer((x * 255).astype(np.uint8))
    with pytest.raises(RunnerInputError, match=r"values must be in \[0, 1\]"):
        f32.infer(x * 2)
    assert OpenVINORunner(onnx.load(str(dyn_path))).model == dyn_path.read_bytes()  # a ModelProto runs as bytes
    with OpenVINORunner(dyn_path.read_bytes(), precision="f32") as r:
        assert np.array_equal(r.infer(x), f32.infer(x))


@pytest.mark.openvino
def test_bf16_runs_natively_or_is_refused(dyn_path, f32):
    """Where the CPU has BF16 (this machine: avx512_bf16) auto is bf16, and it must really run: close to f32 but
    not equal to it. Elsewhere bf16 must be refused, not emulated, and auto is f32."""
    if "bf16" not in cpu.native_precisions():
        with pytest.raises(UserError, match="no native BF16"):
            make_runner("openvino", dyn_path, precision="bf16").activate()
        with make_runner("openvino", dyn_path) as r:
            assert r.precision == "f32"
        return
    auto = make_runner("openvino", dyn_path, threads=1)
    result = compare({"f32": f32, "auto": auto}, cases(), 2e-2)
    pair = result.pairs[0]
    assert result.ok and pair.max_abs > 1e-5, pair.rows()  # bounded, and not zero: bf16 really ran
    with auto:  # the BSN typed bf16, so the compile hint is f32 (the image-scale ops keep it)
        assert (auto.requested_precision, auto.precision, auto.inference_precision) == ("auto", "bf16", "f32")
        assert auto.layer_precisions["Convolution"] == {"bf16": 38}, auto.layer_precisions  # 2 passes x 19
        assert auto.layer_precisions["MatMul"] == {"f32": 12}, auto.layer_precisions  # GS
        assert (auto.record["bf16_scope"], auto.record["bf16_ops"] > 0) == ("bsn", True)


@pytest.mark.openvino
def test_bf16_types_the_bsn_passes_and_leaves_the_image_f32():
    """type_bf16 (what the runner's bf16 does by default): every op of both BSN passes, masked convs to head conv,
    is bf16; GS, the bilateral baseline, the sum with it and the clip stay f32, everything in between converted."""
    import openvino as ov

    m = build_onnx(small_purifier(baseline="bilateral"), dynamic_hw=True)
    names = set({p.key: p.value for p in m.metadata_props}[BF16_NODES_KEY].split(","))
    assert len([n for n in names if n.startswith("bsn_head_") and not n.startswith("bsn_head_res")]) == 2
    model = ov.Core().read_model(m.SerializeToString())
    assert type_bsn_bf16(model) > 0
    typed = {"bf16": set(), "f32": set()}
    for op in model.get_ops():
        kind = op.get_type_name()
        t = op.get_output_element_type(0).get_type_name() if op.get_output_size() else None
        if kind in ("Convert", "Constant", "Result") or t not in typed:
            continue
        name = op.get_friendly_name().split("/")[0]
        assert (t == "bf16") == (name in names), (kind, op.get_friendly_name(), t)
        typed[t].add(name.rsplit("_", 1)[0])
    assert {"bsn_conv", "bsn_centre", "bsn_corners", "res_conv", "prelu", "bsn_head_res", "bsn_head"} <= typed["bf16"]
    assert {"gs_h", "gs_w", "mean4", "bilateral_taps", "bilateral", "clip"} <= typed["f32"], typed["f32"]
    assert [p.get_element_type().get_type_name() for p in model.inputs + model.outputs] == ["f32", "f32"]
    # an export without the list (older, or no BSN) is left as it is: the runner falls back to OpenVINO's bf16 hint
    props = [p for p in m.metadata_props if p.key != BF16_NODES_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(props)
    assert type_bsn_bf16(ov.Core().read_model(m.SerializeToString())) == 0


@pytest.mark.openvino
def test_bf16_of_the_bsn_only_is_closer_to_f32_than_the_bf16_hint():
    """On a BF16 CPU: OpenVINO's own bf16 hint (scope "all") also rounds GS's matrix products and the baseline's
    gathers; the default scope ("bsn") does not, and its error against f32 is several times smaller. Elsewhere
    both scopes are refused."""
    m = build_onnx(small_purifier(baseline="bilateral"), dynamic_hw=True).SerializeToString()
    with pytest.raises(UserError, match="bf16_scope must be one of bsn, all, got 'body'"):
        OpenVINORunner(m, bf16_scope="body")
    if "bf16" not in cpu.native_precisions():  # refused, whatever the scope
        with pytest.raises(UserError, match="no native BF16"):
            OpenVINORunner(m, precision="bf16", bf16_scope="all").activate()
        return
    x = np.random.default_rng(0).random((2, 3, 40, 36), dtype=np.float32)
    with OpenVINORunner(m, precision="f32", threads=1) as r:
        ref = r.infer(x)
    rms = {}
    for scope in ("bsn", "all"):
        with OpenVINORunner(m, precision="bf16", threads=1, bf16_scope=scope) as r:
            rms[scope] = float(np.sqrt(np.mean((r.infer(x) - ref) ** 2)))
            assert r.record["bf16_scope"] == scope and "bf16" in r.layer_precisions["Convolution"]
    assert 0 < rms["bsn"] < rms["all"] / 2, rms  # measured 2.3e-4 vs 7.5e-4


def test_bf16_is_refused_when_the_isa_lacks_it(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_isa", lambda: list(NO_BF16))
    assert cpu.native_precisions() == ["f32", "int8"]
    with pytest.raises(UserError, match=r"no native BF16 \(neither avx512_bf16 nor amx_bf16.*choose precision f32"):
        resolve_precision("bf16", quantized=False)
    assert resolve_precision("auto", quantized=False) == "f32"
    monkeypatch.setattr(cpu, "cpu_isa", lambda: NO_BF16 + ["amx_tile", "amx_bf16"])
    assert resolve_precision("bf16", quantized=False) == resolve_precision("auto", quantized=False) == "bf16"


@pytest.mark.openvino
def test_bf16_refused_at_activation_without_the_isa(dyn_path, monkeypatch):
    monkeypatch.setattr(cpu, "cpu_isa", lambda: list(NO_BF16))
    r = make_runner("openvino", dyn_path, precision="bf16")
    with pytest.raises(UserError, match="no native BF16"):
        r.activate()
    assert not r.is_active


def test_precision_rules_for_quantized_and_float_models():
    assert resolve_precision("int8", quantized=True) == resolve_precision("auto", quantized=True) == "int8"
    with pytest.raises(UserError, match=f"no QuantizeLinear/DequantizeLinear.*{ONNX_INT8}.*export --int8"):
        resolve_precision("int8", quantized=False)
    with pytest.raises(UserError, match="is quantized.*runs it in int8 whatever"):
        resolve_precision("f32", quantized=True)
    with pytest.raises(UserError, match="precision must be one of auto, f32, bf16, int8, got 'fp16'"):
        OpenVINORunner("m.onnx", precision="fp16")
    assert OpenVINORunner("m.onnx", precision="FP32").requested_precision == "f32"


@pytest.mark.openvino
def test_int8_refused_on_a_float_model(dyn_path):
    r = make_runner("openvino", dyn_path, precision="int8")
    with pytest.raises(UserError, match=f"has no QuantizeLinear/DequantizeLinear nodes.*{ONNX_INT8}"):
        r.activate()
    assert not r.is_active


@pytest.mark.openvino
def test_int8_runs_a_qdq_model_in_int8(qdq_path):
    x = cases([(2, 3, 16, 16), (1, 3, 16, 16)])
    with make_runner("openvino", qdq_path, precision="int8") as r:
        assert (r.precision, r.inference_precision) == ("int8", "f32")
        conv = r.layer_precisions["Convolution"]
        assert set(conv) & {"u8", "i8"}, r.layer_precisions  # int8 kernels, not FakeQuantize emulated in f32
        # the same quantized graph on two runtimes: only their int8 rounding differs (5e-4 measured here)
        result = compare({"onnxruntime": make_runner("onnxruntime", qdq_path), "openvino": r}, x, 1e-2)
    assert result.ok, result.pairs[0].rows()
    with pytest.raises(UserError, match="is quantized"):
        make_runner("openvino", qdq_path, precision="f32").activate()


def test_missing_openvino_is_one_line(dyn_path, monkeypatch, tmp_path, image_dir):
    monkeypatch.setitem(sys.modules, "openvino", None)  # behave as if not installed, even where it is
    r = make_runner("openvino", dyn_path)
    with pytest.raises(UserError) as e:
        r.activate()
    assert str(e.value) == ("the optional package 'openvino' is not installed; install it with: "
                            "pip install 'ncis-deploy[openvino]'")
    out = tmp_path / "o"
    res = CliRunner().invoke(cli, ["purify", str(image_dir / "a.png"), "--backend", "openvino", "--model",
                                   str(dyn_path), "--out", str(out)])
    assert_user_error(res, "pip install 'ncis-deploy[openvino]'")
    assert not out.exists()  # nothing half-written


@pytest.mark.openvino
def test_bad_models_are_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_runner("openvino", tmp_path / "nope.onnx").activate()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"OpenVINO cannot read .*bad.onnx as an ONNX model \(.*\); re-export") as e:
        make_runner("openvino", bad).activate()
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="threads must be a positive integer"):
        make_runner("openvino", bad, threads=0)


@pytest.mark.openvino
def test_purify_cli_openvino_equals_onnxruntime(dyn_path, tmp_path, image_dir):
    def run(*args):
        return CliRunner().invoke(cli, ["purify", str(image_dir), "--model", str(dyn_path), *map(str, args)])

    for backend, extra in (("onnxruntime", ()), ("openvino", ("--precision", "f32"))):
        r = run("--backend", backend, "--out", tmp_path / backend, *extra)
        assert r.exit_code == 0, r.output
    names = sorted(p.relative_to(tmp_path / "onnxruntime") for p in (tmp_path / "onnxruntime").rglob("*.png"))
    assert len(names) == 3 and names == sorted(p.relative_to(tmp_path / "openvino")
                                               for p in (tmp_path / "openvino").rglob("*.png"))
    for n in names:
        a, b = (np.asarray(Image.open(tmp_path / d / n), dtype=int) for d in ("onnxruntime", "openvino"))
        assert np.abs(a - b).max() <= 1, n  # f32 within 1e-4 can flip a rounding to 8 bits, no more
    assert_user_error(run("--backend", "onnxruntime", "--precision", "bf16", "--out", tmp_path / "x"),
                      "--precision only applies to the openvino backend")
    assert_user_error(run("--backend", "openvino", "--precision", "int8", "--out", tmp_path / "x"),
                      "no QuantizeLinear/DequantizeLinear")
    assert_user_error(run("--backend", "openvino", "--device", "cuda", "--out", tmp_path / "x"), "CPU only")
    assert not (tmp_path / "x").exists()


@pytest.mark.openvino
def test_each_shape_runs_a_static_compile_of_its_own(dyn_path):
    """The dynamic-batch model is compiled once more per input shape (faster on OpenVINO's CPU plugin), the most
    recently used `static_shapes` kept; the results are the dynamic model's."""
    shapes = [(1, 3, 16, 16), (2, 3, 16, 16), (1, 3, 12, 20)]
    xs = [x for _, x in cases(shapes)]
    with OpenVINORunner(dyn_path, precision="f32", static_shapes=0) as dynamic, \
            OpenVINORunner(dyn_path, precision="f32", static_shapes=2) as static:
        for x in xs:
            assert np.abs(static.infer(x) - dynamic.infer(x)).max() < 1e-5
        assert static.record["compiled_shapes"] == [list(s) for s in shapes[1:]]  # the first one was dropped
        static.infer(xs[1])
        assert static.record["compiled_shapes"] == [list(shapes[2]), list(shapes[1])]  # used last: kept longest
        assert dynamic.record["compiled_shapes"] == [] and dynamic.record["static_shapes"] == 0
    with pytest.raises(UserError, match="static_shapes"):
        OpenVINORunner(dyn_path, static_shapes=-1)


@pytest.mark.openvino
def test_a_batch_runs_in_chunks_of_chunk_pixels(dyn_path):
    """Larger batches run slower per image on OpenVINO's CPU plugin here, so a batch runs as pieces of at most
    `chunk_pixels` pixels (whole images), each a static compile; the result is the whole batch's."""
    x = np.concatenate([x for _, x in cases([(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)])])  # 5 images
    with OpenVINORunner(dyn_path, precision="f32", static_shapes=0, chunk_pixels=0) as whole, \
            OpenVINORunner(dyn_path, precision="f32", chunk_pixels=2 * 16 * 16 + 5) as chunked:
        assert np.abs(chunked.infer(x) - whole.infer(x)).max() < 1e-5
        assert chunked.record["compiled_shapes"] == [[2, 3, 16, 16], [1, 3, 16, 16]]  # 2 + 2 + 1
        assert chunked.record["chunk_pixels"] == 2 * 16 * 16 + 5
        chunked.infer(x[:, :, :8, :8])  # 4 times fewer pixels per image: all 5 at once
        assert chunked.record["compiled_shapes"][-1] == [5, 3, 8, 8]
    with OpenVINORunner(dyn_path, precision="f32", chunk_pixels=1) as single:  # below one image: one at a time
        single.infer(x)
        assert single.record["compiled_shapes"] == [[1, 3, 16, 16]]


@pytest.mark.openvino
def test_a_fixed_size_export_compiles_only_its_one_image_shape_at_activation(tmp_path, purifier):
    """Dynamic batch, fixed H and W: activation compiles [1, 3, H, W] (what single images run in, and what the
    precision checks read) and not the dynamic model as well; other batch shapes compile when met, as before."""
    path = tmp_path / "fixed.onnx"
    onnx.save(build_onnx(purifier, 16, 12), path)
    x = cases([(3, 3, 16, 12)])[0][1]
    with OpenVINORunner(path, precision="f32") as r, make_runner("onnxruntime", path) as ort:
        assert r.record["compiled_shapes"] == [[1, 3, 16, 12]] and r._shapes.fallback is None
        assert r.layer_precisions["Convolution"] == {"f32": 38}
        assert np.abs(r.infer(x) - ort.infer(x)).max() < 1e-4 and np.abs(r.infer(x[:1]) - ort.infer(x[:1])).max() < 1e-4
        assert r.record["compiled_shapes"] == [[3, 3, 16, 12], [1, 3, 16, 12]]  # 3 images are one chunk of 224² px
