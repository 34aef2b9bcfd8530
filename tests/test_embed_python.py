"""export/python/purify_onnx.py: the torch-free script a consumer copies into their pipeline.

Each run goes through a wrapper that blocks ``torch`` and ``ncis_deploy`` at import time (a meta-path finder that
records the attempt and raises ImportError) and, after the script ends, also checks ``sys.modules``. So the test
fails if the script imports torch at all, even inside a ``try`` that would survive the ImportError.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def tiny_onnx(path: Path, h=8, w=8) -> Path:
    """y = clip(0.5 * x, 0, 1), input float32 [batch, 3, h, w] (h/w strings = dynamic)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, h, w])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, h, w])
    consts = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("half", 0.5), ("lo", 0.0), ("hi", 1.0))]
    nodes = [helper.make_node("Mul", ["input", "half"], ["m"]), helper.make_node("Clip", ["m", "lo", "hi"], ["output"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], consts),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "export" / "python" / "purify_onnx.py"

WRAPPER = r"""
import importlib.abc, runpy, sys
BLOCKED = ("torch", "ncis_deploy")
attempts = []

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{name} is blocked: a standalone export script must not import it")
        return None

sys.meta_path.insert(0, Block())
script, sys.argv = sys.argv[1], sys.argv[1:]
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
if attempts or leaked:
    print(f"FORBIDDEN IMPORT attempts={attempts} loaded={leaked}", file=sys.stderr)
    sys.exit(99)
sys.exit(code)
"""


def run_script(script: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)  # the script must not need the repo on the path
    return subprocess.run([sys.executable, "-c", WRAPPER, str(script), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=script.parent, timeout=60)


def write_rgb(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def expected(arr: np.ndarray) -> np.ndarray:
    """What the tiny model (clip(0.5 x)) should give, with the script's own pre/post-processing."""
    x = arr.astype(np.float32) / 255.0
    return (np.clip(x * np.float32(0.5), 0, 1) * 255.0 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("m") / "fixed8.onnx")


def test_wrapper_catches_a_torch_import(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("try:\n    import torch\nexcept ImportError:\n    pass\nprint('done')\n")
    p = run_script(sneaky)
    assert p.returncode == 99 and "FORBIDDEN IMPORT" in p.stderr and "torch" in p.stderr


def test_single_image(tmp_path, fixed_model):
    arr = write_rgb(tmp_path / "in.png", 8, 8)
    out = tmp_path / "out.png"
    p = run_script(SCRIPT, fixed_model, tmp_path / "in.png", out)
    assert p.returncode == 0, p.stderr
    assert "providers: CPUExecutionProvider" in p.stdout
    got = np.asarray(Image.open(out))
    assert got.shape == (8, 8, 3)
    np.testing.assert_array_equal(got, expected(arr))


def test_fixed_size_mismatch_refused_unless_resize(tmp_path, fixed_model):
    write_rgb(tmp_path / "big.png", 10, 12)
    p = run_script(SCRIPT, fixed_model, tmp_path / "big.png", tmp_path / "o.png")
    assert p.returncode == 2
    assert "is 10x12 (HxW) but the model takes 8x8; pass --resize" in p.stderr
    assert p.stderr.strip().count("\n") == 0 and not (tmp_path / "o.png").exists()
    p = run_script(SCRIPT, fixed_model, tmp_path / "big.png", tmp_path / "o.png", "--resize")
    assert p.returncode == 0, p.stderr
    assert Image.open(tmp_path / "o.png").size == (12, 10)  # resized back to the input size


def test_folder_with_dynamic_model(tmp_path):
    model = tiny_onnx(tmp_path / "dyn.onnx", "height", "width")
    src = tmp_path / "imgs"
    a = write_rgb(src / "a.png", 9, 13, seed=1)
    b = write_rgb(src / "sub" / "b.png", 16, 5, seed=2)
    (src / "notes.txt").write_text("not an image")
    p = run_script(SCRIPT, model, src, tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert "wrote 2 image(s)" in p.stdout
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), expected(a))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "sub" / "b.png")), expected(b))


def test_bad_model_and_missing_input(tmp_path, fixed_model):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(fixed_model.read_bytes()[:40])
    write_rgb(tmp_path / "in.png", 8, 8)
    p = run_script(SCRIPT, bad, tmp_path / "in.png", tmp_path / "o.png")
    assert p.returncode == 2 and "cannot load" in p.stderr and "bad.onnx" in p.stderr
    p = run_script(SCRIPT, fixed_model, tmp_path / "nope.png", tmp_path / "o.png")
    assert p.returncode == 2 and "does not exist" in p.stderr
