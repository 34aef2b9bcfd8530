"""The shipped weights' model card must describe these weights: recompute its numbers and compare."""

import json
from pathlib import Path

import pytest

from ncis_deploy import load_purifier
from ncis_deploy.data import ImageSet
from ncis_deploy.model.purifier import default_weights_path
from ncis_deploy.quality import HOLDOUT_NOISE, mean_psnr, noisy_pairs

CARD = default_weights_path().parent / "model_card.json"


def test_model_card_matches_shipped_weights():
    card = json.loads(CARD.read_text())
    p = load_purifier("ncis")
    assert card["architecture"]["layers"] == p.bsn.layers and card["architecture"]["filters"] == p.bsn.filters
    assert card["architecture"]["parameters"] == sum(t.numel() for t in p.bsn.parameters())
    pairs = noisy_pairs(ImageSet.bundled("holdout").images, HOLDOUT_NOISE, seed=card["holdout"]["noise_seed"])
    rows = card["holdout"]["psnr_db"]
    assert mean_psnr(lambda x: x, pairs) == pytest.approx(rows["noisy input"], abs=1e-6)
    assert mean_psnr(p.bsn, pairs) == pytest.approx(rows["one BSN pass"], abs=1e-3)
    assert card["training"]["command"].startswith("ncis-deploy train ")
    assert (Path(CARD).parent / "MODEL_CARD.md").read_text().count("|") > 20
