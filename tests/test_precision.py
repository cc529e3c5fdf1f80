"""TF32 is off while lczerolens computes and the user's settings come back afterwards.

On a GPU, PyTorch lets cuDNN run float32 convolutions in TF32 by default; measured on an H200 it moved maia-1900's
logits by 0.24% and LrpLens()'s top-move maps by up to 24% of their largest value (benchmarks/cuda_check.py). The
switch is process-wide, so these tests read it on the CPU: what the model and each lens see during their passes.
"""

from __future__ import annotations

import threading

import pytest
import torch

from lczerolens.lenses import (
    ActivationLens,
    GradientLens,
    LogitLens,
    LrpLens,
    OcclusionLens,
)
from lczerolens.model.precision import ieee_float32
from lczerolens.testing import random_boards, write_random_net


@pytest.fixture()
def tf32_on():
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    yield
    torch.backends.cudnn.allow_tf32 = saved[0]
    torch.set_float32_matmul_precision(saved[1])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from lczerolens.model import LczeroModel

    return LczeroModel.from_path(write_random_net(tmp_path_factory.mktemp("net") / "net.pb.gz", seed=3))


def _settings() -> tuple[bool, str]:
    return torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()


def test_the_context_turns_tf32_off_and_restores_the_settings(tf32_on):
    with ieee_float32():
        assert _settings() == (False, "highest")
        with ieee_float32():
            assert _settings() == (False, "highest")
        assert _settings() == (False, "highest")  # still inside the outer block
    assert _settings() == (True, "high")


def test_the_settings_come_back_after_an_exception(tf32_on):
    with pytest.raises(RuntimeError), ieee_float32():
        raise RuntimeError("boom")
    assert _settings() == (True, "high")


def test_overlapping_calls_from_threads_restore_once_the_last_leaves(tf32_on):
    inside, release = threading.Barrier(3), threading.Event()
    seen: list[tuple[bool, str]] = []

    def work() -> None:
        with ieee_float32():
            inside.wait()
            release.wait()
            seen.append(_settings())

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert _settings() == (False, "highest")
    release.set()
    for t in threads:
        t.join()
    assert seen == [(False, "highest")] * 2
    assert _settings() == (True, "high")


@pytest.mark.parametrize(
    "call",
    [
        lambda m, b: m(b),
        lambda m, b: LrpLens().relevance(m, b),
        lambda m, b: GradientLens("gradient_x_input").relevance(m, b, "value"),
        lambda m, b: OcclusionLens().relevance(m, b[:1]),
        lambda m, b: ActivationLens(modules=("block0/conv2/relu",)).activations(m, b),
        lambda m, b: LogitLens().outputs(m, b),
    ],
    ids=["forward", "lrp", "gradient", "occlusion", "activations", "logit lens"],
)
def test_every_pass_of_the_model_and_the_lenses_runs_without_tf32(model, tf32_on, call):
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: dict[str, set[tuple[bool, str]]] = {}

    class Watch(TorchDispatchMode):
        """Reads the switch at every convolution the passes run, forward and backward."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            if "convolution" in name or "conv2d" in name:
                seen.setdefault(name.split(".")[1], set()).add(_settings())
            return func(*args, **(kwargs or {}))

    boards = random_boards(3, seed=4, min_plies=2)
    with Watch():
        call(model, boards)
    assert "convolution" in seen, f"no convolution seen: {sorted(seen)}"
    assert set().union(*seen.values()) == {(False, "highest")}
    assert _settings() == (True, "high")


def test_a_backward_pass_runs_without_tf32(model, tf32_on):
    """The rules' transposed convolutions run in the backward pass, after the forward has returned."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[tuple[bool, str]] = set()

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "convolution_backward" in str(func) or "conv_transpose" in str(func):
                seen.add(_settings())
            return func(*args, **(kwargs or {}))

    with Watch():
        LrpLens().relevance(model, random_boards(2, seed=5, min_plies=2), "value")
    assert seen == {(False, "highest")}
