"""Records are replaced whole: a failed write leaves the old file, and no temporary file."""

from __future__ import annotations

import pytest

from rmtllmf._io import write_text_atomic


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
