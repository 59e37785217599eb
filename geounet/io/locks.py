"""File locks: per-scene locks between runs, and the liveness locks that tell a dead run's folders from a live one's.

Both are ``fcntl.flock`` locks, which the kernel drops when their process dies (even by
SIGKILL), so neither depends on process ids (which are reused: in a container every run
is PID 1).

- **Scene lock** ``OUTDIR/.<stem>.lock`` (:class:`SceneLock`): taken without waiting by
  the run that works on a scene (``geounet run`` and ``geounet predict``); the holder's
  pid is written inside for messages. The file is never deleted (that would race).
- **Liveness lock** ``OUTDIR/.geounet-<token>.alive`` (:func:`alive`): a process's
  :func:`process_token` is ``<pid>-<random hex>``, unique across pid reuse, and is part
  of the name of every hidden folder it writes (``geounet.io.folders``). While such a
  folder exists, its process holds an exclusive lock on its ``.alive`` file (created
  when it first stages a folder in that OUTDIR, removed when it has none left there).
  :func:`token_alive`: a token is dead when that file is missing or its lock can be taken.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ALIVE = re.compile(r"\.geounet-(\d+-[0-9a-f]+)\.alive")  # a liveness lock file's name, and its token


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
        except BaseException:  # interrupted (SIGTERM) right after the lock was taken
            os.close(fd)
            raise
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def holder(self) -> str:
        """The pid written by the process that holds (or last held) the lock, as text; ``?`` if unknown."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)  # also for a forked child that shares the descriptor
            finally:
                os.close(fd)

    def __enter__(self) -> SceneLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def scene_lock(out_root: Path, stem: str) -> SceneLock:
    """The (not yet taken) lock of the output folder ``out_root/<stem>``."""
    return SceneLock(out_root / f".{stem}.lock")


def locked_reason(lock: SceneLock) -> str:
    """Why a scene was not run: another process holds its lock."""
    return f"locked by another run (pid {lock.holder()})"


# ---------------------------------------------------------------- liveness of the writer of hidden folders


class _Process:
    """This process's token and the liveness locks it holds."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.held: dict[tuple[int, int], list[Any]] = {}  # (st_dev, st_ino) of OUTDIR -> [fd, path, holds]


_process = _Process()


def _after_fork() -> None:
    """A forked child is another process: a new token, and none of the parent's liveness locks.

    The inherited descriptors are closed without unlocking: the lock belongs to the open
    file, which the parent still holds.
    """
    global _process
    for fd, *_ in _process.held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _process = _Process()


os.register_at_fork(after_in_child=_after_fork)


def process_token() -> str:
    """``<pid>-<random hex>``: this process's name in the hidden folders it writes (unique across pid reuse)."""
    return _process.token


def alive_path(out_root: Path, token: str) -> Path:
    return out_root / f".geounet-{token}.alive"


@contextmanager
def alive(out_root: Path) -> Iterator[str]:
    """Hold this process's liveness lock in ``out_root`` for the block; yields the token to name folders with.

    Nested and concurrent holds (threads) share one lock file, removed when the last ends.
    """
    key = _hold(out_root)
    try:
        yield _process.token
    finally:
        _unhold(key)


def _hold(out_root: Path) -> tuple[int, int]:
    st = os.stat(out_root)
    key = (st.st_dev, st.st_ino)  # the folder itself, however it is spelled
    with _process.mutex:
        entry = _process.held.get(key)
        if entry is not None:
            entry[2] += 1
            return key
        path = alive_path(out_root, _process.token)
        for _ in range(500):  # a cleaner may hold (and remove) the just-created file for a moment
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    _process.held[key] = [fd, path, 1]
                    return key
            except OSError as exc:  # locked by a cleaner, or removed by one: try again
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.ENOENT):
                    os.close(fd)
                    raise
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            time.sleep(0.01)
        raise OSError(errno.EWOULDBLOCK, f"{path}: lock held by another process")


def _unhold(key: tuple[int, int]) -> None:
    with _process.mutex:
        entry = _process.held.get(key)
        if entry is None:
            return
        entry[2] -= 1
        if entry[2] > 0:
            return
        del _process.held[key]
        fd, path, _ = entry
        try:
            path.unlink(missing_ok=True)  # still locked by us: no one else removes it
        finally:
            os.close(fd)


def token_alive(out_root: Path, token: str) -> bool:
    """Whether the process named ``token`` still holds its liveness lock in ``out_root``."""
    try:
        fd = os.open(alive_path(out_root, token), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return True
        raise
    finally:
        os.close(fd)  # drops the lock if it was taken
    return False


def remove_dead_tokens(out_root: Path) -> list[str]:
    """Remove the liveness lock files of processes that are gone; returns their names.

    A file is removed only with its lock held and while its name still points to the
    locked file, so a file being created (locked just after) is never removed by mistake.
    """
    try:
        names = [e.name for e in os.scandir(out_root) if ALIVE.fullmatch(e.name)]
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        path = out_root / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                path.unlink()
                removed.append(name)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.ENOENT):
                raise
        finally:
            os.close(fd)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (for the pid-only folder names of older geounet versions)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
