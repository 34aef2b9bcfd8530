"""``ncis-deploy eval --backend``: each backend / precision against the FP32 torch purifier, with the issue-12 guards.

Tiny on purpose (a 32x32 random classifier, a few bundled crops, 2-step PGD): what is checked is the plumbing (the
same adversarial images, the same classifier, the figures and their guards), which does not depend on size.
"""

from __future__ import annotations

import json

import pytest

from ncis_deploy.errors import UserError
from ncis_deploy.eval.backends import GUARDS, check_guards, parse_backend, render
from ncis_deploy.eval.core import EvalOptions, render_markdown, run_eval
from test_cli import assert_user_error, run
from test_eval import tinymod  # noqa: F401  (a fixture)

TINY = dict(classifier="tinymod:make", size=32, crops=1, images=6, attacks=("pgd",), eps=(8 / 255,), steps=2,
            parity=False)
TINY_CLI = ("--classifier", "tinymod:make", "--size", 32, "--crops", 1, "--images", 6, "--attack", "pgd",
            "--eps", "8/255", "--steps", 2, "--no-parity")


def _rows(rep, label):
    return {r["preset"]: r for r in rep["precisions"]["rows"] if r["label"] == label}


def _torch_rate(rep, preset, attack):
    return next(r["rate"] for r in rep["rows"] if r["preset"] == preset and r["attack"] == attack)


def test_onnxruntime_reproduces_torch_on_clean_and_purifier_blind_images(tinymod):
    rep = run_eval(EvalOptions(**TINY, presets=("none", "gs", "ncis"), backends=("onnxruntime",)))
    rows = _rows(rep, "onnxruntime:f32")
    assert set(rows) == {"gs", "ncis"}  # "none" has no stage to run
    for preset, row in rows.items():
        assert [s["attack"] for s in row["sets"]] == ["clean", "pgd"]
        for s in row["sets"]:
            # the torch figure the row is compared with is the main table's, and FP32 ONNX Runtime reproduces it
            assert s["torch_rate"] == _torch_rate(rep, preset, s["attack"])
            assert abs(s["delta_points"]) <= 1.0 and s["top1_agreement"] == 1.0
            assert s["max_abs"] < 1e-4 and (s["psnr_db"] is None or s["psnr_db"] > 80)
        assert row["ok"] and all(g["ok"] for g in row["guards"].values())
        assert row["artifact"]["file"] is None and row["runner"]["providers"] == ["CPUExecutionProvider"]
    # the 8-bit floor: the FP32 output rounded as a PNG would hold it (|error| <= half a level, ~59 dB)
    floor = {r["preset"]: r for r in rep["precisions"]["floor"]}
    assert set(floor) == {"gs", "ncis"}
    for r in floor.values():
        assert r["max_abs"] <= 0.5 / 255 + 1e-7 and 55 < r["psnr_db_min"] < 65
    md = render_markdown(rep)
    assert "| ncis | torch:f32 (reference) |" in md and "| ncis | onnxruntime:f32 |" in md
    assert "| ncis | *torch:f32 as 8-bit (floor)* |" in md
    assert f"≥ {GUARDS['psnr_db']:g} dB" in md and "Guards: all pass." in md
    assert "100.0% ✓ (worst set 100.0%)" in md  # every image pooled, then the worst set
    json.dumps(rep)


def test_guards_fail_loudly_when_a_backend_changes_the_figures(tinymod, monkeypatch, caplog):
    """A backend that returns a different image must fail its guards: the check can fail."""
    from ncis_deploy.runners.onnxruntime import OnnxRuntimeRunner

    real = OnnxRuntimeRunner.infer_impl
    monkeypatch.setattr(OnnxRuntimeRunner, "infer_impl", lambda self, x: real(self, x)[:, ::-1].copy())
    rep = run_eval(EvalOptions(**TINY, presets=("gs",), backends=("onnxruntime",)))
    (row,) = rep["precisions"]["rows"]
    assert not row["guards"]["psnr_db"]["ok"] and not row["ok"]
    assert "FAILED for gs onnxruntime:f32" in render_markdown(rep)
    assert "PRECISION GUARD FAILED" in caplog.text


@pytest.mark.openvino
def test_openvino_bf16_row_with_its_psnr_or_a_clear_refusal(tinymod):
    from ncis_deploy import cpu

    opts = EvalOptions(**TINY, presets=("ncis",), backends=("openvino:bf16", "openvino:f32"))
    if "bf16" not in cpu.native_precisions():  # this CPU cannot run bf16: refused before any work
        with pytest.raises(UserError, match="no native BF16"):
            run_eval(opts)
        return
    rep = run_eval(opts)
    bf16, f32 = _rows(rep, "openvino:bf16")["ncis"], _rows(rep, "openvino:f32")["ncis"]
    convs = bf16["runner"]["layer_precisions"]["Convolution"]
    # every BSN conv in bf16; the blind baseline's (the bilateral's 3 gathers and its mean4) in f32
    assert bf16["runner"]["precision"] == "bf16" and bf16["runner"]["bf16_scope"] == "bsn"
    assert convs["bf16"] > 50 and convs.get("f32", 0) <= 5, convs
    assert f32["runner"]["precision"] == "f32"
    # bf16 keeps ~3 significant digits: measurably worse than f32, far better than a wrong graph
    assert 25 < bf16["psnr_db_min"] < f32["psnr_db_min"] and f32["psnr_db_min"] > 80
    assert bf16["guards"]["psnr_db"]["value"] == bf16["psnr_db_min"]
    assert "| ncis | openvino:bf16 |" in render_markdown(rep)


def test_backend_specs():
    assert parse_backend("ort").label == "onnxruntime:f32"
    assert parse_backend("ov:bfloat16").label == "openvino:bf16"
    assert parse_backend("onnxruntime:fp32").label == "onnxruntime:f32"
    assert parse_backend("openvino").precision == "auto"  # resolved for this CPU by check_backends


def test_cli_backend_errors_are_one_line_and_come_before_the_attacks(tinymod, tmp_path):
    assert_user_error(run("eval", *TINY_CLI, "--backend", "tensorflow"), "unknown --backend 'tensorflow'",
                      "openvino[:auto|f32|bf16|int8]")
    assert_user_error(run("eval", *TINY_CLI, "--backend", "torch"), "reference")
    assert_user_error(run("eval", *TINY_CLI, "--backend", "onnxruntime:bf16"), "onnxruntime runs at f32, int8")
    for spec in ("openvino:int8", "onnxruntime:int8"):
        assert_user_error(run("eval", *TINY_CLI, "--backend", spec), "export --int8", "--export DIR")
    assert_user_error(run("eval", *TINY_CLI, "--export", tmp_path / "e"), "--export only applies with --backend")
    assert_user_error(run("eval", "--sweep", "--backend", "onnxruntime"), "not --sweep")
    assert_user_error(run("eval", *TINY_CLI, "--backend", "onnxruntime", "--export", tmp_path / "nothing"),
                      "does not exist")


def test_cli_backend_runs_an_export(tinymod, tmp_path):
    ex = tmp_path / "e"
    assert run("export", "--preset", "gs", "--height", 32, "--width", 32, "--out", ex,
               "--no-tensorrt").exit_code == 0
    r = run("eval", *TINY_CLI, "--preset", "none", "--preset", "gs", "--backend", "ort", "--export", ex,
            "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert "| gs | onnxruntime:f32 |" in r.output
    (row,) = json.loads((tmp_path / "r.json").read_text())["precisions"]["rows"]
    assert row["artifact"]["file"] == str(ex / "purifier.onnx") and len(row["artifact"]["sha256"]) == 64
    # the export is checked against what is evaluated before any attack: another preset, another size, no int8
    assert_user_error(run("eval", *TINY_CLI, "--preset", "ncis", "--backend", "ort", "--export", ex),
                      "holds the purifier 'gs'", "--preset gs")
    assert_user_error(run("eval", *TINY_CLI, "--size", 48, "--preset", "gs", "--backend", "ort", "--export", ex),
                      "takes 32x32 images", "--size 32")
    assert_user_error(run("eval", *TINY_CLI, "--preset", "gs", "--backend", "onnxruntime:int8", "--export", ex),
                      "purifier_int8.onnx", "export --int8")


@pytest.mark.slow  # an int8 export (calibration) plus both int8 runners
@pytest.mark.openvino
def test_int8_backends_from_an_int8_export(tinymod, tmp_path):
    ex = tmp_path / "e"
    r = run("export", "--preset", "ncis", "--height", 32, "--width", 32, "--int8", "--out", ex, "--no-tensorrt")
    assert r.exit_code == 0, r.output
    rep = run_eval(EvalOptions(**TINY, presets=("ncis",), backends=("openvino:int8", "onnxruntime:int8"),
                               export_dir=str(ex)))
    for label in ("openvino:int8", "onnxruntime:int8"):
        row = _rows(rep, label)["ncis"]
        assert row["artifact"]["file"] == str(ex / "purifier_int8.onnx") and row["artifact"]["int8_form"] == "accurate"
        assert row["artifact"]["int8_weight_bits"] == 7
        assert row["psnr_db_min"] > 20 and {s["attack"] for s in row["sets"]} == {"clean", "pgd"}
    assert _rows(rep, "openvino:int8")["ncis"]["runner"]["precision"] == "int8"


def test_agreement_guard_is_pooled_and_the_others_take_the_worst_set():
    """Top-1 agreement counts every image of the run (one flip among 198 passes, three fail); |Δ| and PSNR take
    the worst set, so one set's move is not averaged away. The table shows the pooled agreement, the worst set's
    in brackets."""
    def sets(flips: dict[int, int], delta: float = 0.0, psnr: float = 64.3):
        return [{"attack": "clean" if i == 0 else "pgd", "eps_label": f"{i}/255", "images": 22, "rate": 0.5,
                 "torch_rate": 0.5, "delta_points": delta if i == 1 else 0.0, "psnr_db": psnr - i,
                 "top1_agreement": (22 - flips.get(i, 0)) / 22} for i in range(9)]

    one = check_guards(sets({1: 1}))
    assert one["top1_agreement"]["value"] == pytest.approx(197 / 198) and all(g["ok"] for g in one.values())
    assert one["psnr_db"]["value"] == pytest.approx(64.3 - 8)  # the worst set's
    three = check_guards(sets({1: 1, 4: 1, 7: 1}))
    assert three["top1_agreement"]["value"] == pytest.approx(195 / 198) and not three["top1_agreement"]["ok"]
    moved = check_guards(sets({1: 1}, delta=-4.5))  # that one flip changed the set's rate: pooled passes, Δ fails
    assert moved["top1_agreement"]["ok"] and not moved["delta_points"]["ok"] and moved["delta_points"]["value"] == 4.5
    assert not check_guards(sets({}, psnr=50))["psnr_db"]["ok"]  # 50 - 8 < 45 dB in the worst set
    rows = sets({1: 1})
    row = {"preset": "ncis", "label": "onnxruntime:int8", "sets": rows, "top1_agreement": 197 / 198,
           "top1_agreement_worst_set": 21 / 22, "max_abs": 4e-3, "guards": one, "ok": True}
    text = "\n".join(render({"rows": [row], "guards": dict(GUARDS)}, "agreement", 22))
    assert "| 99.5% ✓ (worst set 95.5%) | 56.3 dB ✓ |" in text and "Guards: all pass." in text
    assert "top-1 agreement: all images pooled (the guard)" in text
