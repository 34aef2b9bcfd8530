"""The user's classifier for ``export --classifier``: loaded, checked and merged behind the purifier in one graph.

Its own module because two exporters build on it: the one-graph ``purifier_classifier`` export and the Triton
repository's ensemble (:mod:`ncis_deploy.exporters.triton`), which puts the same normalisation in front of the bare
classifier.
"""

from __future__ import annotations

import json

import numpy as np
import onnx

from ncis_deploy.errors import UserError
from ncis_deploy.exporters import onnx as onnx_export


def load_classifier(path: str, opset: int) -> onnx.ModelProto:
    """The user's classifier ONNX, checked and converted to the export's opset (merging needs one opset)."""
    from onnx import version_converter

    try:
        cls = onnx.load(path)
        onnx.checker.check_model(cls)
    except FileNotFoundError:
        raise UserError(f"--classifier {path} does not exist") from None
    except Exception as e:
        raise UserError(f"--classifier {path} is not a valid ONNX model ({str(e).splitlines()[0]})") from None
    if len(cls.graph.input) != 1:
        raise UserError(f"--classifier {path} must have exactly one input (an NCHW image batch), "
                        f"it has {len(cls.graph.input)}")
    batch_dim = cls.graph.input[0].type.tensor_type.shape.dim[:1]
    if batch_dim and batch_dim[0].HasField("dim_value"):
        raise UserError(f"--classifier {path} has a fixed batch size {batch_dim[0].dim_value}, but the purifier takes "
                        "any batch (dynamic batching needs a dynamic first (batch) dimension): re-export the classifier "
                        "with a symbolic batch axis, e.g. torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}})")
    cls_opset = next((o.version for o in cls.opset_import if o.domain in ("", "ai.onnx")), opset)
    if cls_opset != opset:
        cls = version_converter.convert_version(cls, opset)
    return cls


def merge_classifier(purifier_model: onnx.ModelProto, cls: onnx.ModelProto, mean, std) -> onnx.ModelProto:
    """One graph: purifier → (x - mean) / std → classifier (its names prefixed with ``classifier/``)."""
    from onnx import compose, helper, numpy_helper

    # purifier output → (x - mean) / std → classifier input
    pm = onnx.ModelProto()
    pm.CopyFrom(purifier_model)
    g = pm.graph
    g.initializer.extend([numpy_helper.from_array(np.asarray(mean, np.float32).reshape(1, 3, 1, 1), "norm_mean"),
                          numpy_helper.from_array(np.asarray(std, np.float32).reshape(1, 3, 1, 1), "norm_std")])
    g.node.extend([helper.make_node("Sub", ["output", "norm_mean"], ["norm_centered"], name="norm_sub"),
                   helper.make_node("Div", ["norm_centered", "norm_std"], ["normalized"], name="norm_div")])
    g.output[0].name = "normalized"
    cls = onnx.ModelProto.FromString(cls.SerializeToString())
    cls.ir_version = pm.ir_version
    cls_prefixed = compose.add_prefix(cls, "classifier/")
    merged = compose.merge_models(pm, cls_prefixed, io_map=[("normalized", cls_prefixed.graph.input[0].name)],
                                  outputs=[o.name for o in cls_prefixed.graph.output])
    del merged.metadata_props[:]
    onnx.helper.set_model_props(merged, {p.key: p.value for p in purifier_model.metadata_props} |
                                {onnx_export.META_PREFIX + "classifier_normalisation": json.dumps({"mean": list(mean), "std": list(std)})})
    return merged
