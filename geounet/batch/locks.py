"""Per-scene locks between concurrent runs, and the clean-up of what a killed run left behind.

A scene's lock is ``OUTDIR/.<stem>.lock`` (``fcntl.flock``, non-blocking, the holder's pid
written inside). With it held, :func:`recover_interrupted` removes the hidden
``.<stem>.partial-<pid>`` / ``.<stem>.old-<pid>`` folders of processes that are gone
(``geounet.io.folders`` writes them), putting the previous outputs back first if a run
died between moving them aside and moving the new ones in.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from pathlib import Path

_STALE = re.compile(r"\.(partial|old)-(\d+)$")  # after ".<stem>": what a run writes, and its pid


class SceneLock:
    """Non-blocking exclusive ``flock`` on a lock file; the holder's pid is written inside.

    The kernel drops the lock when its process dies (even by SIGKILL), so a lock file
    left behind means nothing; it is never deleted (that would race with other runs).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if no other process holds it; False when one does."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        """The pid written by the process that holds (or last held) the lock, as text; ``?`` if unknown."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> SceneLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def scene_lock(out_root: Path, stem: str) -> SceneLock:
    """The (not yet taken) lock of the output folder ``out_root/<stem>``."""
    return SceneLock(out_root / f".{stem}.lock")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_folders(out_root: Path, stem: str) -> list[tuple[str, Path]]:
    """``(kind, path)`` of the ``.<stem>.partial-<pid>`` / ``.old-<pid>`` folders of dead processes."""
    prefix = f".{stem}."
    try:
        entries = list(os.scandir(out_root))
    except FileNotFoundError:
        return []
    stale = []
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        m = _STALE.fullmatch(entry.name[len(stem) + 1 :])
        if m and not pid_alive(int(m.group(2))):
            stale.append((m.group(1), Path(entry.path)))
    return stale


def recover_interrupted(out_root: Path, stem: str) -> list[str]:
    """Clean what killed runs left for one scene (call with the scene's lock held); returns what was done.

    If ``<stem>/`` itself is missing, a run died between moving the previous outputs
    aside and moving the new ones in: the newest stale ``.old-`` folder (complete
    previous outputs) is moved back. The other stale folders are removed.
    """
    final = out_root / stem
    stale = stale_folders(out_root, stem)
    done = []
    if not final.exists():
        olds = sorted((p for kind, p in stale if kind == "old"), key=lambda p: p.stat().st_mtime)
        if olds:
            os.replace(olds[-1], final)
            stale = [(k, p) for k, p in stale if p != olds[-1]]
            done.append(f"restored previous outputs from {olds[-1].name}")
    for _, p in stale:
        shutil.rmtree(p, ignore_errors=True)
        done.append(f"removed {p.name}")
    return done
