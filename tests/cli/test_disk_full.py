"""A full disk: one line that says so, previous outputs kept, nothing half-written, the batch goes on.

The output folder is a small tmpfs mounted in a private mount namespace (``unshare``), so the
test needs root or unprivileged user namespaces; it skips saying so where neither works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import DEMO_SCENE

UNSHARE = shutil.which("unshare")


def _can_mount_tmpfs() -> str:
    """Empty when a private tmpfs can be mounted here, else why not."""
    if UNSHARE is None:
        return "no unshare command"
    args = [UNSHARE, "--mount", "--fork"] if os.geteuid() == 0 else [UNSHARE, "-rm", "--fork"]
    probe = subprocess.run(
        [*args, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt && df /mnt >/dev/null"],
        capture_output=True,
        text=True,
    )
    return "" if probe.returncode == 0 else f"cannot mount a tmpfs in a private namespace: {probe.stderr.strip()}"


def _run_in_small_disk(tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with ``$DISK`` a fresh tmpfs of a few MiB seen by this process alone."""
    disk = tmp_path / "disk"
    disk.mkdir()
    args = [UNSHARE, "--mount", "--fork"] if os.geteuid() == 0 else [UNSHARE, "-rm", "--fork"]
    wrapped = f"mount -t tmpfs -o size=6m tmpfs {disk} && export DISK={disk} && {script}"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PY": sys.executable}
    return subprocess.run([*args, "sh", "-c", wrapped], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def small_disk_ok() -> None:
    why = _can_mount_tmpfs()
    if why:
        pytest.skip(why)


def test_full_disk_says_so_and_keeps_previous_outputs(small_disk_ok, tiny_model, tmp_path):
    """First run fits; the disk is then filled; the second run fails with one line and the first outputs survive."""
    geounet = f'"$PY" -m geounet.cli.main predict {DEMO_SCENE} --model {tiny_model} --quiet --out "$DISK/out"'
    script = textwrap.dedent(
        f"""
        set -u
        {geounet} || exit 10
        (cd "$DISK/out/kampala_demo" && ls -a | sort && md5sum *) > {tmp_path}/before.txt
        dd if=/dev/zero of="$DISK/filler" bs=64k 2>/dev/null
        {geounet} 2> {tmp_path}/stderr.txt; echo $? > {tmp_path}/rc.txt
        ls -a "$DISK/out" | sort > {tmp_path}/listing.txt
        (cd "$DISK/out/kampala_demo" && ls -a | sort && md5sum *) > {tmp_path}/after.txt
        """
    )
    proc = _run_in_small_disk(tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    stderr = (tmp_path / "stderr.txt").read_text()
    assert (tmp_path / "rc.txt").read_text().strip() == "1", stderr
    lines = stderr.strip().splitlines()
    assert len(lines) <= 2 and lines[0].startswith("error: ") and "no space left on device" in lines[0], stderr
    assert "Traceback" not in stderr
    assert (tmp_path / "after.txt").read_text() == (tmp_path / "before.txt").read_text()  # previous outputs intact
    hidden = [n for n in (tmp_path / "listing.txt").read_text().split() if n.startswith(".") and "partial" in n]
    assert not hidden, hidden


def test_full_disk_under_geounet_run_is_said_and_the_batch_goes_on(small_disk_ok, tiny_model, tmp_path):
    """``geounet run`` on a full disk: each scene's reason says so, the previous outputs stay, the run ends."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"model: {tiny_model}\ninputs: [{DEMO_SCENE}]\nout: $DISK_OUT\nworkers: 1\n".replace(
            "$DISK_OUT", str(tmp_path / "disk" / "out")
        )
    )
    geounet = f'"$PY" -m geounet.cli.main run {config} --quiet'
    script = textwrap.dedent(
        f"""
        set -u
        {geounet} || exit 10
        (cd "$DISK/out/kampala_demo" && md5sum *) > {tmp_path}/before.txt
        dd if=/dev/zero of="$DISK/filler" bs=64k 2>/dev/null
        {geounet} --force 2> {tmp_path}/stderr.txt; echo $? > {tmp_path}/rc.txt
        (cd "$DISK/out/kampala_demo" && md5sum *) > {tmp_path}/after.txt
        """
    )
    proc = _run_in_small_disk(tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    stderr = (tmp_path / "stderr.txt").read_text()
    assert (tmp_path / "rc.txt").read_text().strip() not in ("0", ""), stderr
    assert "no space left on device" in stderr and "Traceback" not in stderr, stderr
    assert (tmp_path / "after.txt").read_text() == (tmp_path / "before.txt").read_text()
