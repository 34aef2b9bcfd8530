"""Runners: the shared input checks, lifecycle, ONNX Runtime on CPU, torch, and the TensorRT runner's logic.

The TensorRT runner cannot run for real here (no GPU, no tensorrt); ``test_tensorrt_runner_logic_*`` drive it
through small fakes of ``tensorrt`` and ``cuda.bindings.runtime`` that move real bytes, which checks our shape /
buffer / CUDA-graph bookkeeping but not TensorRT itself. The ``tensorrt``-marked tests do that on a GPU machine.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import time
import types

import numpy as np
import pytest

from ncis_deploy.errors import UserError
from ncis_deploy.runners import (BACKENDS, InactiveRunnerError, InputSpec, RunnerInputError, check_input,
                                 input_spec_from_onnx, make_runner)
from ncis_deploy.runners.onnxruntime import OnnxRuntimeRunner, provider_list
from ncis_deploy.runners.tensorrt import TensorRTRunner, cuda_check


def tiny_onnx(path, h=8, w=8, dtype="float32", metadata=None):
    """y = clip(0.5 * x, 0, 1) with input [batch, 3, h, w]; h/w may be strings (symbolic dims)."""
    import onnx
    from onnx import TensorProto, helper

    et = TensorProto.FLOAT if dtype == "float32" else TensorProto.FLOAT16
    x = helper.make_tensor_value_info("input", et, ["batch", 3, h, w])
    y = helper.make_tensor_value_info("output", et, ["batch", 3, h, w])
    consts = [helper.make_tensor(n, et, [], [v]) for n, v in (("half", 0.5), ("lo", 0.0), ("hi", 1.0))]
    nodes = [helper.make_node("Mul", ["input", "half"], ["m"]), helper.make_node("Clip", ["m", "lo", "hi"], ["output"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], consts),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, metadata or {"ncis_deploy.layout": "NCHW"})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# ------------------------------------------------------------------------------------------------- input checks
SPEC = InputSpec(batch=(1, 4), height=(8, 8), width=(8, 8))


@pytest.mark.parametrize("x, expected", [
    ([[0.5]], "must be a numpy array, got list"),
    (rand(1, 3, 8, 8).astype(np.float64),
     "dtype is float64 but the model takes float32; cast with x.astype(np.float32)"),
    ((rand(1, 3, 8, 8) * 255).astype(np.uint8), "(x / 255.0).astype(np.float32)"),
    (rand(3, 8, 8), "got 3-D shape [3, 8, 8] (a single image: add the batch axis with x[None])"),
    (rand(1, 1, 3, 8, 8), "must be 4-D"),
    (rand(1, 8, 8, 3),
     "looks like NHWC; the model takes NCHW [N, 3, H, W]: transpose to NCHW with x.transpose(0, 3, 1, 2)"),
    (rand(1, 1, 8, 8), "input has 1 channels (shape [1, 1, 8, 8]) but the model takes 3 channels"),
    (rand(5, 3, 8, 8), "batch size 5 is outside what this artifact accepts (1..4)"),
    (rand(1, 3, 9, 8), "height 9 is outside what this artifact accepts (exactly 8)"),
    (rand(1, 3, 8, 16), "width 16 is outside what this artifact accepts (exactly 8)"),
    (rand(1, 3, 8, 8) * 2 - 0.5, "values must be in [0, 1] but range over [-0."),
    (np.full((1, 3, 8, 8), np.nan, np.float32), "contains NaN values (192 non-finite elements)"),
    (np.full((1, 3, 8, 8), np.inf, np.float32), "contains inf values"),
])
def test_check_input_messages(x, expected):
    with pytest.raises(RunnerInputError) as ei:
        check_input(x, SPEC)
    msg = str(ei.value)
    assert expected in msg
    assert "\n" not in msg
    assert isinstance(ei.value, UserError)


def test_check_input_range_tolerance_and_opt_out():
    x = rand(1, 3, 8, 8)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 1.0 + 5e-7, -5e-7
    check_input(x, SPEC)  # inside the 1e-6 tolerance
    x[0, 0, 0, 0] = 1.5
    with pytest.raises(RunnerInputError, match=r"range over \[-5e-07, 1.5\]"):
        check_input(x, SPEC)
    check_input(x, SPEC, check_range=False)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(RunnerInputError, match="NaN"):  # non-finite values are refused even without the range check
        check_input(x, SPEC, check_range=False)


def test_check_input_dynamic_spec_and_float16():
    dyn = InputSpec(dtype="float16")
    check_input(rand(2, 3, 5, 7).astype(np.float16), dyn)
    with pytest.raises(RunnerInputError, match=r"float32 but the model takes float16; cast with x.astype\(np.float16"):
        check_input(rand(1, 3, 5, 7), dyn)
    assert dyn.fixed_hw is None and SPEC.fixed_hw == (8, 8)
    assert "N∈[1, 4]" in SPEC.describe()
    with pytest.raises(RunnerInputError, match=r"height 1 is outside what this artifact accepts \(>= 2\)"):
        check_input(rand(1, 3, 1, 7).astype(np.float16), dyn)


def test_input_spec_from_onnx(tmp_path, onnx_path):
    spec = input_spec_from_onnx(onnx_path)
    assert spec == InputSpec(name="input", dtype="float32", channels=3, batch=(1, None), height=(8, 8), width=(8, 8))
    dyn = input_spec_from_onnx(tiny_onnx(tmp_path / "dyn.onnx", "height", "width", dtype="float16"))
    assert (dyn.dtype, dyn.batch, dyn.height, dyn.width) == ("float16", (1, None), (2, None), (2, None))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="bad.onnx"):
        input_spec_from_onnx(bad)


# -------------------------------------------------------------------------------------------------- onnxruntime
def test_onnxruntime_infer_matches_numpy(onnx_path, monkeypatch):
    x = rand(3, 3, 8, 8)
    with OnnxRuntimeRunner(onnx_path, threads=1) as r:
        assert r.providers == ["CPUExecutionProvider"]
        assert r.metadata == {"ncis_deploy.layout": "NCHW"}
        assert r.input_spec.fixed_hw == (8, 8)
        assert r.last_inference_time is None
        run = r.infer_impl
        monkeypatch.setattr(r, "infer_impl", lambda x: (time.sleep(0.05), run(x))[1])  # an inference of >= 50 ms
        y = r.infer(x)
        assert 0.05 <= r.last_inference_time < 30  # seconds of the inference itself
    np.testing.assert_array_equal(y, np.clip(x * 0.5, 0, 1))
    assert y.dtype == np.float32 and y.shape == x.shape


def test_onnxruntime_io_binding_on_cpu(onnx_path):
    x = rand(2, 3, 8, 8, seed=1)
    with OnnxRuntimeRunner(onnx_path, io_binding=True, threads=1) as r:
        np.testing.assert_array_equal(r.infer(x), np.clip(x * 0.5, 0, 1))


def test_onnxruntime_dynamic_hw_and_fp16(tmp_path):
    path = tiny_onnx(tmp_path / "dyn16.onnx", "height", "width", dtype="float16")
    x = rand(1, 3, 5, 11).astype(np.float16)
    with OnnxRuntimeRunner(path, threads=1) as r:
        y = r.infer(x)
        assert y.dtype == np.float16 and y.shape == (1, 3, 5, 11)
        np.testing.assert_array_equal(y, np.clip(x * np.float16(0.5), 0, 1))
        with pytest.raises(RunnerInputError, match="astype"):
            r.infer(x.astype(np.float32))


def test_onnxruntime_runner_checks_inputs(onnx_path):
    with OnnxRuntimeRunner(onnx_path, threads=1) as r:
        with pytest.raises(RunnerInputError, match=r"height 16 is outside .*exactly 8"):
            r.infer(rand(1, 3, 16, 8))
        with pytest.raises(RunnerInputError, match=r"x.transpose\(0, 3, 1, 2\)"):
            r.infer(rand(1, 8, 8, 3))
    with OnnxRuntimeRunner(onnx_path, threads=1, check_range=False) as r:
        x = rand(1, 3, 8, 8) * 4
        np.testing.assert_array_equal(r.infer(x), np.clip(x * 0.5, 0, 1))


def test_lifecycle(onnx_path):
    r = OnnxRuntimeRunner(onnx_path, threads=1)
    assert not r.is_active and r.providers == []
    with pytest.raises(InactiveRunnerError, match=r"not active: call .activate\(\) first"):
        r.infer(rand(1, 3, 8, 8))
    with r as same:
        assert same is r and r.is_active
    assert not r.is_active and r.session is None
    with pytest.raises(InactiveRunnerError):
        r.infer(rand(1, 3, 8, 8))
    with pytest.raises(ZeroDivisionError):  # an exception inside the block still deactivates
        with r:
            1 / 0
    assert not r.is_active
    r.activate()
    r.activate()  # idempotent
    assert r.infer(rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    r.deactivate()
    r.deactivate()
    assert not r.is_active


@pytest.mark.parametrize("content, expected", [
    ("truncated", "is not a valid ONNX model (corrupt, truncated or not ONNX at all)"),
    (b"this is a text file, not a protobuf", "is not a valid ONNX model"),
    (None, "does not exist"),
])
def test_onnxruntime_bad_files(tmp_path, onnx_path, content, expected):
    bad = tmp_path / "broken.onnx"
    if content == "truncated":
        data = onnx_path.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif content is not None:
        bad.write_bytes(content)
    r = OnnxRuntimeRunner(bad)
    with pytest.raises(UserError) as ei:
        r.activate()
    assert str(bad) in str(ei.value) and expected in str(ei.value)
    assert "\n" not in str(ei.value)
    assert not r.is_active


@pytest.mark.parametrize("providers", ["cuda", "tensorrt"], ids=["cuda-ep", "trt-ep"])  # no id may equal a marker
def test_onnxruntime_gpu_provider_fallback_is_an_error(onnx_path, providers):
    r = OnnxRuntimeRunner(onnx_path, providers=providers)
    try:
        r.activate()
    except UserError as e:
        msg = str(e)
        assert "did not activate" in msg and "CUDAExecutionProvider" in msg
        assert "fell back to CPUExecutionProvider" in msg
        assert "onnxruntime-gpu" in msg or "CUDA" in msg
        assert not r.is_active
    else:  # a machine where the GPU provider really loads
        assert r.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        r.deactivate()


def test_provider_list_options(tmp_path):
    assert provider_list("cpu") == [("CPUExecutionProvider", {})]
    cuda = provider_list("cuda", device_id=1, cudnn_conv_algo_search="heuristic")
    assert cuda == [("CUDAExecutionProvider", {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC"}),
                    ("CPUExecutionProvider", {})]
    trt = provider_list("tensorrt", trt_cache_dir=tmp_path / "cache",
                        trt_profile=((1, 3, 8, 8), (2, 3, 224, 224), (4, 3, 512, 512)))
    assert [n for n, _ in trt] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    opts = trt[0][1]
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert opts["trt_timing_cache_enable"] == "True"
    assert opts["trt_profile_min_shapes"] == "input:1x3x8x8"
    assert opts["trt_profile_opt_shapes"] == "input:2x3x224x224"
    assert opts["trt_profile_max_shapes"] == "input:4x3x512x512"
    assert "trt_fp16_enable" not in opts  # only when asked
    assert provider_list("trt", trt_fp16=True)[0][1]["trt_fp16_enable"] == "True"
    assert (tmp_path / "cache").is_dir()
    explicit = provider_list([("CUDAExecutionProvider", {"cudnn_conv_algo_search": "DEFAULT"}), "cpu"])
    assert explicit[0][1]["cudnn_conv_algo_search"] == "DEFAULT"
    with pytest.raises(UserError, match="unknown onnxruntime provider 'tpu'"):
        provider_list("tpu")


# --------------------------------------------------------------------------------------------------------- torch
def test_torch_runner_matches_load_purifier():
    import torch

    from ncis_deploy import load_purifier

    x = rand(2, 3, 16, 16, seed=3)
    with make_runner("torch", "gs") as r:
        y = r.infer(x)
    with torch.inference_mode():
        ref = load_purifier("gs")(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(y, ref)
    assert not np.array_equal(y, x)  # it really smoothed


def test_torch_runner_accepts_a_module_and_checks_device():
    import torch

    from ncis_deploy import load_purifier

    x = rand(1, 3, 8, 8)
    with make_runner("torch", load_purifier("none")) as r:
        np.testing.assert_array_equal(r.infer(x), x)
        with pytest.raises(RunnerInputError, match="dtype is float64"):
            r.infer(x.astype(np.float64))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="PyTorch sees no CUDA GPU"):
            make_runner("torch", "gs", device="cuda").activate()
    with pytest.raises(UserError, match="not supported"):
        make_runner("torch", "gs", device="tpu")


# --------------------------------------------------------------------------------------------------- make_runner
def test_make_runner_choices(onnx_path, monkeypatch):
    with pytest.raises(UserError, match="unknown backend 'tflite'; choose one of: torch, onnxruntime, tensorrt, "
                                         "openvino"):
        make_runner("tflite", onnx_path)
    assert BACKENDS == ("torch", "onnxruntime", "tensorrt", "openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)  # constructing never imports openvino
    ov = make_runner("ov", onnx_path, precision="bf16", threads=2)
    assert (ov.name, ov.requested_precision, ov.threads) == ("openvino", "bf16", 2)
    with pytest.raises(UserError, match="openvino backend runs on the CPU only"):
        make_runner("openvino", onnx_path, device="cuda")
    with pytest.raises(UserError, match="openvino backend needs an .onnx file"):
        make_runner("openvino")
    r = make_runner("ort", onnx_path, threads=1)
    assert isinstance(r, OnnxRuntimeRunner) and r.name == "onnxruntime"
    assert make_runner("onnxruntime", onnx_path, device="cuda:1").device_id == 1
    with pytest.raises(UserError, match="needs an .onnx file"):
        make_runner("onnxruntime")
    with pytest.raises(UserError, match="providers only apply to the onnxruntime backend"):
        make_runner("torch", "gs", providers="cuda")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # constructing never imports tensorrt
    assert isinstance(make_runner("trt", "x.engine", use_cuda_graph=True), TensorRTRunner)


# ------------------------------------------------------------------------------------------------------ tensorrt
def test_tensorrt_runner_without_tensorrt_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # behave as if not installed, even where it is
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    r = TensorRTRunner(engine)
    hint = r"'tensorrt' is not installed; install it with: pip install 'ncis-deploy\[trt\]'"
    with pytest.raises(UserError, match=hint):
        r.activate()
    assert not r.is_active


def test_cuda_check():
    class Err(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    assert cuda_check("cudaMalloc", (Err.cudaSuccess, 1234)) == 1234
    assert cuda_check("cudaFree", (Err.cudaSuccess,)) is None
    assert cuda_check("x", (Err.cudaSuccess, 1, 2)) == (1, 2)
    with pytest.raises(RuntimeError, match=r"CUDA call cudaMalloc failed with cudaErrorMemoryAllocation \(2\)"):
        cuda_check("cudaMalloc", (Err.cudaErrorMemoryAllocation, None))


class FakeCudart(types.ModuleType):
    """Enough of cuda.bindings.runtime: "device" memory is host numpy memory, so memcpy moves real bytes."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorNoDevice = 100

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, devices=1):
        super().__init__("cuda.bindings.runtime")
        self.devices = devices
        self.live: dict[int, np.ndarray] = {}
        self.graveyard: list[np.ndarray] = []  # freed memory stays mapped so a stale pointer reads old bytes
        self.capturing: list | None = None
        self.counts = {"malloc": 0, "free": 0, "capture": 0, "launch": 0, "exec_destroy": 0, "graph_destroy": 0,
                       "streams": 0}
        self.ok = self.cudaError_t.cudaSuccess

    def cudaGetDeviceCount(self):
        return (self.cudaError_t.cudaSuccess, self.devices) if self.devices else (self.cudaError_t.cudaErrorNoDevice, 0)

    def cudaMalloc(self, n):
        buf = np.zeros(n, np.uint8)
        self.live[buf.ctypes.data] = buf
        self.counts["malloc"] += 1
        return self.ok, buf.ctypes.data

    def cudaFree(self, ptr):
        self.graveyard.append(self.live.pop(ptr))
        self.counts["free"] += 1
        return (self.ok,)

    def cudaStreamCreate(self):
        self.counts["streams"] += 1
        return self.ok, 7

    def cudaStreamDestroy(self, s):
        self.counts["streams"] -= 1
        return (self.ok,)

    def cudaStreamSynchronize(self, s):
        return (self.ok,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert self.capturing is None, "host copies must stay outside the captured graph"
        ctypes.memmove(dst, src, n)
        return (self.ok,)

    def cudaStreamBeginCapture(self, s, mode):
        self.capturing = []
        return (self.ok,)

    def cudaStreamEndCapture(self, s):
        ops, self.capturing = self.capturing, None
        self.counts["capture"] += 1
        return self.ok, ops

    def cudaGraphInstantiate(self, graph, flags):
        return self.ok, list(graph)

    def cudaGraphLaunch(self, exec_, s):
        self.counts["launch"] += 1
        for op in exec_:
            op()
        return (self.ok,)

    def cudaGraphExecDestroy(self, e):
        self.counts["exec_destroy"] += 1
        return (self.ok,)

    def cudaGraphDestroy(self, g):
        self.counts["graph_destroy"] += 1
        return (self.ok,)


def fake_tensorrt(cudart: FakeCudart) -> types.ModuleType:
    """tensorrt with one dynamic-shape engine computing clip(0.5 x) through the bound device addresses."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99-fake"
    trt.TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT")
    trt.TensorFormat = enum.Enum("TensorFormat", "LINEAR CHW4")
    trt.DataType = enum.Enum("DataType", "FLOAT HALF")
    trt.nptype = lambda dt: {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}[dt]
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    trt.init_libnvinfer_plugins = lambda logger, ns: True
    profile = [(1, 3, 4, 4), (2, 3, 8, 8), (4, 3, 16, 16)]

    class Context:
        def __init__(self):
            self.shape, self.addr = None, {}

        def set_input_shape(self, name, shape):
            ok = all(lo <= d <= hi for lo, d, hi in zip(profile[0], shape, profile[2]))
            self.shape = tuple(shape) if ok else None
            return ok

        def get_tensor_shape(self, name):
            return self.shape

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream):
            n, src, dst = int(np.prod(self.shape)), self.addr["input"], self.addr["output"]  # baked in, like a graph

            def op():
                x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(src))
                np.ctypeslib.as_array((ctypes.c_float * n).from_address(dst))[:] = np.clip(x * 0.5, 0, 1)

            if cudart.capturing is not None:
                cudart.capturing.append(op)
            else:
                op()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("input", "output")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def get_tensor_format(self, name):
            return trt.TensorFormat.LINEAR

        def get_tensor_shape(self, name):
            return (-1, 3, -1, -1)

        def get_tensor_profile_shape(self, name, index):
            return profile

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"FAKE-ENGINE" else None

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    cudart = FakeCudart()
    cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda_pkg.bindings, bindings.runtime = bindings, cudart
    for name, mod in (("cuda", cuda_pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart),
                      ("tensorrt", fake_tensorrt(cudart))):
        monkeypatch.setitem(sys.modules, name, mod)
    engine = tmp_path / "fake.engine"
    engine.write_bytes(b"FAKE-ENGINE")
    return cudart, engine


@pytest.mark.parametrize("graph", [False, True])
def test_tensorrt_runner_logic_with_fakes(fake_trt, graph):
    cudart, engine = fake_trt
    r = TensorRTRunner(engine, use_cuda_graph=graph)
    with r:
        assert r.input_spec == InputSpec(batch=(1, 4), height=(4, 16), width=(4, 16))
        for i, shape in enumerate([(1, 3, 8, 8), (1, 3, 8, 8), (2, 3, 16, 16), (1, 3, 4, 4), (1, 3, 4, 4)]):
            x = rand(*shape, seed=i)
            np.testing.assert_array_equal(r.infer(x), np.clip(x * 0.5, 0, 1))
        assert cudart.counts["malloc"] == 4  # grown once for the 16x16 batch, reused for the smaller one
        if graph:
            assert cudart.counts["capture"] == 3  # one per shape change, none for a repeated shape
            assert cudart.counts["launch"] == 5
        else:
            assert cudart.counts["capture"] == 0
        with pytest.raises(RunnerInputError, match=r"height 17 is outside what this artifact accepts \(4..16\)"):
            r.infer(rand(1, 3, 17, 8))
    assert cudart.live == {} and cudart.counts["free"] == 4 and cudart.counts["streams"] == 0
    assert cudart.counts["exec_destroy"] == cudart.counts["graph_destroy"] == cudart.counts["capture"]


def test_tensorrt_runner_bad_engine_and_no_gpu(fake_trt, tmp_path):
    cudart, _ = fake_trt
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"not an engine")
    with pytest.raises(UserError, match="could not deserialize .*bad.engine.*different TensorRT version"):
        TensorRTRunner(bad).activate()
    with pytest.raises(UserError, match="does not exist"):
        TensorRTRunner(tmp_path / "missing.engine").activate()
    cudart.devices = 0
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        TensorRTRunner(bad).activate()
    assert cudart.live == {} and cudart.counts["streams"] == 0


def test_purify_tensorrt_script_with_fakes(fake_trt, tmp_path, capsys):
    """export/python/purify_tensorrt.py's own logic (shape range, resize, PNG round trip) against the fakes."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    cudart, engine = fake_trt
    script = Path(__file__).resolve().parents[1] / "export" / "python" / "purify_tensorrt.py"
    spec = importlib.util.spec_from_file_location("purify_tensorrt_under_test", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    arr = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "in.png")
    assert mod.main([str(engine), str(tmp_path / "in.png"), str(tmp_path / "out.png")]) == 0
    want = (np.clip(arr.astype(np.float32) / 255.0 * np.float32(0.5), 0, 1) * 255.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), want)
    Image.fromarray(np.zeros((20, 10, 3), np.uint8)).save(tmp_path / "tall.png")
    assert mod.main([str(engine), str(tmp_path / "tall.png"), str(tmp_path / "o2.png")]) == 2
    assert "is 20x10 (HxW) but the engine takes 4..16 x 4..16; pass --resize" in capsys.readouterr().err
    assert mod.main([str(engine), str(tmp_path / "tall.png"), str(tmp_path / "o2.png"), "--resize"]) == 0
    assert Image.open(tmp_path / "o2.png").size == (10, 20)
    assert cudart.live == {} and cudart.counts["streams"] == 0


# ------------------------------------------------------------------------------- real TensorRT (GPU machines only)
def _build_engine(onnx_file, engine_file, shapes):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_file.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", *shapes)
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    assert blob is not None
    engine_file.write_bytes(bytes(blob))
    return engine_file


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("graph", [False, True])
def test_tensorrt_runner_real(tmp_path, graph):
    onnx_file = tiny_onnx(tmp_path / "dyn.onnx", "height", "width")
    engine = _build_engine(onnx_file, tmp_path / "dyn.engine", ((1, 3, 4, 4), (2, 3, 8, 8), (4, 3, 32, 32)))
    with TensorRTRunner(engine, use_cuda_graph=graph) as r:
        assert r.input_spec.height == (4, 32)
        for i, shape in enumerate([(1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 32, 32), (2, 3, 5, 7)]):
            x = rand(*shape, seed=i)
            np.testing.assert_allclose(r.infer(x), np.clip(x * 0.5, 0, 1), atol=1e-6)
        with pytest.raises(RunnerInputError, match="outside"):
            r.infer(rand(1, 3, 64, 64))


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_runner_real_corrupt_engine(tmp_path):
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="could not deserialize"):
        TensorRTRunner(bad).activate()


# ------------------------------------------------------------------------------------ reference runner, compare()
def test_reference_runner_agrees_with_onnxruntime(tmp_path, onnx_path):
    from ncis_deploy.runners.compare import compare
    from ncis_deploy.runners.reference import ReferenceRunner

    cases = [("one", rand(1, 3, 8, 8)), ("three", rand(3, 3, 8, 8, seed=1))]
    ref = make_runner("reference", onnx_path)
    assert isinstance(ref, ReferenceRunner) and ref.name == "reference"
    result = compare([OnnxRuntimeRunner(onnx_path, threads=1), ref], cases, tolerance=1e-7)
    pair = result.pairs[0]
    assert (pair.reference, pair.candidate) == ("onnxruntime", "reference")
    assert result.ok and pair.max_abs <= 1e-7 and pair.images == 4
    np.testing.assert_array_equal(result.outputs["reference"][1], np.clip(cases[1][1] * 0.5, 0, 1))
    assert not ref.is_active  # compare activated it for the cases and let it go
    with make_runner("reference", onnx_path.read_bytes()) as r:  # bytes work too, and inputs are checked
        assert r.input_spec.fixed_hw == (8, 8)
        with pytest.raises(RunnerInputError, match="height 9"):
            r.infer(rand(1, 3, 9, 8))
    with pytest.raises(UserError, match="CPU only"):
        make_runner("reference", onnx_path, device="cuda")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="bad.onnx"):
        make_runner("reference", bad).activate()


def test_reference_runner_runs_the_plugin_op_like_torch():
    from ncis_deploy import load_purifier
    from ncis_deploy.exporters.onnx import build_onnx
    from ncis_deploy.runners.compare import compare

    purifier = load_purifier("gs")
    model = build_onnx(purifier, 12, 10, smoothing="plugin")
    assert any(n.op_type == "NcisGaussianSmooth" for n in model.graph.node)  # the custom op really runs
    x = rand(2, 3, 12, 10, seed=4)
    result = compare({"torch": make_runner("torch", purifier), "reference": make_runner("reference", model)},
                     [("random", x)], tolerance=1e-5)
    assert result.ok and result.pairs[0].max_abs <= 1e-5
    assert not np.allclose(result.outputs["reference"][0], x, atol=1e-3)  # it smoothed: not an identity pass


class _Perturbed(OnnxRuntimeRunner):
    """ONNX Runtime, then a constant added: a backend that is wrong by exactly ``delta``."""

    name = "perturbed"

    def __init__(self, path, delta: float):
        super().__init__(path, threads=1)
        self.delta = delta

    def infer_impl(self, x):
        return super().infer_impl(x) + np.float32(self.delta)


def test_compare_fails_a_perturbed_runner(onnx_path):
    from ncis_deploy.runners.compare import Tolerance, compare

    cases = [("a", rand(1, 3, 8, 8)), ("b", rand(2, 3, 8, 8, seed=2))]
    exact = compare([OnnxRuntimeRunner(onnx_path, threads=1), _Perturbed(onnx_path, 0.0)], cases, tolerance=1e-4)
    assert exact.ok and exact.pairs[0].max_abs == 0.0
    off = compare([OnnxRuntimeRunner(onnx_path, threads=1), _Perturbed(onnx_path, 2e-4)], cases, tolerance=1e-4)
    pair = off.pairs[0]
    assert not off.ok and [c.case for c in pair.failures] == ["a", "b"]
    assert pair.max_abs == pytest.approx(2e-4, rel=1e-3) and pair.rows()[0]["mean_abs"] == pytest.approx(2e-4, rel=1e-3)
    assert compare([OnnxRuntimeRunner(onnx_path, threads=1), _Perturbed(onnx_path, 2e-4)], cases,
                   tolerance=Tolerance(max_abs=1e-3)).ok
    nan = compare({"ref": [np.zeros((1, 2))], "nan": [np.full((1, 2), np.nan)]}, [("x", np.zeros((1, 2)))], 1.0)
    assert not nan.ok  # a NaN difference is not within any tolerance


def test_compare_top1_and_recorded_outputs(onnx_path):
    from ncis_deploy.runners.compare import Tolerance, compare

    cases = [("a", np.zeros((2, 1))), ("b", np.zeros((2, 1)))]
    ref = [np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 1.0]])]
    got = [np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[0.2, 0.9], [0.1, 0.8]])]
    pair = compare({"ref": ref, "got": got}, cases, top1=True).pairs[0]
    assert pair.top1_agreement == 0.75 and pair.images == 4 and pair.max_abs == 1.0 and pair.ok
    assert not compare({"ref": ref, "got": got}, cases, Tolerance(top1=0.9)).ok
    assert compare({"ref": ref, "got": got}, cases, Tolerance(top1=0.75)).ok
    with pytest.raises(ValueError, match="1 recorded outputs for 2 cases"):
        compare({"ref": ref[:1], "got": got}, cases)
    with pytest.raises(UserError, match="returned shape"):
        compare({"ref": ref, "got": [g[:1] for g in got]}, cases)
    active = OnnxRuntimeRunner(onnx_path, threads=1).activate()  # an active runner is left active
    x = rand(1, 3, 8, 8)
    assert compare({"numpy": [np.clip(x * 0.5, 0, 1)], "ort": active}, [("x", x)], 0.0).ok
    assert active.is_active
    active.deactivate()


def test_onnxruntime_runner_from_bytes_binding_and_session_options(tmp_path, onnx_path):
    x, x2 = rand(2, 3, 8, 8), rand(2, 3, 8, 8, seed=5)
    opts = {"enable_profiling": True, "profile_file_prefix": str(tmp_path / "prof")}
    with OnnxRuntimeRunner(onnx_path.read_bytes(), threads=1, session_options=opts) as r:
        bound = r.bind(x)
        bound.run()
        np.testing.assert_array_equal(bound.output(), np.clip(x * 0.5, 0, 1))
        bound.update(x2)
        bound.run()
        np.testing.assert_array_equal(bound.output(), np.clip(x2 * 0.5, 0, 1))
        profile = r.session.end_profiling()
    assert profile.startswith(str(tmp_path / "prof")) and tmp_path.joinpath(profile).is_file()
    with pytest.raises(UserError, match="in-memory ONNX model is not a valid ONNX model"):
        OnnxRuntimeRunner(b"not a protobuf").activate()


def test_device_binding_gpu_branch_and_the_bench_target_with_fakes(monkeypatch, onnx_path):
    """The GPU branch of the one IO-binding path (what `bench` times for onnxruntime:cuda) against a fake device
    that moves real arrays: which memory is bound, that update() and output() are the only copies, and that a
    fixed output is preallocated. It checks our bookkeeping, not onnxruntime-gpu (the `gpu` tests do that)."""
    from ncis_deploy.bench.targets import BackendSpec, OrtGpuTarget

    class Value:  # an OrtValue "on the device"
        def __init__(self, a):
            self.a = a

        @classmethod
        def ortvalue_from_numpy(cls, x, device, device_id):
            assert (device, device_id) == ("cuda", 0)
            return cls(x.copy())

        @classmethod
        def ortvalue_from_shape_and_type(cls, shape, dtype, device, device_id):
            return cls(np.full(shape, np.nan, dtype))

        def update_inplace(self, x):
            self.a[...] = x

        def numpy(self):
            return self.a.copy()

    class Binding:
        x = y = None

        def bind_ortvalue_input(self, name, v):
            self.x = v

        def bind_ortvalue_output(self, name, v):
            self.y = v

        def bind_output(self, name, device, device_id):
            assert device == "cuda"

        def copy_outputs_to_cpu(self):
            return [self.y.a.copy()]

    class Session:
        def __init__(self, real):
            self.real, self.runs = real, 0

        def io_binding(self):
            return Binding()

        def run(self, names, feeds):
            return self.real.run(names, feeds)

        def run_with_iobinding(self, b):
            self.runs += 1
            y = np.clip(b.x.a * 0.5, 0, 1)
            if b.y is None:  # output left to ORT: it allocates
                b.y = Value(y)
            else:  # preallocated: written in place, the address a CUDA graph captured stays valid
                b.y.a[...] = y

    r = OnnxRuntimeRunner(onnx_path, io_binding=True, threads=1).activate()
    r.session, r._on_gpu = Session(r.session), True
    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(OrtValue=Value))
    x, x2 = rand(2, 3, 8, 8), rand(2, 3, 8, 8, seed=1)
    np.testing.assert_array_equal(r.infer(x), np.clip(x * 0.5, 0, 1))
    target = OrtGpuTarget(BackendSpec("onnxruntime", "cuda"), r)
    target.prepare(x)
    fixed = target.bound.y_dev
    target.x = x2
    times = target.run_once()
    assert set(times) == {"host", "h2d", "compute", "d2h"}
    assert target.bound.y_dev is fixed
    np.testing.assert_array_equal(fixed.numpy(), np.clip(x2 * 0.5, 0, 1))
    target.data_transfers = False  # compute only: the bound input is not refreshed
    target.x = x
    target.run_once()
    np.testing.assert_array_equal(fixed.numpy(), np.clip(x2 * 0.5, 0, 1))
    target.release()
    assert target.bound is None


def test_every_command_spells_precisions_the_same_way():
    # one alias table (runners.PRECISION_ALIASES): bench, eval --backend and the OpenVINO runner accept the same names
    from ncis_deploy.bench.core import _precision
    from ncis_deploy.eval.backends import parse_backend
    from ncis_deploy.runners import PRECISION_ALIASES, precision_name
    from ncis_deploy.runners.openvino import normalize_precision

    for alias, name in PRECISION_ALIASES.items():
        for text in (alias, alias.upper()):
            assert precision_name(text) == name
            assert _precision(text) == ("fp32" if name == "f32" else name)  # bench's JSON spelling of FP32
            if name in ("f32", "int8"):
                assert parse_backend(f"onnxruntime:{text}").precision == name
            assert parse_backend(f"openvino:{text}").precision == name
            assert normalize_precision(text) == name
    assert precision_name("auto") == "auto" and precision_name("fp8") == "fp8"  # callers reject what they don't run
