"""The package's exceptions: catch :class:`LczeroLensError` to catch them all.

Every message names the offending value (a FEN, a move, a file, a layer, a shape) and says what to do.
Each class also derives from the built-in exception a Python user would expect (``ValueError`` for bad values,
``FileNotFoundError`` for a missing file), so existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class LczeroLensError(Exception):
    """Base class of every error raised by lczerolens."""


class InvalidBoardError(LczeroLensError, ValueError):
    """A position that cannot be set up or encoded, e.g. an invalid FEN."""


class InvalidMoveError(LczeroLensError, ValueError):
    """A move (UCI string, ``chess.Move`` or policy index) that is malformed or not legal in the position."""


class InputFormatError(LczeroLensError, ValueError):
    """An lc0 input format that lczerolens does not know."""


class ModelLoadError(LczeroLensError, ValueError):
    """A network file that is corrupted, truncated, not an lc0 network, or whose weights do not fit."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """A network path that does not exist."""


class UnsupportedModelError(ModelLoadError):
    """A valid network that uses something lczerolens cannot run (an op, opset, architecture or encoding)."""


class InputShapeError(LczeroLensError, ValueError):
    """A tensor or batch whose shape, dtype or length does not match what is expected."""


class LensError(LczeroLensError, ValueError):
    """A lens cannot explain this model or target (unknown op, bad target, ...)."""


class InvalidPositionWarning(UserWarning):
    """A position that no legal game reaches (adjacent kings, pawns on the back rank, ...): lc0 evaluates it
    anyway, but the network never saw such inputs in training, so its outputs and explanations mean little."""


class DataError(LczeroLensError, ValueError):
    """A game collection (PGN, EPD) that cannot be read at all: a missing or unreadable file, a bad selection."""


class RunError(LczeroLensError, ValueError):
    """A collection run that cannot start or resume: an output folder of another run, an unwritable path."""


class InvalidOptionError(LczeroLensError, ValueError):
    """An option (a device, a dtype, a limit) that lczerolens cannot honour."""


class SaveError(LczeroLensError, OSError):
    """Weights that cannot be written: a missing folder, an unwritable path, a full disk."""


class InputFormatWarning(UserWarning):
    """A network loaded with an assumed input format (an ONNX export records none): pass ``input_format=``."""


class EngineError(LczeroLensError, RuntimeError):
    """The lc0 binary (``lczerolens.engine.Lc0``) failed: it would not start, died, or printed what we cannot read."""


class EngineNotFoundError(EngineError, FileNotFoundError):
    """No lc0 binary: pass ``binary=``, set ``$LC0``, put ``lc0`` on PATH, or install ``lczerolens[lc0]``."""
