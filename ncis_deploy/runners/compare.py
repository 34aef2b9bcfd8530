"""Run the same cases through several runners and compare what they return: Polygraphy's Comparator in one call.

>>> from ncis_deploy.runners import make_runner
>>> from ncis_deploy.runners.compare import compare
>>> result = compare({"torch": make_runner("torch", purifier), "onnxruntime": make_runner("onnxruntime", data)},
...                  cases, tolerance=1e-4)
>>> result.pairs[0].max_abs, result.ok

The first runner is the reference and every other one is compared with it, case by case: the max and mean absolute
difference, computed in float64 (so the figure is the exact difference of the two outputs, whatever their dtype),
whether the case is within ``Tolerance.max_abs`` and, with ``top1``, how often the argmax over the last axis agrees
(for outputs that are logits). Every parity figure of the package (export, eval, the plugin graph, the live-tap BSN)
comes from here, so "max_abs" means the same thing in each report.

In place of a runner an entry may hold its recorded outputs, one array per case (Polygraphy's ``--load-outputs``):
eval compares with purified images it has already computed instead of computing them twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from ncis_deploy.errors import UserError
from ncis_deploy.runners.base import Runner


@dataclass(frozen=True)
class Tolerance:
    """When a comparison fails; ``None`` records the figure without judging it."""

    max_abs: float | None = None  # a case fails when its max |candidate - reference| is above this (or NaN)
    top1: float | None = None  # a pair fails when its top-1 agreement (a fraction) is below this


@dataclass
class CaseDiff:
    case: str
    images: int  # the batch size of the case
    max_abs: float
    mean_abs: float
    top1_agree: int | None = None  # images whose argmax agrees, when top-1 is measured
    ok: bool = True

    def row(self) -> dict:
        """The per-case entry of a parity report."""
        return {"case": self.case, "max_abs": self.max_abs, "mean_abs": self.mean_abs}


@dataclass
class PairResult:
    reference: str
    candidate: str
    tolerance: Tolerance
    cases: list[CaseDiff] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max(c.max_abs for c in self.cases)

    @property
    def images(self) -> int:
        return sum(c.images for c in self.cases)

    @property
    def top1_agreement(self) -> float | None:
        if any(c.top1_agree is None for c in self.cases):
            return None
        return sum(c.top1_agree for c in self.cases) / self.images

    @property
    def failures(self) -> list[CaseDiff]:
        return [c for c in self.cases if not c.ok]

    @property
    def ok(self) -> bool:
        top1 = self.tolerance.top1
        return not self.failures and (top1 is None or self.top1_agreement >= top1)

    def rows(self) -> list[dict]:
        return [c.row() for c in self.cases]


@dataclass
class Comparison:
    outputs: dict[str, list[np.ndarray]]  # runner name -> its output for each case, in case order
    pairs: list[PairResult]  # (reference, each other runner)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.pairs)


RunnerOrOutputs = "Runner | Sequence[np.ndarray]"


def compare(runners: "Mapping[str, RunnerOrOutputs] | Sequence[Runner]", cases: Iterable[tuple[str, np.ndarray]],
            tolerance: "Tolerance | float | None" = None, *, top1: bool = False) -> Comparison:
    """Run every ``(name, input)`` case through every runner and compare each runner with the first.

    ``runners``: ``{name: runner or recorded outputs}``, or a list of runners (named by ``Runner.name``). A runner
    that is not active is activated for its cases and deactivated after; an active one is left active.
    ``tolerance``: a :class:`Tolerance`, or a float meaning ``Tolerance(max_abs=...)``. ``top1``: also measure the
    argmax agreement over the last axis (implied by ``tolerance.top1``).
    """
    named = dict(runners) if isinstance(runners, Mapping) else _named(runners)
    if len(named) < 2:
        raise ValueError("compare needs a reference and at least one runner to compare with it")
    cases = list(cases)
    tol = tolerance if isinstance(tolerance, Tolerance) else Tolerance(max_abs=tolerance)
    top1 = top1 or tol.top1 is not None
    outputs = {name: _outputs(name, r, cases) for name, r in named.items()}
    (ref_name, ref), *others = outputs.items()
    pairs = []
    for name, got in others:
        pair = PairResult(ref_name, name, tol)
        for (case, x), a, b in zip(cases, ref, got):
            pair.cases.append(_diff(case, len(x), a, b, tol, top1, name, ref_name))
        pairs.append(pair)
    return Comparison(outputs, pairs)


def _named(runners: Sequence[Runner]) -> dict[str, Runner]:
    out: dict[str, Runner] = {}
    for r in runners:
        name, k = r.name, 2
        while name in out:
            name, k = f"{r.name}#{k}", k + 1
        out[name] = r
    return out


def _outputs(name: str, runner, cases) -> list[np.ndarray]:
    if not isinstance(runner, Runner):
        recorded = [np.asarray(y) for y in runner]
        if len(recorded) != len(cases):
            raise ValueError(f"{name}: {len(recorded)} recorded outputs for {len(cases)} cases")
        return recorded
    was_active = runner.is_active
    runner.activate()
    try:
        return [runner.infer(x) for _, x in cases]
    finally:
        if not was_active:
            runner.deactivate()


def _diff(case: str, images: int, ref: np.ndarray, got: np.ndarray, tol: Tolerance, top1: bool, name: str,
          ref_name: str) -> CaseDiff:
    if ref.shape != got.shape:
        raise UserError(f"{name} returned shape {list(got.shape)} on {case} where {ref_name} returned "
                        f"{list(ref.shape)}; the two do not compute the same function")
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    d = CaseDiff(case, images, float(err.max()), float(err.mean()))
    if top1:
        d.top1_agree = int((ref.argmax(-1) == got.argmax(-1)).sum())
    d.ok = tol.max_abs is None or d.max_abs <= tol.max_abs  # a NaN difference compares False: it fails
    return d
