"""folders: outputs appear complete or not at all (hidden staging folder, renames)."""

from __future__ import annotations

import pytest

from geounet.errors import OutputError
from geounet.io.folders import check_output_root, output_dir_for, publish_files, replace_dir, staged_folder


def test_output_dir_is_the_scene_stem_inside_the_root(tmp_path):
    assert output_dir_for("/data/a/scene.ortho.tif", tmp_path) == tmp_path / "scene"
    assert output_dir_for("../../x.tif", tmp_path).parent == tmp_path  # a bare name: cannot leave the root


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
