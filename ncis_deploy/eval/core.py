"""``ncis-deploy eval``: clean accuracy/agreement, robustness under each threat model, backend parity, sanity checks.

Layout of a run: load the classifier and the data; label the bundled photos by the undefended clean top-1 if no
labels were given; for each preset, measure clean; make each purifier-blind / transfer attack once per ``eps`` (it
does not depend on the preset) and pass the adversarial images through every preset; run each adaptive attack per
preset and ``adaptive_eps`` (it does); compare ORT vs torch purification; with ``backends``, purify the clean and
purifier-independent adversarial images again with each backend / precision and compare (:mod:`.backends`); run the
sanity checks. The report is one JSON-able dict. With ``report`` / ``save_adversarial``, the images the run made for
one attack and ε are kept on the way and written last, as a page and an 8-bit set (:mod:`.report`).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from ncis_deploy.data import PHOTO_SPLITS
from ncis_deploy.cpu import cpu_isa, cpu_model
from ncis_deploy.errors import UserError
from ncis_deploy.eval import attacks as A
from ncis_deploy.eval.classifiers import Classifier, load_classifier
from ncis_deploy.eval.dataset import EvalSet, bundled, check_labels, from_folder, subset_index
from ncis_deploy.eval.report import Shown, check_destinations, choose_shown, eight_bit, round_adversarial, write_outputs

log = logging.getLogger("ncis_deploy")

SCHEMA_VERSION = 1
# attack name -> (threat model, needs gradients of: "classifier" | "surrogate" | "system")
ATTACKS = {
    "fgsm": ("purifier-blind", "classifier"),
    "pgd": ("purifier-blind", "classifier"),
    "pgd-l2": ("purifier-blind", "classifier"),
    "mifgsm": ("purifier-blind", "classifier"),
    "transfer": ("transfer", "surrogate"),
    "bpda": ("adaptive", "system"),
    "adaptive": ("adaptive", "system"),
}
ADAPTIVE = ("bpda", "adaptive")
GHOST = "efficientnet-lite0-ghost"
GHOST_NOTE = ("surrogates are ghost copies of the target (same weights), so this is stronger than a true black-box "
              "transfer; give --surrogate for another architecture")
DEFAULT_EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255)


@dataclass
class EvalOptions:
    classifier: str = "efficientnet-lite0"
    data: str | None = None
    labels: str | None = None
    presets: tuple[str, ...] = ("none", "gs", "ncis")
    # None: pgd, transfer (when a surrogate is given or built in) and adaptive; nothing for an ONNX classifier
    attacks: tuple[str, ...] | None = None
    eps: tuple[float, ...] = DEFAULT_EPS  # purifier-blind and transfer attacks
    adaptive_eps: tuple[float, ...] = (8 / 255,)  # adaptive attacks backpropagate through the BSN: one ε by default
    eps_l2: float = 1.0  # the ℓ2 radius for pgd-l2 (pixel scale, whole image)
    steps: int = 10
    adaptive_steps: int = 5
    adaptive_images: int = 8
    crops: int = 2
    photos: str = "all"  # bundled set: all 11 photos, or the BSN trainer's split: "train" (9) / "holdout" (2)
    # bundled set: keep only crops the undefended classifier is this sure of (clean top-1 probability); 0 keeps all
    min_confidence: float = 0.0
    images: int | None = None  # cap on the number of images (spread over the set)
    size: int = 224
    seed: int = 0
    # measured on 2 cores: backpropagating through the BSN at 8 images a batch is ~3x slower per image than at 4
    # (its activations outgrow the caches), and no stage is faster at 8
    batch: int = 4
    eot: int = 1
    surrogates: tuple[str, ...] = ()
    transfer_steps: int = 10
    parity: bool = True
    weights: str | None = None
    # also purify with these runners (NAME[:PRECISION], see eval/backends.py) and compare with torch FP32
    backends: tuple[str, ...] = ()
    export_dir: str | None = None  # None: each preset's FP32 ONNX, built by the run (int8 needs an `export --int8`)
    report: str | None = None  # folder for index.html: tables, plot, image grid, settings (eval/report.py)
    save_adversarial: str | None = None  # folder for the adversarial set as 8-bit PNGs + labels.csv


def check_options(o: EvalOptions) -> None:
    for e in o.eps + o.adaptive_eps:
        A.check_eps(e)
    if o.eps_l2 < 0:
        raise UserError(f"--eps-l2 must be >= 0, got {o.eps_l2:g}")
    unknown = [a for a in (o.attacks or ()) if a not in ATTACKS]
    if unknown:
        raise UserError(f"unknown attack {unknown[0]!r}; choose from {', '.join(ATTACKS)}")
    for name, v, lo in (("--steps", o.steps, 1), ("--adaptive-steps", o.adaptive_steps, 1),
                        ("--adaptive-images", o.adaptive_images, 1), ("--crops", o.crops, 1), ("--batch", o.batch, 1),
                        ("--eot", o.eot, 1), ("--transfer-steps", o.transfer_steps, 1), ("--size", o.size, 8)):
        if v < lo:
            raise UserError(f"{name} must be >= {lo}, got {v}")
    if o.photos not in PHOTO_SPLITS:
        raise UserError(f"--photos must be one of {', '.join(PHOTO_SPLITS)}, got {o.photos!r}")
    if not 0.0 <= o.min_confidence < 1.0:
        raise UserError(f"--min-confidence is a probability in [0, 1), got {o.min_confidence:g}")
    if (o.data or o.labels) and (o.photos != "all" or o.min_confidence > 0):
        raise UserError("--photos and --min-confidence choose among the bundled photos' crops; with --data/--labels "
                        "(ground-truth labels) drop them")
    if o.images is not None and o.images < 1:
        raise UserError(f"--images must be >= 1, got {o.images}")
    if "transfer" in (o.attacks or ()) and not o.surrogates:
        raise UserError("the transfer attack needs at least one surrogate classifier (--surrogate SPEC); it must "
                        "differ from the target to be a black-box test")
    if not o.presets:
        raise UserError("give at least one preset")


def with_default_surrogates(o: EvalOptions) -> EvalOptions:
    """The built-in classifier gets its ghost ensemble as surrogate, so the transfer row (and the "black-box never
    beats white-box" check) needs no second model on disk."""
    if not o.surrogates and o.classifier == "efficientnet-lite0":
        return replace(o, surrogates=(GHOST,))
    return o


def default_attacks(differentiable: bool, has_surrogates: bool) -> tuple[str, ...]:
    """pgd, transfer, adaptive, keeping only what can run: gradient attacks need a torch classifier, transfer a
    surrogate."""
    return tuple(a for a in ("pgd", "transfer", "adaptive")
                 if (has_surrogates if a == "transfer" else differentiable))


def load_eval_set(o: EvalOptions, clf: Classifier) -> EvalSet:
    """The evaluation images (a labelled folder / CSV, or the bundled crops), checked against the classifier's
    classes; an unlabelled set gets the undefended classifier's own clean top-1 (reported as agreement)."""
    if o.data or o.labels:
        ds = from_folder(o.data, o.labels, o.size)
    else:
        ds = bundled(o.crops, o.size, o.seed, o.photos)
        if o.min_confidence > 0:
            ds = confident_crops(ds, clf, o.min_confidence, o.batch)
    if o.images:
        ds = ds.subset(o.images)
    check_labels(ds, clf.num_classes, clf.name)
    if o.save_adversarial:  # the saved set is 8-bit PNGs: measure those, not their float originals
        ds.images = eight_bit(ds.images)
    if ds.labels is None:
        ds.labels = clf.predict(ds.images, o.batch)
    return ds


def top1_probability(clf: Classifier, x: torch.Tensor, batch: int) -> torch.Tensor:
    """The classifier's softmax probability of its own top-1 on each image: how sure it is (near-ties sit low)."""
    return torch.softmax(clf.logits(x, batch).float(), 1).max(1).values


def confident_crops(ds: EvalSet, clf: Classifier, p: float, batch: int) -> EvalSet:
    """The crops whose undefended clean top-1 probability is >= p. Agreement on near-ties (half the bundled crops
    sit below 0.33) flips with any change of the image; this asks what a purifier does where the classifier has an
    opinion. Chosen on the clean image only, so no purifier or attack is favoured."""
    probs = top1_probability(clf, ds.images, batch)
    idx = torch.nonzero(probs >= p).flatten()
    if idx.numel() == 0:
        raise UserError(f"no crop has a clean top-1 probability >= {p:g} (highest {probs.max():.2f}); lower "
                        f"--min-confidence or raise --crops")
    return ds.select(idx, f"{ds.source}, the {idx.numel()} of {len(ds)} with clean top-1 probability >= {p:g}")


def _fmt_eps(e: float, norm: str = "linf") -> str:
    if norm == "l2":
        return f"{e:g} (ℓ2)"
    n = e * 255
    return f"{n:g}/255" if abs(n - round(n)) < 1e-6 else f"{e:.4g}"


class _Progress:
    """tqdm bars on stderr (disabled when not a terminal unless forced), plus an optional text callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="img·step", disable=not self.enabled, dynamic_ncols=True,
                    leave=False)


def _load_purifiers(o: EvalOptions):
    from ncis_deploy.model.purifier import load_purifier

    return {p: load_purifier(p, weights=o.weights if p not in ("none", "gs") else None) for p in o.presets}


def purify_batched(purifier, x: torch.Tensor, batch: int) -> torch.Tensor:
    """``purifier`` over ``x`` in batches of ``batch``, without gradients: how eval, the sweep and the benchmark
    scripts purify a whole image set."""
    with torch.no_grad():
        return torch.cat([purifier(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def _row(preset, attack, threat, eps, norm, steps, correct: torch.Tensor, metric, note="") -> dict:
    n = int(correct.numel())
    return {"preset": preset, "attack": attack, "threat_model": threat, "eps": eps, "eps_label": _fmt_eps(eps, norm),
            "norm": norm, "steps": steps, "images": n, "correct": int(correct.sum()),
            "rate": float(correct.float().mean()) if n else float("nan"), "metric": metric, "note": note}


class _StageClock:
    """The progress callback of a run: each message starts a stage, and the time since the previous message is
    charged to that previous stage (``timings``, the report's ``stage_seconds``)."""

    def __init__(self, progress: Callable[[str], None] | None):
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.start = self._last = time.perf_counter()
        self._stage: str | None = None

    def __call__(self, msg: str) -> None:
        now = time.perf_counter()
        if self._stage is not None:
            self.timings[self._stage] = round(self.timings.get(self._stage, 0.0) + now - self._last, 2)
        self._stage, self._last = msg, now
        if self.progress:
            self.progress(msg)


@dataclass
class _Run:
    """One evaluation: what its steps read (options with the attacks resolved, models, data, progress) and what they
    accumulate (report rows, PGD trajectories, the clean purified images for parity, and the per-(preset, ε) correct
    masks of purifier-blind PGD and of the transfer attack, for the sanity checks)."""

    o: EvalOptions
    clf: Classifier
    surrogates: list[Classifier]
    ds: EvalSet
    purifiers: dict
    say: Callable[[str], None]
    bars: _Progress
    rows: list[dict] = field(default_factory=list)
    trajectories: dict[str, list[float]] = field(default_factory=dict)
    purified_clean: dict[str, torch.Tensor] = field(default_factory=dict)
    # kept only for --backend: the images of each attack made without the purifier, (attack, eps) -> x_adv, and
    # what torch did with every set, (preset, attack, eps) -> (purified, logits, rate)
    adversarial: dict[tuple, torch.Tensor] = field(default_factory=dict)
    torch_sets: dict[tuple, tuple] = field(default_factory=dict)
    backend_presets: frozenset = frozenset()  # the presets --backend runs
    blind_correct: dict[tuple, torch.Tensor] = field(default_factory=dict)
    transfer_correct: dict[tuple, torch.Tensor] = field(default_factory=dict)
    sub_index: torch.Tensor | None = field(init=False)
    shown: Shown | None = field(init=False)  # --report / --save-adversarial: the attack and ε they show, kept

    def __post_init__(self):
        # adaptive attacks backpropagate through the purifier: on CPU they get a subset spread over the set, and the
        # purifier-blind figures are also reported on that same subset for the sanity check
        adaptive = any(a in ADAPTIVE for a in self.o.attacks)
        self.sub_index = subset_index(len(self.ds), self.o.adaptive_images) if adaptive else None
        self.shown = choose_shown(self.o.attacks, self.o.eps) if self.o.report or self.o.save_adversarial else None


def run_eval(o: EvalOptions, progress: Callable[[str], None] | None = None, bars: bool = False,
             command: str | None = None) -> dict:
    from ncis_deploy.eval import backends as B

    o = with_default_surrogates(o)
    check_options(o)
    specs = B.check_backends(o.backends, o.export_dir)
    check_destinations(o.report, o.save_adversarial)
    say = _StageClock(progress)
    torch.manual_seed(o.seed)
    o, clf, surrogates = _load_classifiers(o, say)
    ds = load_eval_set(o, clf)
    say(f"{len(ds)} images from {ds.source}; metric: {ds.metric}")
    run = _Run(o, clf, surrogates, ds, _load_purifiers(o), say, _Progress(bars))
    plan = B.plan_backends(specs, o.export_dir, run.purifiers, o.size) if specs else None
    run.backend_presets = frozenset(plan.presets if plan else ())
    _measure_clean(run)
    for attack in o.attacks:
        _measure_attack(run, attack)
    parity = run_parity(run.purifiers, run.purified_clean, ds, clf, o, say) if o.parity else []
    report = _report(run, parity, command)
    if plan is not None:
        report["precisions"] = B.run_backends(plan, run.purifiers, lambda p: _image_sets(run, p), clf, ds.labels,
                                              o.batch, [a for a in o.attacks if a in ADAPTIVE], say)
    say("sanity checks")
    report["sanity"] = sanity_checks(report, run.blind_correct, run.sub_index, run.transfer_correct)
    report["stage_seconds"] = say.timings
    report["wall_s"] = round(time.perf_counter() - say.start, 1)
    if run.shown is not None:
        report["outputs"] = write_outputs(run, report, plot)
    for s in report["sanity"]:
        if not s["ok"]:
            log.warning("SANITY CHECK FAILED: %s: %s", s["check"], s["detail"])
    return report


def _load_classifiers(o: EvalOptions, say) -> tuple[EvalOptions, Classifier, list[Classifier]]:
    """The target and the transfer surrogates, with ``o.attacks`` resolved when None; an attack that needs gradients
    a model lacks is a UserError."""
    clf = load_classifier(o.classifier)
    if o.attacks is None:
        # an ONNX classifier has no gradients: by default it gets clean + parity (+ transfer with a surrogate);
        # asking for more is an error below
        o = replace(o, attacks=default_attacks(clf.differentiable, bool(o.surrogates)))
        if not clf.differentiable:
            say("ONNX classifier: no gradient attacks by default (clean accuracy, parity and transfer only)")
    needs_grad = [a for a in o.attacks if ATTACKS[a][1] in ("classifier", "system")]
    if needs_grad and not clf.differentiable:
        clf.require_gradients(f"the {needs_grad[0]} attack")
    surrogates = [load_classifier(s) for s in o.surrogates] if "transfer" in o.attacks else []
    for s in surrogates:
        s.require_gradients("a transfer-attack surrogate")
    return o, clf, surrogates


def _measure_clean(run: _Run) -> None:
    for p, pur in run.purifiers.items():
        run.say(f"clean: {p}")
        xp = purify_batched(pur, run.ds.images, run.o.batch)
        run.purified_clean[p] = xp
        ok = _classify(run, p, "clean", 0.0, xp)
        run.rows.append(_row(p, "clean", "clean", 0.0, "linf", 0, ok, run.ds.metric))


def _classify(run: _Run, preset: str, attack: str, eps: float, purified: torch.Tensor) -> torch.Tensor:
    """The classifier's correct mask on ``purified``; for --backend, torch's purified images and logits are kept
    as the reference the backends are compared with."""
    logits = run.clf.logits(purified, run.o.batch)
    ok = logits.argmax(1) == run.ds.labels
    if preset in run.backend_presets:
        run.torch_sets[(preset, attack, eps)] = (purified, logits, float(ok.float().mean()))
    if run.shown is not None and run.shown.wants(attack, eps):
        run.shown.purified[preset] = (purified, logits)
    return ok


def _image_sets(run: _Run, preset: str) -> list:
    """What --backend purifies for ``preset``: the clean images, then every attack made without the purifier."""
    from ncis_deploy.eval.backends import ImageSet

    sets = []
    for (p, attack, eps), (purified, logits, rate) in run.torch_sets.items():
        if p != preset:
            continue
        x = run.ds.images if attack == "clean" else run.adversarial[(attack, eps)]
        norm = "l2" if attack == "pgd-l2" else "linf"
        sets.append(ImageSet(attack, "clean" if attack == "clean" else ATTACKS[attack][0],
                             "—" if attack == "clean" else _fmt_eps(eps, norm), x, purified, logits, rate))
    return sets


def _measure_attack(run: _Run, attack: str) -> None:
    """One attack at each of its ε: made once without the purifier and purified by every preset (purifier-blind,
    transfer), or made through each preset (adaptive)."""
    o = run.o
    eps_list = [o.eps_l2] if attack == "pgd-l2" else list(o.adaptive_eps if attack in ADAPTIVE else o.eps)
    for eps in eps_list:
        if ATTACKS[attack][1] in ("classifier", "surrogate"):
            _made_without_purifier(run, attack, eps)
        else:
            _made_through_purifier(run, attack, eps)


def _made_without_purifier(run: _Run, attack: str, eps: float) -> None:
    o, ds, clf = run.o, run.ds, run.clf
    threat, grad_of = ATTACKS[attack]
    norm = "l2" if attack == "pgd-l2" else "linf"
    f = clf.module if grad_of == "classifier" else A.ensemble([s.module for s in run.surrogates])
    steps = {"fgsm": 1, "transfer": o.transfer_steps, "mifgsm": o.transfer_steps}.get(attack, o.steps)
    run.say(f"{attack} {_fmt_eps(eps, norm)}: making the adversarial examples ({steps} steps, "
            f"{'surrogates' if grad_of == 'surrogate' else 'classifier alone'})")
    with run.bars.bar(len(ds) * steps, f"{attack} {_fmt_eps(eps, norm)}") as bar:
        out = _run_attack(attack, f, ds.images, ds.labels, eps, steps, o, bar.update)
    made_on = "classifier" if grad_of == "classifier" else "surrogates"
    run.trajectories[f"{attack}@{_fmt_eps(eps, norm)}|{made_on}"] = out.trajectory
    transfer_note = GHOST_NOTE if GHOST in o.surrogates and clf.name == "efficientnet-lite0" else ""
    if o.save_adversarial and norm == "linf":  # measure the 8-bit images the saved set holds (within ε)
        out.x_adv = round_adversarial(out.x_adv, ds.images, eps)
    if run.shown is not None and run.shown.wants(attack, eps):
        run.shown.x_adv = out.x_adv
    if run.backend_presets:
        run.adversarial[(attack, eps)] = out.x_adv
    for p, pur in run.purifiers.items():
        run.say(f"{attack} {_fmt_eps(eps, norm)}: purify with {p} and classify")
        ok = _classify(run, p, attack, eps, purify_batched(pur, out.x_adv, o.batch))
        if attack in ("pgd", "transfer"):
            (run.blind_correct if attack == "pgd" else run.transfer_correct)[(p, eps)] = ok
        run.rows.append(_row(p, attack, threat, eps, norm, steps, ok, ds.metric,
                             transfer_note if attack == "transfer" else ""))


def _made_through_purifier(run: _Run, attack: str, eps: float) -> None:
    o, ds = run.o, run.ds
    xs, ys = ds.images[run.sub_index], ds.labels[run.sub_index]
    for p, pur in run.purifiers.items():
        f = A.full_gradient(pur, run.clf.module) if attack == "adaptive" else A.bpda(pur, run.clf.module)
        f = A.eot(f, o.eot)
        with run.bars.bar(len(xs) * o.adaptive_steps, f"{attack} {_fmt_eps(eps)} {p}") as bar:
            run.say(f"{attack} {_fmt_eps(eps)}: {p} ({len(xs)} images, {o.adaptive_steps} steps)")
            out = A.pgd(f, xs, ys, eps, o.adaptive_steps, seed=o.seed, batch=o.batch, progress=bar.update)
        run.trajectories[f"{attack}@{_fmt_eps(eps)}|{p}"] = out.trajectory
        note = f"{len(xs)} of {len(ds)} images, {o.adaptive_steps} steps (cost)" if len(xs) < len(ds) else ""
        run.rows.append(_row(p, attack, ATTACKS[attack][0], eps, "linf", o.adaptive_steps, out.correct, ds.metric,
                             note))


def _report(run: _Run, parity: list[dict], command: str | None) -> dict:
    """The report without its sanity checks and timings (run_eval adds them last)."""
    ds = run.ds
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "classifier": run.clf.name,
        "data": {"source": ds.source, "images": len(ds), "metric": ds.metric,
                 "adaptive_images": None if run.sub_index is None else len(run.sub_index)},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(run.o).items()},
        "rows": run.rows,
        "trajectories": run.trajectories,
        "parity": parity,
        "machine": {"cpu": cpu_model(), "isa": cpu_isa(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform()},
    }


def _run_attack(attack, f, x, y, eps, steps, o: EvalOptions, update):
    if attack == "fgsm":
        return A.fgsm(f, x, y, eps, batch=o.batch, progress=update)
    if attack == "pgd":
        return A.pgd(f, x, y, eps, steps, seed=o.seed, batch=o.batch, progress=update)
    if attack == "pgd-l2":
        return A.pgd(f, x, y, eps, steps, norm="l2", seed=o.seed, batch=o.batch, progress=update)
    return A.mifgsm(f, x, y, eps, steps, seed=o.seed, batch=o.batch, progress=update)


# ------------------------------------------------------------------------------------------------------- parity
def run_parity(purifiers, purified_clean, ds: EvalSet, clf: Classifier, o: EvalOptions, say) -> list[dict]:
    """ORT (CPU) vs torch: the purified images, and the classifier's top-1 on each (goal: ≥ 99.9% agreement)."""
    from ncis_deploy.exporters.onnx import build_onnx
    from ncis_deploy.runners import make_runner
    from ncis_deploy.runners.compare import compare

    out = []
    spans = [(i, i + o.batch) for i in range(0, len(ds), o.batch)]
    cases = [(f"images {a}:{min(b, len(ds))}", ds.images[a:b].numpy()) for a, b in spans]
    for p, pur in purifiers.items():
        if not pur.config["stages"]:
            continue
        say(f"parity: {p} (onnxruntime vs torch)")
        ref = purified_clean[p]
        onnx_runner = make_runner("onnxruntime", build_onnx(pur, o.size, o.size).SerializeToString())
        # torch's side is the purification eval already did: compared as recorded outputs, not computed again
        result = compare({"torch": [ref[a:b].cpu().numpy() for a, b in spans], "onnxruntime": onnx_runner}, cases)
        ort = torch.cat([torch.from_numpy(y) for y in result.outputs["onnxruntime"]])
        agree = clf.predict(ort, o.batch) == clf.predict(ref, o.batch)
        out.append({"preset": p, "backend": "onnxruntime-cpu", "images": len(ds),
                    "max_abs_diff": result.pairs[0].max_abs, "top1_agreement": float(agree.float().mean()),
                    "goal": 0.999, "ok": bool(agree.float().mean() >= 0.999)})
    return out


# -------------------------------------------------------------------------------------------------------- sanity
def sanity_checks(report: dict, blind_correct: dict, sub_index, transfer_correct: dict | None = None) -> list[dict]:
    """The literature's checks (Athalye et al. 2018, Carlini et al. 2019): each failure means the attack, not the
    defense, is probably broken, so it is reported loudly rather than silently trusted."""
    rows, checks = report["rows"], []
    n = report["data"]["images"]
    tol = max(0.05, 2.0 / max(n, 1))  # "beyond noise": two images or 5 points

    def rate(preset, attack, eps):
        r = [x for x in rows if x["preset"] == preset and x["attack"] == attack and abs(x["eps"] - eps) < 1e-12]
        return r[0]["rate"] if r else None

    # 1. undefended accuracy falls to ~0 as eps grows
    pgd_eps = sorted({r["eps"] for r in rows if r["attack"] == "pgd" and r["preset"] == "none"})
    if pgd_eps:
        vals = [rate("none", "pgd", e) for e in pgd_eps]
        mono = all(b <= a + tol for a, b in zip(vals, vals[1:]))
        top = pgd_eps[-1]
        low = vals[-1] <= 0.05 if top >= 4 / 255 else True
        checks.append({"check": "undefended accuracy falls to ~0 as eps grows", "ok": bool(mono and low),
                       "detail": ", ".join(f"{_fmt_eps(e)}: {v:.1%}" for e, v in zip(pgd_eps, vals))
                       + ("" if low else f" (expected <= 5% at {_fmt_eps(top)})")})
    # 2. more steps never help the defender (per recorded PGD run: last iterate vs the half-way iterate)
    for key, traj in report["trajectories"].items():
        if len(traj) < 3:
            continue
        mid, last = traj[(len(traj) - 1) // 2], traj[-1]
        checks.append({"check": f"more steps never help the defender ({key})", "ok": bool(last <= mid + tol),
                       "detail": f"step {(len(traj) - 1) // 2}: {mid:.1%}, step {len(traj) - 1}: {last:.1%}"})
    # 3. black-box never beats white-box: purifier-blind and transfer vs adaptive on the adaptive subset, and
    # transfer vs PGD on the undefended classifier (where PGD on the classifier *is* the white-box attack)
    transfer_correct = transfer_correct or {}
    for r in rows:
        if r["attack"] != "adaptive" or sub_index is None:
            continue
        p, e = r["preset"], r["eps"]
        same = f"on the same {r['images']} images"
        if (p, e) in blind_correct:
            blind = float(blind_correct[(p, e)][sub_index].float().mean())
            checks.append({"check": f"adaptive PGD at least as strong as purifier-blind PGD ({p}, {_fmt_eps(e)})",
                           "ok": bool(r["rate"] <= blind + tol),
                           "detail": f"adaptive {r['rate']:.1%} vs purifier-blind {blind:.1%} {same}"})
        if (p, e) in transfer_correct:
            t = float(transfer_correct[(p, e)][sub_index].float().mean())
            checks.append({"check": f"transfer (black-box) never beats adaptive (white-box) ({p}, {_fmt_eps(e)})",
                           "ok": bool(t + tol >= r["rate"]),
                           "detail": f"transfer {t:.1%} vs adaptive {r['rate']:.1%} {same}"})
    for e in sorted({e for p, e in transfer_correct if p == "none"}):
        w = rate("none", "pgd", e)
        if w is not None:
            t = rate("none", "transfer", e)
            checks.append({"check": f"transfer (black-box) never beats PGD on the undefended classifier (white-box) "
                                    f"(none, {_fmt_eps(e)})", "ok": bool(t + tol >= w),
                           "detail": f"transfer {t:.1%} vs PGD {w:.1%} on all {n} images"})
    for p in report["parity"]:
        checks.append({"check": f"backend parity ({p['preset']}, {p['backend']})", "ok": p["ok"],
                       "detail": f"top-1 agreement {p['top1_agreement']:.2%} (goal 99.9%), "
                                 f"max |ORT - torch| {p['max_abs_diff']:.2e}"})
    return checks


# -------------------------------------------------------------------------------------------------------- report
def render_markdown(report: dict) -> str:
    metric = report["data"]["metric"]
    presets = list(dict.fromkeys(r["preset"] for r in report["rows"]))
    keys = list(dict.fromkeys((r["attack"], r["threat_model"], r["eps_label"]) for r in report["rows"]))
    lines = [f"{metric.capitalize()} of {report['classifier']} on {report['data']['images']} images "
             f"({report['data']['source']})"
             + (": labels are the undefended classifier's own clean top-1, so this is agreement, not accuracy"
                if metric == "agreement" else ""), "",
             "| attack | threat model | ε | steps | images | " + " | ".join(presets) + " |",
             "|---|---|---|---|---|" + "---|" * len(presets)]
    notes = []
    for attack, threat, eps in keys:
        cells = {r["preset"]: r for r in report["rows"] if (r["attack"], r["threat_model"], r["eps_label"])
                 == (attack, threat, eps)}
        any_r = next(iter(cells.values()))
        vals = [f"{cells[p]['rate']:.1%}" if p in cells else "—" for p in presets]
        if any_r["note"]:
            notes.append(f"{attack}: {any_r['note']}")
        lines.append(f"| {attack} | {threat} | {eps if attack != 'clean' else '—'} | {any_r['steps'] or '—'} | "
                     f"{any_r['images']} | " + " | ".join(vals) + " |")
    if notes:
        lines += ["", "Note: " + "; ".join(dict.fromkeys(notes)) + "."]
    if report.get("precisions"):
        from ncis_deploy.eval.backends import render

        lines += [""] + render(report["precisions"], metric, report["data"]["images"])
    if report["parity"]:
        lines += ["", "| backend parity | images | max abs diff | top-1 agreement (goal ≥ 99.9%) |", "|---|---|---|---|"]
        for p in report["parity"]:
            lines.append(f"| {p['preset']}: {p['backend']} vs torch | {p['images']} | {p['max_abs_diff']:.2e} | "
                         f"{p['top1_agreement']:.2%} |")
    bad = [s for s in report["sanity"] if not s["ok"]]
    lines += ["", f"Sanity checks: {len(report['sanity']) - len(bad)} of {len(report['sanity'])} passed"
              + ("" if not bad else "; FAILED: " + "; ".join(f"{s['check']} ({s['detail']})" for s in bad))]
    lines.append(f"Threat models: purifier-blind = attack made on the classifier alone, then purified (the NCIS "
                 f"paper's setting); adaptive = gradients through purifier + classifier; transfer = surrogates only. "
                 f"Wall time {report.get('wall_s', 0):.0f} s.")
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    """Robust rate vs ε per preset and threat model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ncis_deploy.errors import missing_package

        raise missing_package("matplotlib", "plots") from None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    clean = {r["preset"]: r["rate"] for r in report["rows"] if r["attack"] == "clean"}
    series: dict[tuple, list] = {}
    for r in report["rows"]:
        if r["norm"] != "linf" or r["attack"] == "clean":
            continue
        series.setdefault((r["preset"], r["attack"], r["threat_model"]), []).append((r["eps"] * 255, r["rate"]))
    presets = list(dict.fromkeys(r["preset"] for r in report["rows"]))
    colors = {p: f"C{i}" for i, p in enumerate(presets)}
    styles = {"purifier-blind": "-", "transfer": ":", "adaptive": "--"}
    for (p, a, t), pts in series.items():
        # every curve starts at its preset's clean figure (ε = 0); adaptive rows may use fewer images (see table)
        pts = sorted(pts + ([(0.0, clean[p])] if p in clean else []))
        ax.plot([e for e, _ in pts], [v for _, v in pts], marker="o", color=colors[p], linestyle=styles.get(t, "-"),
                label=f"{p} · {a} ({t})")
    ax.set_xlabel("ε (×1/255, ℓ∞)")
    ax.set_ylabel(report["data"]["metric"])
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise UserError(f"cannot write --plot {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
