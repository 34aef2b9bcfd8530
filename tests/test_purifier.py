import json

import pytest
import torch

from ncis_deploy import PRESETS, load_purifier
from ncis_deploy.errors import UserError
from ncis_deploy.model.purifier import CONFIG_NAME, WEIGHTS_NAME, Purifier, normalize_config
from ncis_deploy.model.smoothing import smooth_iterative


def test_preset_configs_follow_schema():
    p = load_purifier("ncis")
    assert not p.training
    stages = p.config["stages"]
    assert stages[0].keys() == {"type", "kernel_size", "sigma", "iterations"} and stages[0]["type"] == "gs"
    assert stages[-1] == {"type": "bsn", "iterations": 1}
    assert json.loads(json.dumps(p.config)) == p.config  # plain JSON
    assert p.bsn is not None and p.config["bsn"] == p.bsn.arch
    assert load_purifier("none").config["stages"] == []
    assert load_purifier("gs").bsn is None
    assert set(PRESETS) == {"none", "gs", "ncis"}


def test_purifier_maps_unit_range_to_unit_range():
    x = torch.rand(2, 3, 20, 30)
    for name in PRESETS:
        y = load_purifier(name)(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(load_purifier("none")(x), x)


def test_gs_preset_is_the_iterative_reference():
    x = torch.rand(1, 3, 17, 23)
    st = load_purifier("gs").config["stages"][0]
    ref = smooth_iterative(x, st["kernel_size"], st["sigma"], st["iterations"])
    assert (load_purifier("gs")(x) - ref).abs().max() < 1e-5
    assert (load_purifier("gs", fused_gs=False)(x) - ref).abs().max() == 0


def test_stages_run_in_order_and_bsn_iterates():
    p = load_purifier("ncis")
    x = torch.rand(1, 3, 16, 16)
    gs = p.config["stages"][0]
    want = p.bsn(smooth_iterative(x, gs["kernel_size"], gs["sigma"], gs["iterations"])).clamp(0, 1)
    assert (p(x) - want).abs().max() < 1e-5
    twice = load_purifier({"stages": [{"type": "bsn", "iterations": 2}], "bsn": p.config["bsn"]})
    twice.bsn.load_state_dict(p.bsn.state_dict())
    assert (twice(x) - p.bsn(p.bsn(x).clamp(0, 1)).clamp(0, 1)).abs().max() < 1e-6


def test_save_and_load_directory_roundtrip(tmp_path):
    cfg = {"stages": [{"type": "gs", "kernel_size": 5, "sigma": 0.8, "iterations": 2}, {"type": "bsn", "iterations": 1}],
           "bsn": {"channels": 3, "layers": 3, "filters": 8}, "note": "kept"}
    p = Purifier(cfg)
    with torch.no_grad():
        for prm in p.parameters():
            prm.add_(0.1)
    p.save(tmp_path)
    assert (tmp_path / CONFIG_NAME).exists() and (tmp_path / WEIGHTS_NAME).exists()
    q = load_purifier(tmp_path)
    assert q.config == p.config and q.config["note"] == "kept"
    x = torch.rand(1, 3, 12, 12)
    assert torch.equal(q(x), p.eval()(x))
    # a config file plus a separate weights file load the same purifier
    r = load_purifier(tmp_path / CONFIG_NAME, weights=tmp_path / WEIGHTS_NAME)
    assert torch.equal(r(x), q(x))


@pytest.mark.parametrize("cfg,match", [
    ({"stages": [{"type": "median", "iterations": 1}]}, "unknown stage type 'median'"),
    ({"stages": [{"type": "bsn", "iterations": -1}]}, "'iterations' must be >= 0"),
    ({"stages": [{"type": "gs", "kernel_size": 3, "sigma": 1.0, "iterations": -2}]}, "'iterations' must be >= 0"),
    ({"stages": [{"type": "gs", "kernel_size": 4, "sigma": 1.0, "iterations": 1}]}, "odd"),
    ({"stages": [{"type": "gs", "kernel_size": 3, "sigma": 1.0}]}, "'iterations' must be an integer"),
    ({"stages": [{"type": "bsn", "iterations": 1, "extra": 1}]}, "unknown key"),
    ({"stages": "gs"}, "'stages' list"),
])
def test_bad_configs(cfg, match):
    with pytest.raises(UserError, match=match):
        normalize_config(cfg)


def test_bad_weights(tmp_path):
    p = Purifier({"stages": [{"type": "bsn", "iterations": 1}], "bsn": {"channels": 3, "layers": 3, "filters": 8}})
    p.save(tmp_path)
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_purifier(tmp_path, weights=tmp_path / "cut.safetensors")
    # weights of another size, with the arch metadata stripped, against this config
    from safetensors.torch import save_file
    other = Purifier({"stages": [{"type": "bsn", "iterations": 1}], "bsn": {"channels": 3, "layers": 3, "filters": 4}})
    save_file(other.bsn.state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="do not fit .*use the config that was trained"):
        Purifier(p.config).load_bsn_weights(tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="neither a preset"):
        load_purifier("no-such-preset")
