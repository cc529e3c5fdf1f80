"""Explain whole collections: positions of a PGN or EPD file to Parquet, resumable, on several processes or Ray.

:func:`explain_dataset` reads the file as a stream, cuts the selected positions into *shards* (fixed-size chunks
of the position stream, numbered in order: shard ``k`` holds positions ``k * shard_size`` to
``(k + 1) * shard_size - 1``), explains each shard (one batched relevance call per target and batch) and writes it
as one Parquet file. :func:`load_results` reads them back as one ``pyarrow.Table``.

Exactly once
    A shard is written to a temporary file, flushed to disk (``fsync``) and renamed into place (``os.replace``,
    atomic), then recorded in ``manifest.json``, itself replaced atomically. Only shards recorded in the manifest
    count; a run killed at any moment (even by SIGKILL) and started again with the same arguments redoes the
    unrecorded shards, overwriting any file a killed run left, and ends with exactly the rows of an uninterrupted
    run. A resume with another network (by sha256), lens, target list, source file (by sha256) or selection is
    refused with :class:`~lczerolens.errors.RunError`.

Parallel
    ``workers=N`` with ``engine="local"``: ``N`` processes (spawned), each loading the network once and running
    ``cpu_count // N`` torch threads; the parent reads the file and hands out shards, so the shards (and rows)
    are the same as with one worker. ``engine="ray"`` (``pip install 'lczerolens[ray]'``): the same shards go
    through Ray Data (``from_items`` -> ``map_batches`` with an actor pool of ``N`` actors, each loading the
    network once from its path and writing its shards' Parquet files atomically); the driver records shards in the
    manifest as they come back, so resume works as with the local engine.

On a cluster
    Start Ray on the cluster (``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on the others)
    and either call ``ray.init(address="auto")`` (or ``address="ray://HEAD:10001"``) before
    :func:`explain_dataset`, or set ``RAY_ADDRESS`` before running ``lczerolens run ... --engine ray``: when Ray is
    not initialised yet, :func:`explain_dataset` calls ``ray.init()``, which connects to ``RAY_ADDRESS`` when it
    is set and starts a local Ray otherwise. The network file and the output folder must be at the same path on
    every node (a shared file system), since actors load the one and write into the other. The driver reads the
    PGN and sends the games' moves to the actors.

Example
-------
>>> from lczerolens.run import explain_dataset, load_results
>>> from lczerolens.data import read_pgn
>>> out = explain_dataset("maia-1900.pb.gz", read_pgn("games.pgn", every=4), "runs/games",
...                       targets=("top", "played", "value"))  # doctest: +SKIP
>>> table = load_results(out)  # doctest: +SKIP
>>> table.to_pandas().groupby("target")["target_value"].mean()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from lczerolens.errors import RunError

__all__ = [
    "explain_dataset",
    "load_results",
    "load_manifest",
    "result_schema",
    "RayShardExplainer",
    "TARGETS",
    "COLUMNS",
    "SHARD_SIZE",
    "MANIFEST",
]

#: Targets a run can explain, in the order rows of one position are written.
TARGETS = ("top", "played", "value", "win", "draw", "loss", "mlh")
#: Default positions per shard (the unit of resume and of parallel work).
SHARD_SIZE = 512
MANIFEST = "manifest.json"
_FORMAT = 1
_HEAD_NEEDS = {"value": ("wdl", "value"), "win": ("wdl",), "draw": ("wdl",), "loss": ("wdl",), "mlh": ("mlh",)}


# ----------------------------------------------------------------------------------------------------------------
# Small helpers


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _check_targets(targets: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    out: list[str] = []
    for t in targets:
        if t not in TARGETS:
            raise RunError(f"unknown target {t!r}; use some of {', '.join(TARGETS)}")
        if t not in out:
            out.append(t)
    if not out:
        raise RunError(f"no target given; use some of {', '.join(TARGETS)}")
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# The network and the lens, as something a worker process can rebuild


def _network_of(model: Any) -> Any:
    return getattr(model, "network", model)


def _model_sha256(model: Any, path: Path | None) -> str:
    if path is not None:
        return _sha256_file(path)
    digest = hashlib.sha256()
    for name, tensor in sorted(_network_of(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _lens_spec(lens: Any) -> dict[str, Any]:
    """A picklable recipe of the lens (rebuilt in workers), checked to give the same repr."""
    from lczerolens.lenses import LrpLens

    if type(lens) is LrpLens and not lens._custom_composite:
        kwargs = lens.options()
        if repr(LrpLens(**kwargs)) == repr(lens):
            return {"kind": "lrp", "kwargs": kwargs}
    import pickle

    try:
        return {"kind": "pickle", "data": pickle.dumps(lens)}
    except Exception as exc:
        raise RunError(
            f"the lens {lens!r} cannot be sent to worker processes ({exc}); run with workers=1 and engine='local'"
        ) from exc


def _lens_fingerprint(lens: Any, model: Any) -> str:
    """What the lens computes on ``model``, for the run's fingerprint: its repr, and for ``LrpLens`` the rules its
    options resolve to on this network (``LrpLens()`` takes them from a preset, which a new release may change:
    a run resumed across such a change would mix maps made under two sets of rules)."""
    from lczerolens.lenses import LrpLens
    from lczerolens.lenses.tree import network_of

    if isinstance(lens, LrpLens) and not lens._custom_composite:
        settings = lens.settings(network_of(model))
        return f"{lens!r} resolved to {sorted(settings.items())!r}"
    return repr(lens)


def _build_lens(spec: dict[str, Any]) -> Any:
    if spec["kind"] == "lrp":
        from lczerolens.lenses import LrpLens

        return LrpLens(**spec["kwargs"])
    import pickle

    return pickle.loads(spec["data"])  # our own object, pickled by the parent process of this run


# ----------------------------------------------------------------------------------------------------------------
# Explaining one shard


class _Explainer:
    """Explains shards of positions with one network and lens; also what each worker process or actor holds."""

    def __init__(self, model: Any, lens: Any, targets: tuple[str, ...], batch_size: int, metadata: dict[str, str]):
        self.model = model
        self.lens = lens
        self.targets = targets
        self.batch_size = batch_size
        self.metadata = metadata
        self.input_format = model.input_format
        #: Positions of the last table that gave no row for a target (``top``: no legal move, checkmate or
        #: stalemate; ``played``: a game's last position).
        self.no_row: dict[str, int] = {}

    def table(self, records: list[Any]) -> Any:
        """The rows of a shard (a list of GameRecord) as a pyarrow Table, by position then target."""
        import pyarrow as pa

        positions = [p for record in records for p in record.positions()]
        self.no_row = {}
        if hasattr(self.lens, "collection_table"):  # AblationLens: rows per position, target and module
            table, self.no_row = self.lens.collection_table(self.model, self.targets, positions, self.batch_size,
                                                            self.metadata)  # fmt: skip
            return table
        columns: dict[str, list] = {name: [] for name in _COLUMNS}
        for start in range(0, len(positions), self.batch_size):
            self._batch(positions[start : start + self.batch_size], start, columns)
        order = sorted(range(len(columns["_pos"])), key=lambda i: (columns["_pos"][i], columns["_t"][i]))
        arrays = []
        for name, type_ in _schema_fields():
            values = [columns[name][i] for i in order]
            if name in ("wdl", "relevance"):
                arrays.append(_fixed_list(values, 3 if name == "wdl" else 64))
            else:
                arrays.append(pa.array(values, type=type_))
        return pa.Table.from_arrays(arrays, schema=result_schema(self.metadata))

    def _batch(self, positions: list[Any], offset: int, columns: dict[str, list]) -> None:
        import numpy as np
        import torch

        from lczerolens.board import encode_boards

        boards = [p.board for p in positions]
        fens = [b.fen() for b in boards]
        planes = encode_boards(boards, self.input_format)
        network = _network_of(self.model)
        n = len(positions)
        outputs: dict[str, Any] = {}
        covered = np.zeros(n, dtype=bool)

        def keep(rows: list[int], out: Any) -> None:
            """The evaluation heads of the rows not yet covered, from a pass that already ran on them."""
            fresh = [j for j, i in enumerate(rows) if not covered[i]]
            heads = [key for key in ("wdl_logits", "value_logit", "mlh") if key in out]
            if not fresh or not heads:
                return  # a lens that does not hand back the outputs: the fallback pass below covers the rows
            for key in heads:
                full = outputs.setdefault(key, torch.zeros((n, *out[key].shape[1:]), dtype=torch.float32))
                full[[rows[j] for j in fresh]] = out[key][fresh].detach().float().cpu()
            covered[[rows[j] for j in fresh]] = True

        for t_index, target in enumerate(self.targets):
            if target == "top":
                rows = [i for i, b in enumerate(boards) if any(True for _ in b.legal_moves)]
                arg: Any = None
            elif target == "played":
                rows = [i for i, p in enumerate(positions) if p.played is not None]
                arg = [positions[i].played for i in rows]
            else:
                rows = list(range(n))
                arg = target
            if len(rows) < n:
                self.no_row[target] = self.no_row.get(target, 0) + n - len(rows)
            if not rows:
                continue
            rel = self.lens.relevance(self.model, [boards[i] for i in rows], arg, planes=planes[rows])
            keep(rows, rel.outputs)  # the evaluation comes with the map: no second forward pass
            squares = rel.squares.detach().reshape(len(rows), 64).float().cpu().numpy()
            values = rel.target.detach().float().cpu().numpy()
            conservation = rel.conservation.float().cpu().numpy()
            moves = [m.uci() for m in rel.moves] if rel.moves is not None else [None] * len(rows)
            for j, i in enumerate(rows):
                p = positions[i]
                columns["_pos"].append(offset + i)
                columns["_t"].append(t_index)
                columns["source"].append(p.source)
                columns["game"].append(p.game)
                columns["ply"].append(p.ply)
                columns["fen"].append(fens[i])
                columns["played"].append(p.played.uci() if p.played is not None else None)
                columns["target"].append(target)
                columns["move"].append(moves[j])
                columns["target_value"].append(float(values[j]))
                columns["relevance"].append(squares[j])
                columns["conservation"].append(float(conservation[j]))
                columns["_row"].append(i)
        if not covered.all():  # positions no target call covered (e.g. only "played" at a game's end)
            missing = [i for i in range(n) if not covered[i]]
            with torch.inference_mode():
                out = network(planes[missing].to(dtype=next(network.parameters()).dtype))
            keep(missing, out)
        evals = _evaluation(outputs, n)
        for i in columns["_row"][len(columns["wdl"]) :]:
            columns["wdl"].append(evals["wdl"][i])
            columns["value"].append(evals["value"][i])
            columns["mlh"].append(evals["mlh"][i])


def _evaluation(outputs: dict[str, Any], n: int) -> dict[str, list]:
    import torch

    if "wdl_logits" in outputs:
        wdl = torch.softmax(outputs["wdl_logits"], dim=-1)
        value = (wdl[:, 0] - wdl[:, 2]).tolist()
        wdl_rows: list = list(wdl.numpy())
    elif "value_logit" in outputs:
        value = torch.tanh(outputs["value_logit"].reshape(n)).tolist()
        wdl_rows = [None] * n
    else:
        value, wdl_rows = [None] * n, [None] * n
    mlh = outputs["mlh"].reshape(n).tolist() if "mlh" in outputs else [None] * n
    return {"wdl": wdl_rows, "value": value, "mlh": mlh}


def _fixed_list(values: list, size: int) -> Any:
    import numpy as np
    import pyarrow as pa

    mask = np.array([v is None for v in values], dtype=bool)
    flat = np.zeros((len(values), size), dtype=np.float32)
    for i, v in enumerate(values):
        if v is not None:
            flat[i] = v
    items = pa.array(flat.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(items, size, mask=pa.array(mask) if mask.any() else None)


def _schema_fields() -> list[tuple[str, Any]]:
    import pyarrow as pa

    return [
        ("source", pa.string()),
        ("game", pa.int64()),
        ("ply", pa.int64()),
        ("fen", pa.string()),
        ("played", pa.string()),
        ("target", pa.string()),
        ("move", pa.string()),
        ("target_value", pa.float32()),
        ("value", pa.float32()),
        ("wdl", pa.list_(pa.float32(), 3)),
        ("mlh", pa.float32()),
        ("relevance", pa.list_(pa.float32(), 64)),
        ("conservation", pa.float32()),
    ]


#: The result columns, in order (types in :func:`result_schema`).
COLUMNS = ("source", "game", "ply", "fen", "played", "target", "move", "target_value", "value", "wdl", "mlh",
           "relevance", "conservation")  # fmt: skip
# Book-keeping columns of a shard being built: position index, target index, row within the batch.
_COLUMNS = (*COLUMNS, "_pos", "_t", "_row")


def result_schema(metadata: dict[str, str] | None = None) -> Any:
    """The Parquet schema of a run's rows (see the README's table of columns), with ``metadata`` attached.

    ``relevance`` is a ``fixed_size_list<float32>[64]`` in board orientation (index = python-chess square),
    ``wdl`` a ``fixed_size_list<float32>[3]`` (null for nets without WDL), ``value`` and ``mlh`` the network's
    evaluation of the position (null where the net lacks the head).
    """
    import pyarrow as pa

    schema = pa.schema([pa.field(name, type_) for name, type_ in _schema_fields()])
    return schema.with_metadata(metadata) if metadata else schema


def _write_shard(out: Path, index: int, table: Any) -> dict[str, Any]:
    import pyarrow.parquet as pq

    name = f"part-{index:06d}.parquet"
    final = out / name
    tmp = out / f".{name}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    _fsync_dir(out)
    return {"shard": index, "file": name, "rows": table.num_rows, "sha256": _sha256_file(final)}


# ----------------------------------------------------------------------------------------------------------------
# Worker processes (local engine) and actors (Ray engine)

_WORKER: dict[str, Any] = {}


def _make_explainer(
    model_path: str, lens_spec: dict, targets: tuple, batch_size: int, metadata: dict, threads: int | None,
    input_format: int | None = None, device: str | None = None,
) -> _Explainer:
    import torch

    from lczerolens.model import LczeroModel

    if threads:
        torch.set_num_threads(threads)
    # The parent's input format, stated: a worker reads the network as the parent did, and does not warn again.
    model = LczeroModel.from_path(model_path, input_format=input_format, device=device)
    model.eval()
    return _Explainer(model, _build_lens(lens_spec), tuple(targets), batch_size, metadata)


def _init_worker(*args: Any) -> None:
    _WORKER["explainer"] = _make_explainer(*args)


def _worker_shard(out: str, index: int, payload: list[dict]) -> dict[str, Any]:
    from lczerolens.data import GameRecord

    explainer: _Explainer = _WORKER["explainer"]
    table = explainer.table([GameRecord.from_json(r) for r in payload])
    info = _write_shard(Path(out), index, table)
    info["positions"] = sum(len(r["plies"]) for r in payload)
    info["no_row"] = dict(explainer.no_row)
    return info


class RayShardExplainer:
    """Ray Data callable class: loads the network once per actor, explains and writes the shards it is given.

    Each input row is ``{"shard": k, "payload": json}``; each output row ``{"shard", "file", "rows",
    "positions", "sha256"}`` describes the Parquet file the actor wrote (atomically) into ``out``.
    """

    def __init__(self, out: str, model_path: str, lens_spec: dict, targets: tuple, batch_size: int,
                 metadata: dict, threads: int | None = 1, input_format: int | None = None) -> None:  # fmt: skip
        self.out = out
        self.explainer = _make_explainer(model_path, lens_spec, targets, batch_size, metadata, threads, input_format)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from lczerolens.data import GameRecord

        result: dict[str, list] = {"shard": [], "file": [], "rows": [], "positions": [], "sha256": [], "no_row": []}
        for index, payload in zip(batch["shard"], batch["payload"], strict=True):
            records = [GameRecord.from_json(r) for r in json.loads(str(payload))]
            info = _write_shard(Path(self.out), int(index), self.explainer.table(records))
            info["positions"] = sum(len(r.plies) for r in records)
            info["no_row"] = json.dumps(self.explainer.no_row, sort_keys=True)
            for key in result:
                result[key].append(info[key])
        return result


# ----------------------------------------------------------------------------------------------------------------
# The manifest


def load_manifest(out: str | Path) -> dict[str, Any]:
    """The run's ``manifest.json`` (raises :class:`RunError` when ``out`` holds no run)."""
    path = Path(out) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{str(out)!r} holds no lczerolens run (no {MANIFEST}); run explain_dataset first") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("lczerolens_run") != _FORMAT:
        raise RunError(f"{path} is not a manifest of an lczerolens run (format {_FORMAT})")
    return data


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    _atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())


def _prepare_out(out: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Open or create the run folder; the manifest to go on from (refusing another run's folder)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {str(out)!r} is a file; give a folder for the run's shards")
    if (out / MANIFEST).exists():
        manifest = load_manifest(out)
        old = manifest.get("fingerprint", {})
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if changed:
            detail = "; ".join(f"{k}: {old.get(k)!r} before, {fingerprint.get(k)!r} now" for k in changed)
            raise RunError(
                f"{str(out)!r} holds a run made with other settings ({detail}); resume it with the same network, "
                "lens, targets, source and selection, or choose another --out folder"
            )
        for stale in out.glob(".*.tmp"):  # files a killed run was writing
            stale.unlink(missing_ok=True)
        done = manifest["shards"]
        for key in list(done):  # a recorded shard whose file went missing is done again
            if not (out / done[key]["file"]).exists():
                del done[key]
                manifest["complete"] = False
        return manifest
    if out.exists() and any(out.iterdir()):
        raise RunError(f"--out {str(out)!r} is a non-empty folder without a run; choose an empty or new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"lczerolens_run": _FORMAT, "fingerprint": fingerprint, "shards": {}, "complete": False}
        _write_manifest(out, manifest)
    except OSError as exc:
        raise RunError(f"cannot write the run folder {str(out)!r}: {exc}; choose a writable --out") from exc
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# The run


def _shard_payloads(reader: Any, shard_size: int, skip: set[int]) -> Iterator[tuple[int, list[Any]]]:
    """Shards ``(index, [GameRecord, ...])`` of the selected positions, in order, leaving out ``skip``."""
    from lczerolens.data import GameRecord

    index, used, current = 0, 0, []
    for record in reader.games():
        plies = record.plies
        while plies:
            take = plies[: shard_size - used]
            plies = plies[len(take) :]
            if index not in skip:
                part = GameRecord(record.source, record.game, record.line, record.fen, record.chess960,
                                  record.moves[: take[-1] + 1], take, record.info)  # fmt: skip
                current.append(part)
            used += len(take)
            if used == shard_size:
                if index not in skip:
                    yield index, current
                index, used, current = index + 1, 0, []
    if used and index not in skip:
        yield index, current


def explain_dataset(
    model: Any,
    source: Any,
    out: str | Path,
    *,
    targets: Sequence[str] | str = ("top",),
    lens: Any = None,
    batch_size: int = 64,
    workers: int = 1,
    engine: str = "local",
    progress: bool = True,
    shard_size: int = SHARD_SIZE,
    input_format: Any = None,
    device: Any = None,
) -> Path:
    """Explain every selected position of a collection and write the rows as Parquet shards under ``out``.

    Parameters
    ----------
    model : LczeroModel, str or Path
        The network, or its file (``.pb.gz``, ``.onnx``). Several workers or Ray need a file (a model loaded
        with ``LczeroModel.from_path`` remembers its own).
    source : str, Path or PositionReader
        A PGN (``.pgn``, ``.pgn.gz``, ``.pgn.zst``) or EPD/FEN file read whole, or a reader from
        :func:`lczerolens.data.read_pgn` / :func:`~lczerolens.data.read_epd` carrying a selection.
    out : str or Path
        The run folder: new or empty, or the folder of this same run to resume it.
    targets : sequence of str
        Any of ``"top"`` (the net's top legal move), ``"played"`` (the move the game played next; positions
        without one give no row), ``"value"``, ``"win"``, ``"draw"``, ``"loss"``, ``"mlh"``.
    lens : optional
        The lens (default ``LrpLens()``); its repr goes in the metadata. An
        :class:`~lczerolens.lenses.AblationLens` writes one row per position, target and module, with ``module``
        and ``effects`` columns in place of ``relevance`` and ``conservation``
        (:func:`lczerolens.lenses.ablation.ablation_schema`); rank them with :func:`lczerolens.lenses.rank_units`.
    batch_size : int
        Positions per relevance call.
    workers : int
        Processes (local engine) or actors (Ray).
    engine : {"local", "ray"}
    progress : bool
        A tqdm progress bar and the skipped-games report on stderr.
    shard_size : int
        Positions per shard (the unit of resume; part of the run's identity).
    input_format : InputFormat, int or str, optional
        The network's input format when ``model`` is a file (``LczeroModel.from_path(model, input_format=...)``);
        an ONNX export records none, and classical is assumed (with an ``InputFormatWarning``) without it.
    device : str or torch.device, optional
        Where the network runs when ``model`` is a file (``"cuda"``, ``"cuda:1"``; default the CPU); each local
        worker loads it there. A loaded model runs where it is. The Ray engine runs on CPUs. The device is not part
        of the run's fingerprint: a run resumed on another device continues it (on an H200 the relevance columns
        agreed with the CPU's to 1e-5 of their largest value for maia-1900, 3e-4 for the distilled attention net:
        ``benchmarks/cuda_check.py``).

    Returns
    -------
    Path
        ``out``; read it with :func:`load_results`. Its ``manifest.json`` lists shards and skipped games, and
        counts the positions that gave no row for a target (``no_row``: ``top`` has none where there is no legal
        move, checkmate or stalemate; ``played`` none at a game's last position).

    Raises
    ------
    RunError
        Bad arguments, an unwritable ``out``, ``out`` holding a run with other settings, or ``workers > 1`` called
        from a script without an ``if __name__ == "__main__":`` guard (the workers are spawned and import the
        script again).
    DataError
        The source cannot be read, or holds no game or position at all (an empty or non-PGN file).

    Example
    -------
    >>> explain_dataset("maia-1900.pb.gz", "games.pgn", "runs/games", targets=["top", "value"])  # doctest: +SKIP
    PosixPath('runs/games')
    """
    from lczerolens import __version__
    from lczerolens.data import PositionReader, read_positions

    targets = _check_targets(targets)
    for name, value, low in (("batch_size", batch_size, 1), ("workers", workers, 1), ("shard_size", shard_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise RunError(f"{name}={value!r}: give a whole number >= {low}")
    if engine not in ("local", "ray"):
        raise RunError(f"engine={engine!r}: use 'local' or 'ray'")
    if engine == "local":
        from lczerolens._mainguard import check_main_guard

        check_main_guard(workers)
    reader = source if isinstance(source, PositionReader) else read_positions(source)

    from lczerolens.model.model import _check_device

    if engine == "ray" and device is not None and _check_device(device).type != "cpu":
        raise RunError(f"device={device!r}: the Ray engine runs its actors on CPUs; for a GPU use engine='local'")
    loaded, model_path = _resolve_model(model, input_format, device)
    heads = tuple(getattr(_network_of(loaded), "heads", ()) or ())
    for t in targets:
        if t in _HEAD_NEEDS and heads and not any(h in heads for h in _HEAD_NEEDS[t]):
            raise RunError(f"target {t!r} needs a {' or '.join(_HEAD_NEEDS[t])} head; the network has {heads}")
    if (workers > 1 or engine == "ray") and model_path is None:
        raise RunError("several workers and Ray load the network from its file: pass a path or a model from from_path")
    if lens is None:
        from lczerolens.lenses import LrpLens

        lens = LrpLens()
    lens_spec = _lens_spec(lens) if (workers > 1 or engine == "ray") else None

    network_sha = _model_sha256(loaded, model_path)
    fingerprint = {
        "network_sha256": network_sha,
        "input_format": loaded.input_format.name,
        "lens": _lens_fingerprint(lens, loaded),
        "targets": list(targets),
        "source": reader.spec(),
        "source_sha256": _sha256_file(reader.path),
        "shard_size": shard_size,
    }
    metadata = {
        "lczerolens_version": __version__,
        "network_sha256": network_sha,
        "network": model_path.name if model_path is not None else str(getattr(loaded, "source", "") or ""),
        "input_format": loaded.input_format.name,
        "lens": repr(lens),
        "targets": ",".join(targets),
        "selection": json.dumps(reader.spec(), sort_keys=True),
    }
    out = Path(out)
    manifest = _prepare_out(out, fingerprint)
    if manifest.get("complete"):
        return out  # the same run, already finished

    total = reader.count()
    n_shards = math.ceil(total / shard_size)
    manifest.update(positions=total, shards_total=n_shards)
    done = {int(k) for k in manifest["shards"]}
    bar = _progress(progress, total, sum(v["positions"] for v in manifest["shards"].values()))

    def record(info: dict[str, Any]) -> None:
        manifest["shards"][str(info["shard"])] = {k: info[k] for k in ("file", "rows", "positions", "sha256")}
        manifest["shards"][str(info["shard"])]["no_row"] = info.get("no_row") or {}
        _write_manifest(out, manifest)
        bar.update(info["positions"])

    try:
        payloads = _shard_payloads(reader, shard_size, done)
        if engine == "ray":
            _run_ray(payloads, out, model_path, lens_spec, targets, batch_size, metadata, workers, record,
                     int(loaded.input_format))
        elif workers == 1:
            explainer = _Explainer(loaded, lens, targets, batch_size, metadata)
            for index, records in payloads:
                info = _write_shard(out, index, explainer.table(records))
                info["positions"] = sum(len(r.plies) for r in records)
                info["no_row"] = dict(explainer.no_row)
                record(info)
        else:
            _run_local(payloads, out, model_path, lens_spec, targets, batch_size, metadata, workers, record,
                       int(loaded.input_format), None if device is None else str(device))
    finally:
        bar.close()
    manifest["skipped"] = [str(s) for s in reader.skipped]
    manifest["n_skipped"] = reader.n_skipped
    no_row: dict[str, int] = {}
    for shard in manifest["shards"].values():
        for target, k in (shard.get("no_row") or {}).items():
            no_row[target] = no_row.get(target, 0) + int(k)
    manifest["no_row"] = no_row
    manifest["complete"] = len(manifest["shards"]) == n_shards
    _write_manifest(out, manifest)
    if progress and reader.n_skipped:
        print(reader.report(), file=sys.stderr)
    return out


def _resolve_model(model: Any, input_format: Any = None, device: Any = None) -> tuple[Any, Path | None]:
    from lczerolens.model import LczeroModel

    if isinstance(model, (str, Path)):
        path = Path(model)
        return LczeroModel.from_path(path, input_format=input_format, device=device), path.resolve()
    if not hasattr(model, "input_format"):
        raise RunError(f"model must be an LczeroModel or a network file, not {type(model).__name__}")
    if input_format is not None:
        raise RunError("input_format= is for a network file; a loaded model has its own (LczeroModel.from_path(path, "
                       "input_format=...))")
    if device is not None:
        raise RunError("device= is for a network file; a loaded model runs where it is (model.to(device))")
    source = getattr(model, "source", None)
    path = Path(source).resolve() if source and Path(source).is_file() else None
    return model, path


def _progress(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="pos", desc="explaining", smoothing=0.1, file=sys.stderr)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _run_local(payloads, out, model_path, lens_spec, targets, batch_size, metadata, workers, record,
               input_format=None, device=None) -> None:  # fmt: skip
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // workers)
    args = (str(model_path), lens_spec, targets, batch_size, metadata, threads, input_format, device)
    context = multiprocessing.get_context("spawn")  # fork after torch started its threads can deadlock
    from concurrent.futures.process import BrokenProcessPool

    try:
        _pool_loop(payloads, out, args, workers, record, context)
    except BrokenProcessPool as exc:
        from lczerolens._mainguard import guard_hint

        raise RunError(
            f"a worker process died ({exc}); if the run was started from a script, the likely cause: "
            f"{guard_hint(workers)}; otherwise the workers ran out of memory (use fewer workers or a smaller "
            "batch_size). The shards written so far are kept: run again to resume"
        ) from exc


def _pool_loop(payloads, out, args, workers, record, context) -> None:
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=args) as pool:
        pending: set = set()
        for index, records in payloads:
            pending.add(pool.submit(_worker_shard, str(out), index, [r.to_json() for r in records]))
            if len(pending) >= 2 * workers:  # bounded: the parent never holds more than this many shards
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    record(future.result())
        for future in pending:
            record(future.result())


def _run_ray(payloads, out, model_path, lens_spec, targets, batch_size, metadata, workers, record,
             input_format=None) -> None:  # fmt: skip
    try:
        import ray
    except ImportError as exc:
        raise RunError("engine='ray' needs Ray: pip install 'lczerolens[ray]'") from exc
    if not ray.is_initialized():
        ray.init()  # connects to RAY_ADDRESS when it is set
    wave = max(8, 4 * workers)  # shards per Ray Data pass: bounds what the driver holds
    kwargs = {
        "out": str(out),
        "model_path": str(model_path),
        "lens_spec": lens_spec,
        "targets": tuple(targets),
        "batch_size": batch_size,
        "metadata": metadata,
        "threads": 1,
        "input_format": input_format,
    }
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if not batch:
            return
        try:  # one block per shard, so that the actors share the shards out
            items = ray.data.from_items(batch, override_num_blocks=len(batch))
        except TypeError:  # Ray before 2.10 called it parallelism
            items = ray.data.from_items(batch, parallelism=len(batch))
        ds = items.map_batches(
            RayShardExplainer,
            fn_constructor_kwargs=kwargs,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        for row in ds.iter_rows():
            info = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            info["no_row"] = json.loads(str(info.get("no_row") or "{}"))
            record(info)
        batch.clear()

    for index, records in payloads:
        batch.append({"shard": index, "payload": json.dumps([r.to_json() for r in records])})
        if len(batch) >= wave:
            flush()
    flush()


def load_results(out: str | Path, *, allow_partial: bool = False) -> Any:
    """The rows of a run as one ``pyarrow.Table``, shard after shard (position order, then target order).

    Parameters
    ----------
    out
        The run folder.
    allow_partial
        Read an unfinished run's recorded shards instead of raising.

    Raises
    ------
    RunError
        ``out`` holds no run, or an unfinished one (without ``allow_partial``), or a shard file is missing.

    Example
    -------
    >>> df = load_results("runs/games").to_pandas()  # doctest: +SKIP
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    manifest = load_manifest(out)
    if not manifest.get("complete") and not allow_partial:
        n = len(manifest["shards"])
        raise RunError(
            f"the run in {str(out)!r} is unfinished ({n} of {manifest.get('shards_total', '?')} shards); run the "
            "same command again to finish it, or pass allow_partial=True"
        )
    tables = []
    for key in sorted(manifest["shards"], key=int):
        path = out / manifest["shards"][key]["file"]
        try:
            tables.append(pq.read_table(path))
        except (OSError, pa.ArrowException) as exc:
            raise RunError(f"cannot read shard {path}: {exc}; run the same command again to redo it") from exc
    if not tables:
        return result_schema().empty_table()
    return pa.concat_tables(tables)



#: Piece groups of :func:`summarize`: every square, then the squares holding each piece type (either colour).
SUMMARY_GROUPS = ("all", "P", "N", "B", "R", "Q", "K", "empty")


def _piece_codes(fen: str) -> Any:
    """``[64]`` int8 by python-chess square: 0 empty, 1..6 pawn..king (either colour)."""
    import numpy as np

    codes = np.zeros(64, dtype=np.int8)
    rank, file = 7, 0
    for ch in fen.split(" ", 1)[0]:
        if ch == "/":
            rank, file = rank - 1, 0
        elif ch.isdigit():
            file += int(ch)
        else:
            codes[rank * 8 + file] = "pnbrqk".index(ch.lower()) + 1
            file += 1
    return codes


def summarize(out: str | Path, *, allow_partial: bool = False) -> dict[str, Any]:
    """Mean relevance per square, by target and by the piece type on the square, read shard by shard.

    Returns
    -------
    dict
        ``"maps"``: ``{target: {group: [64] float64}}`` for the groups of :data:`SUMMARY_GROUPS` (a square's mean
        over the rows where it holds that piece type, either colour; 0 where it never does); ``"rows"``: one dict
        per target with ``target``, ``rows``, ``mean target``, ``mean conservation`` (nan ignored) and the share
        of the total |relevance| on squares of each piece type (``P``, ..., ``K``, ``empty``).

    Example
    -------
    >>> summary = summarize("runs/games")  # doctest: +SKIP
    >>> summary["maps"]["top"]["all"].reshape(8, 8)  # doctest: +SKIP
    """
    import numpy as np
    import pyarrow.parquet as pq

    out = Path(out)
    manifest = load_manifest(out)
    if not manifest.get("complete") and not allow_partial:
        raise RunError(f"the run in {str(out)!r} is unfinished; run the same command again to finish it")
    if str(manifest.get("fingerprint", {}).get("lens", "")).startswith("AblationLens("):
        raise RunError(f"the run in {str(out)!r} holds ablation effects, not maps; rank its units with "
                       "lczerolens.lenses.rank_units")  # fmt: skip
    sums: dict[str, Any] = {}
    stats: dict[str, dict[str, float]] = {}
    for key in sorted(manifest["shards"], key=int):
        table = pq.read_table(out / manifest["shards"][key]["file"],
                              columns=["fen", "target", "target_value", "relevance", "conservation"])  # fmt: skip
        targets = table.column("target").to_pylist()
        fens = table.column("fen").to_pylist()
        rel = table.column("relevance").combine_chunks().flatten().to_numpy().reshape(-1, 64).astype(np.float64)
        values = table.column("target_value").to_numpy(zero_copy_only=False)
        cons = table.column("conservation").to_numpy(zero_copy_only=False)
        codes = np.stack([_piece_codes(f) for f in fens]) if fens else np.zeros((0, 64), np.int8)
        for target in dict.fromkeys(targets):
            rows = np.array([t == target for t in targets])
            r, c = rel[rows], codes[rows]
            acc = sums.setdefault(target, {"sum": np.zeros((8, 64)), "count": np.zeros((8, 64)), "abs": np.zeros(8)})
            acc["sum"][0] += r.sum(axis=0)
            acc["count"][0] += len(r)
            for g in range(1, 8):
                code = g if g < 7 else 0
                hit = c == code
                acc["sum"][g] += np.where(hit, r, 0.0).sum(axis=0)
                acc["count"][g] += hit.sum(axis=0)
                acc["abs"][g] += np.abs(np.where(hit, r, 0.0)).sum()
            s = stats.setdefault(target, {"rows": 0, "target": 0.0, "cons": 0.0, "cons_n": 0})
            s["rows"] += len(r)
            s["target"] += float(values[rows].sum())
            finite = np.isfinite(cons[rows])
            s["cons"] += float(cons[rows][finite].sum())
            s["cons_n"] += int(finite.sum())
    maps: dict[str, dict[str, Any]] = {}
    table_rows = []
    for target, acc in sums.items():
        means = np.divide(acc["sum"], acc["count"], out=np.zeros_like(acc["sum"]), where=acc["count"] > 0)
        maps[target] = {g: means[i] for i, g in enumerate(SUMMARY_GROUPS)}
        s = stats[target]
        total_abs = acc["abs"][1:].sum()
        row = {
            "target": target,
            "rows": s["rows"],
            "mean target": s["target"] / max(s["rows"], 1),
            "mean conservation": s["cons"] / s["cons_n"] if s["cons_n"] else float("nan"),
        }
        for i, g in enumerate(SUMMARY_GROUPS[1:], start=1):
            row[f"|rel| on {g}"] = float(acc["abs"][i] / total_abs) if total_abs else float("nan")
        table_rows.append(row)
    return {"maps": maps, "rows": table_rows}
