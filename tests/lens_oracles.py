"""Oracles shared by the lens tests: lc0's own ONNX export of generated nets, and onnxruntime at any node."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import torch


def export(lc0_binary: Path, pb: Path, onnx_path: Path) -> Path:
    """``lc0 leela2onnx`` of ``pb`` into ``onnx_path`` (the real binary)."""
    if not onnx_path.exists():
        proc = subprocess.run(
            [str(lc0_binary), "leela2onnx", f"--input={pb}", f"--output={onnx_path}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    return onnx_path


def ort_nodes(onnx_path: Path, planes: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """onnxruntime's values of the tensors ``names`` (node output names), each added as a graph output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    present = {o.name for o in model.graph.output}
    for name in names:
        if name in present:
            continue
        info = types.get(name)
        if info is None:  # no inferred type: float is what every activation of these exports is
            info = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        model.graph.output.append(info)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    values = session.run(names, {"/input/planes": planes.numpy().astype(np.float32)})
    return dict(zip(names, values, strict=True))


def node_outputs(onnx_path: Path) -> dict[str, str]:
    """Node name (without the leading '/') -> its first output's name, for single-output nodes."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    return {n.name.lstrip("/"): n.output[0] for n in graph.node if len(n.output) == 1}
