import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ncis_deploy import load_purifier
from ncis_deploy.data import ImageSet
from ncis_deploy.exporters.manifest import sha256_file
from ncis_deploy.train import LOG_NAME, STATE_NAME, TrainConfig, learning_rate, make_batch, train

TINY = ["--crop", "16", "--batch", "2", "--layers", "3", "--filters", "8", "--eval-every", "100000"]


def cli(*args, **kw):
    # one thread each: the tests run two trainings side by side on small machines, and oversubscribed cores
    # make them crawl (results are deterministic for a fixed thread count either way)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ncis_deploy.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def records(out):
    return [json.loads(ln) for ln in (out / LOG_NAME).read_text().splitlines()]


def losses(out):
    """The per-step records (the step-0 record holds only the hold-out starting point and its baselines)."""
    return [r for r in records(out) if "loss" in r]


# the default 17x64 BSN makes the command the slowest training here; the fast run changes only its size
@pytest.mark.parametrize("arch", [pytest.param(("--layers", "4", "--filters", "16"), id="small-bsn"),
                                  pytest.param((), marks=pytest.mark.slow, id="issue-command")])
def test_acceptance_run_on_bundled_photos(tmp_path, arch):
    # the command: 20 steps, crop 32, batch 4, default architecture, bundled photos
    t0 = time.perf_counter()
    p = cli("train", "--steps", "20", "--crop", "32", "--batch", "4", *arch, "--out", str(tmp_path / "run"))
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert time.perf_counter() - t0 < 120  # the < 60 s target is for an idle machine; see benchmarks
    purifier = load_purifier(tmp_path / "run")
    layers, filters = (4, 16) if arch else (17, 64)
    assert purifier.bsn.arch == {"channels": 3, "layers": layers, "filters": filters, "baseline": "bilateral"}
    assert purifier(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    log = records(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(0, 21))
    assert {"noisy", "mean4", "bilateral", "gs_ncis", "best_gs"} <= set(log[0]["baselines"])
    assert "holdout_psnr" in log[-1]
    assert "hold-out PSNR" in stdout


# 40 steps already take the loss to about a fifth of its start (measured: 0.18), well under the half asserted
@pytest.mark.parametrize("steps", [40, pytest.param(150, marks=pytest.mark.slow)])
def test_training_lowers_the_loss(image_dir, tmp_path, steps):
    # plain FBI-Net starts far from its target, so the loss must fall a lot (the default starts at the
    # 4-neighbour mean: test_training_improves_holdout_psnr_over_its_start covers it)
    s = train(TrainConfig(data=str(image_dir), out=str(tmp_path), steps=steps, crop=24, batch=4, layers=4, filters=16,
                          eval_every=steps, lr=3e-3, baseline="none"), progress=False)
    log = losses(tmp_path)
    first, last = sum(r["loss"] for r in log[:10]) / 10, sum(r["loss"] for r in log[-10:]) / 10
    assert last < 0.5 * first
    assert s["steps"] == steps and s["skipped_images"] == 0


def test_sigint_then_resume_is_exact(image_dir, tmp_path):
    args = ["train", "--data", str(image_dir), "--steps", "400", "--checkpoint-every", "1000", *TINY]
    straight = cli(*args, "--out", str(tmp_path / "straight"))

    run = tmp_path / "cut"
    p = cli(*args, "--out", str(run))
    deadline = time.time() + 60
    while time.time() < deadline:
        # >= 31 lines = step 0 (the starting hold-out PSNR) + steps 1..30: waiting for 30 lines let a SIGINT that
        # landed just after step 29's line cut the run at step 29 (seen once in CI)
        if (run / LOG_NAME).exists() and len((run / LOG_NAME).read_text().splitlines()) >= 31:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    cut_at = json.loads((run / STATE_NAME).read_text())["step"]
    assert 30 <= cut_at < 400
    load_purifier(run)  # an interrupted run is loadable too

    p = cli("train", "--out", str(run), "--resume")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    _, err = straight.communicate(timeout=120)
    assert straight.returncode == 0, err
    a, b = losses(tmp_path / "straight"), losses(run)
    assert [r["step"] for r in b] == list(range(1, 401))
    assert a == b  # bit-identical loss curve: the resumed run continues the uninterrupted one
    wa = load_purifier(tmp_path / "straight").bsn.state_dict()
    wb = load_purifier(run).bsn.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_changed_architecture(image_dir, tmp_path):
    train(TrainConfig(data=str(image_dir), out=str(tmp_path), steps=3, crop=16, batch=2, layers=3, filters=8),
          progress=False)
    from ncis_deploy.errors import UserError
    with pytest.raises(UserError, match="--filters 16 differs"):
        train(TrainConfig(out=str(tmp_path), filters=16), resume=True, explicit={"filters"}, progress=False)
    with pytest.raises(UserError, match="already finished 3 steps"):
        train(TrainConfig(out=str(tmp_path)), resume=True, explicit=set(), progress=False)
    s = train(TrainConfig(out=str(tmp_path), steps=5), resume=True, explicit={"steps"}, progress=False)
    assert s["steps"] == 5 and s["resumed_from"] == 3 and s["config"]["layers"] == 3


def test_learning_rate_schedules():
    cfg = TrainConfig(steps=100, lr=1e-3, schedule="step")
    assert [learning_rate(cfg, s) for s in (0, 49, 50, 74, 75, 99)] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4]
    cfg = TrainConfig(steps=1000, lr=1e-3, warmup=50)
    lrs = [learning_rate(cfg, s) for s in range(1000)]
    assert lrs[0] == pytest.approx(2e-5) and lrs[49] == pytest.approx(1e-3)  # linear warm-up to the peak
    assert all(a < b for a, b in zip(lrs[:49], lrs[1:50]))
    assert all(a >= b for a, b in zip(lrs[50:], lrs[51:]))  # then only down
    assert lrs[525] == pytest.approx(0.5e-3, rel=1e-2) and lrs[-1] < 1e-7
    # the warm-up never takes more than a tenth of a short run
    assert learning_rate(TrainConfig(steps=20, lr=1e-3, warmup=100), 1) == pytest.approx(1e-3)


def test_batches_are_seeded_and_targets_are_what_they_say(image_dir):
    images = ImageSet.from_folder(image_dir)
    self_cfg = TrainConfig(crop=24, batch=4, noise=8.0, input="raw", target="self")
    x1, y1 = make_batch(images, self_cfg, 3)
    x2, y2 = make_batch(images, self_cfg, 3)
    assert torch.equal(x1, x2) and y1 is x1  # same (seed, step), same batch; "self" scores against the input
    x3, _ = make_batch(images, self_cfg, 4)
    assert not torch.equal(x1, x3)
    xc, yc = make_batch(images, TrainConfig(crop=24, batch=4, noise=8.0, input="raw", target="clean"), 3)
    assert torch.equal(xc, x1) and not torch.equal(yc, xc)
    assert 0.5 / 255 < (xc - yc).std() < 8 / 255  # the noise, and only the noise, separates input and target
    xg, yg = make_batch(images, TrainConfig(crop=24, batch=4, noise=8.0, target="clean", input="gs"), 3)
    assert torch.equal(yg, yc)  # the same clean crops ...
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean()  # noqa: E731
    assert tv(xg) < 0.6 * tv(xc)  # ... seen through GS


def test_mixed_input_smooths_the_share_asked_for(image_dir):
    images = ImageSet.from_folder(image_dir)
    base = dict(crop=24, batch=8, noise=8.0, target="clean")
    raw, _ = make_batch(images, TrainConfig(**base, input="raw"), 5)
    none, _ = make_batch(images, TrainConfig(**base, input="mixed", gs_share=0.0), 5)
    assert torch.equal(none, raw)  # share 0: every crop raw, the same noise
    every, _ = make_batch(images, TrainConfig(**base, input="mixed", gs_share=1.0), 5)
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean(dim=(1, 2, 3))  # noqa: E731
    assert (tv(every) < 0.7 * tv(raw)).all()  # share 1: every crop smoothed
    half = torch.cat([make_batch(images, TrainConfig(**base, input="mixed", gs_share=0.25), s)[0] for s in range(20)])
    raws = torch.cat([make_batch(images, TrainConfig(**base, input="raw"), s)[0] for s in range(20)])
    smoothed = (half != raws).flatten(1).any(dim=1).float().mean().item()
    assert 0.1 < smoothed < 0.4  # 160 crops, a share of 0.25 smoothed
    from ncis_deploy.errors import UserError
    with pytest.raises(UserError, match="--gs-share applies to --input mixed"):
        TrainConfig(input="raw", gs_share=0.5).validate()
    with pytest.raises(UserError, match="between 0 and 1"):
        TrainConfig(input="mixed", gs_share=1.5).validate()


def test_init_starts_from_the_given_weights(image_dir, tmp_path):
    tiny = dict(data=str(image_dir), crop=16, batch=2, layers=3, filters=8)
    first = train(TrainConfig(**tiny, out=str(tmp_path / "a"), steps=4, eval_every=4), progress=False)
    train(TrainConfig(**tiny, out=str(tmp_path / "b"), steps=1, init=str(tmp_path / "a")), progress=False)
    # the fine-tune's step-0 hold-out PSNR is the first run's last one: it starts where that run ended
    assert records(tmp_path / "b")[0]["holdout_psnr"] == pytest.approx(first["holdout_psnr"], abs=1e-9)
    assert json.loads((tmp_path / "b" / "train_summary.json").read_text())["init"]["sha256"] == \
        sha256_file(tmp_path / "a" / "bsn.safetensors")
    # resumed, the run still names the weights it started from
    resumed = train(TrainConfig(out=str(tmp_path / "b"), steps=2), resume=True, explicit={"steps"}, progress=False)
    assert resumed["init"]["sha256"] == sha256_file(tmp_path / "a" / "bsn.safetensors")
    from ncis_deploy.errors import UserError
    with pytest.raises(UserError, match="pass the --layers, --filters and --baseline"):
        train(TrainConfig(**{**tiny, "filters": 16}, out=str(tmp_path / "c"), init=str(tmp_path / "a")),
              progress=False)
    assert not (tmp_path / "c").exists()  # nothing written for a bad --init
    with pytest.raises(UserError, match="no such weights file"):
        train(TrainConfig(**tiny, out=str(tmp_path / "c"), init=str(tmp_path / "nope")), progress=False)


def test_augmentation_permutes_colours(image_dir):
    # without augmentation the mean colour of crops follows the photos; with it, channels are exchangeable
    images = ImageSet.from_folder(image_dir)
    means = {}
    for aug in (False, True):
        cfg = TrainConfig(crop=24, batch=8, noise=0.0, augment=aug)
        batch = torch.cat([make_batch(images, cfg, s)[1] for s in range(40)])
        means[aug] = batch.mean(dim=(0, 2, 3))
    assert (means[False].max() - means[False].min()) > 3 * (means[True].max() - means[True].min())


def test_training_improves_holdout_psnr_over_its_start(tmp_path):  # ≈ 9 s: 150 steps of a small default design
    # the default design (raw noisy input → clean target, residual over the blind bilateral) starts exactly at that
    # zero-parameter predictor; a short run of a small network must restore more of the hold-out photos than it
    train(TrainConfig(out=str(tmp_path), steps=150, crop=32, batch=8, layers=6, filters=16, eval_every=150, lr=3e-3),
          progress=False)
    start, end = records(tmp_path)[0], records(tmp_path)[-1]
    assert start["holdout_psnr"] == pytest.approx(start["baselines"]["bilateral"], abs=1e-6)
    assert start["baselines"]["bilateral"] > start["baselines"]["mean4"]
    assert end["holdout_psnr"] > start["holdout_psnr"] + 0.1
