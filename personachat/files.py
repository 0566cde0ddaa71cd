"""Research files (transcripts, exports, reports) as the user expects them on a shared machine.

Every file personachat creates for research is made with mode ``0666`` less the umask (so a
collaborator in the same group can read it under ``umask 002``), and whole files are written
atomically: to a temporary file in the same folder, then renamed, so a reader never sees half a
file and a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from personachat.errors import PersonachatError


def file_mode() -> int:
    """``0o666`` less the current umask (read without changing it for other threads)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` in one step (temporary file + rename), with :func:`file_mode`.

    Raises :class:`PersonachatError` naming the path when it cannot be written (a folder in its
    place, a file where a folder should be, no permission); no temporary file is left behind.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path.is_dir():
        raise PersonachatError(f"{path} is a folder: give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise PersonachatError(f"cannot create {path}: {path.parent} is not a folder") from None
    except OSError as exc:
        raise PersonachatError(f"cannot create the folder of {path}: {exc.strerror}") from None
    fd, temporary = None, None
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            fd = None
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
        temporary = None
    except OSError as exc:
        raise PersonachatError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if fd is not None:
            os.close(fd)
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    return path
