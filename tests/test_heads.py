"""``heads=``: lczerolens's networks compute only the heads asked for, and the lenses ask for the one they explain."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lczerolens.board import LczeroBoard, encode_boards
from lczerolens.errors import InvalidOptionError
from lczerolens.lenses import GradientLens, LrpLens, OcclusionLens
from lczerolens.model import LczeroModel
from lczerolens.testing import AttentionNetSpec, random_boards, write_attention_net, write_random_net

SPECS = {
    "conv policy, wdl, mlh": dict(family="residual", moves_left=True),
    "classical policy, value logit": dict(family="residual", policy="classical", value="value"),
    "attention policy on a residual body": dict(family="residual", policy="attention"),
    "attention body": dict(family="attention"),
}
KEYS = {"policy": {"policy"}, "value": {"wdl_logits", "value_logit"}, "mlh": {"mlh"}}


@pytest.fixture(scope="module", params=list(SPECS))
def model(request, tmp_path_factory) -> LczeroModel:
    spec = dict(SPECS[request.param])
    path = tmp_path_factory.mktemp("heads") / "net.pb.gz"
    if spec.pop("family") == "attention":
        write_attention_net(AttentionNetSpec(seed=4), path)
    else:
        write_random_net(path, **spec)
    return LczeroModel.from_path(path)


def test_each_selection_gives_exactly_those_heads_and_the_same_numbers(model):
    x = encode_boards(random_boards(3, seed=2), model.input_format)
    with torch.no_grad():
        full = model.network(x)
    own = [h for h in ("policy", "value", "mlh") if KEYS[h] & set(full)]
    for heads in own + [own[:2], tuple(own)]:
        with torch.no_grad():
            part = model.network(x, heads=heads)
        names = [heads] if isinstance(heads, str) else heads
        assert set(part) == {k for h in names for k in KEYS[h] & set(full)}
        for key, value in part.items():
            assert torch.equal(value, full[key]), key


def test_bad_selections_raise_one_clear_error(model):
    x = encode_boards([LczeroBoard()], model.input_format)
    with pytest.raises(InvalidOptionError, match="unknown head 'wdl'"):
        model.network(x, heads="wdl")
    with pytest.raises(InvalidOptionError, match="name at least one head"):
        model.network(x, heads=[])
    if "mlh" not in model.network(x):
        with pytest.raises(InvalidOptionError, match="no 'mlh' head"):
            model.network(x, heads=["value", "mlh"])


class _HeadConvolutions(TorchDispatchMode):
    """Which heads' convolutions run, told apart by their weights' shapes: the policy head's second convolution
    has 80 output planes, the value head's has 32 (1x1); the test net's body has 16 filters."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.mkldnn_convolution):
            out_channels = args[1].shape[0]
            if out_channels == 80:
                self.seen.add("policy")
            elif out_channels == 32:
                self.seen.add("value")
        return func(*args, **(kwargs or {}))


def test_gradient_lenses_and_occlusion_skip_the_heads_they_do_not_explain(tmp_path):
    """Explaining the value runs no convolution of the policy head, and the top move none of the value head's."""
    model = LczeroModel.from_path(write_random_net(tmp_path / "net.pb.gz"))
    boards = random_boards(4, seed=5)
    lenses = (GradientLens("gradient_x_input"), GradientLens("integrated_gradients", steps=4),
              GradientLens("smoothgrad", samples=2), OcclusionLens())  # fmt: skip
    for lens in lenses:
        for target, head in (("value", "value"), (None, "policy")):
            with _HeadConvolutions() as mode:
                lens.relevance(model, boards, target=target)
            assert mode.seen == {head}, (lens, target, mode.seen)


def test_lrp_runs_every_head_because_its_result_carries_them(tmp_path):
    """``Relevance.outputs`` holds every output of the network (the caption of a move map shows the WDL)."""
    model = LczeroModel.from_path(write_random_net(tmp_path / "net.pb.gz"))
    boards = random_boards(2, seed=5)
    with _HeadConvolutions() as mode:
        rel = LrpLens().relevance(model, boards, target="value")
    assert mode.seen == {"policy", "value"}
    assert set(rel.outputs) == {"policy", "wdl_logits"}


def test_the_maps_are_the_same_as_with_every_head(tmp_path):
    """The explained head's numbers do not depend on the others: gradient x input equals autograd through the
    full forward pass."""
    model = LczeroModel.from_path(write_random_net(tmp_path / "net.pb.gz"))
    boards = random_boards(4, seed=6)
    fast = GradientLens("gradient_x_input").relevance(model, boards, target="value")
    x = encode_boards(boards, model.input_format).requires_grad_(True)
    out = model.network(x)["wdl_logits"]
    (grad,) = torch.autograd.grad(out, x, torch.tensor([1.0, 0.0, -1.0]).expand_as(out))
    torch.testing.assert_close(fast.planes, (x * grad).detach(), atol=0, rtol=0)
