"""``ncis-deploy doctor``: which backends really work on this machine, and why not; the CPU's ISA and native precisions.

The lists packages print are not enough: ``onnxruntime.get_available_providers()`` names CUDA whenever the GPU
build is installed, even when its CUDA/cuDNN libraries are missing and every session silently runs on CPU. So for
each provider that claims to be available we open a live session on a tiny in-memory model and look at
``session.get_providers()``. Every probe is wrapped: the doctor is what people run on a broken machine, so it
must report a missing or broken package instead of raising.

``python -m ncis_deploy.doctor`` prints the table; ``--json`` prints :func:`report` as JSON.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import warnings
from typing import Any

from ncis_deploy.cpu import BF16_FLAGS, INT8_FLAGS, ISA_FLAGS, cpu_isa, cpu_model, native_precisions
from ncis_deploy.errors import missing_package

PROBED_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-qnn", "ort-nightly", "ort-nightly-gpu")


def _err(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
    except Exception:  # a broken dist-info
        return None


def _import(name: str) -> tuple[Any, str | None]:
    """(module, None) or (None, why): never raises, whatever the import does."""
    try:
        return importlib.import_module(name), None
    except BaseException as e:  # ImportError, OSError from a missing .so, even SystemExit from odd packages
        if isinstance(e, KeyboardInterrupt):
            raise
        return None, _err(e)


# --------------------------------------------------------------------------------------------------------- probes
def _torch() -> dict:
    mod, why = _import("torch")
    if mod is None:
        return {"installed": False, "error": why}
    out: dict[str, Any] = {"installed": True, "version": getattr(mod, "__version__", "?"),
                           "cuda_build": getattr(getattr(mod, "version", None), "cuda", None),
                           "cuda_available": False, "gpus": []}
    try:
        out["cuda_available"] = bool(mod.cuda.is_available())
        if out["cuda_available"]:
            out["gpus"] = [mod.cuda.get_device_name(i) for i in range(mod.cuda.device_count())]
    except Exception as e:
        out["error"] = _err(e)
    return out


def _tiny_onnx() -> bytes:
    """y = x + 1 on a [1, 4] float tensor: small enough to build an engine for in a second."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1, 4], [1.0] * 4)
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "doctor_probe", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    return model.SerializeToString()


def _probe_provider(model: bytes, provider: str) -> dict:
    """Open a session asking for ``provider`` only, run it once, and say whether ``provider`` is really in use."""
    import numpy as np

    try:
        from ncis_deploy.runners.onnxruntime import open_session

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sess = open_session(model, [provider])  # that provider alone: anything else it reports is a fallback
        active = sess.get_providers()
        if provider not in active:
            return {"live": False, "detail": f"session fell back to {', '.join(active)}"}
        y = sess.run(None, {"x": np.zeros((1, 4), np.float32)})[0]
        if not np.allclose(y, 1.0):
            return {"live": False, "detail": f"wrong result from a live session: {y.ravel().tolist()}"}
        return {"live": True, "detail": "live session ran"}
    except Exception as e:
        return {"live": False, "detail": _err(e)}


def _onnxruntime() -> dict:
    dists = {d: v for d in ORT_DISTRIBUTIONS if (v := _dist_version(d)) is not None}
    out: dict[str, Any] = {"distributions": dists, "conflict": len(dists) > 1}
    mod, why = _import("onnxruntime")
    if mod is None:
        return {**out, "installed": False, "error": why}
    out.update(installed=True, version=getattr(mod, "__version__", "?"), available_providers=[], providers={})
    try:
        out["available_providers"] = list(mod.get_available_providers())
    except Exception as e:
        out["error"] = _err(e)
        return out
    try:
        model = _tiny_onnx()
    except Exception as e:
        out["error"] = f"cannot build the probe model: {_err(e)}"
        return out
    for p in PROBED_PROVIDERS:
        if p in out["available_providers"]:
            out["providers"][p] = _probe_provider(model, p)
    return out


def _cpu() -> dict:
    isa = cpu_isa()
    return {"model": cpu_model(), "isa": isa, "native_precisions": native_precisions(isa), "cores": os.cpu_count()}


def _openvino() -> dict:
    """The openvino package, its devices with their OPTIMIZATION_CAPABILITIES, and a live CPU compile-and-run."""
    mod, why = _import("openvino")
    if mod is None:
        return {"installed": False, "error": why}
    out: dict[str, Any] = {"installed": True, "version": _dist_version("openvino") or getattr(mod, "__version__", "?"),
                           "devices": {}, "live": False}
    try:
        core = mod.Core()
        for dev in core.available_devices:
            try:
                caps = [str(c) for c in core.get_property(dev, "OPTIMIZATION_CAPABILITIES")]
            except Exception as e:
                caps = [f"? ({_err(e)})"]
            out["devices"][dev] = caps
        import numpy as np

        compiled = core.compile_model(core.read_model(_tiny_onnx()), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        y = compiled.create_infer_request().infer({0: np.zeros((1, 4), np.float32)})[compiled.output(0)]
        out["live"] = bool(np.allclose(y, 1.0))
        out["detail"] = "live CPU compile ran" if out["live"] else f"wrong result: {np.ravel(y).tolist()}"
    except Exception as e:
        out["detail"] = _err(e)
    return out


def _tensorrt() -> dict:
    mod, why = _import("tensorrt")
    if mod is None:
        return {"installed": False, "error": why}
    return {"installed": True, "version": getattr(mod, "__version__", "?")}


def _cuda_python() -> dict:
    version = _dist_version("cuda-python") or _dist_version("cuda-bindings")
    mod, why = _import("cuda.bindings.runtime")
    if mod is None:
        mod, _ = _import("cuda.cudart")  # cuda-python < 12.6
        if mod is None:
            return {"installed": False, "version": version, "error": why}
    out: dict[str, Any] = {"installed": True, "version": version, "device_count": 0}
    try:
        err, count = mod.cudaGetDeviceCount()
        if int(err) != 0:
            out["error"] = f"cudaGetDeviceCount: {getattr(err, 'name', err)}"
        else:
            out["device_count"] = int(count)
    except Exception as e:
        out["error"] = _err(e)
    return out


# ------------------------------------------------------------------------------------------------------- verdicts
def _backends(r: dict) -> dict:
    t, o, trt, cp = r["torch"], r["onnxruntime"], r["tensorrt"], r["cuda_python"]
    out = {}
    if not t.get("installed"):
        out["torch"] = {"usable": False, "reason": f"torch does not import ({t.get('error')})"}
    elif t.get("cuda_available"):
        out["torch"] = {"usable": True, "reason": f"cpu and cuda ({', '.join(t['gpus'])})"}
    else:
        out["torch"] = {"usable": True, "reason": "cpu only: this torch sees no CUDA GPU"
                        + (" (CPU build)" if not t.get("cuda_build") else "")}

    if not o.get("installed"):
        out["onnxruntime"] = {"usable": False, "reason": f"onnxruntime does not import ({o.get('error')})"}
    else:
        live = [p for p, v in o.get("providers", {}).items() if v["live"]]
        dead = [f"{p}: {v['detail']}" for p, v in o.get("providers", {}).items() if not v["live"]]
        if not live:
            out["onnxruntime"] = {"usable": False,
                                  "reason": "no provider opens a live session" + (f" ({o['error']})" if o.get("error")
                                                                                  else "")}
        else:
            reason = "live providers: " + ", ".join(p.replace("ExecutionProvider", "") for p in live)
            if dead:
                reason += "; listed but not live: " + "; ".join(dead)
            if o.get("conflict"):
                reason += f"; WARNING: {' and '.join(o['distributions'])} are all installed and overwrite each " \
                          "other's files: uninstall all of them, then install exactly one"
            out["onnxruntime"] = {"usable": True, "reason": reason}

    if not trt.get("installed"):
        out["tensorrt"] = {"usable": False, "reason": str(missing_package("tensorrt", "trt"))}
    elif not cp.get("installed"):
        out["tensorrt"] = {"usable": False, "reason": "cuda-python is not installed (the TensorRT runner uses it for "
                                                      "GPU memory): pip install 'ncis-deploy[trt]'"}
    elif not cp.get("device_count"):
        out["tensorrt"] = {"usable": False, "reason": f"no CUDA device ({cp.get('error') or '0 devices'})"}
    else:
        out["tensorrt"] = {"usable": True, "reason": f"TensorRT {trt['version']}, {cp['device_count']} CUDA device(s)"}

    ov, cpu = r.get("openvino", {}), r.get("cpu", {})
    if not ov.get("installed"):
        out["openvino"] = {"usable": False, "reason": str(missing_package("openvino", "openvino"))}
    elif not ov.get("live"):
        out["openvino"] = {"usable": False, "reason": f"no live CPU model ({ov.get('detail', '?')})"}
    else:
        native = cpu.get("native_precisions", ["f32"])
        # measured on an AVX2-only EPYC: int8 (--int8-form openvino) 1.2x OpenVINO f32, fast/accurate slower than f32
        int8 = ("int8 (Q/DQ artifact)" if "int8" in native else
                "int8 (Q/DQ artifact; no VNNI/AMX: the slow path, faster than f32 only with --int8-form openvino, "
                "7-bit weights only)")
        runs = ["f32"] + (["bf16"] if "bf16" in native else []) + [int8]
        out["openvino"] = {"usable": True, "reason": f"OpenVINO {ov.get('version')} on CPU: {', '.join(runs)}; auto = "
                                                     f"{'bf16' if 'bf16' in native else 'f32'}"}
    return out


def report() -> dict:
    """Everything the doctor knows, as plain JSON-able data. Never raises."""
    r: dict[str, Any] = {"python": {"version": platform.python_version(), "executable": sys.executable,
                                    "platform": platform.platform()}}
    for key, fn in (("cpu", _cpu), ("torch", _torch), ("onnx", lambda: _simple("onnx")), ("onnxruntime", _onnxruntime),
                    ("tensorrt", _tensorrt), ("cuda_python", _cuda_python), ("openvino", _openvino), ("serve", _serve)):
        try:
            r[key] = fn()
        except Exception as e:  # a bug in a probe must not hide the other sections
            r[key] = {"installed": False, "error": f"probe failed: {_err(e)}"}
    try:
        r["backends"] = _backends(r)
    except Exception as e:
        r["backends"] = {b: {"usable": False, "reason": f"doctor bug: {_err(e)}"}
                         for b in ("torch", "onnxruntime", "tensorrt", "openvino")}
    return r


def _serve() -> dict:
    """Can `ncis-deploy serve` start here: pytriton importable, a numpy it works with, a shared libpython."""
    from ncis_deploy.errors import UserError
    from ncis_deploy.serve import python_library_env, require_pytriton

    try:
        version = require_pytriton()
        python_library_env()
    except UserError as e:
        installed = "not installed" not in str(e) and "needs nvidia-pytriton" not in str(e)
        return {"installed": installed, "usable": False, "error": str(e)}
    return {"installed": True, "version": version, "usable": True}


def _simple(name: str) -> dict:
    mod, why = _import(name)
    if mod is None:
        return {"installed": False, "error": why}
    return {"installed": True, "version": getattr(mod, "__version__", "?")}


# -------------------------------------------------------------------------------------------------------- render
def render(r: dict) -> str:
    """A human table of :func:`report`'s result."""
    rows: list[tuple[str, str]] = [("python", f"{r['python']['version']} ({r['python']['executable']})")]
    cpu = r.get("cpu", {})
    if cpu.get("model"):
        rows.append(("cpu", f"{cpu['model']}, {cpu.get('cores', '?')} cores"))
        rows.append(("  ISA", ", ".join(cpu.get("isa", [])) or "none of " + ", ".join(ISA_FLAGS)))
        rows.append(("  native precisions", ", ".join(cpu.get("native_precisions", ["f32"]))
                     + f"   (bf16: {' or '.join(BF16_FLAGS)}; int8 fast path: {' or '.join(INT8_FLAGS)})"))

    def pkg(key: str, label: str, extra: str = "") -> None:
        d = r.get(key, {})
        if d.get("installed"):
            rows.append((label, f"{d.get('version') or '?'}{extra}"))
        else:
            rows.append((label, f"not installed / not importable ({d.get('error', '?')})"))

    t = r.get("torch", {})
    pkg("torch", "torch", f"   CUDA: {'yes — ' + ', '.join(t.get('gpus', [])) if t.get('cuda_available') else 'no'}")
    pkg("onnx", "onnx")
    o = r.get("onnxruntime", {})
    dists = ", ".join(f"{k} {v}" for k, v in o.get("distributions", {}).items()) or "no distribution found"
    pkg("onnxruntime", "onnxruntime", f"   ({dists})")
    if o.get("installed"):
        rows.append(("  available", ", ".join(o.get("available_providers", [])) or "none"))
        for p, v in o.get("providers", {}).items():
            rows.append((f"  {p}", ("live" if v["live"] else "NOT live") + f" — {v['detail']}"))
        if o.get("conflict"):
            rows.append(("  WARNING", f"several onnxruntime builds installed ({dists}); keep exactly one"))
    pkg("tensorrt", "tensorrt")
    c = r.get("cuda_python", {})
    pkg("cuda_python", "cuda-python", f"   CUDA devices: {c.get('device_count', 0)}"
        + (f" ({c['error']})" if c.get("error") and c.get("installed") else ""))

    ov = r.get("openvino", {})
    pkg("openvino", "openvino")
    for dev, caps in ov.get("devices", {}).items():
        rows.append((f"  {dev}", "capabilities: " + ", ".join(caps)))
    if ov.get("installed") and not ov.get("live"):
        rows.append(("  CPU compile", f"NOT live — {ov.get('detail', '?')}"))

    sv = r.get("serve", {})
    rows.append(("nvidia-pytriton", f"{sv['version']}   (`serve` usable)" if sv.get("usable")
                 else f"`serve` NOT usable: {sv.get('error', '?')}"))

    lines = ["ncis-deploy doctor", ""]
    width = max(len(k) for k, _ in rows) + 2
    lines += [f"  {k.ljust(width)}{v}" for k, v in rows]
    lines += ["", "backends"]
    for name, v in r.get("backends", {}).items():
        lines.append(f"  {name.ljust(13)}{'usable' if v['usable'] else 'NOT usable':12}{v['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import json

    argv = sys.argv[1:] if argv is None else argv
    r = report()
    print(json.dumps(r, indent=2) if "--json" in argv else render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
