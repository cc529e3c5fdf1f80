"""ActivationLens against onnxruntime at the node of the same name in lc0's own ONNX export."""

from __future__ import annotations

import pytest
import torch

from lczerolens.board import encode_boards
from lczerolens.errors import LensError
from lczerolens.lenses import ActivationLens
from lczerolens.model import LczeroModel
from lczerolens.testing import random_boards

pytest.importorskip("onnxruntime")
from lens_oracles import export, node_outputs, ort_nodes  # noqa: E402


@pytest.fixture(scope="module")
def attention_files(generated_dir, lc0_binary):
    attention = pytest.importorskip("lczerolens.testing")
    spec = attention.AttentionNetSpec(embedding="PE_MAP", embedding_size=32, encoder_layers=2, heads=4, seed=5)
    pb = attention.write_attention_net(spec, generated_dir / "lens-attn.pb.gz")
    return pb, export(lc0_binary, pb, generated_dir / "lens-attn.onnx")


def compare(model: LczeroModel, onnx_path, boards, *, exclude_linear: bool = False) -> int:
    """Every activation of ``model`` that is a node of the export equals onnxruntime there (1e-4); count them."""
    acts = ActivationLens("*").activations(model, boards)
    nodes = node_outputs(onnx_path)
    modules = dict(model.network.named_modules())
    names = [k for k in acts.keys() if k in nodes]
    ref = ort_nodes(onnx_path, encode_boards(boards, model.input_format), [nodes[k] for k in names])
    for name in names:
        expected = torch.from_numpy(ref[nodes[name]])
        got = acts[name].reshape(expected.shape)
        module = modules[name]
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            # The .pb.gz loader fuses lc0's MatMul and bias Add nodes into one Linear named after the MatMul.
            assert exclude_linear, name
            got = got - module.bias
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0, msg=name)
    return len(names)


def test_maia_onnx_every_module_equals_onnxruntime(maia_onnx_path):
    model = LczeroModel.from_path(maia_onnx_path)
    boards = random_boards(3, seed=2, min_plies=5)
    assert compare(model, maia_onnx_path, boards) == 99


def test_maia_pb_modules_equal_the_export_nodes(maia_pb_path, maia_onnx_path):
    model = LczeroModel.from_path(maia_pb_path)
    boards = random_boards(3, seed=3, min_plies=5)
    assert compare(model, maia_onnx_path, boards, exclude_linear=True) >= 50


def test_attention_net_both_paths_equal_onnxruntime(attention_files):
    pb, onnx_path = attention_files
    boards = random_boards(3, seed=4, min_plies=5)
    assert compare(LczeroModel.from_path(onnx_path), onnx_path, boards) > 100
    assert compare(LczeroModel.from_path(pb), onnx_path, boards, exclude_linear=True) > 40
    # Tokens come boards-first, [N, 64, E], although the export runs them as [N*64, E].
    acts = ActivationLens("encoder1/ln2").activations(LczeroModel.from_path(onnx_path), boards)
    assert acts["encoder1/ln2"].shape == (3, 64, 32)


def test_batches_patterns_and_errors(maia_pb_path):
    model = LczeroModel.from_path(maia_pb_path)
    boards = random_boards(5, seed=6)
    lens = ActivationLens(("block*/conv2/relu", "inputconv"))
    whole = lens.activations(model, boards)
    parts = lens.activations(model, boards, batch_size=2)
    assert list(whole.keys()) == ["inputconv"] + [f"block{i}/conv2/relu" for i in range(6)]
    assert whole.batch_size == torch.Size([5]) and whole["block3/conv2/relu"].shape == (5, 64, 8, 8)
    for key in whole.keys():
        torch.testing.assert_close(parts[key], whole[key], atol=1e-5, rtol=1e-6)
    # planes= runs another input (here the same encoding): the same values.
    planes = encode_boards(boards, model.input_format)
    assert torch.equal(lens.activations(model, boards, planes=planes)["inputconv"], whole["inputconv"])
    with pytest.raises(LensError, match=r"no module matches 'block9\*'.*block"):
        ActivationLens("block9*").activations(model, boards)
    with pytest.raises(LensError, match="no module matches"):
        ActivationLens("nothing/here").names(model)


def test_the_model_is_never_touched(maia_pb_path):
    model = LczeroModel.from_path(maia_pb_path)
    before = [(name, id(m), dict(m._forward_hooks)) for name, m in model.network.named_modules()]
    ActivationLens("*").activations(model, random_boards(2, seed=7))
    after = [(name, id(m), dict(m._forward_hooks)) for name, m in model.network.named_modules()]
    assert before == after


def test_threads_share_one_model_exactly(maia_pb_path):
    from concurrent.futures import ThreadPoolExecutor

    from lczerolens.lenses import PatchingLens

    model = LczeroModel.from_path(maia_pb_path)
    boards = random_boards(3, seed=8, min_plies=4)
    planes = encode_boards(boards, 1)
    lens = ActivationLens("block*/conv1/relu")
    with torch.no_grad():
        plain = model.network(planes)["policy"]
    alone = lens.activations(model, boards)
    jobs = [
        lambda: lens.activations(model, boards),
        lambda: PatchingLens("block2/conv2/relu").patch(model, boards, boards[::-1], per_square=True),
        lambda: model.network(planes)["policy"],
    ] * 3
    with torch.no_grad(), ThreadPoolExecutor(3) as pool:
        results = [f.result() for f in [pool.submit(job) for job in jobs]]
    for result in results[0::3]:
        for key in alone.keys():
            assert torch.equal(result[key], alone[key])
    for result in results[2::3]:
        assert torch.equal(result, plain)
