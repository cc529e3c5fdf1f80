"""A new user's papercuts (issue 24): each one as it was met, and what the user gets now."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lczerolens import cli
from lczerolens.errors import DataError, InputFormatWarning, RunError

ROOT = Path(__file__).resolve().parent.parent
MATE_PGN = """[Event "mate"]
[Result "1-0"]

1. e4 e5 2. Bc4 Nc6 3. Qh5 Nf6 4. Qxf7# 1-0
"""


def test_unguarded_script_with_workers_is_one_clear_run_error(tmp_path: Path) -> None:
    script = tmp_path / "explain_games.py"
    script.write_text(
        "from lczerolens.run import explain_dataset\n"
        f"explain_dataset({str(tmp_path / 'net.pb.gz')!r}, {str(tmp_path / 'games.pgn')!r}, "
        f"{str(tmp_path / 'out')!r}, workers=2)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("lczerolens.errors.RunError:") and 'if __name__ == "__main__":' in last
    assert "explain_games.py" in last and "bootstrapping" not in done.stderr


def test_the_guard_is_recognised() -> None:
    from lczerolens._mainguard import _has_guard

    assert _has_guard('import x\nif __name__ == "__main__":\n    x.run()\n')
    assert _has_guard("if '__main__' == __name__:\n    pass\n")
    assert not _has_guard("from lczerolens.run import explain_dataset\nexplain_dataset('a', 'b', 'c', workers=2)\n")
    assert not _has_guard("def main():\n    if __name__ == '__main__':\n        pass\n")  # not at top level


def test_readme_collections_example_shows_the_guard_and_real_paths() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("workers=2")
    block = readme[readme.rindex("```python", 0, start) : readme.index("```\n", start)]
    assert 'if __name__ == "__main__":' in block
    assert "assets/cache/" in block


@pytest.mark.parametrize("content", [b"", b"\n \n", "gzip"])
def test_empty_or_binary_pgn_is_an_error_naming_the_file(tmp_path: Path, content: bytes | str) -> None:
    from lczerolens.data import read_pgn

    source = tmp_path / "games.pgn"
    source.write_bytes(gzip.compress(b"\x0a\x0b weights") if content == "gzip" else content)
    with pytest.raises(DataError, match="games.pgn"):
        read_pgn(source)


def test_empty_pgn_on_the_command_line_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.pgn").write_text("")
    code = cli.main(["run", str(tmp_path / "net.pb.gz"), str(tmp_path / "empty.pgn"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "empty.pgn" in err[0] and "empty" in err[0]


@pytest.mark.parametrize("variant", ["fischerandom", "chess960"])
def test_chess960_games_are_skipped_with_their_reason(tmp_path: Path, variant: str) -> None:
    from lczerolens.data import read_pgn

    source = tmp_path / "games.pgn"
    source.write_text(
        f'[Event "960"]\n[Variant "{variant}"]\n[SetUp "1"]\n'
        '[FEN "bbqnnrkr/pppppppp/8/8/8/8/PPPPPPPP/BBQNNRKR w HFhf - 0 1"]\n[Result "*"]\n\n1. e4 e5 *\n\n'
        + MATE_PGN
    )
    reader = read_pgn(source)
    positions = list(reader)
    assert reader.n_skipped == 1 and "Chess960" in str(reader.skipped[0]) and variant in str(reader.skipped[0])
    assert {p.game for p in positions} == {1} and len(positions) == 8


def test_positions_without_a_row_are_counted(tmp_path: Path) -> None:
    from lczerolens.run import explain_dataset, load_manifest, load_results
    from lczerolens.testing import write_random_net

    net = write_random_net(tmp_path / "net.pb.gz", blocks=1, filters=8, seed=0)
    (tmp_path / "mate.pgn").write_text(MATE_PGN)
    out = explain_dataset(net, tmp_path / "mate.pgn", tmp_path / "run", targets=("top", "played"), progress=False)
    manifest = load_manifest(out)
    table = load_results(out).to_pydict()
    # 8 positions: the last (checkmate) has no legal move and ends the game.
    assert manifest["positions"] == 8 and manifest["no_row"] == {"top": 1, "played": 1}
    assert table["target"].count("top") == 7 and table["target"].count("played") == 7


def test_input_format_on_every_command_that_loads_a_network() -> None:
    from lczerolens.board import InputFormat

    parser = cli.build_parser()
    for command in (
        ["explain", "net.onnx", "startpos"],
        ["run", "net.onnx", "g.pgn", "--out", "o"],
        ["serve", "net.onnx"],
        ["report", "net.onnx", "g.pgn"],
    ):
        assert parser.parse_args([*command, "--input-format", "5"]).input_format == InputFormat.CANONICALIZATION_V2
        assert parser.parse_args([*command, "--input-format", "castling_plane"]).input_format == 2
        assert parser.parse_args(command).input_format is None
    assert cli.main(["explain", "net.onnx", "startpos", "--input-format", "9"]) == 2


def test_summarize_help_says_where_the_picture_goes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["summarize", "--help"]) == 0
    assert "summary.svg in the current folder" in " ".join(capsys.readouterr().out.split())


def test_input_format_warning_on_the_cli_is_one_plain_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def command(args: object, out: object) -> int:
        warnings.warn(
            "net.onnx records no input format, so it is read as CLASSICAL_112_PLANE. If the network was trained "
            "on another format, every output is wrong: pass it, e.g. LczeroModel.from_path(path, input_format=5).",
            InputFormatWarning,
            stacklevel=2,
        )
        return 0

    monkeypatch.setitem(cli._COMMANDS, "summarize", command)
    assert cli.main(["summarize", "somewhere"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lczerolens: warning: net.onnx records no input format")
    assert "--input-format" in err[0] and "from_path" not in err[0] and "warnings.warn" not in err[0]


def test_input_format_with_a_loaded_model_is_refused(tmp_path: Path) -> None:
    from lczerolens.run import _resolve_model

    class Loaded:
        input_format = 1

    with pytest.raises(RunError, match="input_format"):
        _resolve_model(Loaded(), 5)


def _tracked_sizes() -> dict[str, int]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    sizes = {}
    for name in filter(None, names):
        path = ROOT / name.decode()
        if path.is_file() and not path.is_symlink():
            sizes[name.decode()] = path.stat().st_size
    return sizes


def test_no_committed_file_over_1_mib_and_no_notebook_over_512_kb() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    sizes = _tracked_sizes()
    assert sizes, "git lists no files"
    assert {n: s for n, s in sizes.items() if s > 1 << 20} == {}
    assert {n: s for n, s in sizes.items() if n.endswith(".ipynb") and s > 512 * 1024} == {}


def test_notebook_figures_exist() -> None:
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(notebook.read_text())["cells"]:
            for output in cell.get("outputs", []):
                for line in output.get("data", {}).get("text/markdown", []):
                    if "](figures/" in line:
                        assert (notebook.parent / line.split("](")[1].rstrip(")")).is_file()
