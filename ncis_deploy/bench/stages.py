"""``--stages``: the purifier cut into its stages, each timed on its own.

The cut follows the export: consecutive GS stages are one stage (the export fuses them into one pair of matrix
products), and every BSN pass is its own stage (a pass includes its clamp when the config clamps). Each stage runs
on the real output of the stage before it (computed once per batch), so the inputs are what the purifier sees.
Stages are timed one after the other, each with its own warm-up and loop, not alternated: on a small CPU an
onnxruntime session's worker threads keep spinning briefly after a run and would steal the cores of the next stage.

* torch: the purifier's own modules (``purifier.gs[i]``, ``purifier.bsn``), on its device; on CUDA every stage is
  followed by a synchronize and timed with the host clock.
* onnxruntime: one ONNX graph per stage, built by :func:`ncis_deploy.exporters.onnx.build_onnx` from a sub-config
  with the same weights, run with the same providers (on a GPU provider through numpy I/O, so transfers count).
* tensorrt: not cut (one engine per stage would be a separate build); trtexec's ``--dumpProfile`` gives per-layer
  times for an engine.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

perf = time.perf_counter


def stage_plan(config: dict) -> list[dict]:
    """[{"name", "kind": "gs"|"bsn", "stages": [gs configs] | "pass": k, "last": bool}] in execution order."""
    plan: list[dict] = []
    n_pass = sum(s["iterations"] for s in config["stages"] if s["type"] == "bsn")
    k = 0
    for i, st in enumerate(config["stages"]):
        if st["type"] == "gs":
            if plan and plan[-1]["kind"] == "gs":
                plan[-1]["stages"].append((i, st))
            else:
                plan.append({"kind": "gs", "stages": [(i, st)]})
        else:
            for _ in range(st["iterations"]):
                k += 1
                plan.append({"kind": "bsn", "pass": k, "name": f"BSN pass {k}/{n_pass}"})
    for p in plan:
        if p["kind"] == "gs":
            p["name"] = "GS " + " + ".join(f"k{s['kernel_size']} σ{s['sigma']:g} ×{s['iterations']}"
                                           for _, s in p["stages"])
    if plan:
        plan[-1]["last"] = True
    return plan


def _sub_config(config: dict, step: dict) -> dict:
    clamp = config["clamp"] and (step["kind"] == "bsn" or step.get("last", False))
    if step["kind"] == "gs":
        return {"stages": [dict(s) for _, s in step["stages"]], "clamp": clamp}
    return {"stages": [{"type": "bsn", "iterations": 1}], "bsn": dict(config["bsn"]), "clamp": clamp}


class StageTimer:
    """Per-stage callables for one backend; ``prepare(x)`` then ``run_once()`` → seconds per stage."""

    def __init__(self, backend: str, device: str, purifier, *, height: int, width: int, tmpdir: Path,
                 providers=None, threads: int | None = None):
        self.backend, self.device, self.purifier = backend, device, purifier
        self.plan = stage_plan(purifier.config)
        self.fns: list = []
        self.inputs: list = []
        self._runners: list = []
        if backend == "torch":
            self.how = ("torch modules of the purifier" +
                        (", synchronize after each stage, host clock" if device != "cpu" else ", host clock"))
            self.fns = [self._torch_fn(step) for step in self.plan]
        elif backend == "onnxruntime":
            self.how = "one ONNX graph per stage (build_onnx on a sub-config, same weights), host clock around run()"
            self.fns = [self._ort_fn(step, j, height, width, tmpdir, providers, threads)
                        for j, step in enumerate(self.plan)]
        else:
            raise ValueError(f"stages are not timed for {backend}")

    def _torch_fn(self, step: dict):
        import torch

        p, clamp = self.purifier, self.purifier.config["clamp"]
        if step["kind"] == "gs":
            # purifier.gs holds one module per GS stage, in config order
            gs_stages = [i for i, s in enumerate(p.config["stages"]) if s["type"] == "gs"]
            gs_index = {ci: gi for gi, ci in enumerate(gs_stages)}
            mods = [p.gs[gs_index[i]] for i, _ in step["stages"]]
            final = clamp and step.get("last", False)

            def fn(x):
                for m in mods:
                    x = m(x)
                return x.clamp(0.0, 1.0) if final else x
        else:
            def fn(x):
                y = p.bsn(x)
                return y.clamp(0.0, 1.0) if clamp else y

        sync = torch.cuda.synchronize if self.device != "cpu" else (lambda: None)

        def timed(x):
            with torch.inference_mode():
                t0 = perf()
                y = fn(x)
                sync()
                return y, perf() - t0

        return timed

    def _ort_fn(self, step: dict, j: int, height: int, width: int, tmpdir: Path, providers, threads):
        import onnx

        from ncis_deploy.exporters.onnx import build_onnx
        from ncis_deploy.model.purifier import Purifier
        from ncis_deploy.runners import make_runner

        sub = Purifier(_sub_config(self.purifier.config, step))
        if sub.bsn is not None:
            sub.bsn.load_state_dict(self.purifier.bsn.state_dict())
        sub.eval()
        path = Path(tmpdir) / f"stage{j}.onnx"
        onnx.save(build_onnx(sub, height, width), str(path))
        runner = make_runner("onnxruntime", path, providers=providers, threads=threads).activate()
        self._runners.append(runner)

        def timed(x):
            t0 = perf()
            y = runner.infer_impl(x)
            return y, perf() - t0

        return timed

    def prepare(self, x: np.ndarray) -> None:
        """Run the chain once to get every stage's real input."""
        if self.backend == "torch":
            import torch

            cur = torch.from_numpy(x).to(self.device)
        else:
            cur = x
        self.inputs = []
        for fn in self.fns:
            self.inputs.append(cur)
            cur, _ = fn(cur)

    def run_stage(self, j: int) -> float:
        """Seconds for stage ``j`` on its prepared input."""
        return self.fns[j](self.inputs[j])[1]

    def close(self) -> None:
        for r in self._runners:
            r.deactivate()
        self._runners, self.inputs = [], []
