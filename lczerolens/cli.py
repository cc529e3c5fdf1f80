"""The ``lczerolens`` command line: evaluate a position with an lc0 network and draw what the network looked at.

Example
-------
.. code-block:: console

    $ lczerolens explain assets/cache/maia-1900.pb.gz "startpos" --out heatmap.svg
    $ lczerolens explain net.onnx "<FEN>" --target value --out value.png
    $ python -m lczerolens explain --help
    $ lczerolens run assets/cache/maia-1900.pb.gz games.pgn.zst --out runs/games --target top --target value
    $ lczerolens summarize runs/games --out summary.svg

Bad input (a missing file, a bad FEN, an illegal move, an unknown target) is reported as one line on stderr,
``lczerolens: error: ...``, with exit status 1 (2 for a malformed command line), never as a traceback.
"""

from __future__ import annotations

import argparse
import functools
import math
import operator
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import chess

from lczerolens.errors import InvalidBoardError, InvalidMoveError, LczeroLensError, LensError

__all__ = ["main", "build_parser", "add_input_format_argument", "load_model"]

PROG = "lczerolens"
HEAD_TARGETS = ("value", "win", "draw", "loss", "mlh")
TARGET_HELP = {
    "value": "the value head: win logit - loss logit (WDL nets) or the value logit",
    "win": "the win logit (before lc0's final softmax)",
    "draw": "the draw logit",
    "loss": "the loss logit",
    "mlh": "the moves-left head",
}


class _UsageError(Exception):
    """A malformed command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage dump) and never exits the interpreter."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _input_format(text: str) -> Any:
    from lczerolens.board import InputFormat, _as_format

    value = text.strip()
    try:
        if value.lstrip("-").isdigit():
            return _as_format(int(value))
        if value.upper() in InputFormat.__members__:  # a name, e.g. castling_plane
            return InputFormat[value.upper()]
        return _as_format(value)
    except LczeroLensError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_input_format_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--input-format`` and ``--device`` to a sub-command that loads a network (``explain``, ``run``, ...).

    Read them back with :func:`load_model`, which passes them to ``LczeroModel.from_path``.
    """
    from lczerolens.input_format import InputFormat  # not lczerolens.board: --help must not import torch

    parser.add_argument(
        "--input-format",
        type=_input_format,
        default=None,
        metavar="F",
        help="the network's input format, a number or a name: "
        + ", ".join(f"{f.value} ({f.name})" for f in InputFormat)
        + ". Needed for .onnx exports, which do not record it (classical 1 is assumed, with a warning); "
        ".pb.gz weights record their own",
    )


    parser.add_argument(
        "--device",
        default=None,
        metavar="D",
        help="where the network runs: cpu (default), cuda, cuda:1, ... (lczerolens turns TF32 off while it "
        "computes; on an H200 the default lens's maps matched the CPU's to 1e-5)",
    )


def load_model(args: argparse.Namespace) -> Any:
    """``LczeroModel.from_path(args.weights, input_format=args.input_format, device=args.device)`` for a
    sub-command's arguments."""
    from lczerolens.model import LczeroModel

    return LczeroModel.from_path(
        Path(args.weights), input_format=getattr(args, "input_format", None), device=getattr(args, "device", None)
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``lczerolens`` argument parser (sub-command ``explain``)."""
    parser = _Parser(
        prog=PROG,
        description=(
            "Look inside Leela Chess Zero networks: evaluate a position exactly as lc0 does and explain the "
            "network's choice with layer-wise relevance propagation (LRP), drawn as a heatmap on the board."
        ),
        epilog=f"Run `{PROG} explain --help` for the options of `explain`.",
    )
    from lczerolens import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    ex = sub.add_parser(
        "explain",
        help="evaluate a position and draw the relevance of each square for a move or a head",
        description=textwrap.fill(
            "Load an lc0 network, print its evaluation of the position (win/draw/loss, value, moves left when "
            "the net has that head) and its top moves (softmax over the legal moves), then explain one output "
            "with LRP and write the relevance of each square as a heatmap (.svg or .png) with the explained "
            "move's arrow and a caption. Red squares pushed the output up, blue ones pulled it down.",
            width=78,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            f"  {PROG} explain assets/cache/maia-1900.pb.gz startpos\n"
            f'  {PROG} explain net.pb.gz "<FEN>" --move e2e4 --out e4.png\n'
            f"  {PROG} explain net.onnx startpos --history e2e4 e7e5 g1f3 --target value\n"
            "\ntargets:\n" + "".join(f"  {k:<6} {v}\n" for k, v in TARGET_HELP.items())
        ),
    )
    ex.add_argument("weights", metavar="WEIGHTS", help="lc0 network: weights (.pb.gz, .pb) or an ONNX export (.onnx)")
    ex.add_argument(
        "fen",
        metavar="FEN",
        help='the position, as a FEN in quotes, or "startpos" for the initial position',
    )
    what = ex.add_mutually_exclusive_group()
    what.add_argument(
        "--move",
        metavar="UCI",
        help="explain the policy logit of this legal move (UCI like e2e4, or SAN like Nf3); default: the top move",
    )
    what.add_argument(
        "--target",
        choices=HEAD_TARGETS,
        metavar="{" + ",".join(HEAD_TARGETS) + "}",
        help="explain a head output instead of a move (see targets below)",
    )
    ex.add_argument(
        "--out",
        default="heatmap.svg",
        metavar="PATH",
        help="where to write the heatmap: .svg, or .png (needs cairosvg); folders are created (default: %(default)s)",
    )
    ex.add_argument(
        "--history",
        nargs="+",
        default=[],
        metavar="UCI",
        help="moves played from FEN to reach the position to explain, like UCI `position fen ... moves ...`; "
        "they fill the network's history planes",
    )
    ex.add_argument(
        "--top", type=int, default=5, metavar="N", help="how many top moves to print (default: %(default)s)"
    )
    ex.add_argument(
        "--epsilon",
        type=float,
        default=1e-6,
        metavar="E",
        help="LRP epsilon: stabiliser of the epsilon rule (default: %(default)s)",
    )
    ex.add_argument(
        "--softmax",
        choices=("attnlrp", "cp"),
        default="attnlrp",
        help="attention-body nets: 'attnlrp' passes relevance through attention weights, 'cp' holds them "
        "constant (CP-LRP); no effect on convolutional nets (default: %(default)s)",
    )
    ex.add_argument(
        "--rule",
        choices=("default", "epsilon", "gamma"),
        default="default",
        help="'default': the lens's default composite for the net's family (lczerolens.lenses.RESIDUAL_DEFAULT "
        "or ATTENTION_DEFAULT, the most faithful in our benchmark); 'epsilon': epsilon rules everywhere with "
        "biases absorbing their share (lczerolens.lenses.EPSILON); 'gamma': the older gamma composite for "
        "residual nets (GAMMA_COMPOSITE) (default: %(default)s)",
    )
    ex.add_argument(
        "--orientation",
        choices=("white", "black", "turn"),
        default="white",
        help="which side is at the bottom of the picture; 'turn' puts the side to move there (default: %(default)s)",
    )
    ex.add_argument(
        "--cmap",
        default=None,
        metavar="NAME",
        help="colour map: RdBu_r (default), coolwarm, PiYG, PuOr (diverging); Reds, Blues, Greys, viridis",
    )
    add_input_format_argument(ex)
    ex.add_argument("--contrast", default=None, choices=("robust", "max", "power"),
                    help="colour limit: robust (default; the top squares saturate, marked), max, power (sqrt)")
    _add_collection_commands(sub)
    _add_explorer_commands(sub)
    return parser


def _add_explorer_commands(sub: Any) -> None:
    """``serve`` (the explorer as a local page) and ``report`` (a game as one self-contained HTML file)."""
    serve = sub.add_parser(
        "serve",
        help="the explorer as a local web page: step through a game, switch targets and lenses",
        description="Serve the explorer for WEIGHTS on SOURCE (a PGN file, a FEN or nothing for the start) at "
        "http://HOST:PORT/. Binds the loopback address unless told otherwise.",
    )
    serve.add_argument("weights", metavar="WEIGHTS", help="an lc0 network: .pb.gz/.pb weights or an .onnx export")
    serve.add_argument("source", metavar="SOURCE", nargs="?", default=None, help="a PGN file or a FEN")
    serve.add_argument("--game", type=int, default=0, metavar="N", help="which game of the PGN (0-based)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    serve.add_argument("--threads", type=int, default=1, metavar="T", help=_THREADS_HELP)
    add_input_format_argument(serve)
    report = sub.add_parser(
        "report",
        help="one self-contained HTML file exploring a game, every ply's maps precomputed",
        description="Explain every position of a game and write the explorer as one HTML file (scripts, styles "
        "and data inline) that opens from disk.",
    )
    report.add_argument("weights", metavar="WEIGHTS", help="an lc0 network: .pb.gz/.pb weights or an .onnx export")
    report.add_argument("pgn", metavar="GAME.pgn", help="the game(s)")
    report.add_argument("--out", default="game.html", metavar="PATH", help="the HTML file (default: game.html)")
    report.add_argument("--game", type=int, default=0, metavar="N", help="which game of the PGN (0-based)")
    report.add_argument(
        "--target", action="append", default=None, choices=["top", "value", "win", "draw", "loss"],
        help="a target to precompute (repeat; default: top and value)",
    )
    report.add_argument("--lens", default="lrp", metavar="L", help="lrp (default), a preset, gradient, occlusion, ...")
    report.add_argument(
        "--layer",
        default=None,
        metavar="NAME",
        help="also the layer view of this block (e.g. block3/conv2/relu): latent map and top channels' CRP maps",
    )
    report.add_argument("--threads", type=int, default=1, metavar="T", help=_THREADS_HELP)
    add_input_format_argument(report)


_THREADS_HELP = (
    "torch threads (default 1: the explorer's small batches gain little from more, and on a machine busy with "
    "other work 2 threads made a 60-ply report 16x slower than 1)"
)


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        import torch

        from lczerolens.errors import InvalidOptionError

        if args.threads < 1:
            raise InvalidOptionError(f"--threads must be 1 or more, not {args.threads}")
        torch.set_num_threads(args.threads)


def _serve(args: argparse.Namespace, out: TextIO) -> int:
    from lczerolens.explorer import ExplorerSession
    from lczerolens.explorer.server import make_server

    _set_threads(args)
    model = load_model(args)
    session = ExplorerSession(model, args.source, game=args.game)
    server = make_server(session, args.host, args.port)
    print(f"lczerolens explorer on {server.url} (Ctrl-C stops it)", file=out, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _report(args: argparse.Namespace, out: TextIO) -> int:
    import time

    from lczerolens.explorer.report import write_report

    start = time.perf_counter()
    _set_threads(args)
    model = load_model(args)
    targets = args.target or ["top", "value"]
    path = write_report(
        model, args.pgn, args.out, game=args.game, targets=targets, lens=args.lens, layer=args.layer
    )
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.2f} MB) in {time.perf_counter() - start:.1f} s", file=out)
    return 0


def _add_collection_commands(sub: Any) -> None:
    """``run`` (a PGN/EPD collection to Parquet) and ``summarize`` (its mean maps)."""
    from lczerolens.run import TARGETS

    run = sub.add_parser(
        "run",
        help="explain every position of a PGN or EPD file and write the rows as Parquet (resumable)",
        description=textwrap.fill(
            "Read a PGN (.pgn, .pgn.gz, .pgn.zst) or EPD/FEN file as a stream, explain each selected position "
            "for each --target with LRP, and write one row per position and target as Parquet shards under "
            "--out, with a manifest. Run the same command again to resume a run that was stopped or killed; "
            "a different network, lens, target list or selection is refused. Malformed games are skipped and "
            "listed at the end.",
            width=78,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            f"  {PROG} run assets/cache/maia-1900.pb.gz games.pgn --out runs/games --target top --target played\n"
            f"  {PROG} run net.pb.gz games.pgn.zst --out runs/big --every 4 --sample 100000 --seed 1 --workers 2\n"
            f"  RAY_ADDRESS=auto {PROG} run net.pb.gz games.pgn.zst --out /shared/runs/big --engine ray --workers 64\n"
            "\nread the result with pyarrow.parquet, pandas.read_parquet, polars or DuckDB, or "
            "lczerolens.run.load_results"
        ),
    )
    run.add_argument("weights", metavar="WEIGHTS", help="lc0 network: weights (.pb.gz, .pb) or an ONNX export (.onnx)")
    run.add_argument("source", metavar="SOURCE", help="games (.pgn, .pgn.gz, .pgn.zst) or positions (.epd, .fen)")
    run.add_argument("--out", required=True, metavar="DIR", help="the run folder (new, empty, or this run's own)")
    run.add_argument(
        "--target",
        action="append",
        choices=TARGETS,
        metavar="{" + ",".join(TARGETS) + "}",
        help="what to explain; repeat for several (default: top). 'played' is the game's next move",
    )
    run.add_argument("--every", type=int, default=1, metavar="N", help="keep every N-th ply (default: 1)")
    run.add_argument("--min-ply", type=int, default=0, metavar="N", help="first ply to keep (default: 0)")
    run.add_argument("--max-ply", type=int, default=None, metavar="N", help="last ply to keep (default: all)")
    run.add_argument(
        "--sample", type=float, default=None, metavar="N",
        help="a seeded random sample: N positions (N >= 1) or a fraction of them (0 < N < 1)",
    )  # fmt: skip
    run.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --sample (default: 0)")
    run.add_argument("--batch-size", type=int, default=64, metavar="N", help="positions per call (default: 64)")
    run.add_argument("--workers", type=int, default=1, metavar="N", help="processes or Ray actors (default: 1)")
    run.add_argument("--engine", choices=("local", "ray"), default="local", help="local processes or Ray Data")
    run.add_argument(
        "--rule",
        choices=("default", "epsilon", "gamma"),
        default="default",
        help="LRP rules, as for `explain` (default: %(default)s)",
    )
    run.add_argument(
        "--ablate", action="append", metavar="MODULE",
        help="ablations instead of maps: knock out each unit (channel, head, neuron) of MODULE in turn (a name or "
        "pattern, e.g. block3/conv2/relu; repeat for several); rows hold module and effects, rank them with "
        "lczerolens.lenses.rank_units",
    )  # fmt: skip
    run.add_argument(
        "--ablation-mode", choices=("zero", "mean", "resample"), default="zero",
        help="what replaces an ablated unit (mean and resample: taken over each batch; default: zero)",
    )  # fmt: skip
    run.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    add_input_format_argument(run)

    summ = sub.add_parser(
        "summarize",
        help="mean relevance per square of a run, by target and by the piece on the square, as one picture",
        description="Mean relevance per square over a run's rows, for each target: over all rows, and over the "
        "rows where the square holds a pawn, knight, ... or nothing. Draws them as one grid and prints a table.",
    )
    summ.add_argument("run_dir", metavar="DIR", help="a folder written by `lczerolens run`")
    summ.add_argument(
        "--out",
        default="summary.svg",
        metavar="PATH",
        help="where to write the picture, .svg or .png (default: %(default)s in the current folder, not in DIR)",
    )
    summ.add_argument("--cmap", default=None, metavar="NAME", help="colour map (default: RdBu_r)")
    summ.add_argument("--contrast", default=None, choices=("robust", "max", "power"),
                      help="colour limit per target: robust (default), max, power")


def _fail(message: str, err: TextIO) -> int:
    # One line, whatever the message holds.
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=err)
    return 1


_IMPOSSIBLE_TEXT = {
    chess.STATUS_NO_WHITE_KING: "white has no king",
    chess.STATUS_NO_BLACK_KING: "black has no king",
    chess.STATUS_TOO_MANY_KINGS: "too many kings",
    chess.STATUS_OPPOSITE_CHECK: "the side not to move is in check",
}
_IMPOSSIBLE = functools.reduce(operator.or_, _IMPOSSIBLE_TEXT)


def _make_board(fen: str, history: Sequence[str]) -> Any:
    from lczerolens.board import LczeroBoard

    fen = chess.STARTING_FEN if fen.strip().lower() == "startpos" else fen
    try:
        board = LczeroBoard(fen)
    except LczeroLensError:
        raise
    except ValueError as exc:  # python-chess's own FEN errors, if the board class lets them through
        raise InvalidBoardError(f"invalid FEN {fen!r}: {exc}; give a FEN in quotes or 'startpos'") from exc
    # Positions no game can reach, which lc0 would not be asked about: fail here rather than explain nonsense.
    broken = board.status() & _IMPOSSIBLE
    if broken:
        reasons = ", ".join(text for flag, text in _IMPOSSIBLE_TEXT.items() if broken & flag)
        raise InvalidBoardError(f"invalid position {fen!r}: {reasons}; give a position from a legal game")
    for i, uci in enumerate(history):
        move = _parse_move(board, uci, what=f"history move {i + 1}")
        board.push(move)
    return board


def _parse_move(board: chess.Board, text: str, what: str = "move") -> chess.Move:
    """A legal move of ``board`` from UCI (``e2e4``) or SAN (``Nf3``); raise InvalidMoveError naming it."""
    try:
        move = board.parse_uci(text)
    except ValueError:
        try:
            move = board.parse_san(text)
        except ValueError:
            move = None
    if not move:  # not a move, or the null move ("0000", "--"), which python-chess parses but no network plays
        legal = sorted(m.uci() for m in board.legal_moves)
        shown = " ".join(legal[:12]) + (" ..." if len(legal) > 12 else "")
        hint = f"legal moves: {shown}" if legal else "the position has no legal moves"
        raise InvalidMoveError(f"{what} {text!r} is not a legal move in {board.fen()!r}; {hint}")
    return move


def _san(board: chess.Board, move: chess.Move) -> str:
    try:
        return board.san(move)
    except (ValueError, AssertionError):
        return move.uci()


def _has_attention(model: Any) -> bool:
    """Whether the net has attention softmaxes (only then does --softmax change anything)."""
    from lczerolens.model.ops import Softmax

    return any(isinstance(m, Softmax) for m in model.modules())


def _short(x: float) -> str:
    """``1e-06`` -> ``1e-6``: the way people write epsilons."""
    text = f"{x:g}"
    return text.replace("e-0", "e-").replace("e+0", "e+")


def _table(rows: list[list[str]], align: str) -> list[str]:
    """Rows of cells as aligned text lines; ``align`` holds one of ``<`` / ``>`` per column."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [f"{cell:{a}{w}}" for cell, a, w in zip(r, align, widths, strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _explain(args: argparse.Namespace, out: TextIO) -> int:
    from lczerolens.visual import RenderError

    out_path = Path(args.out)
    if out_path.suffix.lower() not in (".svg", ".png"):
        raise RenderError(f"cannot write a heatmap to {args.out!r}; use a .svg or .png file name")
    if out_path.suffix.lower() == ".png":
        try:
            import cairosvg  # noqa: F401  (checked now: failing after a long run would waste it)
        except (ImportError, OSError) as exc:
            from lczerolens.visual import MissingDependencyError

            raise MissingDependencyError(
                f"writing .png needs cairosvg and the cairo library ({exc}); `pip install 'lczerolens[png]'` "
                "or write .svg"
            ) from exc
    if args.cmap is not None:
        from lczerolens.visual import get_cmap

        get_cmap(args.cmap)  # an unknown name fails now, not after the network ran
    if args.top < 1:
        raise RenderError(f"--top must be at least 1, not {args.top}")
    if not args.epsilon > 0:
        raise LensError(f"--epsilon must be positive, not {args.epsilon}")

    # Cheap checks first: a typo in the FEN or the move fails before the network loads.
    board = _make_board(args.fen, args.history)
    move = _parse_move(board, args.move) if args.move else None
    if args.target is None and not any(True for _ in board.legal_moves):
        raise InvalidMoveError(
            f"{board.fen()!r} has no legal moves ({'checkmate' if board.is_checkmate() else 'stalemate'}), so "
            "there is no move to explain; use --target value"
        )

    from lczerolens.lenses import LrpLens
    from lczerolens.lenses.lrp.lens import EPSILON, GAMMA_COMPOSITE
    from lczerolens.visual import render_heatmap

    path = Path(args.weights)
    model = load_model(args)
    heads = tuple(getattr(model, "heads", ()) or ())
    if args.target is not None and heads:
        need = {"value": ("wdl", "value"), "win": ("wdl",), "draw": ("wdl",), "loss": ("wdl",), "mlh": ("mlh",)}
        if not any(h in heads for h in need[args.target]):
            raise LensError(
                f"target {args.target!r} needs a {' or '.join(need[args.target])} head, but {path.name} has "
                f"heads {', '.join(heads)}; pick another --target"
            )

    composite = {"default": {}, "gamma": GAMMA_COMPOSITE}.get(args.rule)
    if composite is None:  # "epsilon": the preset without its epsilon and softmax, which the options give
        composite = {k: v for k, v in EPSILON.items() if k not in ("epsilon", "softmax")}
    lens = LrpLens(epsilon=args.epsilon, softmax=args.softmax, **composite)
    lens.check(model)  # a rule that cannot apply to this net fails before anything is printed

    evaluation = model.evaluate(board, top_k=None)
    n_legal = len(evaluation.moves)
    side = "white" if board.turn == chess.WHITE else "black"
    print(f"network   {path.name}: {model.description}", file=out)
    print(f"position  {board.fen()}  ({side} to move)", file=out)
    if args.history:
        print(f"history   {' '.join(args.history)}", file=out)
    parts = []
    if evaluation.wdl is not None:
        w, d, lo = evaluation.wdl
        parts.append(f"win {100 * w:.1f}%  draw {100 * d:.1f}%  loss {100 * lo:.1f}%")
    parts.append(f"value {evaluation.value:+.3f}")
    if evaluation.mlh is not None:
        parts.append(f"moves left {evaluation.mlh:.1f}")
    print("eval      " + "   ".join(parts) + f"  (for {side})", file=out)

    if n_legal:
        print(f"\ntop moves (softmax over {n_legal} legal moves)", file=out)
        rows = [["#", "move", "san", "prob", "logit"]]
        for i, ms in enumerate(evaluation.moves[: args.top], start=1):
            rows.append(
                [str(i), ms.move.uci(), _san(board, ms.move), f"{100 * ms.probability:.1f}%", f"{ms.logit:+.3f}"]
            )
        for line in _table(rows, "><<>>"):
            print(line, file=out)

    if args.target is not None:
        target: Any = args.target
        arrow = None
        what = f"{args.target}: {TARGET_HELP[args.target]}"
        title_target = f"the {args.target} head" if args.target != "mlh" else "the moves-left head"
    else:
        chosen = move if move is not None else evaluation.best_move
        target = chosen
        arrow = chosen
        score = next((m for m in evaluation.moves if m.move == chosen), None)
        prob = f", p={100 * score.probability:.1f}%" if score is not None else ""
        rank = next((i for i, m in enumerate(evaluation.moves, start=1) if m.move == chosen), None)
        how = "top move" if move is None else f"move #{rank}"
        what = f"{_san(board, chosen)} ({chosen.uci()}, {how}{prob})"
        title_target = what
    relevance = lens.relevance(model, board, target=target)
    squares = relevance.squares[0].detach().float().cpu()
    target_value = float(relevance.target[0])
    total = float(squares.sum())

    print(f"\nexplaining {what}", file=out)
    kind = "policy logit" if args.target is None else f"{args.target} output"
    share = float(relevance.conservation[0])
    covered = f" ({share:.0%} of it; the rest is not in the map)" if math.isfinite(share) else ""
    print(f"  {kind} {target_value:+.4f}   relevance on the squares {total:+.4f}{covered}", file=out)
    print(f"  where it went: {relevance.accounting_text(0)}", file=out)
    order = squares.flatten().abs().argsort(descending=True)[:5].tolist()
    top_squares = "  ".join(f"{chess.square_name(s)} {float(squares.flatten()[s]):+.3f}" for s in order)
    print(f"  most relevant squares: {top_squares}", file=out)

    caption = [
        f"{path.name} \u00b7 explaining {title_target}",
        f"{kind} {target_value:+.3f} \u00b7 LRP \u03b5={_short(args.epsilon)}"
        + {"default": ", default composite", "epsilon": ", epsilon composite", "gamma": ", gamma composite"}[args.rule]
        + (f" \u00b7 map sums to {share:.0%} of it" if math.isfinite(share) else "")
        + (f", softmax={args.softmax}" if _has_attention(model) else "")
        + (
            f" \u00b7 eval W {100 * evaluation.wdl[0]:.0f}% D {100 * evaluation.wdl[1]:.0f}% "
            f"L {100 * evaluation.wdl[2]:.0f}%"
            if evaluation.wdl is not None
            else f" \u00b7 value {evaluation.value:+.3f}"
        ),
    ]
    heatmap = render_heatmap(
        board,
        squares,
        move=arrow,
        caption=caption,
        label="relevance",
        orientation=args.orientation,
        cmap=args.cmap,
        norm="symmetric",
        contrast=args.contrast,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = heatmap.save(out_path)
    print(f"\nwrote {written}", file=out)
    return 0


def _sample_value(value: float | None) -> int | float | None:
    if value is None:
        return None
    if value >= 1:
        if value != int(value):
            raise LensError(f"--sample {value:g}: give a whole number of positions or a fraction below 1")
        return int(value)
    return value


def _run(args: argparse.Namespace, out: TextIO) -> int:
    from lczerolens.data import read_pgn, read_positions, source_kind
    from lczerolens.lenses import LrpLens
    from lczerolens.lenses.lrp.lens import EPSILON, GAMMA_COMPOSITE
    from lczerolens.run import explain_dataset, load_manifest

    selection: dict[str, Any] = {"every": args.every, "sample": _sample_value(args.sample), "seed": args.seed}
    if source_kind(args.source) == "pgn":
        reader = read_pgn(args.source, min_ply=args.min_ply, max_ply=args.max_ply, **selection)
    else:
        if args.min_ply or args.max_ply is not None:
            raise LensError("--min-ply and --max-ply apply to PGN games; an EPD file's positions have no plies")
        reader = read_positions(args.source, **selection)
    lens: Any = LrpLens(**{"default": {}, "epsilon": EPSILON, "gamma": GAMMA_COMPOSITE}[args.rule])
    if args.ablate:
        from lczerolens.lenses import AblationLens

        if args.rule != "default":
            raise LensError("--rule chooses LRP rules; it does not apply with --ablate")
        lens = AblationLens(args.ablate, mode=args.ablation_mode)
    path = explain_dataset(
        args.weights,
        reader,
        args.out,
        targets=tuple(args.target or ("top",)),
        lens=lens,
        batch_size=args.batch_size,
        workers=args.workers,
        engine=args.engine,
        progress=not args.no_progress,
        input_format=args.input_format,
        device=args.device,
    )
    manifest = load_manifest(path)
    rows = sum(v["rows"] for v in manifest["shards"].values())
    print(f"wrote {rows} rows for {manifest['positions']} positions in {len(manifest['shards'])} shards to {path}",
          file=out)  # fmt: skip
    no_row = manifest.get("no_row") or {}
    if no_row.get("top"):
        print(f"{no_row['top']} positions have no legal move (checkmate or stalemate), so no 'top' row", file=out)
    if no_row.get("played"):
        print(f"{no_row['played']} positions end their game, so no 'played' row", file=out)
    if manifest.get("n_skipped") and args.no_progress:  # with the progress bar, the run printed the list itself
        print(f"skipped {manifest['n_skipped']} games or lines:", file=out)
        for line in manifest["skipped"]:
            print(f"  {line}", file=out)
    return 0


def _summarize(args: argparse.Namespace, out: TextIO) -> int:
    from lczerolens.run import SUMMARY_GROUPS, summarize
    from lczerolens.visual import RenderError, render_grid

    out_path = Path(args.out)
    if out_path.suffix.lower() not in (".svg", ".png"):
        raise RenderError(f"cannot write a picture to {args.out!r}; use a .svg or .png file name")
    summary = summarize(args.run_dir)
    if not summary["rows"]:
        raise LensError(f"the run in {args.run_dir!r} has no rows to summarize")
    names = {"all": "all squares", "P": "pawn", "N": "knight", "B": "bishop", "R": "rook", "Q": "queen",
             "K": "king", "empty": "empty"}  # fmt: skip
    values, titles, keys = [], [], []
    counts = {row["target"]: row["rows"] for row in summary["rows"]}
    for target, maps in summary["maps"].items():
        for group in SUMMARY_GROUPS:
            values.append(maps[group])
            # The first panel of each target says how many rows its means are over.
            rows = f" ({counts.get(target, 0)} rows)" if group == SUMMARY_GROUPS[0] else ""
            titles.append(f"{target}: {names[group]}{rows}")
            keys.append(target)
    empty = chess.Board(None)
    grid = render_grid(
        empty,
        values,
        titles=titles,
        ncols=len(SUMMARY_GROUPS),
        cmap=args.cmap,
        norm="symmetric",
        shared_scale=keys,  # one scale per target: a value map and a move map differ in size
        contrast=args.contrast,
        label="mean relevance",
        caption=f"mean relevance per square, {Path(args.run_dir).name}: by target (rows) and piece on the square",
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = grid.save(out_path)
    header = ["target", "rows", "mean target", "mean conserv."] + [f"|rel| {g}" for g in SUMMARY_GROUPS[1:]]
    table = [header]
    for row in summary["rows"]:
        cells = [row["target"], str(row["rows"]), f"{row['mean target']:+.3f}", f"{row['mean conservation']:+.3f}"]
        cells += [f"{100 * row[f'|rel| on {g}']:.0f}%" for g in SUMMARY_GROUPS[1:]]
        table.append(cells)
    for line in _table(table, "<>>>" + ">" * (len(SUMMARY_GROUPS) - 1)):
        print(line, file=out)
    print(f"\nwrote {written}", file=out)
    return 0


_COMMANDS = {"explain": _explain, "run": _run, "summarize": _summarize, "serve": _serve, "report": _report}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lczerolens`` command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Example
    -------
    >>> main(["explain", "assets/cache/maia-1900.pb.gz", "startpos", "--out", "/tmp/h.svg"])  # doctest: +SKIP
    0
    """
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except _UsageError as exc:
        _fail(str(exc), err)
        return 2
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(out)
        return 2
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = functools.partial(_show_warning, err=err)
        return _dispatch(args, out, err)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None, *, err: TextIO) -> None:  # fmt: skip
    """A warning on the command line: one plain line (no Python source line), saying what to do here."""
    from lczerolens.errors import InputFormatWarning

    text = " ".join(str(message).split())
    if issubclass(category, InputFormatWarning):
        # The library's advice names from_path(input_format=...); on the command line it is --input-format.
        text = text.split(" pass it, e.g.")[0].rstrip(":;, ") + (
            ": pass --input-format (see --help), e.g. --input-format 5 for a CANONICALIZATION_V2 net"
        )
    print(f"{PROG}: warning: {text}", file=err)


def _dispatch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        return _COMMANDS[args.command](args, out)
    except LczeroLensError as exc:
        return _fail(str(exc), err)
    except OSError as exc:  # e.g. no permission to write --out
        return _fail(f"{exc.strerror or exc}: {exc.filename or args.out}", err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
