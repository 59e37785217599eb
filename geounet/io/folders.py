"""Output folders that appear complete or not at all: written under a hidden temporary name, then renamed.

``OUTDIR/.<name>.partial-<token>`` is where a scene's outputs are written; :func:`replace_dir`
moves it to ``OUTDIR/<name>`` in one rename (an older folder is moved aside to
``.<name>.old-<token>`` first and removed after; an exception in between, SIGTERM
included, puts it back). ``<token>`` is the writing process's ``<pid>-<random hex>``
(:func:`geounet.io.locks.process_token`), and the process holds its liveness lock
``OUTDIR/.geounet-<token>.alive`` while the folder exists.

A killed run leaves only hidden folders. :func:`recover_interrupted` (called with the
scene's lock held) removes those whose process is gone (:func:`stale_folders`: its
liveness lock is missing or can be taken), putting the previous outputs back first if
the run died between the two renames. Folders named ``-<pid>`` only (older geounet
versions) are stale when that pid is not running or is this process's own (this version
never writes such names, so the pid was reused: in a container every run is PID 1).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from geounet.errors import OutputError, is_disk_full, scene_failure
from geounet.io.locks import alive, pid_alive, remove_dead_tokens, token_alive
from geounet.io.remote import scene_name

# after ".<stem>": what a run writes, with its token (pid-random) or, before tokens, its pid
_HIDDEN = re.compile(r"\.(partial|old)-(\d+)(?:-([0-9a-f]+))?")


def output_dir_for(scene: str | Path, out_root: str | Path) -> Path:
    """``OUTDIR/<scene stem>``: the file name (a URL's last path component) without its last extension.

    ``scene.2021-05-01.tif`` -> ``scene.2021-05-01``. The stem is a bare name without
    leading dots (``..``, ``.x.tif``: not hidden, never above OUTDIR), so it cannot leave OUTDIR.
    """
    stem = Path(scene_name(scene)).stem.lstrip(".") or "scene"
    return Path(out_root) / stem


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a complete output folder into place; an older one is removed only after.

    If anything (SIGTERM, Ctrl-C included) interrupts the two renames, the older folder is
    put back, or removed if the new one made it in.
    """
    with alive(final.parent) as token:
        old = final.parent / f".{final.name}.old-{token}"
        if os.path.lexists(old):  # this process's own leftover
            shutil.rmtree(old, ignore_errors=True)
        had_old = final.exists()
        try:
            if had_old:
                os.replace(final, old)
            os.replace(tmp, final)
        except BaseException:
            if old.exists():
                if final.exists():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(old, final)
            raise
        if had_old:
            shutil.rmtree(old, ignore_errors=True)


def check_output_root(out_root: str | Path) -> Path:
    """Create ``out_root`` if needed and prove it writable; one-line :class:`OutputError` otherwise."""
    out = Path(out_root)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".geounet-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(out, f"cannot write output folder ({exc.strerror or exc})") from None
    return out


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A new hidden ``.<name>.partial-<token>`` folder beside ``final``, removed if the block fails.

    The caller moves the finished contents into place (:func:`replace_dir`, :func:`publish_files`).
    This process's liveness lock in ``final.parent`` is held for the block.
    """
    with ExitStack() as stack:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            token = stack.enter_context(alive(final.parent))
            tmp = final.parent / f".{final.name}.partial-{token}"
            tmp.mkdir()
        except OSError as exc:
            raise OutputError(final.parent, f"cannot write output folder ({exc.strerror or exc})") from None
        try:
            yield tmp
        except Exception as exc:
            # said before the partial outputs are removed: a full disk has room again after
            failure = scene_failure(final, exc, final.parent) if is_disk_full(exc, final.parent) else None
            shutil.rmtree(tmp, ignore_errors=True)
            if failure is not None:
                raise failure from exc
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def publish_files(tmp: Path, dest: Path, names: Sequence[str], last: str) -> None:
    """Move finished files from ``tmp`` into the existing folder ``dest``; ``last`` (the completeness mark) last.

    ``dest/last`` is removed first, so a folder whose mark is present is complete; ``tmp`` is removed after.
    """
    (dest / last).unlink(missing_ok=True)
    for name in names:
        os.replace(tmp / name, dest / name)
    os.replace(tmp / last, dest / last)
    shutil.rmtree(tmp, ignore_errors=True)


def stale_folders(out_root: Path, stem: str) -> list[tuple[str, Path]]:
    """``(kind, path)`` of the ``.<stem>.partial-*`` / ``.old-*`` folders whose process is gone."""
    prefix = f".{stem}."
    try:
        entries = list(os.scandir(out_root))
    except FileNotFoundError:
        return []
    stale = []
    tokens: dict[str, bool] = {}
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        m = _HIDDEN.fullmatch(entry.name[len(stem) + 1 :])
        if m is None:
            continue
        kind, pid, rand = m.group(1), int(m.group(2)), m.group(3)
        if rand is not None:
            token = f"{pid}-{rand}"
            if token not in tokens:
                tokens[token] = token_alive(out_root, token)
            dead = not tokens[token]
        else:  # an older version's name: this version never writes one, so our own pid was reused
            dead = pid == os.getpid() or not pid_alive(pid)
        if dead:
            stale.append((kind, Path(entry.path)))
    return stale


def recover_interrupted(out_root: Path, stem: str) -> list[str]:
    """Clean what killed runs left for one scene (call with the scene's lock held); returns what was done.

    If ``<stem>/`` itself is missing, a run died between moving the previous outputs
    aside and moving the new ones in: the newest stale ``.old-`` folder (complete
    previous outputs) is moved back. The other stale folders are removed, and so are the
    liveness lock files of processes that are gone.
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
    remove_dead_tokens(out_root)
    return done
