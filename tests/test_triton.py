"""Triton: the model repository `export --triton` writes, and `ncis-deploy serve` (a real tritonserver)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from ncis_deploy.cli import cli
from ncis_deploy.errors import UserError

from test_cli import assert_user_error
from test_export import tiny_classifier

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (pip install 'ncis-deploy[serve]')")

from ncis_deploy.exporters import triton as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
H, W = 24, 20


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A small gs export with a classifier and a Triton repository (fixed size: Triton checks H and W too)."""
    d = tmp_path_factory.mktemp("triton")
    cls = tiny_classifier(d / "cls.onnx")
    r = run("export", "--preset", "gs", "--out", d / "e", "--height", H, "--width", W, "--classifier", cls,
            "--triton", "--triton-instances", 2, "--triton-queue-delay-us", 250, "--batch", "1:4:16")
    assert r.exit_code == 0, r.output
    return d / "e"


def purify_reference(export_dir, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(export_dir / "purifier.onnx")).run(None, {"input": x})[0]


# ------------------------------------------------------------------------------------------------ repository
def test_export_triton_writes_a_valid_repository(export_dir):
    root = export_dir / "triton"
    assert sorted(p.name for p in root.iterdir()) == ["ncis_classifier", "ncis_pipeline", "ncis_purifier"]
    cfgs = {name: T.parse_config((root / name / "config.pbtxt").read_text()) for name in
            ("ncis_purifier", "ncis_classifier", "ncis_pipeline")}
    pur = cfgs["ncis_purifier"]
    assert (pur.platform, pur.max_batch_size) == ("onnxruntime_onnx", 16)
    assert [(t.name, list(t.dims)) for t in pur.input] == [("input", [3, H, W])]
    assert [(t.name, list(t.dims)) for t in pur.output] == [("output", [3, H, W])]
    assert pur.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(pur.dynamic_batching.preferred_batch_size) == [4]
    assert pur.instance_group[0].count == 2
    assert [(t.name, list(t.dims)) for t in cfgs["ncis_classifier"].output] == [("logits", [5])]
    steps = cfgs["ncis_pipeline"].ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["ncis_purifier", "ncis_classifier"]
    # the repository's purifier is the exported ONNX, byte for byte
    assert (root / "ncis_purifier/1/model.onnx").read_bytes() == (export_dir / "purifier.onnx").read_bytes()
    m = json.loads((export_dir / "manifest.json").read_text())["triton"]
    assert {x["name"] for x in m["models"]} == set(cfgs)
    assert all(len(f["sha256"]) == 64 for f in m["files"])
    assert T.validate_repository(root).keys() == cfgs.keys()


def test_configs_match_the_manifest(export_dir):
    m = json.loads((export_dir / "manifest.json").read_text())
    cfg = T.parse_config((export_dir / "triton/ncis_purifier/config.pbtxt").read_text())
    assert (cfg.input[0].name, cfg.output[0].name) == (m["input"]["name"], m["output"]["name"])
    assert list(cfg.input[0].dims) == m["input"]["shape"][1:]
    assert cfg.max_batch_size == m["options"]["batch"][2]


@pytest.mark.parametrize("fp16_plan", [False, True])
def test_engine_gets_a_plan_model_and_the_ensemble_uses_it_when_dtypes_agree(export_dir, tmp_path, fp16_plan):
    """No TensorRT here: a stand-in plan file exercises the repository logic around a built engine."""
    from ncis_deploy.exporters.onnx import build_onnx
    from ncis_deploy.exporters.classifier import load_classifier
    from ncis_deploy.model.purifier import load_purifier

    engine_onnx = export_dir / "purifier.onnx"
    if fp16_plan:  # our FP16 exports keep FP32 I/O (casts inside); a plan with FP16 I/O comes from elsewhere
        m = build_onnx(load_purifier("gs"), H, W, fp16=True)
        for vi in (*m.graph.input, *m.graph.output):
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
        engine_onnx = tmp_path / "purifier_fp16_io.onnx"
        onnx.save(m, engine_onnx)
    (tmp_path / "purifier.engine").write_bytes(b"not a real plan")
    entry = T.write_repository(tmp_path, purifier_onnx=export_dir / "purifier.onnx", engine=tmp_path / "purifier.engine",
                               engine_onnx=engine_onnx, classifier=load_classifier(str(export_dir.parent / "cls.onnx"), 18),
                               mean=(0.5,) * 3, std=(0.25,) * 3, max_batch_size=8, preferred_batch=4, instances=1,
                               queue_delay_us=100, opset=18)
    root = tmp_path / "triton"
    plan = T.parse_config((root / "ncis_purifier_trt/config.pbtxt").read_text())
    assert plan.platform == "tensorrt_plan" and plan.instance_group[0].kind == plan.instance_group[0].KIND_GPU
    assert T.model_config_pb2().DataType.Name(plan.input[0].data_type) == ("TYPE_FP16" if fp16_plan else "TYPE_FP32")
    assert (root / "ncis_purifier_trt/1/model.plan").read_bytes() == b"not a real plan"
    ens = T.parse_config((root / "ncis_pipeline/config.pbtxt").read_text())
    # an FP16 plan cannot take the ensemble's FP32 input: then the ONNX Runtime purifier is the first step
    assert ens.ensemble_scheduling.step[0].model_name == ("ncis_purifier" if fp16_plan else "ncis_purifier_trt")
    assert {x["name"] for x in entry["models"]} == {"ncis_purifier", "ncis_purifier_trt", "ncis_classifier",
                                                    "ncis_pipeline"}


def test_classifier_model_normalises_then_classifies(export_dir):
    """ncis_classifier(x) == classifier((x - mean) / std): the ensemble's second step is the merge's classifier."""
    import onnxruntime as ort

    x = np.random.default_rng(0).random((2, 3, H, W), dtype=np.float32)
    got = ort.InferenceSession(str(export_dir / "triton/ncis_classifier/1/model.onnx")).run(None, {"input": x})[0]
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    want = ort.InferenceSession(str(export_dir.parent / "cls.onnx")).run(None, {"img": (x - mean) / std})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _copy_repo(export_dir, tmp_path):
    import shutil

    shutil.copytree(export_dir / "triton", tmp_path / "triton")
    return tmp_path / "triton"


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace("max_batch_size", "max_batch_sise"), "not a valid Triton ModelConfig"),
    (lambda t: t.replace("TYPE_FP32", "TYPE_FLOAT32", 1), "not a valid Triton ModelConfig"),
    (lambda t: t.replace('name: "input"', 'name: "inptu"'), "do not match the model"),
    (lambda t: t.replace(f"dims: {W}", f"dims: {W + 1}", 1), "in the config but"),
    (lambda t: t.replace('name: "ncis_purifier"', 'name: "purifier"'), "differs from its directory"),
    (lambda t: t.replace("count: 2", "count: 0"), "count must be >= 1"),
])
def test_a_broken_purifier_config_is_refused(export_dir, tmp_path, edit, words):
    root = _copy_repo(export_dir, tmp_path)
    cfg = root / "ncis_purifier" / "config.pbtxt"
    text = cfg.read_text()
    cfg.write_text(edit(text))
    assert cfg.read_text() != text
    with pytest.raises(T.TritonConfigError, match=words):
        T.validate_repository(root)


@pytest.mark.parametrize("old, new, words", [
    ('model_name: "ncis_classifier"', 'model_name: "classifier"', "not in the repository"),
    ('value: "purified"\n    }\n  }\n  step', 'value: "smoothed"\n    }\n  }\n  step', "before any step produces it"),
    ('key: "logits"', 'key: "probs"', "has no output"),
])
def test_a_broken_ensemble_is_refused(export_dir, tmp_path, old, new, words):
    root = _copy_repo(export_dir, tmp_path)
    cfg = root / "ncis_pipeline" / "config.pbtxt"
    text = cfg.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new, 1))
    with pytest.raises(T.TritonConfigError, match=words):
        T.validate_repository(root)


def test_export_triton_bad_input_is_one_line(tmp_path, monkeypatch):
    assert_user_error(run("export", "--preset", "gs", "--out", tmp_path / "a", "--height", 8, "--width", 8, "--triton",
                          "--smoothing", "plugin"), "drop --smoothing plugin")
    assert_user_error(run("export", "--preset", "gs", "--out", tmp_path / "b", "--height", 8, "--width", 8, "--triton",
                          "--triton-instances", 0), "--triton-instances must be >= 1")
    assert not (tmp_path / "b").exists()  # nothing half written
    fixed = tiny_classifier(tmp_path / "fixed.onnx")
    m = onnx.load(fixed)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, fixed)
    assert_user_error(run("export", "--preset", "gs", "--out", tmp_path / "c", "--height", 8, "--width", 8, "--triton",
                          "--classifier", fixed), "dynamic first (batch) dimension")
    assert not (tmp_path / "c").exists()
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    assert_user_error(run("export", "--preset", "gs", "--out", tmp_path / "d", "--triton"), "ncis-deploy[serve]")


# ---------------------------------------------------------------------------------------------- real server
def _tritonserver():
    """The tritonserver binary nvidia-pytriton bundles and the environment it needs."""
    import pytriton
    from pytriton.utils.distribution import get_libs_path

    from ncis_deploy.serve import python_library_env

    ts = Path(pytriton.__file__).parent / "tritonserver"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = python_library_env()["LD_LIBRARY_PATH"] + ":" + str(get_libs_path())
    return ts, env


@pytest.mark.triton
def test_real_tritonserver_accepts_the_emitted_configs(export_dir, tmp_path):
    """The bundled tritonserver (2.51) has no ONNX Runtime backend, so the best it can say of a good config is
    "no backend library for 'onnxruntime'": it parsed the config and mapped the platform. A broken config next to it
    must fail earlier, on the config itself."""
    import urllib.request

    from ncis_deploy.bench.serving import free_ports

    root = _copy_repo(export_dir, tmp_path)
    broken = root / "ncis_broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "ncis_broken"\nplatform: "onnxruntime_onnx"\nmax_batch_sise: 4\n')
    ts, env = _tritonserver()
    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen([str(ts / "bin/tritonserver"), f"--model-repository={root}",
                             f"--backend-directory={ts / 'backends'}", "--exit-on-error=false",
                             "--strict-readiness=false", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                             f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
                             "--allow-metrics=false"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        index = None
        for _ in range(120):
            time.sleep(0.25)
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{http}/v2/repository/index", data=b"", method="POST")
                index = {m["name"]: m for m in json.load(urllib.request.urlopen(req, timeout=2))}
                if all("reason" in index.get(m, {}) for m in ("ncis_purifier", "ncis_classifier")):
                    break
            except OSError:
                continue
        assert index is not None, "tritonserver did not answer"
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=60)[0].decode(errors="replace")
    for name in ("ncis_purifier", "ncis_classifier"):
        assert "unable to find backend library for backend 'onnxruntime'" in index[name]["reason"], (index, log)
    assert "reason" not in index["ncis_broken"]  # never got as far as a backend
    assert "failed to read text proto from" in log and "ncis_broken/config.pbtxt" in log, log


@pytest.mark.triton
def test_serve_answers_tritonclient_and_stops_cleanly(export_dir, tmp_path):
    from ncis_deploy.bench.serving import ServerProcess, load_test, malformed_requests

    rng = np.random.default_rng(0)
    inputs = [rng.random((n, 3, H, W), dtype=np.float32) for n in (1, 2, 3)]
    refs = [purify_reference(export_dir, x) for x in inputs]
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("ncis-serve-*"))
    with ServerProcess(export_dir, "--max-batch", 8, "--instances", 2) as sp:
        import tritonclient.http as tc

        client = tc.InferenceServerClient(sp.http_url)
        cfg = client.get_model_config("ncis_purifier")
        client.close()
        assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [3, H, W]
        results = [load_test(url, "ncis_purifier", inputs, refs, 4, requests_per_client=5, protocol=proto)
                   for url, proto in ((sp.http_url, "http"), (sp.grpc_url, "grpc"))]
        bad = malformed_requests(sp.http_url, "ncis_purifier", inputs[0], max_batch=8)
        # the standalone client example, both protocols, on a real image file
        from PIL import Image

        img = (rng.random((H, W, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "in.png")
        outs = {}
        for proto, url in (("http", sp.http_url), ("grpc", sp.grpc_url)):
            p = subprocess.run([sys.executable, str(ROOT / "export/python/triton_client.py"), str(tmp_path / "in.png"),
                                str(tmp_path / f"out_{proto}.png"), "--protocol", proto, "--url", url],
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stderr
            outs[proto] = np.asarray(Image.open(tmp_path / f"out_{proto}.png"))
    for r in results:
        assert (r["errors"], r["mismatches"], r["requests"]) == (0, 0, 20), r
        assert r["max_abs_diff"] <= 1e-5
    assert all(b["refused"] and b["next_request_ok"] for b in bad), bad
    want = purify_reference(export_dir, (img.astype(np.float32) / 255).transpose(2, 0, 1)[None])[0]
    want = (np.clip(want.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
    for proto, got in outs.items():
        assert np.abs(got.astype(int) - want).max() <= 1, proto
    # SIGTERM: exit 0, said so, workspace and its own log gone
    assert sp.returncode == 0, sp.output
    assert "serving ncis_purifier" in sp.output and "SIGTERM: stopping the server" in sp.output
    # (not "ends with": pytriton's shared memory can make Python's resource_tracker warn after our last line)
    assert "stopped" in sp.output.splitlines(), sp.output
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("ncis-serve-*")) <= before


@pytest.mark.triton
@pytest.mark.openvino
@pytest.mark.slow  # a second real server (~10 s); the openvino runner itself is checked in tests/test_openvino.py
def test_serve_openvino_answers_like_onnxruntime(export_dir):
    from ncis_deploy.bench.serving import ServerProcess, load_test

    rng = np.random.default_rng(1)
    inputs = [rng.random((n, 3, H, W), dtype=np.float32) for n in (1, 3)]
    refs = [purify_reference(export_dir, x) for x in inputs]
    with ServerProcess(export_dir, "--backend", "openvino", "--precision", "f32", "--threads", 1) as sp:
        result = load_test(sp.http_url, "ncis_purifier", inputs, refs, 2, requests_per_client=2, tolerance=1e-4)
    assert (result["errors"], result["mismatches"], result["requests"]) == (0, 0, 4), result
    assert "serving ncis_purifier: openvino, f32 (purifier.onnx)" in sp.output, sp.output
    assert sp.returncode == 0, sp.output


@pytest.mark.triton
def test_serve_refuses_a_port_in_use(export_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = assert_user_error(run("serve", export_dir, "--http-port", port), f"port {port}", "--http-port")
    assert "already in use" in line


def test_serve_bad_input_is_one_line(tmp_path, export_dir, monkeypatch):
    from ncis_deploy.bench.serving import free_ports

    http, grpc = free_ports(2)
    assert_user_error(run("serve", tmp_path / "nope"), "does not exist", "ncis-deploy export")
    (tmp_path / "empty").mkdir()
    assert_user_error(run("serve", tmp_path / "empty"), "no manifest.json")
    assert_user_error(run("serve", export_dir, "--backend", "tensorrt"), "purifier.engine does not exist")
    assert_user_error(run("serve", export_dir, "--http-port", http, "--grpc-port", http),
                      f"--grpc-port and --http-port are both {http}")
    assert_user_error(run("serve", export_dir, "--instances", 0), "--instances must be >= 1")
    assert_user_error(run("serve", export_dir, "--max-batch", 0), "--max-batch must be >= 1")
    assert_user_error(run("serve", export_dir, "--precision", "bf16"), "--precision only applies to the openvino")
    assert_user_error(run("serve", export_dir, "--backend", "openvino", "--precision", "int8"),
                      "no purifier_int8.onnx", "ncis-deploy export --int8")
    monkeypatch.setitem(sys.modules, "pytriton", None)
    monkeypatch.setitem(sys.modules, "pytriton.triton", None)
    assert_user_error(run("serve", export_dir, "--http-port", http, "--grpc-port", grpc, "--metrics-port", free_ports(1)[0]),
                      "nvidia-pytriton", "ncis-deploy[serve]")


@pytest.mark.triton
def test_serve_refuses_numpy_2_with_pytriton_0_7(monkeypatch):
    """Measured: pytriton 0.7 answers with empty outputs under numpy 2; serving garbage must not be possible."""
    import importlib.metadata

    from ncis_deploy import serve

    monkeypatch.setattr(serve.np, "__version__", "2.1.0")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.7.0")
    with pytest.raises(UserError, match="empty outputs under numpy 2"):
        serve.require_pytriton()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.8.0")
    assert serve.require_pytriton() == "0.8.0"


def test_python_library_env_puts_this_interpreter_first(monkeypatch):
    import sysconfig

    from ncis_deploy.serve import python_library_env

    monkeypatch.setenv("LD_LIBRARY_PATH", f"/opt/x:{sysconfig.get_config_var('LIBDIR')}")
    parts = python_library_env()["LD_LIBRARY_PATH"].split(":")
    assert parts == [sysconfig.get_config_var("LIBDIR"), "/opt/x"]
    monkeypatch.setattr(sysconfig, "get_config_var", lambda k: {"LIBDIR": "/nowhere", "LDLIBRARY": "libpython3.a"}[k])
    with pytest.raises(UserError, match="shared libpython"):
        python_library_env()
