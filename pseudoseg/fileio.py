"""Atomic file writing: nothing on disk is ever left half-written.

Every file pseudoseg writes goes to a temporary name in the same folder first
and is renamed over the target only once complete, so an interrupted run or a
crash never corrupts a checkpoint, report or manifest that was there before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


TEMPORARY_SUFFIX = ".tmp"
"""Every temporary file or folder pseudoseg makes beside a target inside a run directory is
``.<target name>.<random>.tmp`` (the data generators' :func:`atomic_folder` works outside
run directories and names its folders ``.partial`` / ``.old``)."""

# tempfile's random part: 8 characters of [a-z0-9_]
_TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX))


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is one of pseudoseg's temporary names (``.<target>.<random>.tmp``)."""
    return _TEMPORARY_NAME.fullmatch(name) is not None


def remove_temporary_files(root: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders an interrupted run left under ``root``.

    Only names of pseudoseg's own temporary pattern are touched (a kill between
    writing a temporary file and renaming it leaves one behind); symbolic links
    to folders are not followed. Returns what was removed.
    """
    removed = []
    for folder, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            if not is_temporary_name(name):
                continue
            path = Path(folder) / name
            if name in dirs and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        dirs[:] = [name for name in dirs if not is_temporary_name(name)]
    return sorted(removed)


# Failures of the disk, not of pseudoseg: reported as the user's to fix.
_DISK_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


_OS_ERROR_NUMBER = re.compile(r"\(os error (\d+)\)")


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk, a quota or a missing permission while writing ``path``
    into a one-line :class:`~pseudoseg.errors.UserError` naming it: an ``OSError``
    from any writer (JSON, PNG, NIfTI, ONNX) or the ``SafetensorError`` safetensors
    raises instead."""
    from safetensors import SafetensorError

    from pseudoseg.errors import UserError

    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        raise UserError(f"{path}: cannot write ({_DISK_ERRORS[exc.errno]})") from None
    except SafetensorError as exc:
        # safetensors reports the operating system's error inside its own exception:
        # "Error while serializing: I/O error: No space left on device (os error 28)"
        found = _OS_ERROR_NUMBER.search(str(exc))
        number = int(found.group(1)) if found else None
        if number not in _DISK_ERRORS:
            raise
        raise UserError(f"{path}: cannot write ({_DISK_ERRORS[number]})") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The caller writes the temporary file by any means (a library's ``save``
    function, for instance). On an exception the temporary file is removed and
    ``path`` is untouched.
    """
    target = Path(path)
    with disk_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX, dir=target.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file 0600; give it the permissions an ordinary open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with disk_errors(target):
            yield tmp
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; swap it in for ``out`` on success.

    ``out`` must not exist, be empty, or (with ``overwrite``) is replaced, but
    only once the new folder is complete: an interrupted build leaves neither a
    half-written ``out`` nor a lost old one.
    """
    import uuid

    from pseudoseg.errors import UserError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; choose another folder or pass overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would stay with the finished folder;
    # mkdir honours the user's umask.
    building = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.partial"
    building.mkdir()
    try:
        yield building
        if not out.exists():
            os.replace(building, out)
            return
        # A folder cannot be renamed over a non-empty one, and the old data must
        # survive until the new is in place: move it aside first.
        old = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.old"
        os.replace(out, old)
        try:
            os.replace(building, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
