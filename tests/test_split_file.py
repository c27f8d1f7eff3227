"""Split files as users write them: paths with spaces and tabs, a byte-order mark, invalid
UTF-8, duplicated entries and classes without a training image."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from PIL import Image

from ltcls.data.datasets.split_file import read_split_file, split_file


def _images(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (10, 20, 30)).save(root / rel)


def test_path_with_spaces_and_tabs_label_is_last_field(tmp_path):
    root = tmp_path / "images"
    _images(root, "my class/photo 1.png", "cls1/b.png", "tabbed\tdir/c.png")
    split = tmp_path / "train.txt"
    split.write_text("my class/photo 1.png 0\n  cls1/b.png\t\t1  \r\ntabbed\tdir/c.png\t1\n", encoding="utf-8")
    entries = read_split_file(str(split), str(root))
    assert entries.paths == ["my class/photo 1.png", "cls1/b.png", "tabbed\tdir/c.png"]
    assert entries.labels.tolist() == [0, 1, 1] and entries.lines.tolist() == [1, 2, 3]
    data = split_file(root=str(root), train_split=str(split), test_split=str(split))
    assert data.train.load(0).size == (8, 6)  # the path with a space really opens


def test_byte_order_mark_is_not_part_of_the_first_path(tmp_path):
    root = tmp_path / "images"
    _images(root, "a.png", "b.png")
    split = tmp_path / "train.txt"
    split.write_bytes(b"\xef\xbb\xbfa.png 0\nb.png 1\n")  # what Notepad writes for "UTF-8 with BOM"
    assert read_split_file(str(split), str(root)).paths == ["a.png", "b.png"]


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    split = tmp_path / "train.txt"
    split.write_bytes(b"a.png 0\n\ncaf\xe9.png 1\n")  # latin-1, not UTF-8
    with pytest.raises(ValueError, match=re.escape(f"{split} line 3: not valid UTF-8 (byte 0xe9 at column 4;")):
        read_split_file(str(split), str(tmp_path), check_files=False)


def test_duplicated_entries_warn_with_file_lines_and_count(tmp_path, caplog):
    split = tmp_path / "train.txt"
    split.write_text("a.png 0\nb.png 1\n./a.png 0\nc.png 1\nb.png 0\na.png 0\n")
    with caplog.at_level(logging.WARNING, logger="ltcls.data.split_file"):
        entries = read_split_file(str(split), str(tmp_path), check_files=False)
    assert len(entries.paths) == 6  # kept (and counted) as listed; the warning says so
    assert entries.duplicates == [[0, 2, 5], [1, 4]]
    assert caplog.messages == [f"{split}: 2 image(s) listed more than once (3 extra entries, each counted as a "
                               "sample): 'a.png' at line 1, line 3, line 6; 'b.png' at line 2, line 5 with "
                               "different labels 0, 1"]
    caplog.clear()
    split.write_text("a.png 0\nb.png 1\n")
    with caplog.at_level(logging.WARNING, logger="ltcls.data.split_file"):
        assert read_split_file(str(split), str(tmp_path), check_files=False).duplicates == []
    assert caplog.messages == []


def test_class_without_training_images_warns(tmp_path, caplog):
    root = tmp_path / "images"
    _images(root, "a.png", "b.png", "c.png")
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("a.png 0\nb.png 3\nc.png 3\n")  # classes 1 and 2 have no image
    test.write_text("a.png 0\nb.png 1\n")
    with caplog.at_level(logging.WARNING, logger="ltcls.data.split_file"):
        data = split_file(root=str(root), train_split=str(train), test_split=str(test))
    assert data.num_classes == 4 and data.class_counts.tolist() == [1, 0, 0, 2]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{train}: 2 of 4 classes have no training image: 1, 2"]
