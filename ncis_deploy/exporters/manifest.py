"""The export directory: its file names, the ``manifest.json`` format, how an export is written, how one is opened.

This module is the only place that knows them; ``export`` writes through :func:`staged_export`, and bench, serve,
purify, eval and the benchmarks read through :func:`open_export`.

Writing is all-or-nothing: artifacts go into a temporary sibling ``.NAME.tmp-PID-*`` that replaces ``NAME`` only
after ``manifest.json`` (the last file) is written, so an interrupted export leaves the previous one intact. A
killed export cannot remove its own sibling; the next export into the same place removes siblings whose process is
gone (with TensorRT engines inside, these are gigabytes).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ncis_deploy.errors import UserError
from ncis_deploy.fileio import write_json

MANIFEST = "manifest.json"
FORMAT, FORMAT_VERSION = "ncis-deploy/export", 1
DEFAULT_DIR = "ncis_export"
ONNX, ONNX_FP16, ONNX_CLASSIFIER, ENGINE = (
    "purifier.onnx", "purifier_fp16.onnx", "purifier_classifier.onnx", "purifier.engine")
ONNX_INT8 = "purifier_int8.onnx"
# the ONNX artifacts' metadata_props keys start with this (exporters/onnx.py writes them); one the runtimes read:
# each BSN pass's node names, comma-separated, what a bf16 runtime rounds while GS, the blind baseline, their sum and
# the clip stay f32 (runners/openvino.py, export/cpp/openvino); fp32 graphs with a BSN only
META_PREFIX = "ncis_deploy."
BF16_NODES_KEY = META_PREFIX + "bf16_nodes"
# what each deployable backend runs from an export (openvino at precision int8: ONNX_INT8, see Export.artifact_for)
BACKEND_ARTIFACT = {"onnxruntime": ONNX, "tensorrt": ENGINE, "openvino": ONNX}
STALE_WITHOUT_PID_S = 3600  # siblings named before the PID was part of the name: stale once this old


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_manifest(**fields) -> dict:
    """A manifest header: format, version and creation time, then ``fields``, then the (empty) artifact list."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **fields, "artifacts": []}


# ------------------------------------------------------------------------------------------------------ writing
def check_out(out: Path) -> None:
    """Refuse an ``out`` that holds something other than an export, or whose parent is not writable."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).exists())):
        raise UserError(f"--out {out} exists and is not an ncis-deploy export (no {MANIFEST}); "
                        "choose another directory or remove it")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent):
            pass
    except OSError as e:
        raise UserError(f"cannot write next to --out {out}: {e.strerror or e}; choose a writable directory") from None


def _sibling_prefix(out: Path, kind: str) -> str:
    return f".{out.name}.{kind}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_stale(path: Path, prefix: str) -> bool:
    m = re.match(re.escape(prefix) + r"(\d+)-", path.name)
    if m:
        return not _pid_alive(int(m.group(1)))
    try:
        return time.time() - path.stat().st_mtime > STALE_WITHOUT_PID_S
    except OSError:
        return False


def remove_stale_siblings(out: Path) -> list[Path]:
    """Remove the temporary siblings of ``out`` left by killed exports; returns what was removed.

    A killed swap can leave the previous export only under its ``.old-`` name: it is put back when ``out`` is gone.
    """
    parent, removed = out.resolve().parent, []
    if not parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        prefix = _sibling_prefix(out, kind)
        for p in sorted(parent.glob(glob_escape(prefix) + "*")):
            if not p.is_dir() or not _is_stale(p, prefix):
                continue
            if kind == "old" and not out.exists() and (p / MANIFEST).is_file():
                os.replace(p, out)
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


class ExportWriter:
    """The staging directory of one export and its manifest; :meth:`record` lists a written artifact."""

    def __init__(self, stage: Path, manifest: dict):
        self.stage, self.manifest = stage, manifest

    def path(self, name: str) -> Path:
        return self.stage / name

    def record(self, name: str, kind: str, **extra) -> dict:
        p = self.stage / name
        entry = {"file": name, "kind": kind, "sha256": sha256_file(p), "bytes": p.stat().st_size} | extra
        self.manifest["artifacts"].append(entry)
        return entry


@contextlib.contextmanager
def staged_export(out: Path, manifest: dict):
    """Yield an :class:`ExportWriter` on a temporary sibling of ``out``; on success write the manifest and swap the
    sibling into place, on any failure remove it."""
    out = Path(out)
    remove_stale_siblings(out)
    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f"{_sibling_prefix(out, 'tmp')}{os.getpid()}-"))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the export gets the usual permissions
        yield ExportWriter(tmp, manifest)
        write_json(tmp / MANIFEST, manifest)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f"{_sibling_prefix(out, 'old')}{os.getpid()}-"))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ reading
@dataclass
class Export:
    """An opened export directory: its manifest, and its artifacts checked against their SHA-256 when asked for."""

    dir: Path
    manifest: dict
    _verified: set = field(default_factory=set, repr=False)

    @property
    def artifacts(self) -> dict[str, dict]:
        return {a["file"]: a for a in self.manifest["artifacts"]}

    @property
    def options(self) -> dict:
        return self.manifest.get("options", {})

    @property
    def config(self) -> dict:
        return self.manifest["purifier"]["config"]

    @property
    def input_shape(self) -> list:
        return self.manifest["input"]["shape"]

    @property
    def plugin(self) -> dict | None:
        p = self.manifest.get("plugin")
        return p if isinstance(p, dict) else None

    @property
    def max_batch(self) -> int:
        return int(self.options.get("batch", [1, 8, 32])[2])

    @property
    def int8_form(self) -> str | None:
        return int8_form(self.manifest)

    @property
    def int8_weight_bits(self) -> int | None:
        return int8_weight_bits(self.manifest)

    def has(self, name: str) -> bool:
        return name in self.artifacts and (self.dir / name).is_file()

    def path(self, name: str, hint: str | None = None) -> Path:
        """``name``'s path after checking it is listed, present and unchanged; else a UserError with ``hint``."""
        fix = hint or f"re-export it with: ncis-deploy export --out {self.dir}"
        p = self.dir / name
        if name not in self.artifacts or not p.is_file():
            raise UserError(f"export {self.dir} has no {name} ({p} does not exist); {fix}")
        if name not in self._verified:
            if sha256_file(p) != self.artifacts[name].get("sha256"):
                raise UserError(f"export {self.dir} is corrupt: {name} does not match the SHA-256 in {MANIFEST}; {fix}")
            self._verified.add(name)
        return p

    def artifact_for(self, backend: str, precision: str | None = None) -> Path:
        """The verified artifact ``backend`` runs (see :data:`BACKEND_ARTIFACT`); openvino at ``precision`` int8
        runs the quantized ONNX_INT8 instead."""
        if backend not in BACKEND_ARTIFACT:
            raise UserError(f"backend must be one of {', '.join(BACKEND_ARTIFACT)}, got {backend!r}")
        if backend == "tensorrt":
            why = self.manifest.get("tensorrt", {}).get("reason", "")
            return self.path(ENGINE, (f"it was not built ({why}); " if why else "") +
                             f"build one with: ncis-deploy export --tensorrt --out {self.dir} on a GPU machine with TensorRT")
        if self.plugin is not None:
            runtime = "OpenVINO" if backend == "openvino" else "ONNX Runtime"
            raise UserError(f"export {self.dir} runs GS as the TensorRT plugin node {self.plugin.get('op_type', '?')}, "
                            f"which {runtime} cannot run; export without --smoothing plugin, or use --backend tensorrt")
        if backend == "openvino" and precision == "int8":
            return self.path(ONNX_INT8, f"write one with: ncis-deploy export --int8 --out {self.dir}")
        return self.path(ONNX)


def int8_form(manifest: dict) -> str | None:
    """Where a manifest's INT8 artifact puts its Q/DQ (``export --int8-form``), None without one; exports made
    before the option have the "fast" placement and do not name it."""
    return _int8_quantization(manifest, "int8_form", "fast")


def int8_weight_bits(manifest: dict) -> int | None:
    """The weight width of a manifest's INT8 artifact (``export --int8-weight-bits``), None without one; exports
    made before the option have 7-bit weights and do not name it."""
    return _int8_quantization(manifest, "weight_bits", 7)


def _int8_quantization(manifest: dict, key: str, before: object):
    entry = next((a for a in manifest["artifacts"] if a["file"] == ONNX_INT8), None)
    return None if entry is None else entry.get("quantization", {}).get(key, before)


def _check_fields(m) -> None:
    """Raise when a field every reader relies on is missing or mistyped."""
    if m.get("format") != FORMAT:
        raise ValueError(f"format is {m.get('format')!r}")
    if not isinstance(m["purifier"]["config"], dict) or not isinstance(m["input"]["shape"], list):
        raise TypeError("purifier.config or input.shape has the wrong type")
    if not all(isinstance(a["file"], str) and isinstance(a["sha256"], str) for a in m["artifacts"]):
        raise TypeError("an artifact entry lacks its file name or SHA-256")


def open_export(d: str | os.PathLike) -> Export:
    """Open and check an export directory; any problem is a one-line UserError that names the fix."""
    d = Path(d)
    fix = f"re-export it with: ncis-deploy export --out {d}"
    if not d.exists():
        raise UserError(f"export directory {d} does not exist; create it with: ncis-deploy export --out {d}")
    if not d.is_dir():
        raise UserError(f"{d} is not a directory; pass an export directory written by `ncis-deploy export`")
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise UserError(f"{d} is not an ncis-deploy export (no {MANIFEST}); {fix}")
    try:
        m = json.loads(mpath.read_text())
        _check_fields(m)
        version = int(m.get("format_version", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise UserError(f"{mpath} is corrupt or not an ncis-deploy manifest ({str(e).splitlines()[0][:120]}); "
                        f"{fix}") from None
    if version > FORMAT_VERSION:
        raise UserError(f"{mpath} has format_version {version}, newer than this ncis-deploy reads "
                        f"({FORMAT_VERSION}); upgrade ncis-deploy or {fix}")
    return Export(d, m)
