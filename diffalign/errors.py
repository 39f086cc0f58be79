"""Errors a user's input can cause, under one base: ``UserError``.

The CLI (``diffalign`` and its sub-commands) prints a ``UserError``'s message on one line and exits
with code 2; any other exception is a bug in diffalign and keeps its traceback (exit code 1). With
``--debug`` (or ``DIFFALIGN_DEBUG=1`` in the environment) a user error shows its traceback too.

Every error class a user can trigger derives from ``UserError`` and keeps the built-in exception it
was before as a second base (``DataError(UserError, ValueError)``), so code that catches the built-in
type still catches it:

- ``UserError``
  - ``UsageError`` (``ValueError``): an option value or a combination of inputs that cannot work and
    has no more specific class below (``--option expects KEY=VALUE``, ``--both-orders applies to ...``)
  - ``UnknownNameError`` (``KeyError``): a name nothing is registered under (data format, scorer);
    ``diffalign.methods.base.UnknownMethodError`` for methods
  - ``ModelLoadError`` (``ValueError``): a model that cannot be loaded; ``ModelNotFoundError`` (also a
    ``FileNotFoundError``) for a model folder that is not there
  - ``diffalign.options.OptionError``: an invalid option value
  - ``diffalign.data.errors.DataError`` (``diffalign.data.cache.CacheMismatchError``) and ``DiskFullError``
  - ``diffalign.training.run_folder.RunFolderError`` (``LauncherGoneError``), ``NonFiniteLossError``
  - ``diffalign.diffusion.attention.AttentionBackendError``
  - the scorers' ``CheckpointError``, ``JudgeRequestError`` and ``RecordError``
"""

from __future__ import annotations

import os
import sys
from typing import Callable

DEBUG_ENV = "DIFFALIGN_DEBUG"
USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """Base of the errors a user's input can cause (a flag, a file, a model, data, the environment).

    Its message is one sentence that names what is wrong and, where it can, what would be valid.
    ``str()`` is the message itself, never quoted (``KeyError`` would quote it)."""

    def __str__(self) -> str:
        if len(self.args) == 1:
            return str(self.args[0])
        return super().__str__()


class UsageError(UserError, ValueError):
    """An option value or a combination of inputs that cannot work (no more specific class applies)."""


class UnknownNameError(UserError, KeyError):
    """A name that nothing is registered under (a data format, a scorer, a method)."""


class ModelLoadError(UserError, ValueError):
    """A model path or hub id that cannot be loaded (missing folder, wrong pipeline class, no access)."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """A model folder that does not exist or holds no model."""


def debug_requested() -> bool:
    """Whether ``DIFFALIGN_DEBUG`` asks for tracebacks of user errors too (any value but "", 0, false, no, off)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def report_user_errors(command: str, call: Callable[[], int], debug: bool = False) -> int:
    """``call()``'s exit code, or 2 after printing ``diffalign COMMAND: error: MESSAGE`` (one line on
    stderr) for a ``UserError``. With ``debug`` (``--debug``) or ``DIFFALIGN_DEBUG`` set, a user error is
    raised with its traceback instead. Any other exception is a bug: it propagates with its traceback."""
    try:
        return call()
    except UserError as error:
        if debug or debug_requested():
            raise
        print(f"diffalign {command}: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
