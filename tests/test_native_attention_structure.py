"""Attention-body networks: module layout (lc0's ONNX node names, rule ops), batching, gradients, load errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lczerolens.board import InputFormat
from lczerolens.errors import ModelLoadError, UnsupportedModelError
from lczerolens.model import ops
from lczerolens.model.attention import build_attention_network, position_encoding_map
from lczerolens.model.native import load_pb
from lczerolens.model.proto import Layer, Residual, serialize_net
from lczerolens.testing import REALISTIC_ATTENTION_SPEC, AttentionNetSpec, make_attention_net, write_attention_net

# PE_DENSE with smolgen and gates, FFN activation == default (so the ONNX export computes the same graph).
SPEC = AttentionNetSpec(default_activation="relu", ffn_activation="default", smolgen_activation="swish", seed=11)


@pytest.fixture(scope="session")
def net_path(generated_dir: Path) -> Path:
    return write_attention_net(SPEC, generated_dir / "bt-structure.pb.gz")


@pytest.fixture(scope="session")
def export_path(net_path: Path, lc0_binary: Path) -> Path:
    out = net_path.with_name("bt-structure.onnx")
    subprocess.run(
        [str(lc0_binary), "leela2onnx", f"--input={net_path}", f"--output={out}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


@pytest.fixture(scope="session")
def network(net_path: Path) -> torch.nn.Module:
    return load_pb(net_path)


def _planes(n: int, seed: int = 0) -> torch.Tensor:
    # Sparse 0/1 piece planes plus lc0-like constant planes (castling, rule-50 count, all-ones).
    g = torch.Generator().manual_seed(seed)
    planes = (torch.rand(n, 112, 8, 8, generator=g) < 0.08).float()
    planes[:, 104:108] = 1.0
    planes[:, 109] = torch.randint(0, 40, (n, 1, 1), generator=g).float()
    planes[:, 111] = 1.0
    return planes


def test_modules_carry_lc0_onnx_node_names(network: torch.nn.Module, export_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    nodes = {node.name.lstrip("/") for node in onnx.load(str(export_path)).graph.node}
    names = set(network._modules)
    assert names <= nodes, sorted(names - nodes)
    for name in (
        "encoder0/mha/QK/softmax",
        "encoder1/mha/QKV/matmul",
        "encoder0/smolgen/ln2",
        "policy/matmul",
        "attn_body/embedding/preprocess/matmul",
        "attn_body/ln2",
        "value/dense2/matmul",
        "output/mlh",
    ):
        assert name in names


def test_rule_ops_and_their_kinds(network: torch.nn.Module) -> None:
    m = network._modules
    layers = SPEC.encoder_layers
    assert sum(isinstance(x, ops.Softmax) for x in m.values()) == layers
    assert all(m[f"encoder{i}/mha/QK/softmax"].dim == -1 for i in range(layers))
    matmuls = {name: x.attention_operand for name, x in m.items() if isinstance(x, ops.MatMul)}
    expected = {f"encoder{i}/mha/QK/matmul": None for i in range(layers)}
    expected.update({f"encoder{i}/mha/QKV/matmul": 0 for i in range(layers)})
    expected["policy/matmul"] = None
    assert matmuls == expected
    eps = {name: x.eps for name, x in m.items() if isinstance(x, ops.LayerNorm)}
    # PE_DENSE: 1e-3 everywhere (embedding, embedding FFN, encoders, smolgen).
    assert len(eps) == 2 + 4 * layers and set(eps.values()) == {1e-3}
    kinds = {x.kind for x in m.values() if isinstance(x, ops.Activation)}
    assert kinds == {"relu", "swish"}
    # Nothing nonlinear hides in a non-rule module: the rest are plain dense layers.
    others = {type(x) for x in m.values() if not isinstance(x, ops.RULE_OPS)}
    assert others == {torch.nn.Linear}


def test_pe_map_layer_norm_epsilon_and_no_dense_embedding(generated_dir: Path) -> None:
    spec = AttentionNetSpec(embedding="PE_MAP", encoder_layers=1, smolgen=False, input_gates=False, seed=2)
    network = build_attention_network(make_attention_net(spec))
    eps = {x.eps for x in network.modules() if isinstance(x, ops.LayerNorm)}
    assert eps == {1e-6}
    assert "attn_body/embedding/preprocess/matmul" not in network._modules and "attn_body/ln" not in network._modules


def test_every_rule_op_is_called_through_its_module(network: torch.nn.Module) -> None:
    # A lens swaps modules in their parent's _modules; every rule op must be looked up there at forward time.
    planes = _planes(3)
    with torch.no_grad():
        before = network(planes)
    calls: dict[str, int] = {}

    class Counting(torch.nn.Module):
        def __init__(self, name: str, inner: torch.nn.Module) -> None:
            super().__init__()
            self.name, self.inner = name, inner

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            calls[self.name] = calls.get(self.name, 0) + 1
            return self.inner(*args)

    originals = {k: v for k, v in network._modules.items() if isinstance(v, ops.RULE_OPS)}
    try:
        for name, module in originals.items():
            network._modules[name] = Counting(name, module)
        with torch.no_grad():
            after = network(planes)
    finally:
        network._modules.update(originals)
    assert calls == {name: 1 for name in originals}
    for key in before:
        assert torch.equal(before[key], after[key])


def test_lrp_lens_accepts_the_network(network: torch.nn.Module) -> None:
    from lczerolens.lenses import LrpLens

    LrpLens().check(network)  # raises LensError on any module without a rule


def test_batch_rows_are_independent_and_gradients_flow(network: torch.nn.Module) -> None:
    planes = _planes(5, seed=3)
    with torch.no_grad():
        batch = network(planes)
        single = [network(planes[i : i + 1]) for i in range(5)]
    for key, value in batch.items():
        torch.testing.assert_close(value, torch.cat([s[key] for s in single]), rtol=1e-5, atol=1e-5)
    x = planes.clone().requires_grad_(True)
    out = network(x)
    (out["policy"][:, 10].sum() + out["wdl_logits"][:, 0].sum() + out["mlh"].sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_attributes(network: torch.nn.Module, generated_dir: Path) -> None:
    assert network.input_format == InputFormat.CLASSICAL_112_PLANE
    assert network.heads == ("policy", "wdl", "mlh")
    assert "PE_DENSE" in network.description and "2 encoder layers x 32 wide" in network.description
    spec = AttentionNetSpec(embedding="PE_MAP", wdl=False, mlh=False, input_format=3, encoder_layers=1, seed=4)
    other = build_attention_network(make_attention_net(spec))
    assert other.input_format == InputFormat.CANONICALIZATION
    assert other.heads == ("policy", "value")
    out = other(_planes(2))
    assert set(out) == {"policy", "value_logit"} and out["value_logit"].shape == (2,)


def test_position_encoding_is_lc0s(export_path: Path, generated_dir: Path, lc0_binary: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    path = write_attention_net(
        AttentionNetSpec(embedding="PE_MAP", encoder_layers=1, seed=9), generated_dir / "bt-pemap.pb.gz"
    )
    out = path.with_suffix(".onnx")
    subprocess.run(
        [str(lc0_binary), "leela2onnx", f"--input={path}", f"--output={out}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    np.testing.assert_array_equal(position_encoding_map().numpy(), inits["/const/pos_encoding"].reshape(64, 64))


def test_realistic_preset_is_spread_and_finite() -> None:
    spec = REALISTIC_ATTENTION_SPEC
    assert (spec.embedding_size, spec.heads, spec.encoder_layers) == (256, 8, 6) and spec.smolgen
    network = build_attention_network(make_attention_net(spec))
    with torch.no_grad():
        out = network(_planes(4, seed=5))
    assert all(torch.isfinite(v).all() for v in out.values())
    assert out["policy"].std(dim=1).min() > 0.5
    wdl = torch.softmax(out["wdl_logits"], 1)
    assert wdl.max() < 0.999 and (out["mlh"] > 0).all()


# ---- errors: unsupported variants and broken files ---------------------------------------------------------------
def _load(net) -> torch.nn.Module:
    return load_pb(serialize_net(net))


def test_no_encoder_layers_is_unsupported() -> None:
    net = make_attention_net(AttentionNetSpec(encoder_layers=0))
    with pytest.raises(UnsupportedModelError, match="no encoder layers"):
        _load(net)


def test_unknown_embedding_is_unsupported() -> None:
    net = make_attention_net(AttentionNetSpec(embedding="PE_MAP", encoder_layers=1))
    net.format.network_format.input_embedding = 7
    with pytest.raises(UnsupportedModelError, match="input embedding 7 is unknown"):
        _load(net)


def test_residual_tower_below_attention_body_is_unsupported() -> None:
    net = make_attention_net(AttentionNetSpec(encoder_layers=1))
    net.weights.residual.append(Residual())
    with pytest.raises(UnsupportedModelError, match="residual tower"):
        _load(net)


def test_conv_policy_and_softmax_activation_are_unsupported() -> None:
    net = make_attention_net(AttentionNetSpec(encoder_layers=1))
    net.format.network_format.policy = 2
    with pytest.raises(UnsupportedModelError, match="policy format 2"):
        _load(net)
    net = make_attention_net(AttentionNetSpec(encoder_layers=1))
    net.format.network_format.ffn_activation = 9
    with pytest.raises(UnsupportedModelError, match="FFN activation 9"):
        _load(net)


def test_truncated_layer_is_named() -> None:
    net = make_attention_net(AttentionNetSpec(encoder_layers=2))
    layer = net.weights.encoder[1].mha.k_w
    net.weights.encoder[1].mha.k_w = Layer(min_val=layer.min_val, max_val=layer.max_val, params=layer.params[:-64])
    with pytest.raises(ModelLoadError, match=r"encoder\[1\]\.mha\.k_w"):
        _load(net)


def test_missing_layers_and_bad_headcount() -> None:
    net = make_attention_net(AttentionNetSpec(encoder_layers=1))
    net.weights.clear("smolgen_w")
    with pytest.raises(ModelLoadError, match="smolgen_w"):
        _load(net)
    net = make_attention_net(AttentionNetSpec(encoder_layers=1))
    net.weights.clear("ip_emb_b")
    with pytest.raises(ModelLoadError, match="ip_emb_b"):
        _load(net)
    net = make_attention_net(AttentionNetSpec(encoder_layers=1))
    net.weights.headcount = 5
    with pytest.raises(ModelLoadError, match="5 attention heads"):
        _load(net)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="embedding"):
        AttentionNetSpec(embedding="PE_SOMETHING")
    with pytest.raises(ValueError, match="heads"):
        AttentionNetSpec(embedding_size=30, heads=4)
    with pytest.raises(ValueError, match="ffn_activation"):
        AttentionNetSpec(ffn_activation="gelu")
