"""This CPU: its model, the ISA extensions that decide FP32/BF16/INT8 speed, and what follows from them.

A leaf module (it imports nothing of the package): the runners, the exporters and ``doctor`` all ask it, and
``doctor`` reports it.
"""

from __future__ import annotations

import os
import platform

from ncis_deploy.errors import UserError

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native BF16 dot products (AVX512-BF16, AMX)
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # INT8 dot products in one instruction (VNNI, AMX)
# x86 u8 × s8 kernels without INT8_FLAGS (vpmaddubsw) add two products in int16: 255·63·2 fits, 255·127·2 does not
SAFE_INT8_WEIGHT = 63


def _cpuinfo(key: str) -> str | None:
    """The value of the first /proc/cpuinfo line starting with ``key`` (None off Linux or without one)."""
    try:
        for ln in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if ln.startswith(key):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), for benchmark records."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_isa() -> list[str]:
    """The vector/matrix ISA extensions of this CPU that decide FP32/BF16/INT8 speed (from /proc/cpuinfo)."""
    have = set((_cpuinfo("flags") or "").split())
    return [f for f in ISA_FLAGS if f in have]


def native_precisions(isa: list[str] | None = None) -> list[str]:
    """The precisions this CPU computes natively: f32 always, bf16 with BF16_FLAGS, int8 (the fast path) with
    INT8_FLAGS. Without them a runtime emulates bf16 (or falls back to f32) and runs int8 on slower multi-instruction
    kernels. ``isa`` defaults to :func:`cpu_isa`."""
    isa = cpu_isa() if isa is None else isa
    out = ["f32"]
    if any(f in isa for f in BF16_FLAGS):
        out.append("bf16")
    if any(f in isa for f in INT8_FLAGS):
        out.append("int8")
    return out


def cpu_record() -> dict:
    """What every speed figure recorded on a CPU carries: model, ISA flags, cores, torch threads."""
    import torch

    return {"cpu": cpu_model(), "isa": cpu_isa(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}


def widest_int8_weight(model) -> int:
    """The largest |value| among the int8 convolution weights of a Q/DQ ``onnx.ModelProto`` (0 without any)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    widest = 0
    for n in model.graph.node:
        src = dq.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        w = inits.get(src.input[0]) if src is not None else None
        if w is not None and w.data_type == TensorProto.INT8:
            widest = max(widest, int(abs(numpy_helper.to_array(w).astype(int)).max(initial=0)))
    return widest


def check_int8_weights(model, runtime: str, where: str) -> None:
    """Refuse a Q/DQ model whose int8 convolution weights leave [-63, 63] on a CPU without VNNI/AMX, whose u8 × s8
    kernels would saturate their int16 pair sums (``export --int8-weight-bits 8`` writes such weights), as a
    UserError naming the fix. ``model``: an ``onnx.ModelProto``, or a function returning one (or None: nothing to
    check), called only on such a CPU."""
    if "int8" in native_precisions():
        return
    model = model() if callable(model) else model
    if model is None or widest_int8_weight(model) <= SAFE_INT8_WEIGHT:
        return
    raise UserError(f"{where} has 8-bit int8 weights, which {runtime}'s int8 kernels on this CPU ({cpu_model()}, no "
                    f"{' / '.join(INT8_FLAGS)}) add in saturating int16 pairs; re-export it with --int8-weight-bits 7 "
                    "(exact on every CPU), or run it on TensorRT or a CPU with VNNI/AMX")
