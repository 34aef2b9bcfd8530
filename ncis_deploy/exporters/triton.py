"""``export --triton``: a Triton Inference Server model repository next to the other artifacts.

    triton/
      ncis_purifier/      config.pbtxt, 1/model.onnx    ONNX Runtime platform (CPU or GPU instances)
      ncis_purifier_trt/  config.pbtxt, 1/model.plan    TensorRT plan platform, only when an engine was built
      ncis_classifier/    config.pbtxt, 1/model.onnx    (x - mean) / std -> the user's classifier (--classifier)
      ncis_pipeline/      config.pbtxt, 1/              ensemble: purifier -> classifier (--classifier)

Configs are built as ``ModelConfig`` protobuf messages (tritonclient ships ``model_config_pb2``), written as text,
then read back and checked: the text must parse strictly into ``ModelConfig`` *and* agree with the model file it
describes (tensor names, dtypes, dims) and with the other models of the ensemble. The protobuf parse alone would
accept a config whose input is called ``inptu``; Triton would only refuse it at load time on the serving node.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import onnx

from ncis_deploy.errors import UserError

REPOSITORY = "triton"
PURIFIER, PURIFIER_TRT, CLASSIFIER, PIPELINE = "ncis_purifier", "ncis_purifier_trt", "ncis_classifier", "ncis_pipeline"
LOGITS = "logits"
CONFIG = "config.pbtxt"
HEADER = "# written by `ncis-deploy export --triton`; validated against tritonclient's ModelConfig and the model\n"
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
          "float64": "TYPE_FP64", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


class TritonConfigError(UserError):
    """A config.pbtxt that Triton would refuse (or that disagrees with its model); the message says where."""


def model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2 as pb
    except ImportError:
        raise UserError("--triton validates every config.pbtxt with tritonclient's ModelConfig, which is not "
                        "installed: pip install 'ncis-deploy[serve]'") from None
    return pb


# ------------------------------------------------------------------------------------------------ model I/O
def onnx_io(model: onnx.ModelProto) -> dict:
    """{"inputs"|"outputs": [(name, triton dtype, dims without the batch axis)]}; symbolic dims become -1."""
    inits = {i.name for i in model.graph.initializer}

    def one(vi):
        tt = vi.type.tensor_type
        np_name = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        return vi.name, _TYPES.get(np_name, np_name), dims

    return {"inputs": [one(v) for v in model.graph.input if v.name not in inits],
            "outputs": [one(v) for v in model.graph.output]}


def _batched(io: list, where: str) -> list:
    """Drop the leading batch axis (Triton adds it back from max_batch_size); it must be dynamic."""
    out = []
    for name, dtype, dims in io:
        if not dims or dims[0] != -1:
            raise UserError(f"{where}: tensor {name!r} has shape {dims}, but Triton's dynamic batching needs a "
                            "dynamic first (batch) dimension; re-export the model with a symbolic batch axis")
        out.append((name, dtype, dims[1:]))
    return out


def _tensors(io: list) -> list[dict]:
    return [{"name": n, "data_type": t, "dims": d} for n, t, d in io]


# ---------------------------------------------------------------------------------------------------- configs
def model_config(name: str, platform: str, inputs: list, outputs: list, max_batch_size: int, *,
                 instances: int = 1, kind: str = "KIND_AUTO", queue_delay_us: int = 100,
                 preferred_batch: int | None = None, steps: list[dict] | None = None) -> dict:
    """One model's config as the protobuf JSON mapping of ``inference.ModelConfig``."""
    cfg: dict = {"name": name, "platform": platform, "max_batch_size": max_batch_size,
                 "input": _tensors(inputs), "output": _tensors(outputs)}
    if platform == "ensemble":  # an ensemble has no instances or batcher of its own: its steps' models do
        cfg["ensemble_scheduling"] = {"step": steps}
        return cfg
    batcher: dict = {"max_queue_delay_microseconds": queue_delay_us}
    if preferred_batch and 1 < preferred_batch <= max_batch_size:
        batcher["preferred_batch_size"] = [preferred_batch]
    cfg["dynamic_batching"] = batcher
    cfg["instance_group"] = [{"count": instances, "kind": kind}]
    cfg["version_policy"] = {"latest": {"num_versions": 1}}
    return cfg


def config_text(cfg: dict) -> str:
    from google.protobuf import json_format, text_format

    msg = json_format.ParseDict(cfg, model_config_pb2().ModelConfig())
    return HEADER + text_format.MessageToString(msg)


def parse_config(text: str, where: str = CONFIG):
    """Strictly parse config.pbtxt text into ``ModelConfig`` (unknown fields and bad values are errors)."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_pb2().ModelConfig())
    except text_format.ParseError as e:
        raise TritonConfigError(f"{where} is not a valid Triton ModelConfig: {e}") from None


def check_config(cfg, model_io: dict | None, where: str) -> None:
    """Semantic checks Triton does at load time: names, dtypes and dims against the model file."""
    pb = model_config_pb2()
    if cfg.max_batch_size < 0:
        raise TritonConfigError(f"{where}: max_batch_size must be >= 0, got {cfg.max_batch_size}")
    for g in cfg.instance_group:
        if g.count < 1:
            raise TritonConfigError(f"{where}: instance_group count must be >= 1, got {g.count}")
    if model_io is None:
        return
    for side, declared in (("inputs", cfg.input), ("outputs", cfg.output)):
        want = {n: (t, list(d)) for n, t, d in model_io[side]}
        got = {t.name: (pb.DataType.Name(t.data_type), list(t.dims)) for t in declared}
        if set(got) != set(want):
            raise TritonConfigError(f"{where}: {side} {sorted(got)} do not match the model's {sorted(want)}")
        for n, (dtype, dims) in got.items():
            if (dtype, dims) != want[n]:
                raise TritonConfigError(f"{where}: {side[:-1]} {n!r} is {dtype} {dims} in the config but "
                                        f"{want[n][0]} {want[n][1]} in the model")


def check_ensemble(cfg, configs: dict, where: str) -> None:
    """Every step names a model of the repository and maps tensors that model really has, and the ensemble's
    own inputs/outputs are produced/consumed by its steps."""
    produced = {t.name for t in cfg.input}
    for step in cfg.ensemble_scheduling.step:
        if step.model_name not in configs:
            raise TritonConfigError(f"{where}: step model {step.model_name!r} is not in the repository")
        target = configs[step.model_name]
        inputs, outputs = {t.name for t in target.input}, {t.name for t in target.output}
        for model_tensor, ens_tensor in step.input_map.items():
            if model_tensor not in inputs:
                raise TritonConfigError(f"{where}: {step.model_name} has no input {model_tensor!r}")
            if ens_tensor not in produced:
                raise TritonConfigError(f"{where}: tensor {ens_tensor!r} is used before any step produces it")
        for model_tensor, ens_tensor in step.output_map.items():
            if model_tensor not in outputs:
                raise TritonConfigError(f"{where}: {step.model_name} has no output {model_tensor!r}")
            produced.add(ens_tensor)
    missing = [t.name for t in cfg.output if t.name not in produced]
    if missing:
        raise TritonConfigError(f"{where}: ensemble outputs {missing} are produced by no step")


def validate_repository(root: str | Path) -> dict[str, object]:
    """Parse and check every ``*/config.pbtxt`` under ``root``; returns {model name: ModelConfig}."""
    root = Path(root)
    configs = {}
    for path in sorted(root.glob(f"*/{CONFIG}")):
        where = str(path.relative_to(root.parent))
        cfg = parse_config(path.read_text(), where)
        if cfg.name and cfg.name != path.parent.name:
            raise TritonConfigError(f"{where}: name {cfg.name!r} differs from its directory {path.parent.name!r}")
        model_file = path.parent / "1" / "model.onnx"
        io = None
        if cfg.platform == "onnxruntime_onnx":
            if not model_file.is_file():
                raise TritonConfigError(f"{where}: {model_file.relative_to(root.parent)} is missing")
            io = onnx_io(onnx.load(str(model_file), load_external_data=False))
            if cfg.max_batch_size > 0:
                io = {k: _batched(v, where) for k, v in io.items()}
        check_config(cfg, io, where)
        configs[path.parent.name] = cfg
    if not configs:
        raise TritonConfigError(f"{root} holds no */{CONFIG}")
    for name, cfg in configs.items():
        if cfg.platform == "ensemble":
            check_ensemble(cfg, configs, f"{root.name}/{name}/{CONFIG}")
    return configs


# ------------------------------------------------------------------------------------------------- repository
def _identity_model(io: tuple, opset: int) -> onnx.ModelProto:
    """input -> Identity -> output, so merge_classifier can put the normalisation in front of a bare classifier."""
    from onnx import TensorProto, helper

    name, _, dims = io
    shape = ["batch", *dims]
    g = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "normalise",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def classifier_model(classifier: onnx.ModelProto, mean, std, opset: int) -> onnx.ModelProto:
    """The classifier behind its normalisation, input ``input`` in [0, 1], output ``logits``."""
    from ncis_deploy.exporters.classifier import merge_classifier

    cin = _batched(onnx_io(classifier)["inputs"], "--classifier")[0]
    merged = merge_classifier(_identity_model(cin, opset), classifier, mean, std)
    if len(merged.graph.output) != 1:
        raise UserError(f"--classifier must have exactly one output (the logits) for the Triton ensemble, it has "
                        f"{len(merged.graph.output)}")
    out = merged.graph.output[0]
    merged.graph.node.append(onnx.helper.make_node("Identity", [out.name], [LOGITS], name="logits"))
    out.name = LOGITS
    onnx.checker.check_model(merged, full_check=True)
    return merged


def write_repository(stage: Path, *, purifier_onnx: Path, engine: Path | None, engine_onnx: Path | None,
                     classifier: onnx.ModelProto | None, mean, std, max_batch_size: int, preferred_batch: int,
                     instances: int, queue_delay_us: int, opset: int) -> dict:
    """Write ``stage/triton`` and validate it; returns the manifest's ``triton`` entry."""
    if instances < 1:
        raise UserError(f"--triton-instances must be >= 1, got {instances}")
    if queue_delay_us < 0:
        raise UserError(f"--triton-queue-delay-us must be >= 0, got {queue_delay_us}")
    model_config_pb2()  # fail with the install hint before writing anything
    root = stage / REPOSITORY
    common = dict(instances=instances, queue_delay_us=queue_delay_us, preferred_batch=preferred_batch)

    def add(name: str, cfg: dict, model_file: Path | None, file_name: str | None, model: onnx.ModelProto | None = None):
        (root / name / "1").mkdir(parents=True)
        if model is not None:
            (root / name / "1" / file_name).write_bytes(model.SerializeToString())
        elif model_file is not None:
            shutil.copyfile(model_file, root / name / "1" / file_name)
        (root / name / CONFIG).write_text(config_text(cfg))

    pur_io = {k: _batched(v, "purifier ONNX") for k, v in onnx_io(onnx.load(str(purifier_onnx))).items()}
    add(PURIFIER, model_config(PURIFIER, "onnxruntime_onnx", pur_io["inputs"], pur_io["outputs"], max_batch_size,
                               **common), purifier_onnx, "model.onnx")
    entry_model = PURIFIER
    if engine is not None:
        # a plan carries no readable I/O here (no TensorRT): it has exactly the ONNX's tensors it was built from
        trt_io = {k: _batched(v, "engine ONNX") for k, v in onnx_io(onnx.load(str(engine_onnx))).items()}
        add(PURIFIER_TRT, model_config(PURIFIER_TRT, "tensorrt_plan", trt_io["inputs"], trt_io["outputs"],
                                       max_batch_size, kind="KIND_GPU", **common), engine, "model.plan")
        entry_model = PURIFIER_TRT if trt_io == pur_io else PURIFIER  # an FP16 plan cannot take the FP32 input
    if classifier is not None:
        cm = classifier_model(classifier, mean, std, opset)
        cls_io = {k: _batched(v, "--classifier") for k, v in onnx_io(cm).items()}
        add(CLASSIFIER, model_config(CLASSIFIER, "onnxruntime_onnx", cls_io["inputs"], cls_io["outputs"],
                                     max_batch_size, **common), None, "model.onnx", cm)
        steps = [{"model_name": entry_model, "model_version": -1, "input_map": {"input": "input"},
                  "output_map": {"output": "purified"}},
                 {"model_name": CLASSIFIER, "model_version": -1, "input_map": {"input": "purified"},
                  "output_map": {LOGITS: LOGITS}}]
        add(PIPELINE, model_config(PIPELINE, "ensemble", pur_io["inputs"], cls_io["outputs"], max_batch_size,
                                   steps=steps), None, None)
    configs = validate_repository(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {"directory": REPOSITORY, "validated_with": "tritonclient ModelConfig + model I/O checks",
            "max_batch_size": max_batch_size, "instances": instances, "queue_delay_us": queue_delay_us,
            "models": [{"name": n, "platform": c.platform} for n, c in configs.items()],
            "files": [{"file": str(p.relative_to(stage)), "bytes": p.stat().st_size,
                       "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files]}


__all__ = ["CLASSIFIER", "PIPELINE", "PURIFIER", "PURIFIER_TRT", "TritonConfigError", "config_text", "model_config",
           "onnx_io", "parse_config", "validate_repository", "write_repository"]
