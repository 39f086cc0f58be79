"""Bad-input reporting: errors that name the row and field, and counted skips."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

from diffalign.errors import UserError

WORKER_TRACEBACK_MARKER = "\nOriginal Traceback (most recent call last):\n"


class DataError(UserError, ValueError):
    """Bad input data; the message names the source, row and field.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``DataError("Caught
    DataError in DataLoader worker process N.\nOriginal Traceback ...")``; the constructor keeps only
    the original one-line message, so the user sees the same error with or without workers."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (original_message(args[0]),)
        super().__init__(*args)


def original_message(text: str) -> str:
    """The message of the exception a torch ``ExceptionWrapper`` text (a worker's re-raised error)
    describes; ``text`` itself when it is not one."""
    if not text.startswith("Caught ") or WORKER_TRACEBACK_MARKER not in text:
        return text
    last = text.rsplit("Traceback (most recent call last):\n", 1)[-1].splitlines()
    for number, line in enumerate(last):  # frames are indented; the exception line is not
        if line and not line[0].isspace():
            message = "\n".join(last[number:]).strip()
            head, separator, rest = message.partition(": ")
            return rest if separator and " " not in head else message
    return text


@dataclass
class SkipReport:
    """Rows left out of a dataset, by reason; printed and logged, never silent."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.examples.setdefault(reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no rows skipped"
        parts = [f"{count} {reason} (first: {self.examples[reason]})" for reason, count in sorted(self.counts.items())]
        return f"skipped {self.total} rows: " + "; ".join(parts)


# ------------------------------------------------------------------------------------ disk space
class DiskFullError(UserError, OSError):
    """A write failed because the disk is full; the message names the path, the free and needed bytes."""


_FULL_MARKERS = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded", "os error 122")
# torch.save's writer reports a short write without the errno (the text depends on the torch version)
_TORCH_WRITE_MARKERS = ("basic_ios::clear", "iostream error", "inline_container.cc", "pytorchstreamwriter",
                        "file write failed", "unexpected pos")


def human_bytes(count: Optional[float]) -> str:
    if count is None:
        return "an unknown amount"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def free_bytes(path: str) -> Optional[int]:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException, path: str, needed: Optional[int] = None) -> bool:
    """Whether ``error`` (from writing under ``path``) means the disk is full: ENOSPC / EDQUOT, a
    wrapped "No space left on device" (safetensors, torch), or torch's errno-less short-write error
    while less than ``needed`` (16 MB if unknown) is free."""
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(link).lower()
        if any(marker in text for marker in _FULL_MARKERS):
            return True
        if any(marker in text for marker in _TORCH_WRITE_MARKERS):
            free = free_bytes(path)
            return free is not None and free < (needed if needed else 16_000_000)
    return False


@contextlib.contextmanager
def disk_space_errors(path: str, needed: Union[int, Callable[[], Optional[int]], None] = None, what: str = "the files",
                      cleanup: Optional[Callable[[], None]] = None, hint: str = "free some space or write elsewhere"):
    """Turn a full-disk failure of the writes in the block into one ``DiskFullError`` sentence naming
    ``path``, the free bytes there and about the bytes ``needed`` (a number or a function computing
    it). ``cleanup`` (removing a partial write) runs first, so the free bytes reported are real."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        try:
            size = needed() if callable(needed) else needed
        except Exception:  # an estimate must never hide the write error
            size = None
        if not is_disk_full(error, path, size):
            raise
        if cleanup is not None:
            with contextlib.suppress(Exception):
                cleanup()
        free = free_bytes(path)
        needed_text = f"about {human_bytes(size)}" if size and (free is None or size > free) else "more than that"
        raise DiskFullError(
            f"no space left on the disk while writing {what} to {path}: {human_bytes(free)} free there, "
            f"{needed_text} needed; {hint}"
        ) from error
