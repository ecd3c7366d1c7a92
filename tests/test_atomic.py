"""Files are replaced whole: a failed write leaves the old file, and no temporary file."""

from __future__ import annotations

import numpy as np
import pytest

from rmtllmf._io import atomic_output, write_text_atomic


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "zoo.json"
    path.write_text('{"old": 1}')
    write_text_atomic(path, '{"new": 2}')
    assert path.read_text() == '{"new": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["zoo.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    """A lone surrogate cannot be encoded: a plain ``write_text`` would have truncated the file
    before failing, and a reader would see it empty."""
    path = tmp_path / "zoo.json"
    path.write_text('{"old": 1}')
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, '{"new": "\ud800"}')
    assert path.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["zoo.json"]


def test_atomic_output_for_writers_that_need_an_extension(tmp_path):
    """``np.savez`` appends ``.npz`` to a name without it: the suffix keeps the temporary name
    the writer writes to, and the target appears only once the block has ended."""
    target = tmp_path / "data" / "task.npz"
    with atomic_output(target, suffix=".npz") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".npz")
        np.savez(tmp, x=np.arange(3))
        assert not target.exists()
    with np.load(target) as z:
        np.testing.assert_array_equal(z["x"], np.arange(3))
    assert [p.name for p in target.parent.iterdir()] == ["task.npz"]


def test_atomic_output_removes_the_temporary_file_on_error(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def interrupted_write() -> None:
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_write()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
