"""The shipped weights' model card must describe these weights: recompute its numbers and compare."""

import json
from pathlib import Path

import pytest
import torch

from ncis_deploy import load_purifier
from ncis_deploy.data import ImageSet
from ncis_deploy.model.bsn import bilateral, mean4
from ncis_deploy.model.purifier import default_weights_path
from ncis_deploy.quality import HOLDOUT_NOISE, channel_shift, mean_psnr, noisy_pairs

CARD = default_weights_path().parent / "model_card.json"


def test_model_card_describes_the_shipped_files():
    card = json.loads(CARD.read_text())
    p = load_purifier("ncis")
    assert {k: card["architecture"][k] for k in p.bsn.arch} == p.bsn.arch
    assert card["architecture"]["parameters"] == sum(t.numel() for t in p.bsn.parameters())
    # the hold-out pairs are the card's: its network-free rows recompute exactly
    pairs = noisy_pairs(ImageSet.bundled("holdout").images, HOLDOUT_NOISE, seed=card["holdout"]["noise_seed"])
    rows = card["holdout"]["psnr_db"]
    assert mean_psnr(lambda x: x, pairs) == pytest.approx(rows["noisy input"], abs=1e-6)
    assert mean_psnr(mean4, pairs) == pytest.approx(rows["4-neighbour mean"], abs=1e-6)
    assert mean_psnr(bilateral, pairs) == pytest.approx(rows["blind bilateral (0 parameters)"], abs=1e-6)
    assert card["training"]["command"].startswith("ncis-deploy train ")
    md = (Path(CARD).parent / "MODEL_CARD.md").read_text()
    assert md.count("|") > 20
    init = card["training"].get("init")
    if card["training"]["config"].get("init"):  # a fine-tune: the recipe names the run it started from
        assert init["command"].startswith("ncis-deploy train ") and init["command"] in md
        assert card["training"]["command"] in md
    for png in ("training_curve.png", "purified_examples.png"):  # the card's pictures ship beside it
        assert (Path(CARD).parent / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # the 17-layer BSN over the full-size hold-out photos, four ways
@torch.no_grad()
def test_model_card_numbers_are_what_the_shipped_weights_do():
    card = json.loads(CARD.read_text())
    p = load_purifier("ncis")
    pairs = noisy_pairs(ImageSet.bundled("holdout").images, HOLDOUT_NOISE, seed=card["holdout"]["noise_seed"])
    rows = card["holdout"]["psnr_db"]
    assert mean_psnr(p.bsn, pairs) == pytest.approx(rows["one BSN pass"], abs=1e-3)
    assert mean_psnr(p, pairs) == pytest.approx(rows["ncis preset"], abs=1e-3)
    # the card's colour check is what these weights do
    shifts = [channel_shift(p.bsn(noisy).clamp(0, 1), clean) for clean, noisy in pairs]
    recorded = [card["holdout"]["per_image"][n]["BSN channel shift (1/255, RGB)"] for n in card["holdout"]["images"]]
    assert len(shifts) == len(recorded) > 0
    for got, want in zip(shifts, recorded):
        assert got == pytest.approx(want, abs=1e-3)
    # and the card's checks: one pass restores more than the 4-neighbour mean (issue 11's +1 dB)
    assert {c["check"]: c["pass"] for c in card["checks"]}["one BSN pass ≥ 4-neighbour mean on each photo"]
    assert rows["one BSN pass"] >= rows["4-neighbour mean"] + 1.0
    # the BSN stage adds back what its GS took: ncis ≥ gs on the noisy photos
    assert mean_psnr(load_purifier("gs"), pairs) == pytest.approx(rows["gs preset"], abs=1e-3)
    assert rows["ncis preset"] >= rows["gs preset"]
