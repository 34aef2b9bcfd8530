"""The JSON schema of a ``ncis-deploy bench`` report, and a small validator for the subset of JSON Schema it uses.

The schema is the documentation of the report: every field carries a ``description``. ``ncis-deploy bench
--schema`` prints it. ``format_version`` changes whenever a field is removed or changes meaning; added fields keep
the version (readers ignore what they do not know; the validator here is strict so that the writer stays honest).

Supported keywords: ``type`` (a name or a list of names), ``properties``, ``required``, ``additionalProperties``
(``false`` or a schema), ``items``, ``enum``, ``const``, ``minimum``, ``description`` (ignored). No ``$ref``: the
repeated pieces are Python values reused below.
"""

from __future__ import annotations

import math
from typing import Any

FORMAT = "ncis-deploy/bench"
FORMAT_VERSION = 1

NUM = {"type": "number"}
NUM_OR_NULL = {"type": ["number", "null"]}
STR = {"type": "string"}


def _obj(props: dict, required: list | None = None, description: str = "", extra: bool = False) -> dict:
    out = {"type": "object", "properties": props, "required": list(props) if required is None else required,
           "additionalProperties": extra}
    if description:
        out["description"] = description
    return out


STATS = _obj({
    "n": {"type": "integer", "minimum": 1, "description": "number of samples"},
    "min": NUM, "mean": NUM, "median": NUM, "p90": NUM, "p95": NUM, "p99": NUM, "max": NUM,
    "std": {"type": "number", "minimum": 0, "description": "population standard deviation"},
    "cv_pct": {"type": "number", "minimum": 0, "description": "coefficient of variation, std / mean, in %"},
    "drift_pct": {"type": ["number", "null"], "description": "median of the 2nd half vs the 1st half, in %"},
}, description="statistics of one timed quantity, in milliseconds (see settings.statistics for the conventions)")

STATS_OR_NULL = dict(STATS, type=["object", "null"])

MEMORY = _obj({
    "rss_peak_mib": {"type": ["number", "null"], "description": "peak resident set size of this process (MiB)"},
    "rss_scope": {"type": "string", "description": "what the RSS peak covers: 'case' (reset before this case), "
                                                   "'group' (all backends of an interleaved run) or 'process' "
                                                   "(lifetime peak: resetting is not possible here)"},
    "cuda_max_allocated_mib": {"type": ["number", "null"],
                               "description": "torch.cuda.max_memory_allocated during the case (torch on CUDA only)"},
    "gpu_used_delta_mib": {"type": ["number", "null"],
                           "description": "device memory in use after the case minus before activation (non-torch "
                                          "GPU backends; not a peak)"},
})

STAGE_ROW = _obj({
    "name": STR,
    "kind": {"enum": ["gs", "bsn"]},
    "latency_ms": STATS,
    "share_pct": {"type": "number", "minimum": 0, "description": "this stage's median over the sum of stage medians"},
})

STAGES = _obj({
    "iterations": {"type": "integer", "minimum": 1},
    "rows": {"type": "array", "items": STAGE_ROW},
    "sum_median_ms": NUM,
    "whole_median_ms": {"type": "number", "description": "median latency of the whole purifier in the same case"},
    "how": {"type": "string", "description": "how the stages were run (modules / per-stage ONNX graphs)"},
}, description="--stages: GS (consecutive GS stages fused, as in the export) and each BSN pass timed separately")

PRECISION = {"enum": ["fp32", "bf16", "int8"], "description": "what the target computes in: fp32, bf16 (OpenVINO on "
                                                             "a CPU with native BF16) or int8 (the export's Q/DQ "
                                                             "int8 ONNX)"}

RESULT_FIELDS = {
    "backend": {"enum": ["torch", "onnxruntime", "tensorrt", "openvino"]},
    "device": {"type": "string", "description": "cpu, cuda, or the onnxruntime provider (cuda / tensorrt)"},
    "precision": PRECISION,
    "label": {"type": "string", "description": "backend:device, plus :precision when not fp32, as --backend and --vs "
                                               "accept it"},
    "providers": {"type": ["array", "null"], "items": STR, "description": "onnxruntime: providers of the live session"},
    "runtime": {"type": ["object", "null"],
                "description": "what the runtime reports it ran (OpenVINO: requested and compiled precision, runtime "
                               "precision of its compute layers, CPU and ISA); null where it reports nothing"},
    "batch": {"type": "integer", "minimum": 1},
    "height": {"type": "integer", "minimum": 1},
    "width": {"type": "integer", "minimum": 1},
    "interleaved": {"type": "boolean", "description": "measured round-robin with the other backends (--vs)"},
    "warmup_iterations": {"type": "integer", "minimum": 1, "description": "including the first, input-checked call"},
    "warmup_ms": {"type": "number", "minimum": 0, "description": "host time the warm-up took"},
    "iterations": {"type": "integer", "minimum": 1, "description": "timed iterations (queries of `batch` images)"},
    "walltime_s": {"type": "number", "minimum": 0, "description": "sum of the timed host latencies"},
    "throughput_ips": {"type": "number", "minimum": 0,
                       "description": "images per second: batch × iterations / walltime"},
    "latency_ms": dict(STATS, description="per query: host time on CPU; H2D + compute + D2H on GPU "
                                          "(trtexec's Latency)"),
    "host_ms": dict(STATS, description="host wall time per query (perf_counter around the whole query)"),
    "h2d_ms": STATS_OR_NULL, "compute_ms": STATS_OR_NULL, "d2h_ms": STATS_OR_NULL,
    "timer": {"type": "string", "description": "which clock produced the GPU split (cuda events or host clock)"},
    "cuda_graph": {"type": "boolean"},
    "data_transfers": {"type": "boolean", "description": "false: --no-data-transfers (GPU: input stays on the device)"},
    "memory": MEMORY,
    "stages": {"type": ["object", "null"], "properties": STAGES["properties"], "required": STAGES["required"],
               "additionalProperties": False},
    "warnings": {"type": "array", "items": STR},
}
# precision and runtime: absent in reports written before them
RESULT = _obj(RESULT_FIELDS, required=[k for k in RESULT_FIELDS if k not in ("precision", "runtime")])

QUALITY_ROW = _obj({"photo": STR, "max_abs": NUM, "mean_abs": NUM,
                    "psnr_db": {"type": ["number", "null"], "description": "null: identical to the reference"}})

QUALITY = _obj({
    "label": {"type": "string", "description": "the low-precision target"},
    "precision": PRECISION,
    "reference": {"type": "string", "description": "what it is compared with: onnxruntime:cpu, the FP32 ONNX"},
    "photos": {"type": "string", "description": "the bundled photo split (holdout: never trained or calibrated on)"},
    "images": {"type": "integer", "minimum": 1},
    "height": {"type": "integer", "minimum": 1}, "width": {"type": "integer", "minimum": 1},
    "max_abs": {"type": "number", "minimum": 0, "description": "max |target - reference| over every pixel"},
    "mean_abs": {"type": "number", "minimum": 0},
    "psnr_db": {"type": ["number", "null"], "description": "PSNR of the target's output against the reference's, "
                                                           "all photos together (images in [0, 1]); null: identical"},
    "per_photo": {"type": "array", "items": QUALITY_ROW},
    "guard_psnr_db": {"type": "number", "description": "the PSNR below which the result is flagged (a warning)"},
    "ok": {"type": "boolean", "description": "psnr_db >= guard_psnr_db (or identical)"},
}, description="quality guard of one non-FP32 target: its purified hold-out photos (centre crops at the bench's "
               "H×W) against ORT FP32's, errors through ncis_deploy.runners.compare")

COMPARISON = _obj({
    "backend": STR, "vs": STR,
    "batch": {"type": "integer", "minimum": 1},
    "ratio": {"type": "number", "minimum": 0,
              "description": "throughput of `backend` / throughput of `vs` (= median latency of vs / of backend); "
                             "> 1: backend is faster"},
    "paired": _obj({"median": NUM, "min": NUM, "max": NUM},
                   description="per-round ratios latency(vs) / latency(backend) of the interleaved rounds"),
    "rounds": {"type": "integer", "minimum": 1},
})

CONTEXT = _obj({
    "kind": {"const": "diffpure-stand-in"},
    "stand_in": {"const": True, "description": "always true: not DiffPure, a UNet of its class with random weights"},
    "label": STR,
    "architecture": {"type": "object", "description": "the UNet configuration (ADM / guided-diffusion style)"},
    "parameters": {"type": "integer", "minimum": 1},
    "image_size": {"type": "integer", "minimum": 1},
    "batch": {"const": 1},
    "steps": {"type": "integer", "minimum": 1, "description": "network evaluations per purified image (multiplier)"},
    "timed_steps": {"type": "integer", "minimum": 1},
    "warmup_steps": {"type": "integer", "minimum": 1},
    "backend": {"const": "torch"},
    "device": STR,
    "precision": {"enum": ["float32", "float16"]},
    "step_ms": dict(STATS, description="one UNet evaluation, measured"),
    "per_image_ms": dict(STATS, description="step_ms × steps: extrapolated, not measured end to end"),
    "throughput_ips": {"type": "number", "minimum": 0},
    "memory": MEMORY,
    "relative_to_ncis": {"type": "array", "items": _obj({
        "label": STR, "batch": {"type": "integer", "minimum": 1},
        "ncis_per_image_ms": NUM,
        "ratio": {"type": "number", "description": "stand-in per-image median / NCIS per-image median"},
    })},
})

SCHEMA: dict[str, Any] = _obj({
    "format": {"const": FORMAT},
    "format_version": {"const": FORMAT_VERSION},
    "created": {"type": "string", "description": "UTC time, ISO 8601"},
    "command": {"type": ["string", "null"], "description": "the command line that produced the report"},
    "machine": _obj({
        "cpu": STR, "cores": {"type": ["integer", "null"]},
        "isa": {"type": "array", "items": STR, "description": "the CPU's vector/matrix ISA flags (avx512f, "
                                                              "avx512_vnni, amx_tile, ...): CPU speed depends on them"},
        "native_precisions": {"type": "array", "items": STR,
                              "description": "precisions this CPU computes natively (f32; bf16, int8 from its ISA)"},
        "load_average": _obj({"before": {"type": ["array", "null"], "items": NUM},
                              "after": {"type": ["array", "null"], "items": NUM}},
                             required=["before"],
                             description="1/5/15-minute load averages before and after the run (a shared machine "
                                         "is noisy: ratios measured interleaved are the figures to quote)"),
        "gpus": {"type": "array", "items": STR},
        "platform": STR, "python": STR,
        "versions": {"type": "object", "description": "package versions (torch, onnxruntime, onnx, numpy, ...)"},
    }, required=["cpu", "cores", "gpus", "platform", "python", "versions"]),  # isa and later: absent before them
    "settings": _obj({
        "warmup_ms": {"type": "number", "minimum": 0},
        "duration_s": {"type": ["number", "null"], "description": "time-based runs: seconds per case (null with "
                                                                   "--iterations)"},
        "iterations": {"type": ["integer", "null"], "description": "--iterations: exact timed count"},
        "min_iterations": {"type": "integer", "minimum": 1},
        "threads": {"type": ["integer", "null"], "description": "--threads (null: each library's default)"},
        "torch_threads": {"type": "integer"},
        "cuda_graph": {"type": "boolean"}, "data_transfers": {"type": "boolean"}, "stages": {"type": "boolean"},
        "vs": {"type": ["string", "null"]},
        "vs_default": {"type": "boolean", "description": "vs is onnxruntime:cpu because the backend list was "
                                                         "defaulted (not --vs)"},
        "batches": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "height": {"type": "integer", "minimum": 1}, "width": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer"},
        "statistics": {"type": "object", "description": "percentile / median / variation conventions"},
    }, required=["warmup_ms", "duration_s", "iterations", "min_iterations", "threads", "torch_threads", "cuda_graph",
                 "data_transfers", "stages", "vs", "batches", "height", "width", "seed", "statistics"]),
    "purifier": _obj({
        "source": STR,
        "export_dir": {"type": ["string", "null"]},
        "exported_now": {"type": "boolean", "description": "the default export was missing and was made by this run"},
        "config": {"type": "object"},
        "weights_sha256": {"type": ["string", "null"]},
        "fixed_hw": {"type": "boolean"},
        "artifacts": {"type": "object", "description": "backend -> {file, sha256} of what it ran"},
    }),
    "results": {"type": "array", "items": RESULT},
    "comparisons": {"type": "array", "items": COMPARISON},
    "quality": {"type": "array", "items": QUALITY,
                "description": "one quality guard per non-FP32 target (absent in reports written before them)"},
    "context": {"type": "array", "items": CONTEXT},
    "skipped": {"type": "array", "items": _obj({"backend": STR, "batch": {"type": ["integer", "null"]},
                                                "reason": STR})},
    "warnings": {"type": "array", "items": STR},
    "notes": {"type": "array", "items": STR},
}, required=["format", "format_version", "created", "command", "machine", "settings", "purifier", "results",
             "comparisons", "context", "skipped", "warnings", "notes"],
    description=f"{FORMAT} report, format_version {FORMAT_VERSION}")


class SchemaError(ValueError):
    """The report does not match the schema (a bug in whoever wrote it)."""


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "null": lambda v: v is None,
}


def errors(value: Any, schema: dict = SCHEMA, path: str = "$") -> list[str]:
    """Every mismatch between ``value`` and ``schema``, as 'path: problem' lines (empty when valid)."""
    out: list[str] = []
    if "const" in schema and value != schema["const"]:
        return [f"{path}: must be {schema['const']!r}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: must be one of {schema['enum']}, got {value!r}"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            return [f"{path}: must be {' or '.join(types)}, got {type(value).__name__} {value!r:.60}"]
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        out.append(f"{path}: must be >= {schema['minimum']}, got {value}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                out.append(f"{path}: missing required key '{key}'")
        for key, v in value.items():
            if key in props:
                out += errors(v, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False and "properties" in schema:
                out.append(f"{path}: unexpected key '{key}'")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += errors(v, schema["additionalProperties"], f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += errors(v, schema["items"], f"{path}[{i}]")
    return out


def validate(report: Any, schema: dict = SCHEMA) -> None:
    """Raise :class:`SchemaError` listing the first problems if ``report`` does not match."""
    errs = errors(report, schema)
    if errs:
        more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
        raise SchemaError("; ".join(errs[:5]) + more)
