"""Outputs written through ``core.atomic`` get the permissions a plain ``open`` / ``mkdir`` gives (0o666 / 0o777
less the umask), or a replaced file's own: ``tempfile``'s owner-only modes left every output (slides, labels,
reports, checkpoints) unreadable to the other users of a shared server."""

from __future__ import annotations

import os
import stat

import pytest

from adaptome.core.atomic import atomic_dir, atomic_path, write_text_atomic


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_outputs_have_the_mode_a_plain_write_would_give(tmp_path, umask):
    write_text_atomic(tmp_path / "report.md", "x")
    (tmp_path / "plain.md").write_text("x")
    assert _mode(tmp_path / "report.md") == _mode(tmp_path / "plain.md") == 0o666 & ~umask
    with atomic_dir(tmp_path / "run") as d:
        (d / "a.txt").write_text("x")
    (tmp_path / "plain_dir").mkdir()
    assert _mode(tmp_path / "run") == _mode(tmp_path / "plain_dir") == 0o777 & ~umask
    with atomic_path(tmp_path / "w.bin") as p:
        p.write_bytes(b"\0")
    assert _mode(tmp_path / "w.bin") == 0o666 & ~umask


def test_a_replaced_file_keeps_its_own_mode(tmp_path, umask):
    target = tmp_path / "labels.csv"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640
