"""ncis-deploy: the NCIS adversarial purifier (Gaussian smoothing + blind-spot network), from PyTorch to deployment.

>>> import ncis_deploy, torch
>>> purifier = ncis_deploy.load_purifier("ncis")          # or "gs", "none", or a directory written by train
>>> clean = purifier(torch.rand(1, 3, 224, 224))          # [N, 3, H, W] in [0, 1] -> same shape in [0, 1]
"""

from importlib.metadata import PackageNotFoundError, version as _version

from ncis_deploy.errors import UserError
from ncis_deploy.model.bsn import FBINet
from ncis_deploy.model.purifier import PRESETS, Purifier, load_purifier, resolve_config

try:
    __version__ = _version("ncis-deploy")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["FBINet", "PRESETS", "Purifier", "UserError", "__version__", "load_purifier", "resolve_config"]
