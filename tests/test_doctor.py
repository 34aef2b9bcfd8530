"""The doctor: report() structure, live provider probes, and never raising on a machine missing packages."""

from __future__ import annotations

import json
import sys
import types

import pytest

from ncis_deploy import cpu, doctor


@pytest.fixture(scope="module")
def rep():
    return doctor.report()


def test_report_keys(rep):
    assert set(rep) >= {"python", "cpu", "torch", "onnx", "onnxruntime", "tensorrt", "cuda_python", "openvino",
                        "backends"}
    assert rep["python"]["version"].count(".") == 2
    assert rep["torch"]["installed"] and rep["torch"]["version"]
    assert isinstance(rep["torch"]["cuda_available"], bool) and isinstance(rep["torch"]["gpus"], list)
    assert rep["onnx"]["installed"]
    o = rep["onnxruntime"]
    assert o["installed"] and "CPUExecutionProvider" in o["available_providers"]
    assert "onnxruntime" in o["distributions"] or "onnxruntime-gpu" in o["distributions"]
    assert isinstance(o["conflict"], bool)
    assert set(rep["backends"]) == {"torch", "onnxruntime", "tensorrt", "openvino"}
    for v in rep["backends"].values():
        assert isinstance(v["usable"], bool) and v["reason"]
    json.dumps(rep)  # plain data


def test_cpu_provider_is_live(rep):
    assert rep["onnxruntime"]["providers"]["CPUExecutionProvider"]["live"] is True
    assert rep["backends"]["onnxruntime"]["usable"] and rep["backends"]["torch"]["usable"]
    assert "CPU" in rep["backends"]["onnxruntime"]["reason"]


def test_tensorrt_verdict_matches_packages(rep):
    if not rep["tensorrt"]["installed"]:
        assert not rep["backends"]["tensorrt"]["usable"]
        assert "ncis-deploy[trt]" in rep["backends"]["tensorrt"]["reason"]
    else:  # installed: usable exactly when cuda-python is there and sees a device
        cp = rep["cuda_python"]
        assert rep["backends"]["tensorrt"]["usable"] == bool(cp.get("installed") and cp.get("device_count"))


def test_render_mentions_every_backend(rep):
    text = doctor.render(rep)
    backends = text.split("\nbackends\n", 1)[1]
    for name in ("torch", "onnxruntime", "tensorrt", "openvino"):
        assert f"  {name}" in backends
    assert "CPUExecutionProvider" in text and "live" in text
    assert "usable" in backends


def test_never_raises_without_packages(monkeypatch):
    for name in ("torch", "onnx", "onnxruntime", "tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime",
                 "cuda.cudart", "openvino"):
        monkeypatch.setitem(sys.modules, name, None)  # every import of these now fails
    r = doctor.report()
    assert not any(v["usable"] for v in r["backends"].values())
    assert "does not import" in r["backends"]["torch"]["reason"]
    assert "pip install 'ncis-deploy[openvino]'" in r["backends"]["openvino"]["reason"]
    text = doctor.render(r)
    assert "not installed" in text and "NOT usable" in text


def test_listed_but_dead_provider_is_reported(monkeypatch):
    """The available-list lies when CUDA libraries are missing: a live session must show the fallback."""
    import onnxruntime as real

    class Session:
        def __init__(self, model, sess_options=None, providers=(), provider_options=None):
            self.asked = list(providers)

        def get_providers(self):
            return [p for p in self.asked if p == "CPUExecutionProvider"] or ["CPUExecutionProvider"]

        def run(self, names, feeds):
            return [feeds["x"] + 1]

    fake = types.SimpleNamespace(__version__="9.9", SessionOptions=real.SessionOptions, InferenceSession=Session,
                                 get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    r = doctor.report()
    provs = r["onnxruntime"]["providers"]
    assert provs["CPUExecutionProvider"]["live"] is True
    assert provs["CUDAExecutionProvider"] == {"live": False, "detail": "session fell back to CPUExecutionProvider"}
    reason = r["backends"]["onnxruntime"]["reason"]
    assert "listed but not live: CUDAExecutionProvider" in reason
    assert "NOT live" in doctor.render(r)


def test_main_json(capsys):
    assert doctor.main(["--json"]) == 0
    assert "backends" in json.loads(capsys.readouterr().out)


def test_serve_verdict_follows_pytriton(rep, monkeypatch):
    import importlib.util

    assert rep["serve"]["usable"] == (importlib.util.find_spec("pytriton") is not None)
    assert "nvidia-pytriton" in doctor.render(rep)
    monkeypatch.setitem(sys.modules, "pytriton", None)
    monkeypatch.setitem(sys.modules, "pytriton.triton", None)
    r = doctor.report()
    assert r["serve"] == {"installed": False, "usable": False, "error": r["serve"]["error"]}
    assert "ncis-deploy[serve]" in r["serve"]["error"]
    assert "`serve` NOT usable" in doctor.render(r)


def test_cpu_isa_and_native_precisions(rep, monkeypatch):
    """The ISA flags come from /proc/cpuinfo; each native precision follows from its flags and nothing else."""
    here = rep["cpu"]
    assert here["model"] and here["isa"] == cpu.cpu_isa() and set(here["isa"]) <= set(cpu.ISA_FLAGS)
    assert set(cpu.BF16_FLAGS + cpu.INT8_FLAGS) <= set(cpu.ISA_FLAGS)
    assert here["native_precisions"] == cpu.native_precisions(here["isa"])
    np_ = cpu.native_precisions
    assert np_([]) == ["f32"] and np_(["avx2", "fma", "avx512f"]) == ["f32"]
    assert np_(["avx512_bf16"]) == ["f32", "bf16"]
    assert np_(["amx_tile", "amx_bf16", "amx_int8"]) == ["f32", "bf16", "int8"]
    assert np_(["avx_vnni"]) == np_(["avx512_vnni"]) == ["f32", "int8"]
    text = doctor.render(rep)
    assert "native precisions" in text and ", ".join(here["native_precisions"]) in text
    monkeypatch.setattr(doctor, "cpu_isa", lambda: ["avx2", "fma"])
    r = doctor.report()
    assert r["cpu"]["native_precisions"] == ["f32"]
    if r["openvino"].get("live"):
        reason = r["backends"]["openvino"]["reason"]
        assert "auto = f32" in reason and "slow path" in reason


@pytest.mark.openvino
def test_openvino_is_probed_live(rep):
    ov = rep["openvino"]
    assert ov["installed"] and ov["live"] is True, ov
    assert "CPU" in ov["devices"] and "FP32" in ov["devices"]["CPU"]  # OpenVINO's OPTIMIZATION_CAPABILITIES
    b = rep["backends"]["openvino"]
    assert b["usable"] and f"OpenVINO {ov['version']} on CPU: f32" in b["reason"]
    assert ("bf16, " in b["reason"]) == ("bf16" in rep["cpu"]["native_precisions"])
    text = doctor.render(rep)
    assert "capabilities: " + ", ".join(ov["devices"]["CPU"]) in text


def test_openvino_that_does_not_compile_is_not_usable(monkeypatch):
    class Core:
        available_devices = ["CPU"]

        def get_property(self, dev, name):
            return ["FP32"]

        def read_model(self, model):
            raise RuntimeError("Exception from src/x.cpp:1:\nbroken plugin")

    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(__version__="9.9", Core=Core))
    r = doctor.report()
    assert r["openvino"]["installed"] and r["openvino"]["live"] is False
    assert not r["backends"]["openvino"]["usable"] and "no live CPU model" in r["backends"]["openvino"]["reason"]
    assert "NOT live" in doctor.render(r)
