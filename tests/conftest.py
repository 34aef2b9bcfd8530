"""Markers: ``gpu`` (needs CUDA), ``tensorrt`` (needs tensorrt + CUDA), ``triton`` (needs nvidia-pytriton, the serve
extra), ``openvino`` (needs the openvino package, the openvino extra), ``slow`` (needs --runslow: `make test-slow`, a
CI step of its own; what each slow test exercises also runs, more cheaply, in the default set, so `make test` keeps
its time budget on a busy machine).

They skip only where the hardware or package is missing; CPU paths never skip. CI sets NCIS_DEPLOY_REQUIRE_TRITON=1
and NCIS_DEPLOY_REQUIRE_OPENVINO=1, which turn a missing pytriton / openvino into an error instead of skips.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    has_pytriton = importlib.util.find_spec("pytriton") is not None
    if not has_pytriton and os.environ.get("NCIS_DEPLOY_REQUIRE_TRITON") == "1":
        # CI installs the serve extra: a missing pytriton there is a broken setup, not a reason to skip
        raise pytest.UsageError("NCIS_DEPLOY_REQUIRE_TRITON=1 but nvidia-pytriton is not installed "
                                "(pip install 'ncis-deploy[serve]')")
    has_openvino = importlib.util.find_spec("openvino") is not None
    if not has_openvino and os.environ.get("NCIS_DEPLOY_REQUIRE_OPENVINO") == "1":
        raise pytest.UsageError("NCIS_DEPLOY_REQUIRE_OPENVINO=1 but openvino is not installed "
                                "(pip install 'ncis-deploy[openvino]')")
    skips = {
        "triton": (not has_pytriton, "needs nvidia-pytriton (pip install 'ncis-deploy[serve]')"),
        "openvino": (not has_openvino, "needs openvino (pip install 'ncis-deploy[openvino]')"),
        "gpu": (not has_cuda, "needs a CUDA GPU"),
        "tensorrt": (not (has_trt and has_cuda), "needs the tensorrt package and a CUDA GPU"),
        "slow": (not config.getoption("--runslow"), "slow: run with --runslow"),
    }
    for item in items:
        for name, (skip, why) in skips.items():
            if skip and name in item.keywords:
                item.add_marker(pytest.mark.skip(reason=why))


def write_png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def image_dir(tmp_path):
    """A small folder of valid RGB photos (crops of a bundled photo) in nested folders."""
    from ncis_deploy.data import bundled_photo

    photo = (bundled_photo("astronaut") * 255).astype(np.uint8)
    d = tmp_path / "images"
    write_png(d / "a.png", photo[:96, :128])
    write_png(d / "sub" / "b.png", photo[100:180, 50:150])
    from PIL import Image

    Image.fromarray(photo[200:300, 200:300]).save(d / "sub" / "c.jpg", quality=95)
    return d
