"""A checkpoint as an ONNX graph, for serving the model anywhere ONNX runs (onnxruntime, TensorRT, browsers).

    export_onnx("best.npz", "model.onnx")       # needs the `onnx` package: pip install -e '.[onnx]' in the clone

The graph takes raw inputs `x` (float32, batch × features, any batch size) and computes exactly what
gradmesh does: the input standardisation when the job used it ((x - mean) / std: Sub and Div nodes, the same
two float32 operations as worker.data.Normalizer, where folding them into the first weights would change the
rounding), then per layer a Gemm (x @ W + b) and, between layers, the activation (Relu, Tanh, Sigmoid, or
gelu's tanh approximation from elementary nodes, since Gelu is only an operator from opset 20). Outputs:
`logits` and `probabilities` (Softmax) for a cross_entropy model, `outputs` for an mse one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.checkpoint import Checkpoint, load_checkpoint

OPSET = 17
_GELU_C = float(np.sqrt(2.0 / np.pi))
_GELU_K = 0.044715


def build_model(ckpt):
    """The onnx.ModelProto of a loaded Checkpoint."""
    import onnx  # optional (gradmesh[onnx]): imported only when a model is exported
    from onnx import TensorProto, helper, numpy_helper

    spec = ckpt.meta["spec"]["model"]
    layers = ckpt.layer_arrays()
    activation, loss = spec["activation"], spec["loss"]
    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    current = "x"
    norm = ckpt.normalizer_arrays()
    if norm is not None:
        nodes.append(helper.make_node("Sub", ["x", const("normalize.mean", norm["normalize.mean"])], ["x_centred"]))
        nodes.append(helper.make_node("Div", ["x_centred", const("normalize.std", norm["normalize.std"])],
                                      ["x_standard"]))
        current = "x_standard"
    last = len(layers) - 1
    for i, (W, b) in enumerate(layers):
        z = f"z{i}" if i < last else ("logits" if loss == "cross_entropy" else "outputs")
        nodes.append(helper.make_node("Gemm", [current, const(f"layers.{i}.W", W), const(f"layers.{i}.b", b)], [z],
                                      name=f"layer{i}"))
        if i < last:
            current = _activation(nodes, const, activation, z, f"a{i}", helper)
    outputs = [helper.make_tensor_value_info(z, TensorProto.FLOAT, ["batch", int(layers[-1][0].shape[1])])]
    if loss == "cross_entropy":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
        outputs.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                     ["batch", int(layers[-1][0].shape[1])]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", int(layers[0][0].shape[0])])]
    graph = helper.make_graph(nodes, ckpt.meta["spec"].get("name", "gradmesh"), inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gradmesh",
                              doc_string=f"gradmesh checkpoint at step {ckpt.meta.get('step')}")
    model.ir_version = min(model.ir_version, 8)  # readable by onnxruntime releases of the last years
    onnx.checker.check_model(model)
    return model


def _activation(nodes, const, activation: str, z: str, out: str, helper) -> str:
    if activation in ("relu", "tanh", "sigmoid"):
        nodes.append(helper.make_node({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[activation], [z], [out]))
        return out
    # gelu, tanh approximation as worker.mlp computes it: 0.5 z (1 + tanh(c (z + k z^3)))
    cube = f"{z}_cube"
    nodes += [
        helper.make_node("Mul", [z, z], [f"{z}_sq"]),
        helper.make_node("Mul", [f"{z}_sq", z], [cube]),
        helper.make_node("Mul", [cube, const(f"{z}_k", _GELU_K)], [f"{z}_kcube"]),
        helper.make_node("Add", [z, f"{z}_kcube"], [f"{z}_inner"]),
        helper.make_node("Mul", [f"{z}_inner", const(f"{z}_c", _GELU_C)], [f"{z}_scaled"]),
        helper.make_node("Tanh", [f"{z}_scaled"], [f"{z}_tanh"]),
        helper.make_node("Add", [f"{z}_tanh", const(f"{z}_one", 1.0)], [f"{z}_gate"]),
        helper.make_node("Mul", [z, f"{z}_gate"], [f"{z}_zgate"]),
        helper.make_node("Mul", [f"{z}_zgate", const(f"{z}_half", 0.5)], [out]),
    ]
    return out


def export_onnx(checkpoint, output: str | Path) -> Path:
    """Write `checkpoint` (a path, or a loaded worker.checkpoint.Checkpoint) as an ONNX model to `output` (raises
    ImportError without the onnx package)."""
    import onnx

    model = build_model(checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint))
    output = Path(output)
    onnx.save(model, str(output))
    return output
