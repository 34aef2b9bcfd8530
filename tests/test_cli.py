import dataclasses
import importlib
import inspect
import json
import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ncis_deploy import __version__
from ncis_deploy.cli import cli
from ncis_deploy.model.purifier import Purifier

TINY = ["--crop", "16", "--batch", "2", "--layers", "3", "--filters", "8", "--steps", "2"]


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def assert_user_error(result, *words):
    """Exit 2 with one 'error: ...' line naming the problem, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_help_and_version():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("train", "export", "bench", "eval", "purify", "doctor"):
        assert cmd in r.output
    assert run("--version").output.strip().endswith(__version__)
    assert "--resume" in run("train", "--help").output


def test_every_command_has_working_help():
    assert set(cli.commands) >= {"train", "purify", "export", "doctor", "bench", "eval", "serve"}
    for name, cmd in cli.commands.items():
        r = run(name, "--help")
        assert r.exit_code == 0, (name, r.output)
        assert r.output.startswith(f"Usage: cli {name} ") and "Options:" in r.output, r.output
        summary = cmd.get_short_help_str().rstrip(".")
        assert len(summary) > 10 and summary in r.output, name  # a description, and it is shown


# the default purifier over the two full-size hold-out photos is slow on a CPU; the fast run crops them first
@pytest.mark.parametrize("crop", [pytest.param((48, 64), id="cropped"),
                                  pytest.param(None, marks=pytest.mark.slow, id="full-size")])
def test_purify_bundled_defaults(tmp_path, monkeypatch, crop):
    import ncis_deploy.purify

    if crop:
        photos = ncis_deploy.purify.bundled_photos
        monkeypatch.setattr(ncis_deploy.purify, "bundled_photos",
                            lambda split: [(n, a[:crop[0], :crop[1]]) for n, a in photos(split)])
    r = run("purify", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    outs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert outs == ["china.png", "flower.png"]
    assert Image.open(tmp_path / "china.png").size == ((crop[1], crop[0]) if crop else (640, 427))


def test_purify_files_and_folders(tmp_path, image_dir):
    r = run("purify", image_dir, image_dir / "a.png", "--out", tmp_path / "o", "--preset", "gs")
    assert r.exit_code == 0, r.output
    assert {p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.png")} == \
        {"a.png", "sub/b.png", "sub/c.png"}
    src = np.asarray(Image.open(image_dir / "a.png"), dtype=np.float64)
    out = np.asarray(Image.open(tmp_path / "o" / "a.png"), dtype=np.float64)
    assert out.shape == src.shape
    assert np.abs(np.diff(out, axis=1)).mean() < 0.8 * np.abs(np.diff(src, axis=1)).mean()  # it smoothed


def test_train_then_purify_with_trained_directory(tmp_path, image_dir):
    r = run("train", "--data", image_dir, "--out", tmp_path / "run", *TINY, "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s.json").read_text())["steps"] == 2
    r = run("purify", image_dir / "a.png", "--out", tmp_path / "o", "--config", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "a.png").exists()


def test_corrupt_image_among_good_is_a_warning(tmp_path, image_dir):
    (image_dir / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    p = subprocess.run([sys.executable, "-m", "ncis_deploy.cli", "train", "--data", str(image_dir),
                        "--out", str(tmp_path / "run"), *TINY], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "warning: skipped" in p.stderr and "bad.jpg" in p.stderr
    assert "1 of 4 image files" in p.stderr


def test_bad_input_is_one_line_exit_2_in_a_real_process(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ncis_deploy.cli", "train", "--data", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: data directory {tmp_path / 'nope'} does not exist; "
                                             "pass an existing folder of images with --data"]


def small_purifier_dir(tmp_path, filters=8):
    d = tmp_path / f"p{filters}"
    Purifier({"stages": [{"type": "bsn", "iterations": 1}], "bsn": {"channels": 3, "layers": 3, "filters": filters}}).save(d)
    return d


def test_bad_inputs(tmp_path, image_dir):
    (tmp_path / "empty").mkdir()
    assert_user_error(run("train", "--data", tmp_path / "missing", "--out", tmp_path / "o"), "does not exist")
    assert_user_error(run("train", "--data", tmp_path / "empty", "--out", tmp_path / "o"), "no images")

    good = small_purifier_dir(tmp_path)
    data = (good / "bsn.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    assert_user_error(run("purify", image_dir, "--out", tmp_path / "o", "--config", good,
                          "--weights", tmp_path / "cut.safetensors"), "truncated or corrupt")

    other = small_purifier_dir(tmp_path, filters=4)
    assert_user_error(run("purify", image_dir, "--out", tmp_path / "o", "--config", good / "purifier.json",
                          "--weights", other / "bsn.safetensors"), "architecture", "filters")

    for stage, word in [({"type": "blur", "iterations": 1}, "unknown stage type"),
                        ({"type": "bsn", "iterations": -1}, ">= 0")]:
        cfg = tmp_path / "bad.json"
        cfg.write_text(json.dumps({"stages": [stage]}))
        assert_user_error(run("purify", image_dir, "--out", tmp_path / "o", "--config", cfg), word)
    (tmp_path / "broken.json").write_text("{nope")
    assert_user_error(run("purify", image_dir, "--out", tmp_path / "o", "--config", tmp_path / "broken.json"),
                      "not valid JSON")

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run("purify", image_dir, "--out", blocker / "sub"), "cannot write")
    assert_user_error(run("train", "--data", image_dir, "--out", blocker, *TINY), "not a directory")
    assert_user_error(run("purify", tmp_path / "nothing.png", "--out", tmp_path / "o"), "does not exist")
    assert_user_error(run("purify", image_dir, "--preset", "gs", "--config", good), "either --preset or --config")
    assert_user_error(run("train", "--device", "cuda", "--out", tmp_path / "o", *TINY), "CUDA")
    assert not (tmp_path / "o").exists()  # every failure above happened before anything was written


def _library_defaults(owner) -> dict:
    """Name -> default of an options dataclass or a function (read here directly, not through the CLI's helper)."""
    if dataclasses.is_dataclass(owner):
        return {f.name: f.default for f in dataclasses.fields(owner) if f.default is not dataclasses.MISSING}
    return {n: p.default for n, p in inspect.signature(owner).parameters.items() if p.default is not p.empty}


def _spellings(name, value) -> set[str]:
    """How a --help text may write a default: click's show_default forms, and the prose forms used for tuples."""
    if isinstance(value, bool):
        flag = name.replace("_", "-")
        return {str(value), flag if value else f"no-{flag}"}
    if isinstance(value, tuple):
        out = {sep.join(map(str, value)) for sep in (", ", ":", " and ")}
        if all(isinstance(v, float) for v in value):
            out.add(", ".join(f"{v * 255:g}/255" for v in value))
        return out
    return {str(value)}


def test_every_cli_default_is_declared_once_in_the_library():
    """An option that matches a field of its command's options leaves the default to the library (click default
    None) and its --help shows the library's value: a default restated in a decorator would drift."""
    checked = 0
    for name, cmd in cli.commands.items():
        owner = importlib.import_module(f"ncis_deploy.cli.{name}").OPTIONS
        defaults = _library_defaults(owner) if owner is not None else {}
        ctx = click.Context(cmd, info_name=name)
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.name not in defaults:
                continue
            assert p.default is None or (p.multiple and not isinstance(p.default, (tuple, list))), \
                f"{name} {p.opts[0]}: default {p.default!r} restates {owner.__qualname__}'s (use None)"
            value = defaults[p.name]
            checked += 1
            if value is None or value == () or (value is False and p.is_flag and not p.secondary_opts):
                continue  # nothing to show: the help describes what None (or an absent flag) means
            text = p.get_help_record(ctx)[1].lower()
            assert any(f"default: {s}".lower() in text for s in _spellings(p.name, value)), \
                f"{name} {p.opts[0]}: --help does not show the default {value!r}: {text}"
    assert checked >= 80, checked  # the options of train, export, eval, bench, serve and purify were all seen
