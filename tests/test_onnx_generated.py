"""ONNX exports of generated lc0 nets (``lczerolens.testing``), written by lc0's own ``leela2onnx``: Mish residual
nets with value and moves-left heads, and attention-body nets with Swish / squared-ReLU / smolgen. Each is checked
for its rule ops and against onnxruntime on the same file and lc0's eigen backend on the weights."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from lczerolens.errors import UnsupportedModelError
from lczerolens.model import LczeroModel, ops
from lczerolens.model.onnx_loader import load_onnx

ort = pytest.importorskip("onnxruntime")
testing = pytest.importorskip("lczerolens.testing")

from test_model import GAMES, lc0_eval  # noqa: E402
from test_onnx_loader import assert_normalised, run_ort  # noqa: E402


def export(lc0_binary, pb, onnx_path, *extra) -> None:
    proc = subprocess.run(
        [str(lc0_binary), "leela2onnx", f"--input={pb}", f"--output={onnx_path}", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def kinds(net) -> dict[str, list[str]]:
    """Rule-op kind -> module names."""
    out: dict[str, list[str]] = {}
    for name, m in net.named_modules():
        if isinstance(m, ops.Activation):
            out.setdefault(f"Activation:{m.kind}", []).append(name)
        elif isinstance(m, ops.MatMul):
            out.setdefault(f"MatMul:{m.attention_operand}", []).append(name)
        elif isinstance(m, ops.RULE_OPS):
            out.setdefault(type(m).__name__, []).append(name)
    return out


def compare(model: LczeroModel, onnx_path, pb_path, *, eigen: bool, atol: float = 1e-4) -> None:
    planes, policy, wdl, q, m = lc0_eval(pb_path, GAMES[:5])
    with torch.inference_mode():
        out = model(planes)
    ref = run_ort(onnx_path, planes)
    torch.testing.assert_close(out["policy"], torch.from_numpy(ref["/output/policy"]), atol=atol, rtol=0)
    if "wdl" in model.heads:
        torch.testing.assert_close(out["wdl"], torch.from_numpy(ref["/output/wdl"]), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(out["value"], torch.from_numpy(ref["/output/value"])[:, 0], atol=1e-5, rtol=0)
    if "mlh" in model.heads:
        torch.testing.assert_close(out["mlh"], torch.from_numpy(ref["/output/mlh"])[:, 0], atol=1e-3, rtol=1e-5)
    if eigen:
        torch.testing.assert_close(out["policy"], policy, atol=atol, rtol=0)
        torch.testing.assert_close(out["value"], q, atol=1e-5, rtol=0)
        if "wdl" in model.heads:
            torch.testing.assert_close(out["wdl"], wdl, atol=1e-5, rtol=0)
        if "mlh" in model.heads:
            torch.testing.assert_close(out["mlh"], m, atol=1e-3, rtol=1e-5)


def test_mish_residual_value_mlh(generated_dir, lc0_binary):
    pb = testing.write_random_net(
        generated_dir / "c-mish.pb.gz", blocks=2, filters=16, activation="mish", value="value",
        moves_left=True, policy="classical", seed=11,
    )  # fmt: skip
    onnx_path = generated_dir / "c-mish.onnx"
    export(lc0_binary, pb, onnx_path)
    model = LczeroModel.from_path(onnx_path)
    net = model.network
    assert_normalised(net)
    k = kinds(net)
    assert "inputconv/mish" in k["Activation:mish"] and "block1/conv2/mish" in k["Activation:mish"]
    assert not any(name.endswith(("/softplus", "/tanh")) for name in net._modules)
    assert k["Gate"] == ["block0/conv2/se/mul", "block1/conv2/se/mul"]
    assert model.heads == ("policy", "value", "mlh")
    assert set(model(torch.zeros(1, 112, 8, 8)).keys()) == {"policy", "value", "value_logit", "mlh"}
    compare(model, onnx_path, pb, eigen=True)


@pytest.mark.parametrize(
    "spec",
    [
        dict(
            embedding="PE_MAP", ffn_activation="swish", smolgen_activation="relu2", default_activation="relu", wdl=False
        ),
        dict(embedding="PE_MAP", ffn_activation="relu2", smolgen_activation="swish", default_activation="mish"),
    ],  # fmt: skip
    ids=["swish-ffn-relu2-smolgen", "relu2-ffn-swish-smolgen"],
)
def test_attention_net(spec, generated_dir, lc0_binary):
    attention = pytest.importorskip("lczerolens.testing")
    spec = attention.AttentionNetSpec(embedding_size=32, encoder_layers=2, heads=4, **spec)
    pb = attention.write_attention_net(spec, generated_dir / f"c-attn-{spec.ffn_activation}.pb.gz")
    onnx_path = generated_dir / f"c-attn-{spec.ffn_activation}.onnx"
    export(lc0_binary, pb, onnx_path)
    model = LczeroModel.from_path(onnx_path)
    net = model.network
    assert_normalised(net)
    k = kinds(net)
    for layer in ("encoder0", "encoder1"):
        assert f"{layer}/mha/QK/softmax" in k["Softmax"]
        assert f"{layer}/mha/QKV/matmul" in k["MatMul:0"]  # attention weights are operand 0 of A.V
        assert f"{layer}/mha/QK/matmul" in k["MatMul:None"]
        assert f"{layer}/ln1" in k["LayerNorm"] and f"{layer}/ln2" in k["LayerNorm"]
    ffn = [n for n in k[f"Activation:{spec.ffn_activation}"] if "/ffn/" in n]
    smolgen = [n for n in k[f"Activation:{spec.smolgen_activation}"] if "/smolgen/" in n]
    assert len(ffn) == 2 and len(smolgen) == 4
    # the pattern nodes are fused away: no Sigmoid / inner Relu module left over
    assert not any(isinstance(m, (torch.nn.Sigmoid, torch.nn.ReLU)) for m in net.modules())
    # PE_MAP nets: eigen and the ONNX export agree (LC0_FACTS), so both oracles apply
    compare(model, onnx_path, pb, eigen=True)


def test_attention_fp16_export(generated_dir, lc0_binary):
    attention = pytest.importorskip("lczerolens.testing")
    spec = attention.AttentionNetSpec(embedding="PE_MAP", embedding_size=32, encoder_layers=1, heads=4)
    pb = attention.write_attention_net(spec, generated_dir / "c-attn16.pb.gz")
    fp32, fp16 = generated_dir / "c-attn32.onnx", generated_dir / "c-attn16.onnx"
    export(lc0_binary, pb, fp32)
    export(lc0_binary, pb, fp16, "--onnx-data-type=f16")
    net32, net16 = load_onnx(fp32), load_onnx(fp16)
    assert_normalised(net16)
    planes, *_ = lc0_eval(pb, GAMES[:4])
    with torch.inference_mode():
        a, b = net32(planes), net16(planes)
    ref16 = run_ort(fp16, planes, np.float16)
    # fp16 weights and fp16 arithmetic (onnxruntime) vs fp16 weights in fp32 arithmetic (ours)
    torch.testing.assert_close(b["policy"], torch.from_numpy(ref16["/output/policy"]).float(), atol=5e-2, rtol=0)
    torch.testing.assert_close(b["policy"], a["policy"], atol=5e-2, rtol=0)


def test_attention_low_opset_is_refused_with_remedy(generated_dir, lc0_binary):
    """lc0 0.32.1 writes LayerNormalization (opset 17) even for --onnx-opset=16: refused, naming the remedy."""
    attention = pytest.importorskip("lczerolens.testing")
    spec = attention.AttentionNetSpec(embedding="PE_MAP", embedding_size=16, encoder_layers=1, heads=2)
    pb = attention.write_attention_net(spec, generated_dir / "c-attn-opset16.pb.gz")
    onnx_path = generated_dir / "c-attn-opset16.onnx"
    export(lc0_binary, pb, onnx_path, "--onnx-opset=16")
    with pytest.raises(UnsupportedModelError, match=r"LayerNormalization.*--onnx-opset=17"):
        load_onnx(onnx_path)
