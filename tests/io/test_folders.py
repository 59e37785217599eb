"""folders: outputs appear complete or not at all (hidden staging folder, renames); stale folders by liveness lock."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from geounet.errors import Interrupted, OutputError
from geounet.io.folders import (
    check_output_root,
    output_dir_for,
    publish_files,
    recover_interrupted,
    replace_dir,
    staged_folder,
    stale_folders,
)
from geounet.io.locks import alive, process_token, remove_dead_tokens, token_alive
from tests.helpers import REPO


def test_output_dir_is_the_scene_stem_inside_the_root(tmp_path):
    assert output_dir_for("/data/a/scene.ortho.tif", tmp_path) == tmp_path / "scene.ortho"
    assert output_dir_for("../../x.tif", tmp_path).parent == tmp_path  # a bare name: cannot leave the root


def test_output_dir_strips_the_last_extension_only(tmp_path):
    assert output_dir_for("scene.2021-05-01.tif", tmp_path) == tmp_path / "scene.2021-05-01"
    assert output_dir_for("t.1.tif", tmp_path) != output_dir_for("t.2.tif", tmp_path)
    for name in ("x.vrt", "x.jp2", "x.tiff", "x"):
        assert output_dir_for(name, tmp_path) == tmp_path / "x"
    for bad in ("..", "/data/..", ".tif", "..tif"):  # never OUTDIR itself, its parent or a hidden name
        d = output_dir_for(bad, tmp_path)
        assert d.parent == tmp_path and not d.name.startswith(".")


def test_output_dir_of_a_url_is_its_last_path_component(tmp_path):
    assert output_dir_for("https://h.example/a/b/s.2021.tif?sig=1", tmp_path) == tmp_path / "s.2021"
    assert output_dir_for("/vsicurl/http://h/a/s.tif", tmp_path) == tmp_path / "s"
    assert output_dir_for("s3://bucket/k/s.tif", tmp_path) == tmp_path / "s"
    assert output_dir_for("/vsis3/bucket/k/s.tif", tmp_path) == tmp_path / "s"


def test_a_failed_block_leaves_no_folder_and_a_finished_one_replaces_the_old(tmp_path):
    final = tmp_path / "scene"
    with pytest.raises(RuntimeError), staged_folder(final) as tmp:
        (tmp / "half.tif").write_bytes(b"x")
        assert tmp.name.startswith(".scene.partial-")
        raise RuntimeError("killed halfway")
    assert list(tmp_path.iterdir()) == []
    final.mkdir()
    (final / "old.tif").write_bytes(b"old")
    with staged_folder(final) as tmp:
        (tmp / "new.tif").write_bytes(b"new")
        replace_dir(tmp, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # no hidden leftovers
    assert [p.name for p in final.iterdir()] == ["new.tif"]


def test_publish_moves_the_completeness_mark_last(tmp_path):
    dest, tmp = tmp_path / "out", tmp_path / ".out.partial-1"
    dest.mkdir()
    tmp.mkdir()
    (dest / "run.json").write_text("old")
    for name in ("a.tif", "run.json"):
        (tmp / name).write_text("new")
    publish_files(tmp, dest, ["a.tif"], last="run.json")
    assert (dest / "a.tif").read_text() == "new" and (dest / "run.json").read_text() == "new"
    assert not tmp.exists()


def test_unwritable_root_is_a_one_line_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write output folder") as err:
        check_output_root(blocker / "sub")
    assert "\n" not in str(err.value)
    assert check_output_root(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"


# ---------------------------------------------------------------- staleness: liveness locks, not pids

CHILD = r"""
import os, sys, time
from pathlib import Path
from geounet.io.folders import staged_folder
from geounet.io.locks import process_token

final = Path(sys.argv[1])
with staged_folder(final) as tmp:
    (tmp / "new.tif").write_text("new")
    os.replace(final, final.parent / f".{final.name}.old-{process_token()}")  # previous outputs set aside
    print(process_token(), flush=True)
    time.sleep(120)  # SIGKILLed here
"""


def _hidden(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_staged_folder_names_carry_a_token_and_hold_a_liveness_lock(tmp_path):
    final = tmp_path / "scene"
    token = process_token()
    assert re.fullmatch(rf"{os.getpid()}-[0-9a-f]{{12}}", token)
    with staged_folder(final) as tmp:
        assert tmp.name == f".scene.partial-{token}"
        assert (tmp_path / f".geounet-{token}.alive").is_file() and token_alive(tmp_path, token)
        assert stale_folders(tmp_path, "scene") == []  # this process is alive
        replace_dir(tmp, final)
    assert _hidden(tmp_path) == []  # the liveness lock file goes with the last folder
    assert not token_alive(tmp_path, token)


def test_a_sigkilled_writer_leaves_stale_folders_and_a_live_one_does_not(tmp_path):
    final = tmp_path / "scene"
    final.mkdir()
    (final / "old.tif").write_text("old")
    env = os.environ | {"PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(final)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        token = child.stdout.readline().strip()
        assert token.startswith(f"{child.pid}-")
        assert _hidden(tmp_path) == [f".geounet-{token}.alive", f".scene.old-{token}", f".scene.partial-{token}"]
        assert token_alive(tmp_path, token) and stale_folders(tmp_path, "scene") == []  # a live holder
        assert recover_interrupted(tmp_path, "scene") == [] and not final.exists()  # nothing touched
    finally:
        child.kill()
        child.wait()
    assert not token_alive(tmp_path, token)  # the kernel dropped its lock: stale, whatever the pid is now
    assert sorted(kind for kind, _ in stale_folders(tmp_path, "scene")) == ["old", "partial"]
    assert recover_interrupted(tmp_path, "scene") == [
        f"restored previous outputs from .scene.old-{token}",
        f"removed .scene.partial-{token}",
    ]
    assert (final / "old.tif").read_text() == "old"
    assert _hidden(tmp_path) == []  # the dead token's lock file is removed too


def test_a_reused_pid_does_not_make_a_dead_writer_alive(tmp_path):
    """Our own pid with another token (the previous PID 1 of a container): stale, lock file or not."""
    mine = os.getpid()
    (tmp_path / f".scene.partial-{mine}-0badc0de").mkdir()
    (tmp_path / f".scene.old-{mine}-feedf00d").mkdir()
    (tmp_path / f".geounet-{mine}-feedf00d.alive").write_text("")  # left by a SIGKILLed process: unlocked
    assert sorted(p.name for _, p in stale_folders(tmp_path, "scene")) == [
        f".scene.old-{mine}-feedf00d",
        f".scene.partial-{mine}-0badc0de",
    ]
    recover_interrupted(tmp_path, "scene")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # the old folder is back, nothing hidden left


def test_nested_holds_share_one_lock_that_cleaners_leave_alone(tmp_path):
    with alive(tmp_path) as token, alive(tmp_path) as again:  # nested holds share one lock
        assert again == token
        assert remove_dead_tokens(tmp_path) == [] and token_alive(tmp_path, token)
    assert not (tmp_path / f".geounet-{token}.alive").exists()


def test_a_forked_child_is_another_writer(tmp_path):
    with alive(tmp_path) as token:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a new token, and it does not hold the parent's lock
            os.close(r)
            os.write(w, f"{process_token()} {token_alive(tmp_path, token)}".encode())
            os._exit(0)
        os.close(w)
        child_token, parent_alive = os.read(r, 200).decode().split()
        os.close(r)
        os.waitpid(pid, 0)
        assert child_token != token and child_token.startswith(f"{pid}-") and parent_alive == "True"
        assert token_alive(tmp_path, token)  # the child's exit did not drop the parent's lock


@pytest.mark.parametrize("after", [1, 2])
def test_replace_dir_interrupted_between_renames_keeps_one_complete_folder(tmp_path, monkeypatch, after):
    """SIGTERM (Interrupted) right after the first rename puts the old folder back; after the second, the new stays."""
    final, tmp = tmp_path / "scene", tmp_path / ".scene.partial-x"
    final.mkdir()
    (final / "f").write_text("old")
    tmp.mkdir()
    (tmp / "f").write_text("new")
    replace, calls = os.replace, []

    def interrupted_replace(src, dst):
        replace(src, dst)
        calls.append(dst)
        if len(calls) == after:
            raise Interrupted("SIGTERM")

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(Interrupted):
        replace_dir(tmp, final)
    monkeypatch.undo()
    assert (final / "f").read_text() == ("old" if after == 1 else "new")
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name or p.name.endswith(".alive")]
