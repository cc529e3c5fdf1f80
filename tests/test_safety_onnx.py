"""A hostile or corrupted ``.onnx`` file: no string from it reaches generated code, sizes are bounded before
anything is allocated, external data is read only from the model's own folder, and every failure is a
``ModelLoadError`` raised by ``from_path`` itself (never later, never another exception type)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lczerolens import LczeroModel
from lczerolens.errors import LczeroLensError, ModelLoadError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def tiny_onnx(
    *,
    conv_name: str = "/inputconv",
    names: dict[str, str] | None = None,
    policy_weight: np.ndarray | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """A small lc0-shaped export: planes -> 1x1 conv -> flatten -> MatMul (policy) / MatMul + Softmax (WDL).

    ``conv_name`` names the convolution node (kept by the loader as a module); ``names`` renames other nodes.
    """
    names = {"flatten": "/flatten", "policy": "/output/policy", "value": "/value/matmul", "wdl": "/output/wdl"}
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(size=(1, 112, 1, 1)).astype(np.float32)
    conv_b = np.zeros(1, np.float32)
    pol_w = rng.normal(size=(64, 1858)).astype(np.float32) if policy_weight is None else policy_weight
    val_w = rng.normal(size=(64, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(conv_w, "/inputconv/w"),
        numpy_helper.from_array(conv_b, "/inputconv/b"),
        numpy_helper.from_array(pol_w, "/policy/w"),
        numpy_helper.from_array(val_w, "/value/w"),
    ]
    nodes = [
        helper.make_node("Conv", ["/input/planes", "/inputconv/w", "/inputconv/b"], ["/inputconv"], name=conv_name),
        helper.make_node("Flatten", ["/inputconv"], ["/flatten"], name=names["flatten"], axis=1),
        helper.make_node("MatMul", ["/flatten", "/policy/w"], ["/output/policy"], name=names["policy"]),
        helper.make_node("MatMul", ["/flatten", "/value/w"], ["/value/matmul"], name=names["value"]),
        helper.make_node("Softmax", ["/value/matmul"], ["/output/wdl"], name=names["wdl"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("/input/planes", TensorProto.FLOAT, ["batch", 112, 8, 8])],
        [
            helper.make_tensor_value_info("/output/policy", TensorProto.FLOAT, ["batch", 1858]),
            helper.make_tensor_value_info("/output/wdl", TensorProto.FLOAT, ["batch", 3]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def save(model, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_tiny_export_loads_and_matches_numpy(tmp_path):
    model = LczeroModel.from_path(save(tiny_onnx(), tmp_path / "tiny.onnx"))
    planes = torch.randn(2, 112, 8, 8)
    out = model(planes)
    m = tiny_onnx()
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in m.graph.initializer}
    flat = (planes * w["/inputconv/w"].view(1, 112, 1, 1)).sum(1).flatten(1) + w["/inputconv/b"]
    torch.testing.assert_close(out["policy"], flat @ w["/policy/w"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["wdl_logits"], flat @ w["/value/w"], rtol=1e-5, atol=1e-4)


def test_injected_node_name_with_newline_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    hostile = f'/x")\nopen({str(marker)!r}, "w").write("1")\n("'
    path = save(tiny_onnx(conv_name=hostile), tmp_path / "hostile.onnx")
    with pytest.raises(ModelLoadError, match="control characters"):
        LczeroModel.from_path(path)
    assert not marker.exists()


@pytest.mark.parametrize("tail", ["", "\\"])
def test_injected_node_name_without_newline_is_mapped_to_a_safe_name(tmp_path, tail):
    # Written unescaped into `getattr(self, "...")`, the first name creates the marker on the first forward.
    marker = tmp_path / "pwned"
    hostile = f'initializers"); open({str(marker)!r}, "w"); ("' + tail  # no dots: they become slashes
    model = LczeroModel.from_path(save(tiny_onnx(conv_name=hostile), tmp_path / "hostile.onnx"))
    out = model(torch.randn(3, 112, 8, 8))
    assert out["policy"].shape == (3, 1858) and torch.isfinite(out["policy"]).all()
    grad_in = torch.randn(1, 112, 8, 8, requires_grad=True)
    model(grad_in)["policy"][0, 5].backward()  # the backward runs the same generated code
    assert grad_in.grad is not None
    assert not marker.exists()
    mapped = [name for name, original in model.network.onnx_names.items() if original == hostile]
    assert len(mapped) == 1 and '"' not in mapped[0] and "\\" not in mapped[0] and "'" not in mapped[0]
    assert hostile not in model.network.code


@pytest.mark.parametrize(
    "conv_name",
    ["if", "forward", "initializers", "graph", "_private", "onnx_initializer_0", "", "/", "a.b.c", "/flatten"],
)
def test_awkward_node_names_load(tmp_path, conv_name):
    model = LczeroModel.from_path(save(tiny_onnx(conv_name=conv_name), tmp_path / "n.onnx"))
    out = model(torch.randn(1, 112, 8, 8))
    assert torch.isfinite(out["policy"]).all()
    assert callable(model.network.forward) and "initializers" in model.network._modules


def test_non_utf8_node_name_is_a_model_load_error(tmp_path):
    data = tiny_onnx(conv_name="/inputconvXX").SerializeToString().replace(b"/inputconvXX", b"/inputconv\xff\xfe")
    path = tmp_path / "bad-utf8.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match="not valid UTF-8"):
        LczeroModel.from_path(path)


def test_absurdly_long_name_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="characters long"):
        LczeroModel.from_path(save(tiny_onnx(conv_name="/x" * 400), tmp_path / "long.onnx"))


def test_maia_export_keeps_lc0_names(maia_onnx_path):
    net = LczeroModel.from_path(maia_onnx_path).network
    assert net.onnx_names and all(original == "/" + name for name, original in net.onnx_names.items())
    assert "block0/conv1/relu" in dict(net.named_modules())


def test_tensor_declaring_more_values_than_it_holds(tmp_path):
    m = tiny_onnx()
    m.graph.initializer[2].dims[0] = 10**9  # 10^9 x 1858 floats declared, 64 x 1858 held
    with pytest.raises(ModelLoadError, match="policy/w"):
        LczeroModel.from_path(save(m, tmp_path / "huge.onnx"))
    m = tiny_onnx()
    m.graph.initializer[2].dims[0] = 32
    with pytest.raises(ModelLoadError, match="holds"):
        LczeroModel.from_path(save(m, tmp_path / "short.onnx"))


def test_file_over_the_size_cap(tmp_path):
    path = save(tiny_onnx(), tmp_path / "t.onnx")
    with pytest.raises(ModelLoadError, match="limit"):
        LczeroModel.from_path(path, max_bytes=1000)


def test_nan_weight_is_refused_at_load_naming_it(tmp_path):
    w = np.random.default_rng(1).normal(size=(64, 1858)).astype(np.float32)
    w[3, 7] = np.nan
    with pytest.raises(ModelLoadError, match="'/policy/w' holds NaN"):
        LczeroModel.from_path(save(tiny_onnx(policy_weight=w), tmp_path / "nan.onnx"))


def test_gather_index_out_of_range_fails_at_load(tmp_path):
    m = tiny_onnx()
    # policy = Gather(flatten, index) along axis 1 with an index past the end: fails only when run.
    g = m.graph
    g.initializer.append(numpy_helper.from_array(np.array([0, 99], dtype=np.int64), "/gather/idx"))
    g.node.insert(2, helper.make_node("Gather", ["/flatten", "/gather/idx"], ["/gathered"], name="/gather", axis=1))
    g.node[3].input[0] = "/gathered"  # policy MatMul now takes [N, 2]
    g.initializer[2].CopyFrom(numpy_helper.from_array(np.ones((2, 1858), np.float32), "/policy/w"))
    with pytest.raises(ModelLoadError, match="starting position"):
        LczeroModel.from_path(save(m, tmp_path / "gather.onnx"))


@pytest.mark.parametrize("op", ["Expand", "ConstantOfShape"])
def test_constant_sized_huge_allocation_is_refused_before_running(tmp_path, op):
    m = tiny_onnx()
    g = m.graph
    g.initializer.append(numpy_helper.from_array(np.array([1, 1, 10**6, 10**6], dtype=np.int64), "/shape"))
    inputs = ["/inputconv", "/shape"] if op == "Expand" else ["/shape"]
    g.node.insert(1, helper.make_node(op, inputs, ["/big"], name="/big"))
    g.node.insert(2, helper.make_node("ReduceMean", ["/big"], ["/small"], name="/small", keepdims=1, axes=[2, 3]))
    g.node.insert(3, helper.make_node("Add", ["/inputconv", "/small"], ["/sum"], name="/sum"))
    g.node[4].input[0] = "/sum"  # the Flatten
    with pytest.raises(ModelLoadError, match="would allocate"):
        LczeroModel.from_path(save(m, tmp_path / "alloc.onnx"))


# ----------------------------------------------------------------------------------------------- external data


def external(tmp_path: Path, location: str, *, write_to: Path | None = None) -> Path:
    """The tiny export with its policy weights in external data named ``location``; returns the .onnx path."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    m = tiny_onnx()
    t = m.graph.initializer[2]
    raw = numpy_helper.to_array(t).tobytes()
    target = write_to if write_to is not None else folder / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return save(m, folder / "net.onnx")


def test_external_data_next_to_the_model_loads_from_any_directory(tmp_path, monkeypatch):
    path = external(tmp_path, "weights.bin")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = LczeroModel.from_path(path)
    reference = LczeroModel.from_path(save(tiny_onnx(), tmp_path / "inline.onnx"))
    planes = torch.randn(2, 112, 8, 8)
    torch.testing.assert_close(model(planes)["policy"], reference(planes)["policy"])


def test_external_data_is_not_read_from_the_current_directory(tmp_path, monkeypatch):
    path = external(tmp_path, "weights.bin", write_to=tmp_path / "cwd" / "weights.bin")
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(ModelLoadError, match="missing"):
        LczeroModel.from_path(path)


def test_external_data_through_dotdot_is_refused(tmp_path):
    path = external(tmp_path, "../secret.bin", write_to=tmp_path / "secret.bin")
    with pytest.raises(ModelLoadError, match=r"'\.\.'"):
        LczeroModel.from_path(path)


def test_external_data_with_an_absolute_path_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    path = external(tmp_path, str(secret), write_to=secret)
    with pytest.raises(ModelLoadError, match="absolute"):
        LczeroModel.from_path(path)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks here")
def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    path = external(tmp_path, "link.bin", write_to=secret)
    (tmp_path / "model" / "link.bin").symlink_to(secret)
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        LczeroModel.from_path(path)


def test_external_data_from_bytes_is_refused(tmp_path):
    from lczerolens.model.onnx_loader import load_onnx

    path = external(tmp_path, "weights.bin")
    with pytest.raises(ModelLoadError, match="external"):
        load_onnx(path.read_bytes())


def test_external_data_of_the_wrong_length_is_refused(tmp_path):
    path = external(tmp_path, "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ModelLoadError, match="do not belong together"):
        LczeroModel.from_path(path)


def test_every_failure_is_a_package_error(tmp_path):
    """Bytes that parse as protobuf but make no sense: only package errors."""
    data = tiny_onnx().SerializeToString()
    rng = np.random.default_rng(0)
    for i in range(20):
        mutated = bytearray(data)
        for pos in rng.integers(0, len(data), size=4):
            mutated[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"m{i}.onnx"
        path.write_bytes(bytes(mutated))
        try:
            model = LczeroModel.from_path(path)
        except LczeroLensError:
            continue
        assert torch.isfinite(model(torch.zeros(1, 112, 8, 8))["policy"]).all()
