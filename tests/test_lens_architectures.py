"""Every lens on the residual variants the loaders support, through both loading paths (.pb.gz and lc0's export)."""

from __future__ import annotations

import pytest
import torch

from lczerolens.board import LczeroBoard
from lczerolens.errors import LensError
from lczerolens.lenses import ActivationLens, AttentionLens, GradientLens, OcclusionLens, PatchingLens, corrupt
from lczerolens.model import LczeroModel
from lczerolens.testing import random_boards, write_random_net

pytest.importorskip("onnxruntime")
from lens_oracles import export  # noqa: E402
from test_lens_activation import compare  # noqa: E402

SPECS = {
    "classical-value-mish": dict(policy="classical", value="value", activation="mish", moves_left=True),
    "attention-policy-wdl": dict(policy="attention", value="wdl", se=False),
}


@pytest.fixture(scope="module", params=list(SPECS), ids=list(SPECS))
def variant(request, generated_dir, lc0_binary):
    name = request.param
    pb = write_random_net(generated_dir / f"lens-{name}.pb.gz", blocks=2, filters=16, seed=4, **SPECS[name])
    onnx_path = export(lc0_binary, pb, generated_dir / f"lens-{name}.onnx")
    return LczeroModel.from_path(pb), LczeroModel.from_path(onnx_path), onnx_path


def test_every_lens_agrees_across_loading_paths(variant):
    native, exported, onnx_path = variant
    boards = random_boards(2, seed=5, min_plies=7)
    assert compare(exported, onnx_path, boards) > 20
    assert compare(native, onnx_path, boards, exclude_linear=True) > 10
    targets = ["value", None] + (["mlh"] if "mlh" in native.heads else [])
    for target in targets:
        for lens in (GradientLens("gradient_x_input"), GradientLens("integrated_gradients", steps=4), OcclusionLens()):
            a = lens.relevance(native, boards, target=target)
            b = lens.relevance(exported, boards, target=target)
            torch.testing.assert_close(a.squares.float(), b.squares.float(), atol=1e-4, rtol=1e-3)
    clean = corrupt(boards[0])
    bad = corrupt(clean, remove=next(s for s, p in clean.piece_map().items() if p.piece_type != 6))
    effects = [PatchingLens("block1/conv?").patch(m, clean, bad, per_square=True) for m in (native, exported)]
    for key in effects[0].keys():
        if key in effects[1].keys():
            torch.testing.assert_close(effects[0][key], effects[1][key], atol=1e-4, rtol=0)
    for model in (native, exported):
        with pytest.raises(LensError, match="no attention layers"):
            AttentionLens().attention(model, LczeroBoard())
        assert ActivationLens("block1/conv2/*").activations(model, boards).batch_size == torch.Size([2])
