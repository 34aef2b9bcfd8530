"""``ncis-deploy eval --backend``: what each deployed backend and precision does to the evaluation's figures.

The PyTorch FP32 purifier is the reference. For every ``--backend NAME[:PRECISION]`` and every preset it runs, the
clean images and the adversarial images of every attack made *without* the purifier (purifier-blind and transfer:
they do not depend on the purifier, so they are the very images the torch rows used) are purified by that runner
and classified by the same classifier. Each (preset, backend) row reports, per image set, the clean / robust rate
and its difference from torch in points, the classifier's top-1 agreement with its output on the FP32-purified
images, and the max / mean absolute error and PSNR of the purified images against FP32; then the issue-12 quality
guards (:data:`GUARDS`) pass or fail. A *floor* row per preset measures the same for the FP32 output merely rounded
to 8 bits (what a PNG of it holds): on images where the classifier's top two classes nearly tie, that alone flips
predictions, and a backend's agreement is read against it.

Attacks that need gradients through the purifier (adaptive, bpda) are made on the torch purifier only: the exported
runtimes have no backward pass, and the same adversarial images would be a different (transfer) attack on them.

Every error and agreement figure comes from :func:`ncis_deploy.runners.compare.compare` (the purified images, then
the classifier's logits with ``top1``); PSNR is computed from the images that comparison returned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ncis_deploy.errors import UserError
from ncis_deploy.quality import LOW_PRECISION_PSNR_DB
from ncis_deploy.runners import precision_name

log = logging.getLogger("ncis_deploy")

# the issue-12 acceptance bounds for a low-precision result, checked for every backend row
GUARDS = {"top1_agreement": 0.99, "delta_points": 2.0, "psnr_db": LOW_PRECISION_PSNR_DB}
REFERENCE = "torch:f32"
FLOOR = "torch:f32 as 8-bit"
# backend -> the precisions eval can run it at, its default first (auto: bf16 where the CPU has it, else f32)
PRECISIONS = {"onnxruntime": ("f32", "int8"), "openvino": ("auto", "f32", "bf16", "int8")}
_BACKEND_ALIASES = {"ort": "onnxruntime", "ov": "openvino"}


def backend_choices() -> str:
    return ", ".join(f"{b}[:{'|'.join(p)}]" for b, p in PRECISIONS.items())


@dataclass(frozen=True)
class BackendSpec:
    backend: str
    precision: str  # what it runs at (auto already resolved for this CPU)
    requested: str  # as given

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.precision}"


def parse_backend(text: str) -> BackendSpec:
    """``openvino:bf16`` → BackendSpec; an unknown backend or precision is a one-line UserError."""
    name, _, prec = str(text).strip().lower().partition(":")
    name = _BACKEND_ALIASES.get(name, name)
    if name in ("torch", "pytorch"):
        raise UserError(f"--backend {text!r}: the PyTorch FP32 purifier is the reference every --backend is compared "
                        f"with, so it always runs; choose from {backend_choices()}")
    if name not in PRECISIONS:
        raise UserError(f"unknown --backend {text!r}; choose from {backend_choices()}")
    prec = precision_name(prec) if prec else PRECISIONS[name][0]
    if prec not in PRECISIONS[name]:
        raise UserError(f"--backend {text!r}: {name} runs at {', '.join(PRECISIONS[name])} here, not {prec!r}")
    return BackendSpec(name, prec, prec)


def check_backends(texts, export_dir) -> list[BackendSpec]:
    """Parse and check what does not need the models: the package, the CPU's native precisions, int8's export.
    Runs before the attacks, so a run that cannot finish fails in seconds, not after them."""
    specs: list[BackendSpec] = []
    for text in texts:
        spec = parse_backend(text)
        if spec.precision == "int8" and not export_dir:
            raise UserError(f"--backend {text} runs the quantized ONNX of an export: write one with `ncis-deploy "
                            "export --int8 --out DIR` and pass --export DIR")
        if spec.backend == "openvino":
            from ncis_deploy.runners.openvino import import_openvino, resolve_precision

            import_openvino()
            spec = BackendSpec(spec.backend, resolve_precision(spec.precision, quantized=spec.precision == "int8",
                                                               where="--backend " + text), spec.requested)
        if spec.label not in {s.label for s in specs}:  # e.g. openvino and openvino:bf16 on a bf16 CPU
            specs.append(spec)
    if export_dir and not specs:
        raise UserError("--export only applies with --backend (it names the artifacts the backends run); add "
                        "--backend, e.g. --backend onnxruntime")
    return specs


@dataclass
class Plan:
    """Which presets the backends run, and from what: an export directory, or each preset's ONNX built here."""

    specs: list[BackendSpec]
    presets: list[str]
    export: object = None  # an exporters.manifest.Export, or None: build each preset's FP32 ONNX on the fly
    size: int = 224

    def artifact(self, spec: BackendSpec, purifier) -> tuple[object, dict]:
        """(what make_runner takes, a description of it for the report)."""
        from ncis_deploy.exporters.manifest import ONNX_INT8, sha256_file

        if self.export is None:
            from ncis_deploy.exporters.onnx import build_onnx

            return build_onnx(purifier, self.size, self.size).SerializeToString(), {
                "file": None, "built": f"FP32 ONNX of the preset at {self.size}x{self.size}, built by this run"}
        ex = self.export
        path = ex.artifact_for(spec.backend, spec.precision)
        if spec.precision == "int8" and spec.backend == "onnxruntime":  # artifact_for maps only openvino to int8
            path = ex.path(ONNX_INT8, f"write one with: ncis-deploy export --int8 --out {ex.dir}")
        extra = {"int8_form": ex.int8_form, "int8_weight_bits": ex.int8_weight_bits} if spec.precision == "int8" \
            else {}
        return str(path), {"file": str(path), "sha256": sha256_file(Path(path))} | extra


def plan_backends(specs: list[BackendSpec], export_dir, purifiers: dict, size: int) -> Plan:
    """The presets each backend runs: with ``export_dir``, those whose config and BSN weights are the export's
    (checked, with the artifacts' SHA-256 and the input size, before any attack); else every preset with a stage."""
    from ncis_deploy.exporters.manifest import open_export
    from ncis_deploy.exporters.onnx import weights_sha256

    if export_dir is None:
        return Plan(specs, [p for p, pur in purifiers.items() if pur.config["stages"]], None, size)
    ex = open_export(export_dir)
    exported = ex.manifest["purifier"]
    presets = [p for p, pur in purifiers.items() if pur.config["stages"] and pur.config == ex.config
               and weights_sha256(pur) == exported.get("weights_sha256")]
    if not presets:
        source = exported.get("source", "?")
        raise UserError(f"export {ex.dir} holds the purifier {source!r}, which is none of the evaluated presets "
                        f"({', '.join(purifiers)}) with the same config and BSN weights; add --preset {source} (and its "
                        "--weights), or export the preset you evaluate")
    h, w = ex.input_shape[2:4]
    if all(isinstance(d, int) for d in (h, w)) and (h, w) != (size, size):
        raise UserError(f"export {ex.dir} takes {h}x{w} images but eval runs at --size {size}; pass --size {h} "
                        f"(square exports only) or re-export with --height {size} --width {size}")
    plan = Plan(specs, presets, ex, size)
    for spec in specs:  # a missing or corrupt artifact fails now, not after the attacks
        plan.artifact(spec, None)
    return plan


@dataclass
class ImageSet:
    """One set of images the torch purifier has already been measured on, with what it gave."""

    attack: str  # "clean" or the attack's name
    threat_model: str
    eps_label: str
    x: torch.Tensor  # the purifier's input
    purified: torch.Tensor  # the torch FP32 purifier's output
    logits: torch.Tensor  # the classifier on ``purified``
    torch_rate: float

    @property
    def name(self) -> str:
        return "clean" if self.attack == "clean" else f"{self.attack} {self.eps_label}"


def _runner(spec: BackendSpec, artifact):
    from ncis_deploy.runners import make_runner

    kw = {"precision": spec.precision} if spec.backend == "openvino" else {}
    return make_runner(spec.backend, artifact, **kw)


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> float | None:
    """PSNR in dB, None when the two are identical (infinite: JSON has no infinity)."""
    from ncis_deploy.quality import psnr_or_none

    v = psnr_or_none(x, ref)
    return None if v is None else round(v, 2)


def _compare_sets(label: str, candidate, sets: list[ImageSet], clf, labels, batch: int) -> tuple[dict, float]:
    """``candidate`` (a runner, or one recorded output per set) on every set vs torch FP32: the row's figures and
    guards, and the seconds the comparison took (a runner's activation included)."""
    from ncis_deploy.runners.compare import compare

    n = len(labels)
    spans = [(a, min(a + batch, n)) for a in range(0, n, batch)]
    cases = [(f"{s.name} images {a}:{b}", s.x[a:b].numpy()) for s in sets for a, b in spans]
    if not hasattr(candidate, "infer"):
        candidate = [y[a:b].numpy() for y in candidate for a, b in spans]
    t0 = time.perf_counter()
    # torch's side is what eval already computed: compared as recorded outputs, not computed again
    images = compare({REFERENCE: [s.purified[a:b].numpy() for s in sets for a, b in spans], label: candidate}, cases)
    seconds = time.perf_counter() - t0
    pair, outs = images.pairs[0], images.outputs[label]
    rows = []
    for i, s in enumerate(sets):
        k = slice(i * len(spans), (i + 1) * len(spans))
        y = torch.cat([torch.from_numpy(np.ascontiguousarray(o)) for o in outs[k]])
        logits = clf.logits(y, batch)
        agree = compare({REFERENCE: [s.logits.numpy()], label: [logits.numpy()]},
                        [(s.name, y.numpy())], top1=True).pairs[0]
        diffs = pair.cases[k]
        rate = float((logits.argmax(1) == labels).float().mean())
        rows.append({"attack": s.attack, "threat_model": s.threat_model, "eps_label": s.eps_label, "images": n,
                     "rate": rate, "torch_rate": s.torch_rate, "delta_points": round(100 * (rate - s.torch_rate), 2),
                     "top1_agreement": agree.top1_agreement, "max_abs": max(d.max_abs for d in diffs),
                     "mean_abs": sum(d.mean_abs * d.images for d in diffs) / n, "psnr_db": _psnr(y, s.purified)})
    guards = check_guards(rows)
    return {"sets": rows, "top1_agreement": guards["top1_agreement"]["value"],
            "top1_agreement_worst_set": min(r["top1_agreement"] for r in rows), "max_abs": pair.max_abs,
            "psnr_db_min": guards["psnr_db"]["value"], "guards": guards,
            "ok": all(g["ok"] for g in guards.values())}, seconds


def check_guards(rows: list[dict]) -> dict:
    """The ``GUARDS`` of one backend row from its image sets: {guard: {goal, value, ok}}.

    Top-1 agreement is over every image of the run (the issue's "on the eval images"): per set, 99 % of the 22 or 88
    images a set holds would mean that no image may move at all. The accuracy Δ and the PSNR are the worst set's,
    so a precision that moves one set's figures (the robust ones, say) is caught there and cannot hide behind the
    others."""
    psnrs = [r["psnr_db"] for r in rows if r["psnr_db"] is not None]
    checked = {"top1_agreement": sum(r["top1_agreement"] * r["images"] for r in rows) / sum(r["images"] for r in rows),
               "delta_points": max(abs(r["delta_points"]) for r in rows), "psnr_db": min(psnrs) if psnrs else None}
    return {k: {"goal": GUARDS[k], "value": v,
                "ok": bool(v is None or (v <= GUARDS[k] if k == "delta_points" else v >= GUARDS[k]))}
            for k, v in checked.items()}


def measure_backend(spec: BackendSpec, preset: str, plan: Plan, purifier, sets: list[ImageSet], clf, labels,
                    batch: int, say: Callable[[str], None]) -> dict:
    """One (preset, backend) row: every image set through the runner, compared with torch FP32."""
    artifact, described = plan.artifact(spec, purifier)
    runner = _runner(spec, artifact)
    say(f"backend {spec.label}: {preset} ({len(sets)} image sets x {len(labels)} images)")
    if spec.backend == "openvino" and spec.precision == "bf16":
        from ncis_deploy.runners.openvino import bf16_hint_note

        note = bf16_hint_note(artifact, spec.label)
        if note:
            log.warning("%s", note)
    with runner:  # active across the comparison, so what it ran (providers, precision) can be read back after
        figures, seconds = _compare_sets(spec.label, runner, sets, clf, labels, batch)
        record = dict(getattr(runner, "record", None) or {"backend": spec.backend, "providers": runner.providers})
    for k, g in figures["guards"].items():
        if not g["ok"]:
            log.warning("PRECISION GUARD FAILED: %s on %s: %s = %s (goal %s %s)", spec.label, preset, k, g["value"],
                        "<=" if k == "delta_points" else ">=", g["goal"])
    return {"preset": preset, "backend": spec.backend, "precision": spec.precision,
            "requested_precision": spec.requested, "label": spec.label, "artifact": described, "runner": record,
            **figures,
            # compile + purifying every set: a cost indication only (bench measures speed, interleaved)
            "purify_seconds": round(seconds, 1)}


def measure_floor(preset: str, sets: list[ImageSet], clf, labels, batch: int) -> dict:
    """The FP32 output itself rounded to 8 bits (what a PNG of it holds): how far the classifier moves under an
    error no precision can avoid once the image is saved, for reading the backend rows' agreement against."""
    rounded = [(s.purified * 255).round() / 255 for s in sets]
    figures, _ = _compare_sets(FLOOR, rounded, sets, clf, labels, batch)
    return {"preset": preset, "label": FLOOR, **figures}


def run_backends(plan: Plan, purifiers: dict, sets_of: Callable[[str], list[ImageSet]], clf, labels, batch: int,
                 torch_only: list[str], say: Callable[[str], None]) -> dict:
    """The report's ``precisions`` section: one row per (preset, backend) of ``plan``, and per preset the 8-bit
    rounding floor (``floor``)."""
    rows, floor = [], []
    for p in plan.presets:
        sets = sets_of(p)
        floor.append(measure_floor(p, sets, clf, labels, batch))
        rows += [measure_backend(spec, p, plan, purifiers[p], sets, clf, labels, batch, say) for spec in plan.specs]
    return {"reference": REFERENCE, "guards": dict(GUARDS), "export": str(plan.export.dir) if plan.export else None,
            "torch_only": torch_only, "rows": rows, "floor": floor}


# -------------------------------------------------------------------------------------------------------- report
def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _cells(r: dict, names: list[str]) -> str:
    by = {_set_name(s): s for s in r["sets"]}
    cells = [f"{by[n]['rate']:.1%} ({by[n]['delta_points']:+.1f})" if n in by else "—" for n in names]
    gd = r["guards"]
    psnr = "∞ (identical)" if gd["psnr_db"]["value"] is None else f"{gd['psnr_db']['value']:.1f} dB"
    return (" | ".join(cells) + f" | {gd['delta_points']['value']:.1f} {_mark(gd['delta_points']['ok'])}"
            f" | {gd['top1_agreement']['value']:.1%} {_mark(gd['top1_agreement']['ok'])}"
            f" (worst set {r['top1_agreement_worst_set']:.1%})"
            f" | {psnr} {_mark(gd['psnr_db']['ok'])} | {r['max_abs']:.1e} |")


def render(section: dict, metric: str, images: int) -> list[str]:
    """The markdown table: per preset, the torch FP32 row and its 8-bit floor, then one row per backend with each
    set's rate and its Δ against torch in points, and the guards."""
    rows = section["rows"]
    if not rows:
        return []
    names = list(dict.fromkeys(_set_name(s) for r in rows for s in r["sets"]))
    g = section["guards"]
    floor = {r["preset"]: r for r in section.get("floor", [])}
    lines = [f"Backends and precisions vs the PyTorch FP32 purifier: {metric} on the same {images} images (clean, and "
             "the adversarial images of each attack made without the purifier); Δ = points vs torch FP32", "",
             "| preset | backend | " + " | ".join(names) + f" | max abs Δ (≤ {g['delta_points']:g} pts) | top-1 "
             f"agreement with FP32 (≥ {g['top1_agreement']:.0%}) | PSNR vs FP32, min (≥ {g['psnr_db']:g} dB) | "
             "max abs error |", "|---|---|" + "---|" * (len(names) + 4)]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        torch_rates = {_set_name(s): s["torch_rate"] for r in rows if r["preset"] == preset for s in r["sets"]}
        lines.append(f"| {preset} | {REFERENCE} (reference) | "
                     + " | ".join(f"{torch_rates[n]:.1%}" if n in torch_rates else "—" for n in names)
                     + " | — | — | — | — |")
        if preset in floor:
            lines.append(f"| {preset} | *{FLOOR} (floor)* | " + _cells(floor[preset], names))
        lines += [f"| {preset} | {r['label']} | " + _cells(r, names) for r in rows if r["preset"] == preset]
    torch_only = section.get("torch_only") or []
    notes = [f"one image = {100 / max(images, 1):.1f} points",
             "top-1 agreement: all images pooled (the guard), in brackets the worst image set; PSNR and Δ: the "
             "worst set"]
    if floor:
        notes.append("floor = the FP32 output rounded to 8 bits, as a PNG of it holds: how far the classifier moves "
                     "under an error that small")
    if torch_only:
        notes.append(f"{', '.join(torch_only)}: torch only (made with gradients through the purifier, which the "
                     "exported runtimes do not have; see the first table)")
    bad = [f"{r['preset']} {r['label']}" for r in rows if not r["ok"]]
    lines += ["", "Note: " + "; ".join(notes) + ". Guards: "
              + ("all pass." if not bad else "FAILED for " + ", ".join(bad) + ".")]
    return lines


def _set_name(s: dict) -> str:
    return "clean" if s["attack"] == "clean" else f"{s['attack']} {s['eps_label']}"
