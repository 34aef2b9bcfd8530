"""export/cpp/openvino: the C++ consumer (`ncis_purify_ov`, OpenVINO's C++ API from the `openvino` pip wheel).

It is configured and built the way its README says (CMake + g++, ``-DOpenVINO_DIR`` from the wheel), run on exported
purifiers, and its float32 output (``--raw-out``) is compared with ONNX Runtime's through ``runners.compare``. The
build is one translation unit (≈ 6 s on the busy 2-core machine, the whole file ≈ 10 s), so it stays in the default
set. Marked ``openvino``: skipped only where the package is not installed (an error in CI, which installs the extra);
a missing cmake or g++ is a failure that says what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from ncis_deploy import load_purifier
from ncis_deploy.data import bundled_photo
from ncis_deploy.exporters.manifest import BF16_NODES_KEY
from ncis_deploy.exporters.onnx import build_onnx
from ncis_deploy.runners import make_runner
from ncis_deploy.runners.compare import compare

from test_export import small_purifier

pytestmark = pytest.mark.openvino  # skipped only without the openvino package (conftest.py); CI installs it

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "export" / "cpp" / "openvino"
PARITY = 1e-4  # the bound for FP32 OpenVINO vs ONNX Runtime


def tools() -> dict[str, str]:
    """cmake and a C++17 compiler, or a failure naming the packages (CI has both; a missing one is not a skip)."""
    found = {"cmake": shutil.which("cmake"), "g++": shutil.which("g++") or shutil.which("c++")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the C++ consumer needs CMake >= 3.18 and a C++17 compiler "
                    "(Debian/Ubuntu: apt-get install cmake g++)")
    return found


def openvino_dir() -> str:
    """The README's command for -DOpenVINO_DIR, run by this interpreter."""
    code = "import openvino, os; print(os.path.join(os.path.dirname(openvino.__file__), 'cmake'))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def configure(build: Path, ov_dir: str) -> subprocess.CompletedProcess:
    t = tools()
    return subprocess.run([t["cmake"], "-S", str(SOURCE), "-B", str(build), f"-DOpenVINO_DIR={ov_dir}",
                           f"-DCMAKE_CXX_COMPILER={t['g++']}"], capture_output=True, text=True, timeout=120)


def test_the_wheel_carries_the_cpp_sdk_and_cmake_configures(tmp_path):
    import openvino

    ov_dir = Path(openvino_dir())
    assert (ov_dir / "OpenVINOConfig.cmake").is_file()
    assert (ov_dir.parent / "include" / "openvino" / "openvino.hpp").is_file()
    assert any((ov_dir.parent / "libs").glob("libopenvino.so*"))
    r = configure(tmp_path / "build", str(ov_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ncis_purify_ov: OpenVINO {openvino.__version__.split('-')[0]}" in r.stdout
    # without the wheel's config the configure step stops and says how to point at it
    r = configure(tmp_path / "nowhere", str(tmp_path / "no-such-dir"))
    assert r.returncode != 0 and "pip install openvino" in r.stderr and "-DOpenVINO_DIR" in r.stderr


@pytest.fixture(scope="module")
def purify_ov(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("cpp-ov")
    r = configure(build, openvino_dir())
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([tools()["cmake"], "--build", str(build), "-j2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning:" not in r.stdout + r.stderr, r.stdout + r.stderr  # -Wall -Wextra; OpenVINO's headers are SYSTEM
    return build / "ncis_purify_ov"


def run(exe: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # the binary's RPATH must suffice
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def save_ppm(path: Path, rgb: np.ndarray) -> np.ndarray:
    """Write an HxWx3 uint8 image; return the program's input for it: float32 [1, 3, H, W] = value / 255."""
    Image.fromarray(rgb).save(path)
    return np.ascontiguousarray((rgb.astype(np.float32) / np.float32(255)).transpose(2, 0, 1)[None])


def purify(exe: Path, model: Path, image: Path, out: Path, *flags) -> np.ndarray:
    raw = out.with_suffix(".f32")
    r = run(exe, model, image, out, "--raw-out", raw, *flags)
    assert r.returncode == 0, r.stderr
    h, w = np.asarray(Image.open(image)).shape[:2]
    return np.fromfile(raw, dtype=np.float32).reshape(1, 3, h, w)


def test_cpp_consumer_matches_onnxruntime(purify_ov, tmp_path):
    rng = np.random.default_rng(0)
    photo = (bundled_photo("astronaut") * 255).astype(np.uint8)
    # a fixed-size export of a small random purifier, and the shipped `ncis` preset exported with --dynamic-hw
    fixed = tmp_path / "fixed.onnx"
    onnx.save(build_onnx(small_purifier(), 20, 27), fixed)
    dynamic = tmp_path / "ncis_dynamic.onnx"
    onnx.save(build_onnx(load_purifier("ncis"), dynamic_hw=True), dynamic)
    runs = {fixed: [("noise_20x27", rng.integers(0, 256, (20, 27, 3), dtype=np.uint8))],
            dynamic: [("photo_48x64", photo[100:148, 200:264]), ("photo_33x17", photo[300:333, 50:67])]}
    for model, images in runs.items():
        cases, outputs = [], []
        for name, rgb in images:
            x = save_ppm(tmp_path / f"{name}.ppm", rgb)
            y = purify(purify_ov, model, tmp_path / f"{name}.ppm", tmp_path / f"{name}_out.ppm")
            cases.append((name, x))
            outputs.append(y)
            # the PPM is the float output clamped and rounded to 8 bits
            written = np.asarray(Image.open(tmp_path / f"{name}_out.ppm")).transpose(2, 0, 1)[None]
            assert np.array_equal(written, np.round(np.clip(y, 0, 1) * 255).astype(np.uint8))
        result = compare({"onnxruntime": make_runner("onnxruntime", model), "ncis_purify_ov": outputs}, cases,
                         tolerance=PARITY)
        assert result.ok, [(c.case, c.max_abs) for c in result.pairs[0].cases]
        assert result.pairs[0].max_abs <= PARITY


def test_cpp_consumer_bad_input_and_bf16(purify_ov, tmp_path):
    fixed = tmp_path / "fixed.onnx"
    onnx.save(build_onnx(small_purifier(), 20, 27), fixed)
    rgb = np.random.default_rng(1).integers(0, 256, (20, 27, 3), dtype=np.uint8)
    save_ppm(tmp_path / "in.ppm", rgb)
    save_ppm(tmp_path / "small.ppm", rgb[:10, :12])

    def refused(code, needle, *args):
        r = run(purify_ov, *args)
        assert r.returncode == code and needle in r.stderr and r.stderr.startswith("error: "), r.stderr
        assert not list(tmp_path.glob("out*")), "a failed run must not leave an output behind"

    refused(2, "expected MODEL.onnx IN.ppm OUT.ppm", fixed, tmp_path / "in.ppm")
    refused(2, "--precision must be f32 or bf16", fixed, tmp_path / "in.ppm", tmp_path / "out.ppm", "--precision", "int4")
    refused(1, "export with --dynamic-hw", fixed, tmp_path / "small.ppm", tmp_path / "out.ppm")
    refused(1, "cannot open", tmp_path / "missing.onnx", tmp_path / "in.ppm", tmp_path / "out.ppm")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    refused(1, "as an ONNX model", tmp_path / "junk.onnx", tmp_path / "in.ppm", tmp_path / "out.ppm")
    refused(1, "not available here", fixed, tmp_path / "in.ppm", tmp_path / "out.ppm", "--device", "NO_SUCH_DEVICE")
    (tmp_path / "bad.ppm").write_bytes(b"P3\n1 1\n255\n0 0 0\n")
    refused(1, "P5/P6", fixed, tmp_path / "bad.ppm", tmp_path / "out.ppm")

    # BF16 runs where the CPU has it natively and is refused, in one line, where it has not
    import openvino

    caps = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in caps:
        f32 = purify(purify_ov, fixed, tmp_path / "in.ppm", tmp_path / "out_f32.ppm", "--precision", "f32")
        bf16 = purify(purify_ov, fixed, tmp_path / "in.ppm", tmp_path / "out_bf16.ppm", "--precision", "bf16")
        assert 0 < np.abs(bf16 - f32).max() < 0.05  # really reduced precision, still the same picture
        # the BSN typed bf16 from the export's node list, GS and the bilateral baseline f32: as the Python runner
        bilateral, unlisted = tmp_path / "bilateral.onnx", tmp_path / "unlisted.onnx"
        m = build_onnx(small_purifier(baseline="bilateral"), 20, 27)
        onnx.save(m, bilateral)
        props = [p for p in m.metadata_props if p.key != BF16_NODES_KEY]  # an export from before the list
        del m.metadata_props[:]
        m.metadata_props.extend(props)
        onnx.save(m, unlisted)
        r = run(purify_ov, bilateral, tmp_path / "in.ppm", tmp_path / "out_b.ppm", "--raw-out", tmp_path / "b.f32",
                "--precision", "bf16")
        assert r.returncode == 0 and "bf16 BSN" in r.stdout, (r.stdout, r.stderr)
        cpp = np.fromfile(tmp_path / "b.f32", dtype=np.float32).reshape(1, 3, 20, 27)
        x = rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255
        with make_runner("openvino", bilateral, precision="bf16") as py, \
                make_runner("openvino", bilateral, precision="bf16", bf16_scope="all") as hint:
            assert py.record["bf16_scope"] == "bsn"
            same, other = np.abs(cpp - py.infer(x)).max(), np.abs(cpp - hint.infer(x)).max()
        assert same <= 1e-6 < other, (same, other)
        r = run(purify_ov, unlisted, tmp_path / "in.ppm", tmp_path / "out_u.ppm", "--raw-out", tmp_path / "u.f32",
                "--precision", "bf16")  # without the list: OpenVINO's own bf16 hint, as the Python runner falls back
        assert r.returncode == 0 and "bf16 BSN" not in r.stdout and "CPU, bf16]" in r.stdout, r.stdout
        with make_runner("openvino", unlisted, precision="bf16") as py:
            assert py.record["bf16_scope"] == "all"
            assert np.abs(np.fromfile(tmp_path / "u.f32", dtype=np.float32).reshape(x.shape) - py.infer(x)).max() <= 1e-6
    else:
        refused(1, "use --precision f32", fixed, tmp_path / "in.ppm", tmp_path / "out.ppm", "--precision", "bf16")
