"""Crash-safe file writing and self-describing checkpoints.

Every artifact is written to a temporary name in the same folder and renamed, so an
interrupted run never leaves half a file. Checkpoints are plain dicts of tensors and
Python values that load with torch.load(..., weights_only=True).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from common.errors import UserError

CHECKPOINT_FORMAT = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(folder: str | Path) -> None:
    """A UserError now, before hours of work, when `folder` cannot be created or written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise UserError(f"cannot write to {folder} ({err.strerror}): choose another folder or free it") from None


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror}); nothing there was replaced") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())   # mkstemp makes 0600; a plain open() would respect the umask
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise UserError(f"cannot write {path} ({err.strerror}); the file there before, if any, is "
                            f"unchanged") from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(data))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=indent).encode())


def read_json(path: str | Path, stage_hint: str = "") -> Any:
    """Read JSON written by an earlier stage; missing or corrupt files are a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found" + (f": run {stage_hint} first" if stage_hint else ""))
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err})"
                        + (f": re-run {stage_hint}" if stage_hint else "")) from None


def lock_owner(path: str | Path) -> int | None:
    """The pid recorded in a lock file if that process is alive, else None (no lock, or a stale one)."""
    try:
        pid = int(Path(path).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@contextmanager
def run_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold `path` (it records our pid) while a stage writes a folder; a second run into the same folder is
    refused while the first is alive. A lock left by a killed run is taken over."""
    path = Path(path)
    owner = lock_owner(path)
    if owner is not None and owner != os.getpid():
        raise UserError(f"another {what} (pid {owner}) is writing to {path.parent}; wait for it or stop it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, kind: str, **fields: Any) -> None:
    """Save a self-describing checkpoint: {'kind', 'format', **fields}, atomically."""
    import torch

    payload = {"kind": kind, "format": CHECKPOINT_FORMAT, **fields}
    _atomic_write(Path(path), lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, kind: str, stage_hint: str = "", map_location: str = "cpu") -> dict:
    """Load a checkpoint of the expected kind with weights_only=True.

    Missing, corrupt and foreign files raise a UserError that names the stage to run.
    """
    import torch

    path = Path(path)
    hint = f": run {stage_hint} first" if stage_hint else ""
    if not path.exists():
        raise UserError(f"checkpoint {path} not found{hint}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise UserError(f"{path} is corrupt or not a checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise UserError(f"{path} is not a {kind} checkpoint (found {found!r})")
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} has checkpoint format {payload.get('format')!r}, "
                        f"expected {CHECKPOINT_FORMAT}: re-create it with this version")
    return payload
