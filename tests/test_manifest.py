"""The export directory's owner: stale siblings of killed exports, opening and checking an export."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ncis_deploy.errors import UserError
from ncis_deploy.exporters import manifest
from ncis_deploy.exporters.manifest import ENGINE, ONNX, open_export, remove_stale_siblings
from ncis_deploy.exporters.pipeline import ExportOptions, export

TINY = dict(source="gs", height=16, width=16, large_batch=2)


@pytest.fixture
def tiny_export(tmp_path):
    out = tmp_path / "e"
    export(ExportOptions(out=str(out), **TINY))
    return out


def _siblings(d):
    return sorted(p.name for p in d.parent.iterdir() if p.name != d.name)


def test_export_killed_midway_leaves_a_sibling_the_next_export_removes(tmp_path, tiny_export):
    before = (tiny_export / ONNX).read_bytes()
    # an export that stalls after writing its ONNX, then gets SIGKILL: nothing can clean up after it
    script = textwrap.dedent(f"""
        import time
        from ncis_deploy.exporters import pipeline
        pipeline.bsn_tap_report = lambda *a, **k: time.sleep(600)
        pipeline.export(pipeline.ExportOptions(out={str(tiny_export)!r}, **{TINY!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not any(n.startswith(".e.tmp-") and (tmp_path / n / ONNX).exists() for n in _siblings(tiny_export)):
            assert proc.poll() is None and time.monotonic() < deadline, "the stalled export never staged its ONNX"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = _siblings(tiny_export)
    assert len(left) == 1 and left[0].startswith(f".e.tmp-{proc.pid}-")
    assert (tiny_export / ONNX).read_bytes() == before  # the previous export is intact
    export(ExportOptions(out=str(tiny_export), **TINY))
    assert _siblings(tiny_export) == []
    open_export(tiny_export).path(ONNX)


def test_stale_sibling_rules(tmp_path):
    out = tmp_path / "e"
    live = tmp_path / f".e.tmp-{os.getpid()}-abc"  # a running export (this process): never touched
    legacy_fresh, legacy_old = tmp_path / ".e.tmp-xyz", tmp_path / ".e.tmp-old"  # names without a PID
    other = tmp_path / ".f.tmp-999999999-abc"  # another export's sibling
    for p in (live, legacy_fresh, legacy_old, other):
        p.mkdir()
    aged = time.time() - manifest.STALE_WITHOUT_PID_S - 60
    os.utime(legacy_old, (aged, aged))
    removed = remove_stale_siblings(out)
    assert removed == [legacy_old]
    assert live.exists() and legacy_fresh.exists() and other.exists()


def test_a_swap_killed_between_renames_gets_the_previous_export_back(tmp_path, tiny_export):
    dead_pid = 2 ** 22 + 12345  # above the default pid_max: no such process
    old = tmp_path / f".e.old-{dead_pid}-abc"
    os.replace(tiny_export, old)
    remove_stale_siblings(tiny_export)
    assert not old.exists()
    open_export(tiny_export).path(ONNX)


def test_open_export_checks_format_and_hashes(tmp_path, tiny_export):
    ex = open_export(tiny_export)
    assert ex.max_batch == 32 and ex.plugin is None and ex.config["stages"][0]["type"] == "gs"
    assert ex.artifact_for("onnxruntime") == tiny_export / ONNX
    with pytest.raises(UserError, match=r"purifier.engine does not exist.*not built \(") as e:
        ex.artifact_for("tensorrt")
    assert "ncis-deploy export --tensorrt" in str(e.value)
    assert ex.artifact_for("openvino") == ex.artifact_for("openvino", "bf16") == tiny_export / ONNX
    with pytest.raises(UserError, match=f"no {manifest.ONNX_INT8} .*ncis-deploy export --int8"):
        ex.artifact_for("openvino", "int8")  # the quantized artifact, never the float one under an int8 label
    assert ex.int8_form is None  # no int8 artifact, no form
    with pytest.raises(UserError, match="backend must be one of"):
        ex.artifact_for("torch")

    (tiny_export / ONNX).write_bytes((tiny_export / ONNX).read_bytes() + b"\0")
    with pytest.raises(UserError, match=f"corrupt: {ONNX} does not match the SHA-256"):
        open_export(tiny_export).path(ONNX)

    m = json.loads((tiny_export / manifest.MANIFEST).read_text())
    (tiny_export / manifest.MANIFEST).write_text(json.dumps(m | {"format_version": manifest.FORMAT_VERSION + 1}))
    with pytest.raises(UserError, match="newer than this ncis-deploy reads"):
        open_export(tiny_export)
    for broken in (m | {"format": "something/else"}, {k: v for k, v in m.items() if k != "artifacts"},
                   m | {"artifacts": [{"file": ONNX}]}, m | {"input": {"shape": "224"}}):
        (tiny_export / manifest.MANIFEST).write_text(json.dumps(broken))
        with pytest.raises(UserError, match="corrupt or not an ncis-deploy manifest"):
            open_export(tiny_export)


def test_plugin_export_refuses_onnxruntime(tmp_path, tiny_export):
    m = json.loads((tiny_export / manifest.MANIFEST).read_text())
    (tiny_export / manifest.MANIFEST).write_text(json.dumps(m | {"plugin": {"op_type": "NcisGaussianSmooth"}}))
    with pytest.raises(UserError, match="NcisGaussianSmooth.*cannot run"):
        open_export(tiny_export).artifact_for("onnxruntime")
    assert ENGINE not in open_export(tiny_export).artifacts
