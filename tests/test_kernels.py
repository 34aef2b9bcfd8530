"""The CUDA smoothing kernel, its bindings, the TensorRT plugin export and the C++ pieces -- what a CPU can check.

* The kernel's tile algorithm (gaussian_smooth.cuh) runs on the CPU through kernels/tests/emulate.cu, compiled by
  nvcc as host code: the very code the GPU runs, thread by thread, checked against ``smooth_iterative``.
* nvcc compiles the kernels for sm_80 and sm_90; the plugin and the C++ app are syntax-checked against a stub of the
  documented TensorRT 10 API (TensorRT itself cannot be installed here); ppm.hpp is compiled and run.
* Plugin exports run on the ONNX reference evaluator with the NumPy plugin op.
* ``gpu``-marked tests run the NVRTC binding on a GPU (benchmarks/gpu_check.sh runs them); they skip here.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from ncis_deploy import kernels
from ncis_deploy.errors import UserError
from ncis_deploy.exporters import plugin_ref
from ncis_deploy.exporters.gate import TensorRTGateError, check_tensorrt_compatible, gate_problems
from ncis_deploy.exporters.onnx import build_onnx
from ncis_deploy.exporters.pipeline import ExportOptions, export
from ncis_deploy.exporters.tensorrt import EngineBuildError, EngineSpec, build_engine
from ncis_deploy.model.smoothing import GaussianSmoothing, smooth_fused, smooth_iterative

from test_cli import assert_user_error
from test_export import run, small_purifier
from test_tensorrt_build import SPEC_SHAPES, make_fake_trt

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "ncis_deploy" / "csrc"
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not found: the kernel emulation and "
                                                     "compile checks need it")


def cuda_include() -> Path:
    """The directory with cuda_runtime_api.h, as nvcc itself reports it (nvcc may be a wrapper script)."""
    import os
    import re

    r = subprocess.run([NVCC, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull], capture_output=True, text=True)
    found = re.findall(r'INCLUDES="-I([^"]+)"', r.stdout + r.stderr)
    candidates = [Path(p.strip()) for p in found] + [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"]
    return next((c for c in candidates if (c / "cuda_runtime_api.h").is_file()), candidates[-1])


@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> Path:
    if NVCC is None:
        pytest.skip("nvcc (CUDA toolkit) not found: the kernel emulation needs it")
    exe = tmp_path_factory.mktemp("emulator") / "emulate"
    subprocess.run([NVCC, "-std=c++17", "-O2", "-I", str(CSRC), str(ROOT / "kernels/tests/emulate.cu"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    return exe


def emulate(exe: Path, tmp: Path, x: np.ndarray, k: int, sigma: float, t: int, *flags: str):
    """Run the emulator on x; return (output, counters)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    x.tofile(tmp / "in.bin")
    r = subprocess.run([str(exe), "run", str(tmp / "in.bin"), str(tmp / "out.bin"), *map(str, x.shape), str(k),
                        repr(sigma), str(t), *flags], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return np.fromfile(tmp / "out.bin", np.float32).reshape(x.shape), json.loads(r.stdout)


def reference(x: np.ndarray, k: int, sigma: float, t: int) -> np.ndarray:
    return smooth_iterative(torch.from_numpy(x).double(), k, sigma, t).numpy()


# ------------------------------------------------------------------------------------ kernel logic, on the CPU
@needs_nvcc
@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (1, 3, 5, 7), (2, 3, 37, 91), (1, 3, 224, 224)])
@pytest.mark.parametrize("t", [1, 3, 10])
@pytest.mark.parametrize("k", [3, 5])
def test_emulated_kernel_matches_reference(emulator, tmp_path, shape, t, k):
    x = np.random.default_rng(hash((shape, t, k)) % 2**32).random(shape, dtype=np.float32)
    got, info = emulate(emulator, tmp_path, x, k, 1.0, t, "--check-reflection")
    assert info["nan_outputs"] == 0  # output and shared memory start as NaN: everything read was written
    assert np.abs(got - reference(x, k, 1.0, t)).max() <= 1e-5
    # every pass left out-of-image values bit-identical to the in-image values at their reflected index, i.e. the
    # reference's per-iteration re-padding (reflection of reflection included: 2x2 with a halo of up to 20)
    assert info["reflection_checks"] > 0 and info["reflection_mismatches"] == 0
    assert info["launches"] == len(kernels.plan(k // 2, t))


@needs_nvcc
def test_emulated_kernel_other_radii_chunked_plans_and_identity(emulator, tmp_path):
    rng = np.random.default_rng(7)
    for shape, k, sigma, t in [((1, 2, 3, 70), 7, 1.3, 3), ((1, 1, 40, 9), 9, 2.0, 2), ((2, 1, 33, 65), 13, 2.5, 5),
                               ((1, 1, 5, 4), 31, 4.0, 2), ((1, 1, 6, 6), 1, 1.0, 4)]:
        x = rng.random(shape, dtype=np.float32)
        got, info = emulate(emulator, tmp_path, x, k, sigma, t, "--check-reflection")
        assert info["nan_outputs"] == 0 and info["reflection_mismatches"] == 0
        assert np.abs(got - reference(x, k, sigma, t)).max() <= 1e-5, (shape, k, t)
    assert kernels.plan(13 // 2, 5) == [2, 2, 1] and kernels.plan(15, 2) == [1, 1]  # those ran as several launches
    x = rng.random((1, 3, 4, 5), dtype=np.float32)
    assert np.array_equal(emulate(emulator, tmp_path, x, 5, 1.0, 0)[0], x)  # T = 0 is a copy


@needs_nvcc
def test_emulated_kernel_is_race_free_and_specialisations_agree(emulator, tmp_path):
    x = np.random.default_rng(3).random((2, 3, 45, 131), dtype=np.float32)
    for k, t in [(3, 4), (5, 3), (7, 2)]:
        base, _ = emulate(emulator, tmp_path, x, k, 1.1, t)
        reverse, _ = emulate(emulator, tmp_path, x, k, 1.1, t, "--reverse")  # any order of threads within a phase
        generic, _ = emulate(emulator, tmp_path, x, k, 1.1, t, "--generic")  # run-time radius vs unrolled radius
        assert np.array_equal(base, reverse) and np.array_equal(base, generic)


@needs_nvcc
def test_emulated_float16_io(emulator, tmp_path):
    rng = np.random.default_rng(5)
    special = np.array([0.0, -0.0, 1e-8, 2.0**-25, 2.0**-25 * 1.0001, 2.0**-24, 3 * 2.0**-25, 6.1e-5, 0.1, 1 / 3,
                        1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 65504.0, 65519.0, 65520.0, 1e6, -2.5, np.inf, -np.inf],
                       np.float32)
    scale = 10.0 ** rng.integers(-8, 5, 4000)
    values = np.concatenate([special, (rng.standard_normal(4000) * scale).astype(np.float32)])
    values.tofile(tmp_path / "h.bin")
    subprocess.run([str(emulator), "half", str(tmp_path / "h.bin"), str(tmp_path / "h.out")], check=True)
    got = np.fromfile(tmp_path / "h.out", np.float32)
    want = torch.from_numpy(values).half().float().numpy()  # IEEE round-to-nearest-even, the GPU's cvt.rn.f16.f32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    x = rng.random((1, 3, 29, 40), dtype=np.float32)
    x16 = torch.from_numpy(x).half()
    got, info = emulate(emulator, tmp_path, x, 3, 1.0, 5, "--half")
    assert info["nan_outputs"] == 0
    assert np.abs(got - reference(x16.float().numpy(), 3, 1.0, 5)).max() <= 1e-3  # one float16 rounding of the output


@needs_nvcc
def test_python_launch_plan_matches_the_kernel(emulator):
    for k in (1, 3, 5, 7, 9, 13, 21, 31, 33):
        for t in (0, 1, 2, 5, 10, 17, 50):
            r = subprocess.run([str(emulator), "plan", str(k), str(t)], capture_output=True, text=True, check=True)
            c_plan = json.loads(r.stdout)
            if c_plan["launches"] < 0:
                with pytest.raises(UserError, match="kernel_size <= 31"):
                    kernels.plan(k // 2, t)
                continue
            assert kernels.plan(k // 2, t) == c_plan["iterations"], (k, t)
            assert [kernels.smem_bytes(n * (k // 2), k // 2) for n in c_plan["iterations"]] == c_plan["smem_bytes"]
            assert all(b <= kernels.SMEM_BUDGET for b in c_plan["smem_bytes"])


@needs_nvcc
def test_nvcc_compiles_kernels_for_sm80_and_sm90(tmp_path):
    r = subprocess.run([NVCC, "-std=c++17", "-O3", "-Werror", "all-warnings", "-Xptxas", "-v",
                        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                        "-c", str(CSRC / "gaussian_smooth.cu"), "-o", str(tmp_path / "gs.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    log = r.stderr
    for name in kernels.KERNEL_NAMES:
        assert f"Function properties for {name}" in log
    assert "bytes stack frame" in log and " 0 bytes spill" in log
    assert all(line.strip().startswith("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads")
               for line in log.splitlines() if "stack frame" in line)  # register arrays stayed in registers
    assert log.count("Compiling entry function") == 2 * len(kernels.KERNEL_NAMES)  # both architectures


@needs_nvcc
def test_plugin_and_cpp_app_compile_against_the_documented_tensorrt_api():
    # a syntax check against kernels/tests/trt_stub (the TensorRT 10 signatures the plugin and app rely on); the
    # real headers are not available in this workplace
    gxx = shutil.which("g++") or shutil.which("c++")
    assert gxx, "a C++ compiler is needed"
    common = [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-I", str(ROOT / "kernels/tests/trt_stub"),
              "-I", str(cuda_include())]
    for extra, src in [(["-I", str(CSRC), "-I", str(ROOT / "kernels/plugin")], "kernels/plugin/NcisGaussianSmoothPlugin.cpp"),
                       (["-I", str(ROOT / "export/cpp")], "export/cpp/main.cpp")]:
        r = subprocess.run(common + extra + [str(ROOT / src)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_ppm_codec_round_trip(tmp_path):
    from PIL import Image

    gxx = shutil.which("g++") or shutil.which("c++")
    exe = tmp_path / "ppm_roundtrip"
    subprocess.run([gxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-I", str(ROOT / "export/cpp"),
                    str(ROOT / "export/cpp/tests/ppm_roundtrip.cpp"), "-o", str(exe)], check=True)
    rng = np.random.default_rng(0)

    def roundtrip(src: Path, dst: Path):
        return subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True)

    for mode, shape, name in [("RGB", (7, 11, 3), "a.ppm"), ("L", (5, 3), "b.pgm")]:
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(arr, mode).save(tmp_path / name)
        assert roundtrip(tmp_path / name, tmp_path / ("out_" + name)).returncode == 0
        assert np.array_equal(np.asarray(Image.open(tmp_path / ("out_" + name))), arr)
    # 16-bit, comments in the header, maxval 1000
    arr16 = rng.integers(0, 1001, (4, 6, 3)).astype(">u2")
    (tmp_path / "c.ppm").write_bytes(b"P6\n# made by hand\n6 # width\n4\n1000\n" + arr16.tobytes())
    assert roundtrip(tmp_path / "c.ppm", tmp_path / "out_c.ppm").returncode == 0
    body = (tmp_path / "out_c.ppm").read_bytes()
    assert body.startswith(b"P6\n6 4\n1000\n") and np.array_equal(np.frombuffer(body[12:], ">u2").reshape(4, 6, 3), arr16)
    (tmp_path / "d.ppm").write_bytes((tmp_path / "a.ppm").read_bytes()[:-5])
    r = roundtrip(tmp_path / "d.ppm", tmp_path / "x.ppm")
    assert r.returncode == 1 and "truncated" in r.stderr
    (tmp_path / "e.ppm").write_bytes(b"P3\n1 1\n255\n0 0 0\n")
    r = roundtrip(tmp_path / "e.ppm", tmp_path / "x.ppm")
    assert r.returncode == 1 and "P5/P6" in r.stderr


# ------------------------------------------------------------------------------------------------ NumPy plugin op
@pytest.mark.parametrize("shape,k,sigma,t", [((1, 1, 2, 2), 3, 1.0, 3), ((2, 3, 5, 7), 5, 0.7, 2),
                                              ((1, 3, 31, 17), 3, 1.0, 10), ((1, 2, 3, 40), 9, 2.0, 4)])
def test_numpy_plugin_reference_matches_smooth_iterative(shape, k, sigma, t):
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    y = plugin_ref.gaussian_smooth_reference(x, k, sigma, t)
    assert y.dtype == np.float32 and np.abs(y - reference(x, k, sigma, t)).max() <= 1e-5
    # the same through a one-node ONNX model on the reference evaluator (attributes as the exporter writes them)
    node = helper.make_node(plugin_ref.PLUGIN_NAME, ["x"], ["y"], domain=plugin_ref.PLUGIN_DOMAIN,
                            **plugin_ref.plugin_attributes({"kernel_size": k, "sigma": sigma, "iterations": t}))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(plugin_ref.PLUGIN_DOMAIN, 1)])
    got = plugin_ref.reference_evaluator(m).run(None, {"x": x})[0]
    assert np.abs(got - y).max() <= 1e-6  # sigma went through a float32 attribute
    assert plugin_ref.gaussian_smooth_reference(x.astype(np.float16), k, sigma, t).dtype == np.float16


# ------------------------------------------------------------------------------------------------ plugin export
def tiny_purifier():
    return small_purifier(layers=3, filters=4)


def test_plugin_graph_structure_gate_and_reference_parity():
    p = tiny_purifier()
    m = build_onnx(p, 20, 27, smoothing="plugin")
    onnx.checker.check_model(m, full_check=True)
    plugins = [n for n in m.graph.node if n.domain == plugin_ref.PLUGIN_DOMAIN]
    # one node per GS stage (the two trailing stages stay two nodes), no GS matrices left
    assert [n.op_type for n in plugins] == [plugin_ref.PLUGIN_NAME] * 3
    assert "MatMul" not in {n.op_type for n in m.graph.node}
    attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in plugins]
    assert attrs[0] == {"kernel_size": 3, "sigma": 1.0, "iterations": 3, "plugin_version": b"1",
                        "plugin_namespace": b"ncis"}
    assert [a["kernel_size"] for a in attrs] == [3, 5, 3] and abs(attrs[1]["sigma"] - 0.7) < 1e-7
    assert {(o.domain, o.version) for o in m.opset_import} == {("", 18), ("trt.plugins", 1)}
    assert {p.key: p.value for p in m.metadata_props}["ncis_deploy.gs_form"] == "plugin"
    check_tensorrt_compatible(m, plugin_ref.PLUGINS)
    assert any("not a declared TensorRT plugin" in e for e in gate_problems(m))
    with pytest.raises(TensorRTGateError):
        check_tensorrt_compatible(m)
    x = np.random.default_rng(0).random((2, 3, 20, 27), dtype=np.float32)
    got = plugin_ref.reference_evaluator(m).run(None, {"input": x})[0]
    standard = build_onnx(p, 20, 27)
    from ncis_deploy.runners import make_runner

    with make_runner("onnxruntime", standard.SerializeToString()) as r:
        assert np.abs(got - r.infer(x)).max() <= 1e-5
    with pytest.raises(UserError, match="--smoothing"):
        build_onnx(p, 8, 8, smoothing="cuda")


def test_plugin_export_records_reference_parity_and_library(tmp_path):
    lib = tmp_path / "libncis_trt_plugins.so"
    lib.write_bytes(b"not really a library")  # recorded (path + hash); TensorRT is not here to load it
    tiny_purifier().save(tmp_path / "p")
    m = export(ExportOptions(source=str(tmp_path / "p"), out=str(tmp_path / "e"), height=16, width=18, fp16=True,
                             dynamic_hw=True, large_batch=2, smoothing="plugin", plugin_lib=str(lib)))
    fp32 = m["parity"]["fp32"]
    assert fp32["max_abs"] <= 1e-5 and fp32["tolerance"] == 1e-5 and "reference-evaluator" in fp32["backend"]
    assert fp32["checked_at"] == [[16, 18], [33, 50]] and fp32["standard_vs_pytorch_max_abs"] <= 1e-4
    assert m["parity"]["fp16"]["tolerance"] is None and 0 < m["parity"]["fp16"]["max_abs"] < 1e-2
    assert m["plugin"]["op_type"] == "NcisGaussianSmooth" and m["plugin"]["plugin_namespace"] == "ncis"
    assert m["plugin"]["library"]["sha256"] == __import__("hashlib").sha256(lib.read_bytes()).hexdigest()
    assert m["options"]["smoothing"] == "plugin" and m["tensorrt"]["built"] is False
    model = onnx.load(tmp_path / "e" / "purifier.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "height"
    assert sum(n.domain == "trt.plugins" for n in model.graph.node) == 3


def test_plugin_export_cli(tmp_path):
    r = run("export", "--preset", "gs", "--smoothing", "plugin", "--out", tmp_path / "e", "--height", 12, "--width", 9)
    assert r.exit_code == 0, r.output
    assert "parity (reference evaluator)" in r.output and "no --plugin-lib given" in r.output
    m = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert m["parity"]["fp32"]["max_abs"] <= 1e-5 and m["plugin"]["library"] is None
    assert_user_error(run("export", "--preset", "gs", "--plugin-lib", tmp_path / "x.so", "--out", tmp_path / "f"),
                      "only used with --smoothing plugin")
    assert_user_error(run("export", "--preset", "gs", "--smoothing", "plugin", "--plugin-lib", tmp_path / "x.so",
                          "--out", tmp_path / "f"), "does not exist")
    assert run("export", "--smoothing", "cuda", "--out", tmp_path / "f").exit_code == 2  # click's choice check
    assert not (tmp_path / "f").exists()


def test_engine_build_loads_and_serialises_plugin_libraries(tmp_path):
    onnx_file = tmp_path / "purifier.onnx"
    onnx_file.write_bytes(b"not parsed by the fake")
    lib = tmp_path / "libncis_trt_plugins.so"
    lib.write_bytes(b"\x7fELF")
    for version_compatible in (False, True):
        trt, calls = make_fake_trt("10.9.0.34")
        configs = []

        class Registry:
            def load_library(self, path):
                calls.append(("load_library", path))
                return "handle"

        trt.Builder.get_plugin_registry = lambda self: Registry()
        make_config = trt.Builder.create_builder_config
        trt.Builder.create_builder_config = lambda self: configs.append(make_config(self)) or configs[-1]
        spec = EngineSpec(**SPEC_SHAPES, plugin_libraries=(str(lib),), version_compatible=version_compatible)
        info = build_engine(onnx_file, tmp_path / "e.engine", spec, trt=trt)
        names = [c[0] for c in calls]
        assert names.index("load_library") < names.index("parse_from_file")  # creators registered before parsing
        assert ("load_library", str(lib.resolve())) in calls
        assert info["plugin_libraries"] == [str(lib.resolve())] and info["plugins_serialized"] is version_compatible
        assert getattr(configs[0], "plugins_to_serialize", None) == ([str(lib.resolve())] if version_compatible else None)
    trt, _ = make_fake_trt("10.9.0.34")
    trt.Builder.get_plugin_registry = lambda self: type("R", (), {"load_library": lambda s, p: None})()
    with pytest.raises(EngineBuildError, match="could not load the plugin library"):
        build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES, plugin_libraries=(str(lib),)), trt=trt)
    with pytest.raises(UserError, match="does not exist"):
        build_engine(onnx_file, tmp_path / "e.engine", EngineSpec(**SPEC_SHAPES, plugin_libraries=("/nope.so",)), trt=trt)


# ------------------------------------------------------------------------------------ Python binding, CPU side
def test_kernel_source_ships_in_the_package_and_names_match():
    src = kernels.kernel_source()
    assert kernels.source_dir() == CSRC and (CSRC / "gaussian_smooth.cuh").is_file()
    for name in kernels.KERNEL_NAMES:
        assert f"NCIS_GS_KERNEL({name}," in src
    header = (CSRC / "gaussian_smooth.cuh").read_text()
    for c_name, value in [("kTileH", kernels.TILE_H), ("kTileW", kernels.TILE_W), ("kThreads", kernels.THREADS),
                          ("kMaxRadius", kernels.MAX_RADIUS)]:
        assert f"constexpr int {c_name} = {value};" in header
    assert "constexpr int kSmemBudget = 48 * 1024;" in header and kernels.SMEM_BUDGET == 48 * 1024
    assert kernels.kernel_name("f32", 1) == "ncis_gs_f32_r1" and kernels.kernel_name("f16", 7) == "ncis_gs_f16_r0"


def test_gs_backends_on_the_cpu():
    x = torch.rand(2, 3, 9, 13)
    ref = smooth_fused(x, 3, 1.0, 4)
    assert torch.equal(GaussianSmoothing(3, 1.0, 4, backend="auto")(x), ref)  # CPU tensor: the matmul form
    assert torch.equal(GaussianSmoothing(3, 1.0, 4, fused=False, backend="auto")(x), smooth_iterative(x, 3, 1.0, 4))
    assert GaussianSmoothing(3, 1.0, 4).backend == "matmul" and GaussianSmoothing(3, 1.0, 4, fused=False).backend == "iterative"
    assert "backend=auto" in repr(GaussianSmoothing(3, 1.0, 1, backend="auto"))
    with pytest.raises(UserError, match="CUDA tensor"):
        GaussianSmoothing(3, 1.0, 4, backend="cuda")(x)
    with pytest.raises(UserError, match="backend must be one of"):
        GaussianSmoothing(3, 1.0, 4, backend="triton")
    from ncis_deploy import load_purifier

    p = kernels.use_cuda_kernels(load_purifier("gs"))
    assert [g.backend for g in p.gs] == ["auto"]
    assert torch.equal(p(x), load_purifier("gs")(x))
    ok, why = kernels.status()
    if not torch.cuda.is_available():
        assert ok is False and "no CUDA GPU" in why, why
    else:  # a GPU: usable unless neither binding is installed, and then it says so
        assert ok or "installed" in why, why


def test_driver_launch_marshals_kernel_arguments():
    """The cuda-python launch path without a GPU: a fake driver decodes the void** it is handed."""
    seen = {}

    class FakeDriver:
        CUstream = staticmethod(lambda handle: ("stream", handle))

        def cuCtxSetCurrent(self, ctx):
            return (0,)

        def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
            ptrs = (ctypes.c_void_p * 8).from_address(params)
            types = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 4 + [ctypes.c_double, ctypes.c_int]
            seen.update(f=f, grid=(gx, gy, gz), block=(bx, by, bz), smem=smem, stream=stream,
                        args=[t.from_address(p).value for t, p in zip(types, ptrs)])
            return (0,)

    mod = object.__new__(kernels._DriverModule)
    mod.driver, mod.ctx, mod.functions = FakeDriver(), "ctx", {"ncis_gs_f32_r1": "fn"}
    args = [("p", 0x7F0000001000), ("p", 0x7F0000002000), ("i", 6), ("i", 37), ("i", 91), ("i", 1), ("d", 0.7), ("i", 10)]
    mod.launch("ncis_gs_f32_r1", 24, kernels.smem_bytes(10, 1), 1234, args)
    assert seen["f"] == "fn" and seen["grid"] == (24, 1, 1) and seen["block"] == (kernels.THREADS, 1, 1)
    assert seen["smem"] == kernels.smem_bytes(10, 1) and seen["stream"] == ("stream", 1234)
    assert seen["args"] == [0x7F0000001000, 0x7F0000002000, 6, 37, 91, 1, 0.7, 10]
    with pytest.raises(UserError, match="cuLaunchKernel"):
        kernels._check((3,), "cuLaunchKernel(x)")


def test_gpu_check_helpers(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_kernels
    finally:
        sys.path.pop(0)
    assert gpu_kernels.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    rows = [{"batch": 64, "size": 224, "iterations": 10, "dtype": "float32", "kernel_ms": 0.03, "kernel_gbps": 2600.0,
             "conv2d_ms": 1.2, "speedup_vs_conv2d": 40.0, "matmul_ms": 0.5}]
    g = gpu_kernels.goals(rows, 3000.0)
    assert g["met"] is True and abs(g["fraction_of_copy_bw"] - 2600 / 3000) < 1e-12
    assert gpu_kernels.goals(rows, 4000.0)["met"] is False and gpu_kernels.goals([], 3000.0)["met"] is None
    result = {"device": {"name": "X", "capability": "90"}, "copy_bandwidth_gbps": 3000.0, "timings": rows, "goals": g,
              "correctness": {"cases": 10, "failures": [], "max_err_float32": 1e-7, "max_err_float16": 2e-4}}
    table = gpu_kernels.render_table(result)
    assert "RESULT: PASS" in table and "86.7%" in table and "MET" in table
    assert gpu_kernels.summarize_ms([3.0, 1.0, 2.0])["median_ms"] == 2.0
    if not torch.cuda.is_available():
        assert gpu_kernels.main(["--out", str(tmp_path)]) == 2  # a clear error, not a traceback, without a GPU
    r = subprocess.run(["bash", "-n", str(ROOT / "benchmarks/gpu_check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-3)])
@pytest.mark.parametrize("shape,k,t", [((1, 1, 2, 2), 3, 10), ((1, 3, 5, 7), 5, 3), ((2, 3, 37, 91), 7, 2),
                                       ((1, 3, 224, 224), 3, 10), ((1, 2, 40, 33), 13, 5), ((2, 3, 64, 64), 5, 10)])
def test_cuda_kernel_matches_reference(shape, k, t, dtype, tol):
    x = torch.rand(shape, device="cuda").to(dtype)
    out = torch.full_like(x, float("nan"))
    got = kernels.gaussian_smooth_cuda(x, k, 1.3, t, out=out)
    torch.cuda.synchronize()
    assert got.data_ptr() == out.data_ptr()
    assert (got.double() - smooth_iterative(x.double(), k, 1.3, t)).abs().max().item() <= tol


@pytest.mark.gpu
def test_cuda_kernel_on_a_side_stream_and_auto_backend(monkeypatch):
    x = torch.rand(3, 3, 50, 70, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = kernels.gaussian_smooth_cuda(x, 3, 1.0, 5)
    s.synchronize()
    assert (y - smooth_iterative(x, 3, 1.0, 5)).abs().max().item() <= 1e-5
    calls = []
    real = kernels.gaussian_smooth_cuda
    monkeypatch.setattr(kernels, "gaussian_smooth_cuda", lambda *a, **k: calls.append(1) or real(*a, **k))
    gs = GaussianSmoothing(3, 1.0, 5, backend="auto")
    with torch.no_grad():
        gs(x)
    assert calls == [1]
    xg = x.clone().requires_grad_(True)
    gs(xg).sum().backward()  # needs a gradient: the matmul form, not the kernel
    assert calls == [1] and xg.grad is not None
    with pytest.raises(UserError, match="no backward"):
        kernels.gaussian_smooth_cuda(xg, 3, 1.0, 5)
