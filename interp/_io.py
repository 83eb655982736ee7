"""Atomic writes: a file or folder appears complete at its final path or not at all.

What is written gets the permissions a plain ``open()``/``mkdir()`` would give under the current umask (not the
owner-only ones of ``tempfile``), so a cache can be shared by a group.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import secrets
import shutil
import sys
from pathlib import Path


def _beside(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}-{secrets.token_hex(6)}")


@functools.cache
def _renameat2():
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the C library or
    the filesystem cannot."""
    if _renameat2() is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _renameat2()(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _put_in_place(tmp: Path, final: Path) -> list[Path]:
    """Move the folder ``tmp`` to ``final``; returns where the folders it replaced now are (to delete).

    On Linux an existing ``final`` is exchanged with ``tmp`` in one step, so a reader always finds a complete
    folder there. Elsewhere (or on a filesystem without the exchange) the old folder is renamed aside first and the
    new one renamed in right after: a reader may then find no folder for that instant, but never a partial one.
    """
    old: list[Path] = []
    for _ in range(100):  # a retry means another writer put a folder at ``final`` or took it away in between
        try:
            os.rename(tmp, final)
            return old
        except OSError as e:
            if not isinstance(e, FileExistsError) and e.errno != errno.ENOTEMPTY:
                raise
        try:
            if _exchange(tmp, final):
                return [*old, tmp]
            old.append(_beside(final, "old"))
            os.rename(final, old[-1])
        except FileNotFoundError:
            pass
    raise OSError(f"could not put {tmp} in place of {final}: other writers kept replacing it")


def _settle(folder: Path) -> None:
    """Flush every file to disk and give it the permissions ``open()`` gives (writers such as safetensors use
    owner-only temporary files); the folder itself was made by ``mkdir``, so its mode already follows the umask."""
    mode = folder.stat().st_mode & 0o777
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), mode)
        for f in files:
            path = os.path.join(root, f)
            os.chmod(path, mode & 0o666)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder beside ``final``; on success it takes the place of ``final`` in one step.

    On any error the temporary folder is removed, so a half-written result is never at ``final``. An existing
    ``final`` is replaced without a moment where it is missing (on Linux; elsewhere it is missing for an instant
    between two renames, see ``_put_in_place``) and deleted only once it is no longer at ``final``: every path
    looked up under ``final`` lies in a complete folder, old or new, and files already open stay readable. Only a
    listing already under way when the folder is replaced goes on reading the old folder while it is deleted.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(final, "partial")
    tmp.mkdir()
    try:
        yield tmp
        _settle(tmp)
        old = _put_in_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for path in old:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "wb"):
    """Yield a file handle to a temporary file beside ``final``, renamed over ``final`` when closed cleanly."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(final, "partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
