"""Input listings: folder layouts, CSV and list files, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from featcache.extractor.sources import open_source
from featcache.shared.errors import BadInputError


def touch(root: Path, *names: str) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x")


def test_class_folders_sorted_case_insensitive_extensions_hidden_skipped(tmp_path):
    touch(
        tmp_path,
        "dog/b.JPG",
        "dog/sub/a.png",
        "cat/z.jpeg",
        "cat/.hidden.jpg",
        "cat/readme.txt",
        ".git/x.jpg",
        "loose.jpg",
    )
    s = open_source(tmp_path)
    assert s.kind == "folder" and s.classes == ["cat", "dog"]
    assert s.ids == ["cat/z.jpeg", "dog/b.JPG", "dog/sub/a.png"]
    assert s.labels.tolist() == [0, 1, 1] and s.splits.tolist() == [-1, -1, -1]
    assert any("1 images beside the class folders are ignored" in n for n in s.notes)
    assert s.split_source is None


def test_split_folders_give_classes_and_splits(tmp_path):
    touch(tmp_path, "train/cat/1.jpg", "train/dog/2.jpg", "Validation/dog/3.jpg", "test/4.jpg")
    s = open_source(tmp_path)
    assert s.kind == "folder-splits" and s.classes == ["cat", "dog"]
    assert dict(zip(s.ids, zip(s.labels.tolist(), s.splits.tolist(), strict=False), strict=False)) == {
        "Validation/dog/3.jpg": (1, 1),
        "test/4.jpg": (-1, 2),
        "train/cat/1.jpg": (0, 0),
        "train/dog/2.jpg": (1, 0),
    }
    assert s.split_source == "folders"


def test_unlabelled_folder(tmp_path):
    touch(tmp_path, "b.png", "a.gif", "c.bmp", "notes.md")
    s = open_source(tmp_path)
    assert s.kind == "unlabelled" and s.ids == ["a.gif", "b.png", "c.bmp"] and s.classes == []
    assert s.labels.tolist() == [-1, -1, -1]


def test_listing_hash_changes_with_inputs(tmp_path):
    touch(tmp_path, "a/1.jpg", "b/2.jpg")
    h = open_source(tmp_path).listing_sha256()
    assert open_source(tmp_path).listing_sha256() == h
    touch(tmp_path, "b/3.jpg")
    assert open_source(tmp_path).listing_sha256() != h


def test_csv_with_header_names_splits_and_duplicates(tmp_path):
    (tmp_path / "l.csv").write_text(
        "path,label,split\nimg/a.jpg,dog,train\n\nimg/b.jpg,cat,test\nimg/c.jpg,,\nimg/a.jpg,dog,train\n"
    )
    s = open_source(tmp_path / "l.csv")
    assert s.kind == "csv" and s.ids == ["img/a.jpg", "img/b.jpg", "img/c.jpg"]  # file order kept
    assert s.classes == ["cat", "dog"] and s.labels.tolist() == [1, 0, -1] and s.splits.tolist() == [0, 2, -1]
    assert s.paths[0] == bytes(tmp_path / "img" / "a.jpg")
    assert s.notes == [f"{tmp_path / 'l.csv'}: 1 duplicate rows ignored"]


def test_csv_without_header_integer_labels(tmp_path):
    (tmp_path / "l.csv").write_text("x.jpg,2\ny.jpg,0\n")
    s = open_source(tmp_path / "l.csv")
    assert s.classes == ["0", "1", "2"] and s.labels.tolist() == [2, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\n", "lists no images"),
        ("a.jpg,dog\na.jpg,cat\n", r"l\.csv:2: 'a\.jpg' is listed again \(first at line 1\)"),
        ("a.jpg,dog,holdout\n", r"l\.csv:1: unknown split 'holdout'"),
        (",dog\n", r"l\.csv:1: empty path"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path, text, message):
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(BadInputError, match=message):
        open_source(tmp_path / "l.csv")


def test_list_file_and_bad_paths(tmp_path):
    (tmp_path / "l.txt").write_text("# comment\na.jpg\n\nb.png\na.jpg\n")
    s = open_source(tmp_path / "l.txt")
    assert s.kind == "list" and s.ids == ["a.jpg", "b.png"]
    with pytest.raises(BadInputError, match="no such file or folder"):
        open_source(tmp_path / "missing")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(BadInputError, match=r"x\.json: not a folder, \.csv, \.txt"):
        open_source(tmp_path / "x.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="empty: no images found"):
        open_source(tmp_path / "empty")


def test_one_listing_per_job_each_file_stat_once_by_the_worker_of_its_shard(tmp_path, monkeypatch):
    """The first worker of a part-split job stats every input and publishes listing.npz; the others
    adopt it, stat'ing only their own shards' inputs, and fall back to their own full listing when
    one of those changed (then the cache's resume check reports it)."""
    import os

    import numpy as np

    from featcache.extractor import sources
    from featcache.extractor.runner import ExtractConfig, share_listing
    from featcache.shared.cache.listing import load_listing
    from featcache.shared.cache.parts import Part

    src = tmp_path / "src"
    touch(src, *(f"{c}/{k:02d}.jpg" for c in ("a", "b") for k in range(5)))  # 10 inputs, shards of 2
    stated: list[int] = []
    real = sources.stat_files
    monkeypatch.setattr(sources, "stat_files", lambda paths: (stated.append(len(paths)), real(paths))[1])

    def worker(i: int) -> tuple[str, sources.Source]:
        cfg = ExtractConfig(source=src, cache=tmp_path / "cache", shard_size=2, part=Part(i, 2))
        source = open_source(src)
        return share_listing(cfg, source), source

    assert worker(0)[0] == "listed" and stated == [10]
    published = load_listing(tmp_path / "cache")
    what, source = worker(1)
    assert what == "adopted" and stated == [10, 4]  # its shards 1 and 3: inputs 2, 3, 6, 7
    assert source.listing_sha256() == worker(0)[1].listing_sha256()
    assert np.array_equal(source.listing()["size"], published["size"])

    os.utime(src / "a" / "02.jpg", ns=(1, 1))  # input 2: in shard 1, part 1/2's
    assert worker(0)[0] == "adopted"  # not its share: its worker checks it
    stated.clear()
    what, source = worker(1)
    assert what == "own" and source.listing()["mtime_ns"][2] == 1 and stated == [4, 10]  # then a full listing
    assert worker(0)[0] == "adopted"
    touch(src, "a/99.jpg")  # an input added: every worker sees it in its walk
    assert worker(0)[0] == "own" and worker(1)[0] == "own"
