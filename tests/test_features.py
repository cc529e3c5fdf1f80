"""SAE features: SAELens-format round trip, training, metrics, and LRP through features (sum identity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lczerolens import LczeroBoard, LczeroModel
from lczerolens.features import SAE, feature_relevance, load_sae, module_tokens, sae_metrics, train_sae
from lczerolens.lenses import LrpLens

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT / "assets" / "cache" / "maia-1900.pb.gz"
SHIPPED = ROOT / "assets" / "saes" / "maia-1900-block3"
MODULE = "block3/conv2/relu"
FENS = [
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
    "r1bq1rk1/ppp2ppp/2np1n2/2b1p3/2B1P3/2NP1N2/PPP2PPP/R1BQ1RK1 w - - 0 7",
    "8/5pk1/6p1/3R4/8/6P1/5PKP/2r5 b - - 1 40",
    "rnbqkb1r/pp3ppp/4pn2/2pp4/3P4/2P1PN2/PP3PPP/RNBQKB1R w KQkq - 0 5",
]


@pytest.fixture(scope="module")
def model() -> LczeroModel:
    if not NET.exists():
        pytest.skip("maia-1900.pb.gz is not in assets/cache (make assets)")
    return LczeroModel.from_path(NET)


@pytest.fixture(scope="module")
def boards() -> list[LczeroBoard]:
    return [LczeroBoard(f) for f in FENS]


@pytest.mark.parametrize("arch,k", [("topk", 3), ("standard", None), ("jumprelu", None)])
def test_save_load_round_trip(tmp_path: Path, arch: str, k: int | None) -> None:
    sae = SAE.create(8, 32, arch, k=k, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
        if arch == "jumprelu":
            sae.threshold.fill_(0.05)
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["d_in"] == 8 and cfg["d_sae"] == 32
    assert cfg["metadata"]["sae_lens_version"] >= "6"
    back = load_sae(tmp_path)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(back.encode(x), sae.encode(x))
    assert torch.equal(back.decode(back.encode(x)), sae.decode(sae.encode(x)))
    # The encoding follows SAELens's formula: activation((x - b_dec) @ W_enc + b_enc).
    h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if arch == "standard":
        assert torch.allclose(sae.encode(x), torch.relu(h))
    if arch == "topk":
        assert int((sae.encode(x) > 0).sum(-1).max()) <= 3


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    from lczerolens.errors import DataError

    SAE.create(4, 8, "topk", k=2).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["normalize_activations"] = "constant_norm_rescale"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="normalize_activations"):
        load_sae(tmp_path)
    with pytest.raises(DataError, match="missing"):
        load_sae(tmp_path / "nowhere")


def test_train_and_metrics_small(model: LczeroModel, boards: list[LczeroBoard]) -> None:
    sae = train_sae(
        model, boards, MODULE, features=64, k=4, steps=20, batch_size=128, buffer_tokens=512, progress=False, seed=0
    )
    x = module_tokens(model, boards, MODULE)
    f = sae.encode(x)
    assert f.shape == (4, 64, 64) and int((f > 0).sum(-1).max()) <= 4
    m = sae_metrics(model, sae, MODULE, boards)
    assert set(m) >= {"fve", "l0", "dead", "kl", "value_error"}
    assert m["l0"] <= 4 and 0 <= m["dead"] <= 1 and m["kl"] >= 0
    # Same seed, same SAE.
    again = train_sae(
        model, boards, MODULE, features=64, k=4, steps=20, batch_size=128, buffer_tokens=512, progress=False, seed=0
    )
    assert torch.equal(again.W_dec, sae.W_dec)


def test_feature_relevance_sums_to_lrp(model: LczeroModel, boards: list[LczeroBoard]) -> None:
    sae = train_sae(
        model, boards, MODULE, features=64, k=4, steps=10, batch_size=128, buffer_tokens=512, progress=False, seed=0
    )
    half = list(range(32))
    rel = feature_relevance(model, boards, sae, MODULE, [half, list(range(32, 64)), "error"])
    plain = LrpLens().relevance(model, boards)
    parts = rel.planes.reshape(len(boards), 3, 112, 8, 8)
    total = parts.sum(1)
    assert (total - plain.planes).abs().max() <= 1e-3 * plain.planes.abs().max()
    # The network's output is untouched, and one feature group's map is not empty.
    assert torch.allclose(rel.outputs["policy"][::3], model(boards)["policy"], atol=1e-4)
    assert parts[:, 0].abs().sum() > 0
    # The same boards (a batch of another size rounds the SAE's matmul differently, and TopK can then pick
    # another feature on a near tie: the maps are exact only for the same inputs).
    single = feature_relevance(model, boards, sae, MODULE, "error")
    assert (single.planes - parts[:, 2]).abs().max() <= 1e-4 * parts[:, 2].abs().max()
    # A value target takes the lens's rules for value targets (the default's SE-gate share) here too.
    value = feature_relevance(model, boards, sae, MODULE, [list(range(64)), "error"], target="value")
    plain_value = LrpLens().relevance(model, boards, "value").planes
    summed = value.planes.reshape(len(boards), 2, 112, 8, 8).sum(1)
    assert (summed - plain_value).abs().max() <= 1e-3 * plain_value.abs().max()


def test_shipped_sae_on_held_out_positions(model: LczeroModel) -> None:
    if not SHIPPED.exists():
        pytest.skip("no shipped SAE")
    sae = load_sae(SHIPPED)
    assert sae.d_in == 64 and sae.metadata["hook_name"] == MODULE
    held = ROOT / "assets" / "saes" / "maia-1900-block3" / "heldout.fen"
    boards = [LczeroBoard(line) for line in held.read_text().splitlines()[:64] if line.strip()]
    m = sae_metrics(model, sae, MODULE, boards)
    assert m["fve"] >= 0.85 and m["l0"] <= 16 and m["kl"] <= 0.1
    # The card's record of the full held-out set (5,205 positions of unseen games) meets the floor.
    record = sae.metadata["heldout_metrics"]
    assert record["fve"] >= 0.85 and record["l0"] <= 16 and record["dead"] <= 0.10 and record["kl"] <= 0.1
    assert (SHIPPED / "README.md").is_file()
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) <= 1 << 20


def test_shipped_sae_feature_maps_add_up_to_the_lrp_map(model: LczeroModel) -> None:
    if not SHIPPED.exists():
        pytest.skip("no shipped SAE")
    sae = load_sae(SHIPPED)
    lines = (SHIPPED / "heldout.fen").read_text().splitlines()
    boards = [LczeroBoard(line) for line in lines[100:103]]
    plain = LrpLens().relevance(model, boards)
    parts = feature_relevance(model, boards, sae, MODULE, [list(range(sae.d_sae)), "error"])
    summed = parts.planes.reshape(len(boards), 2, *parts.planes.shape[1:]).sum(1)
    scale = plain.planes.abs().amax(dim=(1, 2, 3), keepdim=True)
    assert ((summed - plain.planes).abs() <= 1e-3 * scale).all()
    # One feature active on the first board carries a map that is not empty.
    active = torch.nonzero(sae.encode(module_tokens(model, boards[:1], MODULE))[0].amax(0) > 0)[:, 0]
    one = feature_relevance(model, boards[0], sae, MODULE, [int(active[0])])
    assert one.planes.abs().sum() > 0


def test_sae_lens_reads_the_shipped_files_as_we_do() -> None:
    """SAELens itself (the ``saelens`` extra; not installed by ``make test``: it brings transformers and wandb)
    loads the shipped directory and encodes and decodes exactly as :func:`load_sae`."""
    sae_lens = pytest.importorskip("sae_lens")
    if not SHIPPED.exists():
        pytest.skip("no shipped SAE")
    theirs = sae_lens.SAE.load_from_disk(str(SHIPPED))
    ours = load_sae(SHIPPED)
    x = torch.relu(torch.randn(256, 64, generator=torch.Generator().manual_seed(0))) * 2
    with torch.no_grad():
        assert torch.equal(theirs.encode(x), ours.encode(x))
        assert torch.equal(theirs.decode(ours.encode(x)), ours.decode(ours.encode(x)))


def test_shipped_attention_net_sae() -> None:
    """The SAE of the distilled attention net's residual stream: its card's record on unseen positions, and maps
    through all features plus the error term that add up to the (AttnLRP) map."""
    root = ROOT / "assets" / "saes" / "bt-distilled-encoder2"
    if not root.exists():
        pytest.skip("no shipped attention-net SAE")
    model = LczeroModel.from_path(ROOT / "assets" / "nets" / "bt-distilled.pb.gz")
    sae = load_sae(root)
    module = sae.metadata["hook_name"]
    record = sae.metadata["heldout_metrics"]
    assert record["fve"] >= 0.85 and record["l0"] <= 16 and record["dead"] <= 0.10 and record["kl"] <= 0.1
    assert sum(f.stat().st_size for f in root.iterdir()) <= 1 << 20
    boards = [LczeroBoard(line) for line in (root / "heldout.fen").read_text().splitlines()[:2]]
    assert sae_metrics(model, sae, module, boards)["fve"] >= 0.8
    plain = LrpLens().relevance(model, boards)
    parts = feature_relevance(model, boards, sae, module, [list(range(sae.d_sae)), "error"])
    summed = parts.planes.reshape(len(boards), 2, *parts.planes.shape[1:]).sum(1)
    scale = plain.planes.abs().amax(dim=(1, 2, 3), keepdim=True)
    assert ((summed - plain.planes).abs() <= 1e-3 * scale).all()
    assert parts.planes[0::2].abs().sum() > 0  # the features carry some of the map
