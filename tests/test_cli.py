"""The ``lczerolens`` command line on the real maia-1900: output, file written, exit codes, one-line errors."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import chess
import pytest

from lczerolens.cli import main

ROOT = Path(__file__).resolve().parents[1]
MAIA = ROOT / "assets" / "cache" / "maia-1900.pb.gz"
ITALIAN = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
NS = "{http://www.w3.org/2000/svg}"


def _top_moves(stdout: str) -> list[tuple[str, float]]:
    """(uci, probability %) rows of the printed top-move table."""
    return [(m.group(1), float(m.group(2))) for m in re.finditer(r"^\s+\d+\s+(\S+)\s+\S+\s+([\d.]+)%", stdout, re.M)]


def test_help_explains_every_option(capsys) -> None:
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "explain" in top and "usage: lczerolens" in top
    assert main(["explain", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "WEIGHTS",
        "FEN",
        "--move",
        "--target",
        "--out",
        "--history",
        "--top",
        "--epsilon",
        "--softmax",
        "--rule",
        "--orientation",
        "--cmap",
    ):
        assert option in text
    for target in ("value", "win", "draw", "loss", "mlh"):
        assert re.search(rf"^\s+{target}\s+\S", text, re.M), f"target {target} not explained"
    assert main([]) == 2  # no command: the overview, and a usage exit status


def test_device_option_loads_the_network_there(maia_pb_path, tmp_path, capsys) -> None:
    out = tmp_path / "cpu.svg"
    assert main(["explain", str(maia_pb_path), ITALIAN, "--device", "cpu", "--out", str(out)]) == 0
    assert out.exists()
    capsys.readouterr()
    assert main(["explain", str(maia_pb_path), ITALIAN, "--device", "tpu-ish", "--out", str(out)]) == 1
    assert "not a device" in capsys.readouterr().err


def test_explain_top_move_writes_svg(maia_pb_path, tmp_path, capsys) -> None:
    out = tmp_path / "sub" / "heatmap.svg"
    assert main(["explain", str(maia_pb_path), ITALIAN, "--out", str(out), "--top", "4"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert captured.err == ""
    assert "maia-1900.pb.gz" in text and ITALIAN in text
    assert re.search(r"win [\d.]+%\s+draw [\d.]+%\s+loss [\d.]+%", text)
    assert re.search(r"value [+-][\d.]+", text)
    assert "moves left" not in text  # maia-1900 has no MLH head
    rows = _top_moves(text)
    assert len(rows) == 4
    probs = [p for _, p in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.05
    board = chess.Board(ITALIAN)
    assert all(chess.Move.from_uci(uci) in board.legal_moves for uci, _ in rows)
    assert f"softmax over {board.legal_moves.count()} legal moves" in text
    # The default target is the top move: its arrow is drawn and the caption names it.
    best = rows[0][0]
    assert f"explaining {board.san(chess.Move.from_uci(best))} ({best}, top move" in text
    assert f"wrote {out}" in text
    root = ET.fromstring(out.read_text())
    arrows = {el.get("data-move") for el in root.iter() if "move-arrow" in el.get("class", "")}
    assert arrows == {best}
    captions = [el.text for el in root.iter(NS + "text") if el.get("class") == "caption"]
    assert captions and "maia-1900.pb.gz" in captions[0] and best in captions[0]
    assert len([el for el in root.iter(NS + "rect") if el.get("id", "").startswith("square-")]) == 64
    assert any("colorbar" in el.get("class", "") for el in root.iter())
    # The printed probabilities are the model's own (softmax over legal moves).
    from lczerolens import LczeroBoard, LczeroModel

    evaluation = LczeroModel.from_path(maia_pb_path).evaluate(LczeroBoard(ITALIAN), top_k=4)
    assert [m.move.uci() for m in evaluation.moves] == [uci for uci, _ in rows]
    for ms, (_, p) in zip(evaluation.moves, rows, strict=True):
        assert abs(100 * ms.probability - p) <= 0.051


def test_explain_value_with_history_writes_png(maia_pb_path, tmp_path, capsys) -> None:
    pytest.importorskip("cairosvg")
    out = tmp_path / "value.png"
    code = main(
        [
            "explain",
            str(maia_pb_path),
            "startpos",
            "--history",
            "e2e4",
            "e7e5",
            "g1f3",
            "--target",
            "value",
            "--orientation",
            "turn",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    board = chess.Board()
    for uci in ("e2e4", "e7e5", "g1f3"):
        board.push_uci(uci)
    assert board.fen() in text and "(black to move)" in text
    assert "explaining value" in text and re.search(r"value output [+-][\d.]+", text)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 800 and height > 800  # 2x the SVG's ~500 px


def test_explain_chosen_move_in_san(maia_pb_path, tmp_path, capsys) -> None:
    out = tmp_path / "nc3.svg"
    assert main(["explain", str(maia_pb_path), ITALIAN, "--move", "Nc3", "--out", str(out), "--top", "1"]) == 0
    text = capsys.readouterr().out
    assert "explaining Nc3 (b1c3, move #" in text
    root = ET.fromstring(out.read_text())
    assert {el.get("data-move") for el in root.iter() if "move-arrow" in el.get("class", "")} == {"b1c3"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["explain", "{tmp}/missing.pb.gz", ITALIAN], "missing.pb.gz"),
        (["explain", "{maia}", "not a fen"], "not a fen"),
        (["explain", "{maia}", ITALIAN, "--move", "e2e5"], "e2e5"),
        (["explain", "{maia}", ITALIAN, "--history", "a1a8"], "a1a8"),
        (["explain", "{maia}", ITALIAN, "--target", "queen"], "queen"),
        (["explain", "{maia}", ITALIAN, "--target", "mlh"], "mlh"),
        (["explain", "{maia}", ITALIAN, "--out", "{tmp}/heatmap.jpg"], "heatmap.jpg"),
        (["explain", "{maia}", ITALIAN, "--move", "e2e4", "--target", "value"], "not allowed with"),
        (["explain", "{maia}", "7k/5Q2/6K1/8/8/8/8/8 b - - 0 1"], "no legal moves"),
        (["explain", "{tmp}/garbage.onnx", ITALIAN], "garbage.onnx"),
        (["frobnicate"], "frobnicate"),
        (["explain", "{maia}", "4k3/8/8/8/8/8/4R3/4K3 w - - 0 1"], "the side not to move is in check"),
        (["explain", "{maia}", "8/8/8/8/8/8/8/8 w - - 0 1"], "has no king"),
        (["explain", "{maia}", "startpos", "--move", "0000"], "0000"),
        (["explain", "{maia}", "startpos", "--top", "0"], "--top"),
        (["explain", "{maia}", "startpos", "--cmap", "rainbow"], "rainbow"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, fragment, maia_pb_path, tmp_path, capsys) -> None:
    (tmp_path / "garbage.onnx").write_bytes(b"this is not a network")
    argv = [a.format(tmp=tmp_path, maia=maia_pb_path) for a in args]
    code = main(argv)
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("lczerolens: error: ") and fragment in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not list(tmp_path.glob("*.svg")) and not list(tmp_path.glob("heatmap.*"))


def test_python_dash_m_runs_the_cli() -> None:
    # One process (start-up costs seconds): `python -m lczerolens` reaches the CLI and fails in one line.
    done = subprocess.run(
        [sys.executable, "-m", "lczerolens", "explain", str(MAIA), "bad fen"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("lczerolens: error:") and len(done.stderr.strip().splitlines()) == 1
    assert "bad fen" in done.stderr


def test_explain_attention_net_with_moves_left(tmp_path, capsys) -> None:
    # A small random attention-body net (canonical input format, WDL + moves left), written as real lc0 weights.
    testing = pytest.importorskip("lczerolens.testing")
    weights = testing.write_random_net(tmp_path / "bt.pb.gz", "attention", mlh=True, input_format=3, seed=1)
    out = tmp_path / "mlh.svg"
    code = main(
        [
            "explain",
            str(weights),
            "startpos",
            "--history",
            "e2e4",
            "c7c5",
            "--target",
            "mlh",
            "--softmax",
            "cp",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert re.search(r"moves left [\d.]+", text) and "explaining mlh" in text
    root = ET.fromstring(out.read_text())
    captions = " ".join(el.text for el in root.iter(NS + "text") if el.get("class") == "caption")
    assert "softmax=cp" in captions and "moves-left head" in captions
    assert not [el for el in root.iter() if "move-arrow" in el.get("class", "")]  # a head target: no arrow


def test_head_target_missing_from_the_net_is_one_line(tmp_path, capsys) -> None:
    testing = pytest.importorskip("lczerolens.testing")
    weights = testing.write_random_net(tmp_path / "value.pb.gz", value="value", blocks=1, filters=8, seed=2)
    assert main(["explain", str(weights), "startpos", "--target", "win", "--out", str(tmp_path / "w.svg")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a wdl head" in err[0]
    assert not (tmp_path / "w.svg").exists()


def test_gamma_rule_on_maia_and_refused_without_convolutions(maia_pb_path, tmp_path, capsys) -> None:
    out = tmp_path / "gamma.svg"
    assert main(["explain", str(maia_pb_path), ITALIAN, "--rule", "gamma", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # The gamma composite explains the same output; its relevance differs from the epsilon rule's.
    assert "explaining Bc4" in text and "policy logit +13.01" in text
    gamma_total = float(re.search(r"relevance on the squares ([-+\d.]+)", text).group(1))
    assert main(["explain", str(maia_pb_path), ITALIAN, "--out", str(tmp_path / "eps.svg")]) == 0
    eps_total = float(re.search(r"relevance on the squares ([-+\d.]+)", capsys.readouterr().out).group(1))
    assert abs(gamma_total - eps_total) > 1e-3
    root = ET.fromstring(out.read_text())
    captions = " ".join(el.text for el in root.iter(NS + "text") if el.get("class") == "caption")
    assert "gamma composite" in captions

    testing = pytest.importorskip("lczerolens.testing")
    weights = testing.write_random_net(tmp_path / "bt.pb.gz", "attention", seed=3)
    assert main(["explain", str(weights), "startpos", "--rule", "gamma", "--out", str(tmp_path / "bt.svg")]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lczerolens: error:") and "needs convolutions" in err[0]
    assert captured.out == ""  # refused before the evaluation is printed
