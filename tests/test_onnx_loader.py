"""The ONNX path: lc0 exports converted, normalised to rule ops, and checked against onnxruntime."""

from __future__ import annotations

import copy
import subprocess

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lczerolens.errors import ModelLoadError, ModelNotFoundError, UnsupportedModelError
from lczerolens.model import ops
from lczerolens.model.onnx_loader import load_onnx

ort = pytest.importorskip("onnxruntime")


# ---------------------------------------------------------------------------------------------- helpers


def random_planes(n: int, seed: int = 0) -> torch.Tensor:
    """Sparse 0/1 planes with a rule-50 plane and the all-ones plane, like lc0's inputs."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 112, 8, 8, generator=g) < 0.15).float()
    x[:, 109] = torch.randint(0, 60, (n, 1, 1), generator=g).float()
    x[:, 111] = 1.0
    return x


def run_ort(path_or_bytes, planes: torch.Tensor, dtype=np.float32) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"/input/planes": planes.numpy().astype(dtype)}), strict=True))


def leaf_ops(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in net.named_modules() if name and not list(m.children())}


def assert_normalised(net: torch.nn.Module) -> None:
    """Every leaf is a rule op or says whether it is linear; no nonlinear torch module is left."""
    for name, m in leaf_ops(net).items():
        assert isinstance(m, ops.RULE_OPS) or isinstance(getattr(m, "lrp_linear", None), bool), name
        assert not isinstance(
            m,
            (
                torch.nn.ReLU,
                torch.nn.Tanh,
                torch.nn.Sigmoid,
                torch.nn.Softmax,
                torch.nn.LayerNorm,
                torch.nn.Softplus,
                torch.nn.SELU,
            ),
        ), name


def init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def tiny_lc0_graph(activation: str = "mish", value_head: str = "wdl", seed: int = 0) -> onnx.ModelProto:
    """A small graph written the way lc0's converter writes ops: conv body with ``activation`` as lc0's subgraph,
    a squeeze-excitation gate, one attention layer (Q.K^T, softmax, A.V, LayerNorm), a product of two
    activations, and lc0's output heads."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    c, d = 4, 8
    nodes, inits = [], []

    def w(name, *shape, scale=0.3):
        inits.append(init(name, (rng.standard_normal(shape) * scale).astype(f32)))
        return name

    def act(kind: str, x: str, name: str) -> str:
        if kind == "mish":
            nodes.append(helper.make_node("Softplus", [x], [f"{name}/mish/softplus"], name=f"/{name}/mish/softplus"))
            nodes.append(
                helper.make_node("Tanh", [f"{name}/mish/softplus"], [f"{name}/mish/tanh"], name=f"/{name}/mish/tanh")
            )
            nodes.append(helper.make_node("Mul", [f"{name}/mish/tanh", x], [f"{name}/mish"], name=f"/{name}/mish"))
            return f"{name}/mish"
        if kind == "swish":
            nodes.append(helper.make_node("Sigmoid", [x], [f"{name}/swish/sigmoid"], name=f"/{name}/swish/sigmoid"))
            nodes.append(
                helper.make_node("Mul", [x, f"{name}/swish/sigmoid"], [f"{name}/swish"], name=f"/{name}/swish")
            )
            return f"{name}/swish"
        if kind == "relu2":
            nodes.append(helper.make_node("Relu", [x], [f"{name}/sqrrelu/relu"], name=f"/{name}/sqrrelu/relu"))
            nodes.append(
                helper.make_node("Mul", [f"{name}/sqrrelu/relu"] * 2, [f"{name}/sqrrelu"], name=f"/{name}/sqrrelu")
            )
            return f"{name}/sqrrelu"
        op = {"relu": "Relu", "selu": "Selu", "tanh": "Tanh"}[kind]
        nodes.append(helper.make_node(op, [x], [f"{name}/{kind}"], name=f"/{name}/{kind}"))
        return f"{name}/{kind}"

    nodes.append(
        helper.make_node(
            "Conv",
            ["/input/planes", w("/inputconv/w/kernel", c, 112, 3, 3, scale=0.1), w("/inputconv/w/bias", c)],
            ["/inputconv"],
            name="/inputconv",
            pads=[1, 1, 1, 1],
            kernel_shape=[3, 3],
        )
    )
    x = act(activation, "/inputconv", "inputconv")
    # squeeze-excitation gate: sigmoid of pooled logits times the signal
    nodes.append(helper.make_node("ReduceMean", [x], ["/se/pool"], name="/se/pool", axes=[2, 3], keepdims=1))
    nodes.append(helper.make_node("Sigmoid", ["/se/pool"], ["/se/sigmoid"], name="/se/sigmoid"))
    nodes.append(helper.make_node("Mul", ["/se/sigmoid", x], ["/se/mul"], name="/se/mul"))
    # tokens [N, 64, c] -> attention
    inits.append(init("/const/tok_shape", np.array([-1, c, 64], dtype=np.int64)))
    nodes.append(helper.make_node("Reshape", ["/se/mul", "/const/tok_shape"], ["/attn/reshape"], name="/attn/reshape"))
    nodes.append(
        helper.make_node("Transpose", ["/attn/reshape"], ["/attn/tokens"], name="/attn/tokens", perm=[0, 2, 1])
    )
    for p in "QKV":
        nodes.append(
            helper.make_node("MatMul", ["/attn/tokens", w(f"/attn/{p}/w", c, d)], [f"/attn/{p}"], name=f"/attn/{p}")
        )
    nodes.append(helper.make_node("Transpose", ["/attn/K"], ["/attn/KT"], name="/attn/KT", perm=[0, 2, 1]))
    nodes.append(helper.make_node("MatMul", ["/attn/Q", "/attn/KT"], ["/attn/QK"], name="/attn/QK"))
    inits.append(init("/attn/scale/w", np.array([1 / np.sqrt(d)], dtype=f32)))
    nodes.append(helper.make_node("Mul", ["/attn/QK", "/attn/scale/w"], ["/attn/scale"], name="/attn/scale"))
    nodes.append(helper.make_node("Softmax", ["/attn/scale"], ["/attn/softmax"], name="/attn/softmax", axis=2))
    nodes.append(helper.make_node("MatMul", ["/attn/softmax", "/attn/V"], ["/attn/AV"], name="/attn/AV"))
    nodes.append(
        helper.make_node(
            "LayerNormalization",
            ["/attn/AV", w("/attn/ln/w/scale", d), w("/attn/ln/w/bias", d)],
            ["/attn/ln"],
            name="/attn/ln",
            axis=-1,
            epsilon=1e-3,
        )
    )
    nodes.append(helper.make_node("MatMul", ["/attn/ln", w("/attn/gate/w", d, d)], ["/attn/gate"], name="/attn/gate"))
    nodes.append(helper.make_node("Mul", ["/attn/ln", "/attn/gate"], ["/attn/prod"], name="/attn/prod"))
    inits.append(init("/const/flat_shape", np.array([-1, 64 * d], dtype=np.int64)))
    nodes.append(helper.make_node("Reshape", ["/attn/prod", "/const/flat_shape"], ["/flat"], name="/flat"))
    nodes.append(
        helper.make_node(
            "MatMul", ["/flat", w("/policy/w", 64 * d, 1858, scale=0.05)], ["/output/policy"], name="/output/policy"
        )
    )
    outputs = [helper.make_tensor_value_info("/output/policy", TensorProto.FLOAT, ["batch", 1858])]
    if value_head == "wdl":
        nodes.append(
            helper.make_node(
                "MatMul", ["/flat", w("/value/w", 64 * d, 3, scale=0.05)], ["/value/dense"], name="/value/dense"
            )
        )
        nodes.append(helper.make_node("Softmax", ["/value/dense"], ["/output/wdl"], name="/output/wdl", axis=1))
        outputs.append(helper.make_tensor_value_info("/output/wdl", TensorProto.FLOAT, ["batch", 3]))
    else:
        nodes.append(
            helper.make_node(
                "MatMul", ["/flat", w("/value/w", 64 * d, 1, scale=0.05)], ["/value/dense"], name="/value/dense"
            )
        )
        nodes.append(helper.make_node("Tanh", ["/value/dense"], ["/output/value"], name="/output/value"))
        outputs.append(helper.make_tensor_value_info("/output/value", TensorProto.FLOAT, ["batch", 1]))
    nodes.append(
        helper.make_node("MatMul", ["/flat", w("/mlh/w", 64 * d, 1, scale=0.05)], ["/mlh/dense"], name="/mlh/dense")
    )
    nodes.append(helper.make_node("Relu", ["/mlh/dense"], ["/output/mlh"], name="/output/mlh"))
    outputs.append(helper.make_tensor_value_info("/output/mlh", TensorProto.FLOAT, ["batch", 1]))
    graph = helper.make_graph(
        nodes,
        "org.lczero/converted",
        [helper.make_tensor_value_info("/input/planes", TensorProto.FLOAT, ["batch", 112, 8, 8])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------------- maia-1900


@pytest.fixture(scope="module")
def maia_net(maia_onnx_path):
    return load_onnx(maia_onnx_path)


def test_maia_matches_onnxruntime(maia_net, maia_onnx_path):
    planes = random_planes(8)
    ref = run_ort(maia_onnx_path, planes)
    with torch.inference_mode():
        out = maia_net(planes)
    assert set(out) == {"policy", "wdl_logits"}
    assert out["policy"].shape == (8, 1858) and out["wdl_logits"].shape == (8, 3)
    torch.testing.assert_close(out["policy"], torch.from_numpy(ref["/output/policy"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["wdl_logits"].softmax(-1), torch.from_numpy(ref["/output/wdl"]), atol=1e-4, rtol=0)


def test_maia_structure(maia_net):
    assert_normalised(maia_net)
    mods = maia_net._modules
    assert isinstance(mods["inputconv/relu"], ops.Activation) and mods["inputconv/relu"].kind == "relu"
    assert isinstance(mods["block0/conv2/se/mul"], ops.Gate)
    assert "block0/conv2/se/sigmoid" not in mods  # fused into the gate
    assert "output/wdl" not in mods  # the final softmax is cut off
    assert mods["block0/conv1"].lrp_linear is True and mods["output/policy"].lrp_linear is True
    assert mods["block0/conv2/se/matmul1"].lrp_linear is True  # a MatMul by a weight is linear
    assert maia_net.heads == ("policy", "wdl")
    assert int(maia_net.input_format) == 1
    assert "6x64" in maia_net.description and "SE" in maia_net.description
    # a copy (as lenses or users may make) keeps the contract attributes and the rule ops
    twin = copy.deepcopy(maia_net)
    assert twin.heads == maia_net.heads and twin.input_format == maia_net.input_format
    assert isinstance(twin._modules["block0/conv2/se/mul"], ops.Gate) and twin._modules["inputconv"].lrp_linear


def test_fp16_export(maia_fp16_onnx_path, maia_net):
    """fp16 export: float32 by default (weights upcast exactly), float16 with half=True.

    Measured on these planes: fp32-run fp16 export vs the fp32 export ~1e-2 on policy logits (the fp16 weights'
    rounding), vs onnxruntime on the fp16 file ~5e-3 (onnxruntime computes in fp16); half=True vs onnxruntime fp16
    ~2e-2 (fp16 resolution at logits ~10 is 8e-3)."""
    planes = random_planes(8, seed=1)
    ref16 = run_ort(maia_fp16_onnx_path, planes, np.float16)
    net = load_onnx(maia_fp16_onnx_path)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    with torch.inference_mode():
        out = net(planes)
        out32 = maia_net(planes)
    assert out["policy"].dtype == torch.float32
    torch.testing.assert_close(out["policy"], out32["policy"], atol=6e-2, rtol=0)
    torch.testing.assert_close(out["policy"], torch.from_numpy(ref16["/output/policy"]).float(), atol=6e-2, rtol=0)
    torch.testing.assert_close(
        out["wdl_logits"].softmax(-1), torch.from_numpy(ref16["/output/wdl"]).float(), atol=5e-3, rtol=0
    )

    net16 = load_onnx(maia_fp16_onnx_path, half=True)
    assert all(p.dtype == torch.float16 for p in net16.parameters())
    with torch.inference_mode():
        out16 = net16(planes.half())
    assert out16["policy"].dtype == torch.float16
    torch.testing.assert_close(
        out16["policy"].float(), torch.from_numpy(ref16["/output/policy"]).float(), atol=6e-2, rtol=0
    )
    assert_normalised(net16)


@pytest.mark.parametrize("opset", [7, 12])
def test_older_opsets(opset, maia_pb_path, lc0_binary, tmp_path):
    """lc0's opset 7 (IR 3, whose initializers lc0 does not list as inputs) and opset 12 exports load and match."""
    path = tmp_path / f"maia-opset{opset}.onnx"
    subprocess.run(
        [str(lc0_binary), "leela2onnx", f"--input={maia_pb_path}", f"--output={path}", f"--onnx-opset={opset}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    net = load_onnx(path)
    assert_normalised(net)
    assert net.onnx_opset == opset
    planes = random_planes(4, seed=3)
    ref = run_ort(path, planes)
    with torch.inference_mode():
        out = net(planes)
    torch.testing.assert_close(out["policy"], torch.from_numpy(ref["/output/policy"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["wdl_logits"].softmax(-1), torch.from_numpy(ref["/output/wdl"]), atol=1e-5, rtol=0)


def test_bf16_export(maia_pb_path, lc0_binary, tmp_path, maia_net):
    """bf16 export (lc0 casts around each conv): float32 by default with the casts gone; half=True is float16.
    onnxruntime cannot run it (no bf16 Relu on CPU), so the reference is the fp32 export: bf16 weights keep 8 bits
    of mantissa, measured ~0.1 on policy logits."""
    path = tmp_path / "maia-bf16.onnx"
    subprocess.run(
        [str(lc0_binary), "leela2onnx", f"--input={maia_pb_path}", f"--output={path}", "--onnx-data-type=bf16"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    planes = random_planes(4, seed=2)
    with torch.inference_mode():
        ref = maia_net(planes)["policy"]
        for half in (False, True):
            net = load_onnx(path, half=half)
            dtype = torch.float16 if half else torch.float32
            assert all(p.dtype == dtype for p in net.parameters())
            assert not any(n.endswith(("/to_float", "/to_bf16")) for n in net._modules)
            assert_normalised(net)
            out = net(planes.to(dtype))["policy"].float()
            torch.testing.assert_close(out, ref, atol=0.4, rtol=0)
    assert "bf16 export" in net.description


def test_module_names_follow_lc0(maia_net, maia_onnx_path):
    names = {n.name.lstrip("/") for n in onnx.load(str(maia_onnx_path)).graph.node}
    for name in maia_net._modules:
        if name != "initializers":
            assert name in names, name


# ---------------------------------------------------------------------------------------------- fusion


@pytest.mark.parametrize("activation", ["mish", "swish", "relu2", "relu", "selu", "tanh"])
def test_fusion_matches_onnxruntime(activation):
    model = tiny_lc0_graph(activation)
    data = model.SerializeToString()
    net = load_onnx(data)
    assert_normalised(net)
    mods = net._modules
    act_name = {"mish": "inputconv/mish", "swish": "inputconv/swish", "relu2": "inputconv/sqrrelu"}.get(
        activation, f"inputconv/{activation}"
    )
    assert isinstance(mods[act_name], ops.Activation) and mods[act_name].kind == activation
    # the pattern's inner nodes are gone
    assert not any(n.startswith(act_name + "/") for n in mods)
    assert isinstance(mods["se/mul"], ops.Gate) and "se/sigmoid" not in mods
    assert isinstance(mods["attn/softmax"], ops.Softmax) and mods["attn/softmax"].dim == 2
    assert isinstance(mods["attn/QK"], ops.MatMul) and mods["attn/QK"].attention_operand is None
    assert isinstance(mods["attn/AV"], ops.MatMul) and mods["attn/AV"].attention_operand == 0
    assert isinstance(mods["attn/ln"], ops.LayerNorm) and mods["attn/ln"].eps == pytest.approx(1e-3)
    assert isinstance(mods["attn/prod"], ops.Mul)
    assert mods["attn/scale"].lrp_linear is True and mods["attn/Q"].lrp_linear is True
    assert isinstance(mods["output/mlh"], ops.Activation)

    planes = random_planes(4)
    ref = run_ort(data, planes)
    with torch.inference_mode():
        out = net(planes)
    assert set(out) == {"policy", "wdl_logits", "mlh"}
    assert out["mlh"].shape == (4,)
    torch.testing.assert_close(out["policy"], torch.from_numpy(ref["/output/policy"]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["wdl_logits"].softmax(-1), torch.from_numpy(ref["/output/wdl"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["mlh"], torch.from_numpy(ref["/output/mlh"])[:, 0], atol=1e-4, rtol=1e-4)


def test_value_head_cut_before_tanh():
    data = tiny_lc0_graph("relu", value_head="value").SerializeToString()
    net = load_onnx(data)
    assert net.heads == ("policy", "value", "mlh")
    planes = random_planes(3)
    ref = run_ort(data, planes)
    with torch.inference_mode():
        out = net(planes)
    assert out["value_logit"].shape == (3,)
    torch.testing.assert_close(
        out["value_logit"].tanh(), torch.from_numpy(ref["/output/value"])[:, 0], atol=1e-5, rtol=0
    )


def test_fp16_graph_runs_in_float32():
    model = tiny_lc0_graph("swish")
    planes = random_planes(2)
    with torch.inference_mode():
        ref = load_onnx(model.SerializeToString())(planes)
    from onnx import numpy_helper as nh

    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(nh.from_array(nh.to_array(t).astype(np.float16), t.name))
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    net = load_onnx(model.SerializeToString())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    with torch.inference_mode():
        out = net(planes)
    torch.testing.assert_close(out["policy"], ref["policy"], atol=5e-2, rtol=5e-2)


def test_layernorm_not_last_axis_is_refused():
    model = tiny_lc0_graph("relu")
    ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    # normalise over tokens and features: axis 1 of [N, 64, d]
    for a in ln.attribute:
        if a.name == "axis":
            a.i = 1
    model.graph.initializer.extend([])
    scale = next(t for t in model.graph.initializer if t.name == "/attn/ln/w/scale")
    bias = next(t for t in model.graph.initializer if t.name == "/attn/ln/w/bias")
    scale.CopyFrom(init(scale.name, np.ones((64, 8), np.float32)))
    bias.CopyFrom(init(bias.name, np.zeros((64, 8), np.float32)))
    with pytest.raises(UnsupportedModelError, match="last axis"):
        load_onnx(model.SerializeToString())


def test_unknown_nonlinearity_is_marked_not_linear():
    model = tiny_lc0_graph("relu")
    for n in model.graph.node:
        if n.name == "/inputconv/relu":
            n.op_type = "Elu"
    net = load_onnx(model.SerializeToString())
    m = net._modules["inputconv/relu"]
    assert m.lrp_linear is False and m.onnx_op_type == "Elu"


# ---------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nope.onnx"):
        load_onnx(tmp_path / "nope.onnx")


def test_truncated_file(tmp_path, maia_onnx_path):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(maia_onnx_path.read_bytes()[:100_000])
    with pytest.raises(ModelLoadError, match="truncated.onnx"):
        load_onnx(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelLoadError, match="garbage.onnx"):
        load_onnx(bad)


def test_not_lc0_graph():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    with pytest.raises(ModelLoadError, match="not an lc0 network"):
        load_onnx(model.SerializeToString())


def test_missing_outputs_is_not_lc0():
    model = tiny_lc0_graph("relu")
    keep = [o for o in model.graph.output if o.name == "/output/mlh"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    with pytest.raises(ModelLoadError, match="/output/policy"):
        load_onnx(model.SerializeToString())


def test_opset18_export_is_refused_with_remedy(maia_pb_path, lc0_binary, tmp_path):
    out = tmp_path / "maia-opset18.onnx"
    subprocess.run(
        [str(lc0_binary), "leela2onnx", f"--input={maia_pb_path}", f"--output={out}", "--onnx-opset=18"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with pytest.raises(UnsupportedModelError, match=r"ReduceMean-18.*--onnx-opset=17"):
        load_onnx(out)
