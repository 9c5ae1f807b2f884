"""The one atomic writer: whole files or none, plain permissions, no temporary left behind."""

import os
import stat

import pytest

from oodlab.io import atomic_write, atomic_write_bytes, atomic_write_text


def test_atomic_write_bytes_replaces_whole_file_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "kept")

    def fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write(path, fail)
    assert path.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
