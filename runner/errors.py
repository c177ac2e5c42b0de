"""Errors a user can cause (exit 2) and failures of a node (exit 1)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

TOO_DEEP = "tables or arrays nested too deeply to read (hundreds of levels); flatten them"


class UserError(Exception):
    """Bad input: the message says what, where and how to fix it. Exit code 2."""


class NodeFailed(Exception):
    """A node could not be produced (backend refusal, ffmpeg failure, bad output)."""


class DiskFull(Exception):
    """No space left on the device holding `folder`: one line naming it and what was free."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            free = f"{_size(shutil.disk_usage(folder).free)} free"
        except OSError:
            free = "free space unknown"
        super().__init__(
            f"{folder}: no space left on the device ({free}); free some space or point "
            "--cache-dir at a larger disk, then run again (nothing half-written was kept)"
        )

    @staticmethod
    def of(err: BaseException, folder: Path) -> DiskFull | None:
        """A DiskFull for an ENOSPC/EDQUOT OSError (named by its file, else `folder`)."""
        if isinstance(err, DiskFull):
            return err
        if not isinstance(err, OSError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
            return None
        if err.filename:
            named = Path(str(err.filename))
            folder = named if named.is_dir() else named.parent
        return DiskFull(folder)


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
