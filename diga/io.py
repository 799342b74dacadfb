"""Atomic, durable file writes: a temp file in the same folder, fsynced, then a rename, then
the folder fsynced.

A killed process (or a power cut) leaves either the old file or the new one, never half of
one. A write that fails for a full disk or a read-only / forbidden folder becomes one
``UserError`` naming the folder and its free space; the old file is untouched.

``tempfile`` makes its files 0600 and folders 0700 whatever the umask; the temp files and
folders here are given the modes a plain ``open`` / ``mkdir`` would have (``file_mode``,
``dir_mode``: 0644 / 0755 under umask 022), so a model copied to a server or into a container
that runs as another user can be read there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diga.errors import UserError

DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}
# what fixes each cause; then, for all of them: another output path
FIXES = {errno.ENOSPC: "free space on that device", errno.EDQUOT: "free space within the quota",
         errno.EROFS: "remount it read-write", errno.EACCES: "let this user write there",
         errno.EPERM: "let this user write there"}


def write_error(exc: OSError, folder: Path, what: str) -> UserError | None:
    """A full disk, a quota, a read-only or forbidden folder as one ``UserError`` naming the
    folder, its free space and a fix (None for other errors)."""
    why = DISK_ERRORS.get(exc.errno or 0)
    if why is None:
        return None
    try:
        free = f"{human_bytes(shutil.disk_usage(_existing(folder)).free)} free there"
    except OSError:
        free = "free space unknown"
    return UserError(f"cannot write {what} in {folder}: {why} ({free})",
                     f"{FIXES[exc.errno]}, or choose another output path (--out); what was "  # type: ignore[index]
                     "there before is intact")


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``: the unit that keeps the number readable."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def os_write_error(exc: OSError) -> UserError | None:
    """``write_error`` for an ``OSError`` raised anywhere, named by the path it carries."""
    where = Path(exc.filename) if exc.filename else Path.cwd() / "?"
    return write_error(exc, where.parent, where.name)


def _existing(folder: Path) -> Path:
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status`` on Linux 4.7+):
    setting it to read it back would race with threads creating files meanwhile. Elsewhere
    ``os.umask`` is set and restored at once."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder: ``0o777 & ~umask``."""
    return 0o777 & ~current_umask()


def temp_folder(parent: Path, prefix: str) -> Path:
    """``tempfile.mkdtemp`` in ``parent`` with a plain folder's mode (not 0700): it is renamed
    into place as a published folder (a checkpoint)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, dir_mode())
    return folder


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it) durable; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    # some file systems refuse fsync on folders: the rename itself is still atomic there
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, fsync it, rename it over ``path``, fsync the folder.

    Raises:
        UserError: a full disk, a read-only or forbidden folder (``write_error``).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            if hasattr(os, "fchmod"):  # POSIX (and Windows from Python 3.13)
                os.fchmod(fd, file_mode())  # mkstemp's 0600 would outlive the rename
        finally:
            os.close(fd)
        write(Path(tmp))
        fsync_file(Path(tmp))
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        error = write_error(exc, path.parent, path.name)
        if error is None:
            raise
        raise error from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # gone already once renamed


def replace_folder(staged: Path, folder: Path) -> None:
    """Put a complete ``staged`` folder in the place of ``folder``: the old one is renamed to
    ``.<name>.old``, the staged one into place, the parent fsynced, the old one removed. At
    every instant one complete version exists (``folder``, or inside the swap ``.<name>.old``),
    and renames take no space: a full disk fails while staging, never here."""
    staged, folder = Path(staged), Path(folder)
    old = folder.parent / f".{folder.name}.old"
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)  # from here until the next rename, .old is the folder
    try:
        os.replace(staged, folder)
    except BaseException:
        if old.exists() and not folder.exists():
            os.replace(old, folder)  # put the previous one back
        raise
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def publish_folder(stage: Path, folder: Path, last: str | None = None) -> None:
    """Move every file of ``stage`` into ``folder`` (``last`` after the others: the file that
    says the set is complete), then remove ``stage``. Renames take no space, so a folder whose
    files were all written in ``stage`` is never left half-replaced by a full disk."""
    stage, folder = Path(stage), Path(folder)
    names = sorted(p.name for p in stage.iterdir())
    for name in sorted(names, key=lambda n: n == last):
        os.replace(stage / name, folder / name)
    fsync_dir(folder)
    stage.rmdir()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def truncate_jsonl(path: Path, last_step: int) -> int:
    """Keep the lines of a ``metrics.jsonl`` up to ``last_step`` (a resumed run replays the
    steps after its checkpoint; a torn last line goes too); returns how many were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if int(record.get("step", 0)) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


def append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    """Append one JSON line (a line is written whole or, if the process dies, torn at the end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(obj) + "\n")
