"""Atomic file writes and safetensors I/O with user-facing errors.

Every artifact is written to a temporary name in the destination folder and renamed into place, so a crash or a
Ctrl-C leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from ncis_deploy.errors import UserError


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) and prove we can write there, or raise a UserError saying so."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"output path {p} exists and is not a directory; choose another --out")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".ncis-probe-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output directory {p}: {e.strerror or e}; choose a writable --out") from None
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}); fix or regenerate it") from None


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_safetensors(path: str | os.PathLike, what: str = "weights file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load tensors and metadata; a missing, truncated or foreign file becomes a one-line UserError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises several types for a damaged header or body
        raise UserError(
            f"{what} {path} is not a readable safetensors file (truncated or corrupt: {str(e).splitlines()[0]}); "
            "re-copy it or re-run training"
        ) from None
    return tensors, meta
