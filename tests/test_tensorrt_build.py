"""Engine building against a recording fake ``tensorrt`` (10.x and 11.x); one real build where TensorRT + a GPU exist.

The fake follows the documented Python API (Builder, OnnxParser, IBuilderConfig, optimization profiles, timing
cache). The 11.x fake has no ``BuilderFlag.FP16/BF16/INT8`` and no ``NetworkDefinitionCreationFlag`` at all, so
touching them there raises AttributeError, as the removed APIs do on real TensorRT 11.
"""

from __future__ import annotations

import sys
import time
import types
from enum import Enum, IntEnum
from pathlib import Path

import numpy as np
import pytest

from ncis_deploy.errors import UserError
from ncis_deploy.exporters import tensorrt as trt_export
from ncis_deploy.exporters.tensorrt import EngineSpec, build_engine, tensorrt_status

SPEC_SHAPES = dict(min_shape=(1, 3, 32, 32), opt_shape=(4, 3, 64, 64), max_shape=(8, 3, 128, 128))


def make_fake_trt(version: str, *, plan: bytes | None = b"PLAN-BYTES", parser_errors=(), input_name="input",
                  input_shape=(-1, 3, -1, -1), reject_cache=False, build_time=0.0):
    """A ``tensorrt`` stand-in whose objects append ``(call, args...)`` to the returned list; its builder takes
    ``build_time`` seconds."""
    calls: list[tuple] = []
    major = int(version.split(".")[0])
    Severity = IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})

    class ILogger:
        pass

    ILogger.Severity = Severity
    flags = ["TF32", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "REFIT"]
    BuilderFlag = Enum("BuilderFlag", flags + (["FP16", "BF16", "INT8"] if major == 10 else []))
    MemoryPoolType = Enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class ParserError:
        def __init__(self, desc, index, name, op):
            self._d = (desc, index, name, op)

        def desc(self):
            return self._d[0]

        def node(self):
            return self._d[1]

        def node_name(self):
            return self._d[2]

        def node_operator(self):
            return self._d[3]

    class OnnxParser:
        def __init__(self, network, logger):
            calls.append(("OnnxParser",))
            self.network, self.logger = network, logger
            self.errors = [ParserError(*e) for e in parser_errors]

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            if self.errors:
                return False
            self.network.inputs.append(Tensor(input_name, input_shape))
            return True

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            calls.append(("serialize",))
            return self.data + b"|tuned"

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            calls.append(("set_shape", name, tuple(mn), tuple(opt), tuple(mx)))

    class Config:
        cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag.name))

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag.name))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))
            return 0

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", cache.data, ignore_mismatch))
            if reject_cache and cache.data:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            calls.append(("get_timing_cache",))
            return self.cache

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))
            self.logger = logger

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            calls.append(("create_builder_config",))
            return Config()

        def create_optimization_profile(self):
            calls.append(("create_optimization_profile",))
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            time.sleep(build_time)
            self.logger.log(Severity.WARNING, "TensorRT encountered issues when converting weights between types")
            self.logger.log(Severity.INFO, "chatty info line that is not kept")
            if plan is None:
                self.logger.log(Severity.ERROR, "[optimizer.cpp::computeCosts] Error Code 4: Internal Error "
                                                "(Could not find any implementation for node /conv/Conv.)")
            return plan

    module = types.SimpleNamespace(__version__=version, ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser,
                                   BuilderFlag=BuilderFlag, MemoryPoolType=MemoryPoolType)
    if major == 10:
        module.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag",
                                                       {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    return module, calls


@pytest.fixture
def onnx_file(tmp_path):
    p = tmp_path / "purifier.onnx"
    p.write_bytes(b"not parsed by the fake")
    return p


def _prefix(onnx_file, network_flags):
    return [("Builder",), ("create_network", network_flags), ("OnnxParser",), ("parse_from_file", str(onnx_file)),
            ("create_builder_config",), ("set_memory_pool_limit", "WORKSPACE", 1 << 30),
            ("create_optimization_profile",), ("set_shape", "input", (1, 3, 32, 32), (4, 3, 64, 64), (8, 3, 128, 128)),
            ("add_optimization_profile",)]


def test_trt10_fp16_onnx_sets_fp16_flag_and_exact_call_sequence(onnx_file, tmp_path):
    trt, calls = make_fake_trt("10.9.0.34", build_time=0.05)
    cache = tmp_path / "cache" / "timing.cache"
    spec = EngineSpec(**SPEC_SHAPES, workspace_bytes=1 << 30, fp16_onnx=True, timing_cache=cache)
    info = build_engine(onnx_file, tmp_path / "out" / "purifier.engine", spec, trt=trt)
    assert calls == _prefix(onnx_file, 0) + [
        ("set_flag", "FP16"),
        ("create_timing_cache", b""), ("set_timing_cache", b"", False),
        ("build_serialized_network",),
        ("get_timing_cache",), ("serialize",),
    ]
    assert (tmp_path / "out" / "purifier.engine").read_bytes() == b"PLAN-BYTES"
    assert cache.read_bytes() == b"|tuned"
    assert info["tensorrt_version"] == "10.9.0.34" and info["builder_flags"] == ["FP16"]
    assert info["strongly_typed"] is False and info["network_flags"] == 0 and info["precision"] == "fp16"
    assert info["profile"] == {"input": "input", "min": [1, 3, 32, 32], "opt": [4, 3, 64, 64], "max": [8, 3, 128, 128]}
    assert info["workspace_bytes"] == 1 << 30 and info["engine_bytes"] == len(b"PLAN-BYTES")
    assert info["timing_cache_reused"] is False and info["timing_cache_saved"] is True
    assert 0.05 <= info["build_seconds"] < 30  # the builder's time, in seconds
    assert info["tensorrt_warnings"] == ["TensorRT encountered issues when converting weights between types"]


def test_trt10_fp32_onnx_sets_no_precision_flag(onnx_file, tmp_path):
    trt, calls = make_fake_trt("10.0.1")
    build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES, workspace_bytes=1 << 30), trt=trt)
    assert calls == _prefix(onnx_file, 0) + [("build_serialized_network",)]  # no cache given: none touched


def test_trt10_strongly_typed_uses_creation_flag_not_fp16(onnx_file, tmp_path):
    trt, calls = make_fake_trt("10.12.0")
    spec = EngineSpec(**SPEC_SHAPES, workspace_bytes=1 << 30, fp16_onnx=True, strongly_typed=True)
    info = build_engine(onnx_file, tmp_path / "e.engine", spec, trt=trt)
    assert ("create_network", 1 << 1) in calls and ("set_flag", "FP16") not in calls
    assert info["strongly_typed"] is True and info["builder_flags"] == []


def test_trt11_never_touches_removed_precision_flags(onnx_file, tmp_path):
    trt, calls = make_fake_trt("11.0.0")
    with pytest.raises(AttributeError):  # the fake really lacks them, like TensorRT 11
        trt.BuilderFlag.FP16
    spec = EngineSpec(**SPEC_SHAPES, workspace_bytes=1 << 30, fp16_onnx=True, version_compatible=True)
    info = build_engine(onnx_file, tmp_path / "e.engine", spec, trt=trt)
    assert calls == _prefix(onnx_file, 0) + [("set_flag", "VERSION_COMPATIBLE"), ("build_serialized_network",)]
    assert info["strongly_typed"] is True and info["builder_flags"] == ["VERSION_COMPATIBLE"]
    assert info["precision"] == "fp16"  # precision comes from the FP16-typed ONNX itself


def test_version_compatible_and_lean_runtime_and_tf32(onnx_file, tmp_path):
    trt, calls = make_fake_trt("10.9.0")
    spec = EngineSpec(**SPEC_SHAPES, workspace_bytes=1 << 30, version_compatible=True, exclude_lean_runtime=True,
                      tf32=False)
    info = build_engine(onnx_file, tmp_path / "e.engine", spec, trt=trt)
    flag_calls = [c for c in calls if c[0] in ("set_flag", "clear_flag")]
    assert flag_calls == [("clear_flag", "TF32"), ("set_flag", "VERSION_COMPATIBLE"), ("set_flag", "EXCLUDE_LEAN_RUNTIME")]
    assert info["cleared_builder_flags"] == ["TF32"] and info["exclude_lean_runtime"] is True
    with pytest.raises(UserError, match="version-compatible"):
        EngineSpec(**SPEC_SHAPES, exclude_lean_runtime=True).validate()
    # default: no version-compatibility flags
    trt, calls = make_fake_trt("10.9.0")
    build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES), trt=trt)
    assert not [c for c in calls if c[0] == "set_flag"]


def test_timing_cache_is_reused_on_the_second_build_and_written_back(onnx_file, tmp_path):
    cache = tmp_path / "timing.cache"
    spec = EngineSpec(**SPEC_SHAPES, timing_cache=cache)
    trt, calls = make_fake_trt("10.9.0")
    first = build_engine(onnx_file, tmp_path / "a.engine", spec, trt=trt)
    assert ("create_timing_cache", b"") in calls and first["timing_cache_reused"] is False
    assert cache.read_bytes() == b"|tuned"
    trt, calls = make_fake_trt("11.1.0")
    second = build_engine(onnx_file, tmp_path / "b.engine", spec, trt=trt)
    assert [c for c in calls if "timing" in c[0]] == [
        ("create_timing_cache", b"|tuned"), ("set_timing_cache", b"|tuned", False), ("get_timing_cache",)]
    assert second["timing_cache_reused"] is True and second["timing_cache"] == str(cache)
    assert cache.read_bytes() == b"|tuned|tuned"  # the tuned cache from this build replaced the old file
    assert not list(tmp_path.glob(".*.tmp"))


def test_foreign_timing_cache_falls_back_to_an_empty_one(onnx_file, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from-another-gpu")
    trt, calls = make_fake_trt("10.9.0", reject_cache=True)
    notes: list[str] = []
    info = build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES, timing_cache=cache), trt=trt,
                        log=notes.append)
    assert [c for c in calls if c[0].endswith("timing_cache")] == [
        ("create_timing_cache", b"from-another-gpu"), ("set_timing_cache", b"from-another-gpu", False),
        ("create_timing_cache", b""), ("set_timing_cache", b"", False), ("get_timing_cache",)]
    assert info["timing_cache_reused"] is False and any("does not match" in n for n in notes)
    assert any(n.startswith("TensorRT warning: TensorRT encountered issues") for n in notes)  # TRT log echoed
    assert not any("chatty info" in n for n in notes)


def test_failed_build_leaves_old_engine_and_no_partial_file(onnx_file, tmp_path):
    engine = tmp_path / "purifier.engine"
    engine.write_bytes(b"OLD ENGINE")
    cache = tmp_path / "timing.cache"
    trt, _ = make_fake_trt("10.9.0", plan=None)
    with pytest.raises(UserError) as exc:
        build_engine(onnx_file, engine, EngineSpec(**SPEC_SHAPES, timing_cache=cache), trt=trt)
    msg = str(exc.value)
    assert "could not build an engine" in msg and "Could not find any implementation for node /conv/Conv" in msg
    assert engine.read_bytes() == b"OLD ENGINE"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["purifier.engine", "purifier.onnx"]  # no tmp, no cache
    # and a first build that fails leaves nothing at all
    trt, _ = make_fake_trt("11.0.0", plan=b"")
    with pytest.raises(UserError):
        build_engine(onnx_file, tmp_path / "new.engine", EngineSpec(**SPEC_SHAPES), trt=trt)
    assert not (tmp_path / "new.engine").exists()


def test_crash_while_writing_keeps_old_engine(onnx_file, tmp_path, monkeypatch):
    import ncis_deploy.fileio as fileio

    engine = tmp_path / "purifier.engine"
    engine.write_bytes(b"OLD ENGINE")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", broken_replace)
    trt, _ = make_fake_trt("10.9.0")
    with pytest.raises(UserError, match="cannot write the TensorRT engine.*No space left"):
        build_engine(onnx_file, engine, EngineSpec(**SPEC_SHAPES), trt=trt)
    assert engine.read_bytes() == b"OLD ENGINE" and not list(tmp_path.glob(".*.tmp"))


def test_parser_errors_are_named_in_the_message(onnx_file, tmp_path):
    errors = [("Assertion failed: inputs.at(1).is_weights() && \"pads must be an initializer\"", 3, "gs_pad", "Pad"),
              ("Unsupported ONNX data type: DOUBLE (11)", 7, "", "Cast"),
              ("Failed to parse the graph", -1, "", "")]
    trt, calls = make_fake_trt("10.9.0", parser_errors=errors)
    with pytest.raises(UserError) as exc:
        build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES), trt=trt)
    msg = str(exc.value)
    assert "rejected" in msg and "3 error(s)" in msg and "\n" not in msg
    assert "node 'gs_pad' (Pad): Assertion failed" in msg
    assert "a Cast node: Unsupported ONNX data type: DOUBLE" in msg and "the graph: Failed to parse" in msg
    assert calls[-1] == ("parse_from_file", str(onnx_file))  # nothing configured or built after the failure
    assert not (tmp_path / "e.engine").exists()


def test_profile_must_match_the_onnx_input(onnx_file, tmp_path):
    trt, _ = make_fake_trt("10.9.0", input_name="images")
    with pytest.raises(UserError, match=r"input\(s\) \['images'\], not 'input'"):
        build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES), trt=trt)
    trt, _ = make_fake_trt("10.9.0", input_shape=(-1, 3, 64, 64))  # exported with fixed H, W
    with pytest.raises(UserError, match="fixed H = 64, but the profile asks for 32..128"):
        build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES), trt=trt)
    fixed = EngineSpec(min_shape=(1, 3, 64, 64), opt_shape=(2, 3, 64, 64), max_shape=(4, 3, 64, 64))
    trt, _ = make_fake_trt("10.9.0", input_shape=(-1, 3, 64, 64))
    assert build_engine(onnx_file, tmp_path / "e.engine", fixed, trt=trt)["engine_bytes"] > 0


@pytest.mark.parametrize("shapes, match", [
    (dict(min_shape=(4, 3, 32, 32), opt_shape=(1, 3, 32, 32), max_shape=(8, 3, 32, 32)), "min <= opt <= max"),
    (dict(min_shape=(1, 3, 32), opt_shape=(1, 3, 32, 32), max_shape=(8, 3, 32, 32)), "4 positive integers"),
    (dict(min_shape=(1, 1, 32, 32), opt_shape=(1, 3, 32, 32), max_shape=(8, 3, 32, 32)), "channel count C"),
])
def test_bad_specs_are_user_errors(onnx_file, tmp_path, shapes, match):
    trt, calls = make_fake_trt("10.9.0")
    with pytest.raises(UserError, match=match):
        build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**shapes), trt=trt)
    assert calls == []


def test_unsupported_version_and_missing_onnx(onnx_file, tmp_path):
    trt, calls = make_fake_trt("10.9.0")
    trt.__version__ = "8.6.1"
    with pytest.raises(UserError, match="TensorRT 8.6.1 is not supported"):
        build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES), trt=trt)
    with pytest.raises(UserError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES), trt=trt)
    assert calls == []


def test_missing_tensorrt_package(onnx_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(UserError, match=r"ncis-deploy\[trt\]"):
        build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES))
    ok, reason = tensorrt_status()
    assert ok is False and reason == "the tensorrt package is not installed (pip install 'ncis-deploy[trt]')"


def test_status_with_an_installed_tensorrt(monkeypatch):
    trt, _ = make_fake_trt("10.9.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_export, "_cuda_problem", lambda: "no CUDA GPU is visible")
    assert tensorrt_status() == (False, "TensorRT 10.9.0 is installed but no CUDA GPU is visible")
    monkeypatch.setattr(trt_export, "_cuda_problem", lambda: None)
    assert tensorrt_status() == (True, "TensorRT 10.9.0 with a CUDA GPU")
    trt.__version__ = "9.2.0"
    ok, reason = tensorrt_status()
    assert not ok and "10.x or 11.x" in reason


def _tiny_conv_clip_onnx(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (0.2 * rng.standard_normal((3, 3, 3, 3))).astype(np.float32)
    b = (0.1 * rng.standard_normal(3)).astype(np.float32)
    dims = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Clip", ["conv", "lo", "hi"], ["output"], name="clip")],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
                     numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                     numpy_helper.from_array(np.array(1.0, np.float32), "hi")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return w, b


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_engine_builds_and_matches_torch(tmp_path):
    import tensorrt as trt
    import torch
    import torch.nn.functional as F

    from ncis_deploy.exporters.gate import check_tensorrt_compatible

    src = tmp_path / "tiny.onnx"
    w, b = _tiny_conv_clip_onnx(src)
    import onnx

    check_tensorrt_compatible(onnx.load(src))
    spec = EngineSpec(min_shape=(1, 3, 8, 8), opt_shape=(2, 3, 16, 16), max_shape=(4, 3, 32, 32),
                      workspace_bytes=1 << 28, tf32=False, timing_cache=tmp_path / "timing.cache")
    info = build_engine(src, tmp_path / "tiny.engine", spec)
    assert info["tensorrt_version"] == trt.__version__ and info["engine_bytes"] > 0
    assert build_engine(src, tmp_path / "again.engine", spec)["timing_cache_reused"] is True

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine((tmp_path / "tiny.engine").read_bytes())
    assert engine is not None
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    assert names == {"input", "output"}
    context = engine.create_execution_context()
    x = torch.rand(3, 3, 20, 24, device="cuda")
    y = torch.empty_like(x)
    context.set_input_shape("input", tuple(x.shape))
    context.set_tensor_address("input", x.data_ptr())
    context.set_tensor_address("output", y.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()

    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 off on both sides, so the comparison is float32 vs float32
    try:
        ref = F.conv2d(x, torch.from_numpy(w).cuda(), torch.from_numpy(b).cuda(), padding=1).clamp(0, 1)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert torch.allclose(y, ref, atol=1e-4), float((y - ref).abs().max())
