"""The purifier: a pipeline of GS and BSN stages, described by plain JSON.

Config schema (checked by tests and by other tools, keep it stable)::

    {"stages": [{"type": "gs", "kernel_size": 3, "sigma": 1.0, "iterations": 5},
                {"type": "bsn", "iterations": 1}],
     "bsn": {"channels": 3, "layers": 17, "filters": 64},   # present when a bsn stage is
     "clamp": true}

All BSN stages share one network (``Purifier.bsn``). A purifier directory holds ``purifier.json`` and, when the
pipeline has a BSN, ``bsn.safetensors``; ``ncis-deploy train`` writes exactly that.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ncis_deploy.errors import UserError
from ncis_deploy.fileio import load_safetensors, read_json, save_safetensors, write_json
from ncis_deploy.model.bsn import BASELINES, FBINet, normalize_arch
from ncis_deploy.model.smoothing import GaussianSmoothing, gaussian_kernel1d

CONFIG_NAME = "purifier.json"
WEIGHTS_NAME = "bsn.safetensors"
DEFAULT_BSN_ARCH = {"channels": 3, "layers": 17, "filters": 64, "baseline": "none"}


# --------------------------------------------------------------------------------------------------------- config
def _int(stage: dict, key: str, where: str, minimum: int) -> int:
    v = stage.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise UserError(f"{where}: '{key}' must be an integer, got {v!r}")
    if v < minimum:
        raise UserError(f"{where}: '{key}' must be >= {minimum}, got {int(v)}")
    return int(v)


def normalize_config(config: dict) -> dict:
    """Validate a purifier config and return it in canonical form (exact keys, Python types)."""
    if not isinstance(config, dict) or not isinstance(config.get("stages"), list):
        raise UserError("purifier config must be a JSON object with a 'stages' list, e.g. "
                        '{"stages": [{"type": "gs", "kernel_size": 3, "sigma": 1.0, "iterations": 5}]}')
    out = {k: copy.deepcopy(v) for k, v in config.items() if k not in ("stages", "bsn", "clamp")}
    stages = []
    for i, st in enumerate(config["stages"]):
        where = f"stage {i}"
        if not isinstance(st, dict):
            raise UserError(f"{where}: each stage must be a JSON object, got {st!r}")
        typ = st.get("type")
        if typ == "gs":
            k = _int(st, "kernel_size", where, 1)
            sigma = st.get("sigma")
            if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
                raise UserError(f"{where}: 'sigma' must be a number, got {sigma!r}")
            gaussian_kernel1d(k, float(sigma))
            stages.append({"type": "gs", "kernel_size": k, "sigma": float(sigma),
                           "iterations": _int(st, "iterations", where, 0)})
        elif typ == "bsn":
            stages.append({"type": "bsn", "iterations": _int(st, "iterations", where, 0)})
        else:
            raise UserError(f"{where}: unknown stage type {typ!r}; use 'gs' or 'bsn'")
        extra = set(st) - set(stages[-1])
        if extra:
            raise UserError(f"{where}: unknown key(s) {sorted(extra)} for a '{typ}' stage")
    out["stages"] = stages
    if any(s["type"] == "bsn" for s in stages):
        arch = config.get("bsn") or dict(DEFAULT_BSN_ARCH)
        if not isinstance(arch, dict):
            raise UserError(f"'bsn' must be an object like {DEFAULT_BSN_ARCH}, got {arch!r}")
        unknown = set(arch) - set(DEFAULT_BSN_ARCH)
        if unknown:
            raise UserError(f"'bsn': unknown key(s) {sorted(unknown)}; allowed: {sorted(DEFAULT_BSN_ARCH)}")
        full = {**DEFAULT_BSN_ARCH, **arch}
        if full["baseline"] not in BASELINES:
            raise UserError(f"'bsn': baseline must be one of {', '.join(BASELINES)}, got {full['baseline']!r}")
        out["bsn"] = {"channels": _int(full, "channels", "bsn", 1), "layers": _int(full, "layers", "bsn", 2),
                      "filters": _int(full, "filters", "bsn", 1), "baseline": full["baseline"]}
    clamp = config.get("clamp", True)
    if not isinstance(clamp, bool):
        raise UserError(f"'clamp' must be true or false, got {clamp!r}")
    out["clamp"] = clamp
    return out


# -------------------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    description: str
    stages: tuple[dict, ...]
    uses_default_weights: bool = False


# Chosen by measurement (a clean-vs-robust sweep; the numbers and the reasoning are in docs/presets.md).
PRESETS: dict[str, Preset] = {
    "none": Preset("identity: no purification (the baseline)", ()),
    "gs": Preset("Gaussian smoothing only (the GS stage of ncis)",
                 ({"type": "gs", "kernel_size": 5, "sigma": 1.0, "iterations": 3},)),
    "ncis": Preset(
        "GS then one pass of the shipped blind-spot network (NCIS)",
        ({"type": "gs", "kernel_size": 5, "sigma": 1.0, "iterations": 3}, {"type": "bsn", "iterations": 1}),
        uses_default_weights=True,
    ),
}


def default_weights_path() -> Path:
    """The BSN weights shipped inside the package (see ncis_deploy/weights/MODEL_CARD.md)."""
    return Path(str(resources.files("ncis_deploy") / "weights" / "bsn_default.safetensors"))


def weights_arch(meta: dict[str, str], path) -> dict | None:
    if "arch" not in meta:
        return None
    try:
        return normalize_arch(json.loads(meta["arch"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"weights file {path} has unreadable 'arch' metadata; re-export it with ncis-deploy") from None


# ------------------------------------------------------------------------------------------------------- purifier
class Purifier(nn.Module):
    """float [N, 3, H, W] in [0, 1] → same shape in [0, 1]. Built from a config; see the module docstring."""

    def __init__(self, config: dict, fused_gs: bool = True):
        super().__init__()
        self.config = normalize_config(config)
        self.gs = nn.ModuleList()
        self._plan: list[tuple[str, int]] = []  # (kind, index into self.gs or iterations for bsn)
        for st in self.config["stages"]:
            if st["type"] == "gs":
                self.gs.append(GaussianSmoothing(st["kernel_size"], st["sigma"], st["iterations"], fused=fused_gs))
                self._plan.append(("gs", len(self.gs) - 1))
            else:
                self._plan.append(("bsn", st["iterations"]))
        self.bsn = FBINet(**self.config["bsn"]) if "bsn" in self.config else None

    @property
    def channels(self) -> int:
        return self.bsn.channels if self.bsn is not None else 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise UserError(f"purifier input must be [N, {self.channels}, H, W], got {list(x.shape)}")
        clamp = self.config["clamp"]
        for kind, arg in self._plan:
            if kind == "gs":
                x = self.gs[arg](x)
            else:
                for _ in range(arg):
                    x = self.bsn(x)
                    if clamp:
                        x = x.clamp(0.0, 1.0)
        return x.clamp(0.0, 1.0) if clamp else x

    # ---- weights
    def load_bsn_weights(self, path: str | os.PathLike) -> None:
        if self.bsn is not None:
            load_bsn_weights(self.bsn, path)

    def save(self, directory: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
        """Write ``purifier.json`` (+ ``bsn.safetensors``) into ``directory``: what :func:`load_purifier` reads."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.bsn is not None:
            save_bsn_weights(d / WEIGHTS_NAME, self.bsn, extra_metadata)
        write_json(d / CONFIG_NAME, self.config)
        return d


def load_bsn_weights(bsn: FBINet, path: str | os.PathLike, fix: str = "use the config that was trained with these "
                     "weights") -> None:
    """Load a BSN weights file into ``bsn``; a file for another architecture is a UserError ending with ``fix``."""
    tensors, meta = load_safetensors(path, "BSN weights file")
    arch = weights_arch(meta, path)
    if arch is not None and arch != bsn.arch:
        raise UserError(f"BSN weights {path} do not fit: they are for architecture {arch}, this BSN is {bsn.arch}; "
                        f"{fix}")
    own = bsn.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or bad:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"{bad[0]} is {list(tensors[bad[0]].shape)} but this BSN needs {list(own[bad[0]].shape)}")
        raise UserError(f"BSN weights {path} do not fit {bsn.arch}: {detail}; {fix}")
    bsn.load_state_dict(tensors)


def save_bsn_weights(path, bsn: FBINet, extra_metadata: dict[str, str] | None = None) -> None:
    meta = {"format": "ncis-deploy/bsn", "arch": json.dumps(bsn.arch), **(extra_metadata or {})}
    save_safetensors(path, bsn.state_dict(), meta)


DEFAULT_PRESET = "ncis"  # what a purifier source of None means, everywhere


def resolve_config(name_or_path: str | os.PathLike | dict | None = None,
                   weights: str | os.PathLike | None = None) -> tuple[dict, Path | None]:
    """Turn a preset name, a purifier directory, a config JSON file or a dict into (config, weights path).

    ``None`` means :data:`DEFAULT_PRESET`. ``weights`` (a .safetensors file or a purifier directory) overrides the BSN
    weights; a config without a ``bsn`` entry takes the architecture recorded in the weights file.
    """
    src = DEFAULT_PRESET if name_or_path is None else name_or_path
    wpath: Path | None = None
    if isinstance(src, dict):
        config = dict(src)
    elif isinstance(src, str) and src in PRESETS:
        p = PRESETS[src]
        config = {"stages": [dict(s) for s in p.stages]}
        if p.uses_default_weights:
            wpath = default_weights_path()
    else:
        path = Path(src)
        if path.is_dir():
            config = read_json(path / CONFIG_NAME, "purifier config")
            if (path / WEIGHTS_NAME).exists():
                wpath = path / WEIGHTS_NAME
        elif path.is_file():
            config = read_json(path, "purifier config")
        else:
            raise UserError(f"{str(src)!r} is neither a preset ({', '.join(PRESETS)}) nor an existing "
                            f"directory or config file")
    if weights is not None:
        wpath = Path(weights)
        if wpath.is_dir():
            wpath = wpath / WEIGHTS_NAME
    has_bsn = any(isinstance(s, dict) and s.get("type") == "bsn" for s in config.get("stages", []) or [])
    if has_bsn and wpath is None:
        wpath = default_weights_path()
    if has_bsn and "bsn" not in config:
        # the weights file records the architecture it was trained with; a config that names one is checked
        # against the weights instead (load_bsn_weights)
        _, meta = load_safetensors(wpath, "BSN weights file")
        arch = weights_arch(meta, wpath)
        if arch is not None:
            config["bsn"] = arch
    return normalize_config(config), (wpath if has_bsn else None)


def load_purifier(name_or_path: str | os.PathLike | dict | None = None, device: str | torch.device = "cpu",
                  weights: str | os.PathLike | None = None, fused_gs: bool = True) -> Purifier:
    """Build an eval-mode :class:`Purifier` from a preset name (``none``, ``gs``, ``ncis``), a directory written by
    ``ncis-deploy train``, a config JSON file or a config dict."""
    config, wpath = resolve_config(name_or_path, weights)
    purifier = Purifier(config, fused_gs=fused_gs)
    if purifier.bsn is not None:
        purifier.load_bsn_weights(wpath)
    for p in purifier.parameters():
        p.requires_grad_(False)
    return purifier.to(device).eval()
