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
    from featcache.shared.cache._listing import load_listing
    from featcache.shared.cache._parts import Part

    src = tmp_path / "src"
    touch(src, *(f"{c}/{k:02d}.jpg" for c in ("a", "b") for k in range(5)))  # 10 inputs, shards of 2
    stated: list[int] = []
    real = sources.stat_files
    monkeypatch.setattr(sources, "stat_files", lambda paths: (stated.append(len(paths)), real(paths))[1])

    def worker(i: int) -> tuple[str, sources.Source]:
        cfg = ExtractConfig(source=src, cache=tmp_path / "cache", shard_size=2, part=Part(i, 2))
        return share_listing(cfg)

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
    (src / "b" / "03.jpg").unlink()  # input 8: in shard 4, part 0/2's
    what, source = worker(0)
    assert what == "own" and "b/03.jpg" not in source.ids  # then the cache's resume check names it


def _layouts(root: Path) -> list[Path]:
    """Folder sources of every kind, with nested folders and names featcache shows escaped."""
    import os

    touch(root / "classes", "dog/b.JPG", "dog/sub/deeper/a.png", "cat/z.jpeg", "cat/.hidden.jpg", ".git/x.jpg")
    touch(root / "classes", "train/1.jpg", "loose.jpg", "cat/__MACOSX/x.jpg")  # a class named like a split
    touch(root / "splits", "train/cat/1.jpg", "train/dog/n/2.jpg", "Validation/dog/3.jpg", "test/4.jpg")
    touch(root / "flat", "b.png", "a.gif", "c.bmp", "notes.md")
    touch(root / "alias", "train/a.jpg", "empty/notes.md")  # one class, named like a split
    odd = os.fsencode(root / "odd")
    for rel in (b"cls\xff/a.png", b"ok/d\\xff.png", b"ok/d\xff.png", b"ok/\xc3\xa9t\xc3\xa9.jpg"):
        os.makedirs(os.path.dirname(os.path.join(odd, rel)), exist_ok=True)
        with open(os.path.join(odd, rel), "wb") as f:
            f.write(b"x")
    return [root / n for n in ("classes", "splits", "flat", "odd", "alias")]


def test_a_folder_source_rebuilt_from_its_listing_is_the_walked_one(tmp_path):
    """folder_from_listing (an adopting worker's source, made without walking) gives the walk's
    paths, ids, labels, splits, classes and kind for every folder layout, odd names included."""
    import numpy as np

    from featcache.extractor.sources import folder_from_listing

    for root in _layouts(tmp_path):
        walked = open_source(root)
        rebuilt = folder_from_listing(root.resolve(), walked.listing(), root / "listing.npz", np.arange(len(walked)))
        assert (rebuilt.kind, rebuilt.root, rebuilt.classes) == (walked.kind, walked.root, walked.classes), root
        assert rebuilt.paths == walked.paths and rebuilt.ids == walked.ids, root
        assert np.array_equal(rebuilt.labels, walked.labels) and np.array_equal(rebuilt.splits, walked.splits)
        assert rebuilt.describe() == walked.describe(), root


def test_adopting_worker_builds_its_folder_source_from_the_listing_without_walking(tmp_path, monkeypatch):
    """Only the first worker of a part-split job walks the folder; the others (and a rerun of the
    first) build their source from listing.npz, stat their own shards' inputs, and walk only when
    one of those changed (falling back to their own listing). A file added after the listing was
    published is not part of the job."""
    import os

    from featcache.extractor import sources
    from featcache.extractor.runner import ExtractConfig, share_listing
    from featcache.shared.cache._parts import Part

    src = tmp_path / "src"
    touch(src, *(f"{c}/{k:02d}.jpg" for c in ("a", "b") for k in range(5)))  # 10 inputs, shards of 2
    walks: list[Path] = []
    real = sources.from_folder
    monkeypatch.setattr(sources, "from_folder", lambda root: (walks.append(root), real(root))[1])

    def worker(i: int) -> tuple[str, sources.Source]:
        return share_listing(ExtractConfig(source=src, cache=tmp_path / "cache", shard_size=2, part=Part(i, 2)))

    first = worker(0)[1]
    assert len(walks) == 1
    touch(src, "a/99.jpg", "c/00.jpg")  # added after publication: not this job's
    for i in (1, 0):
        what, source = worker(i)
        assert what == "adopted" and len(walks) == 1  # no walk
        assert source.paths == first.paths and source.ids == first.ids and source.classes == ["a", "b"]
        assert source.describe() == first.describe()
    os.utime(src / "b" / "00.jpg", ns=(1, 1))  # input 5: in shard 2, part 0/2's
    assert worker(1)[0] == "adopted" and len(walks) == 1
    what, source = worker(0)
    assert what == "own" and len(walks) == 2 and "c/00.jpg" in source.ids  # its own walk, as before


@pytest.mark.parametrize(
    "hostile",
    [
        "../outside/secret.jpg",
        "a/../../outside/secret.jpg",
        "{outside}/secret.jpg",  # absolute
        "a/link/secret.jpg",  # a folder the walk does not follow: a symbolic link out of the source
        "a/.hidden/secret.jpg",
        "a\\q/secret.jpg",  # no file name is shown so
    ],
)
def test_a_hostile_published_listing_is_refused_before_any_input_is_touched(hostile, tmp_path, monkeypatch):
    """listing.npz is data read from disk: an id no walk of the source folder could produce is
    refused with one line naming listing.npz, and nothing (inside the source or out) is stat'ed."""
    import os

    import numpy as np

    from featcache.extractor import sources
    from featcache.extractor.runner import ExtractConfig, share_listing
    from featcache.shared.cache._listing import save_listing
    from featcache.shared.cache._parts import Part

    src, outside, cache = tmp_path / "src", tmp_path / "outside", tmp_path / "cache"
    touch(src, "a/00.jpg", "a/01.jpg")
    touch(outside, "secret.jpg")
    os.symlink(outside, src / "a" / "link")
    ids = sorted(["a/00.jpg", "a/01.jpg", hostile.format(outside=outside)])
    n = len(ids)
    cache.mkdir()
    save_listing(
        cache,
        {
            "id": np.array(ids),
            "label": np.zeros(n, dtype=np.int32),
            "split": np.full(n, -1, dtype=np.int8),
            "size": np.ones(n, dtype=np.int64),
            "mtime_ns": np.zeros(n, dtype=np.int64),
        },
    )
    stated: list[bytes] = []
    monkeypatch.setattr(sources, "stat_files", lambda paths: stated.extend(paths) or None)
    with pytest.raises(BadInputError) as e:
        share_listing(ExtractConfig(source=src, cache=cache, shard_size=10, part=Part(0, 2)))
    message = str(e.value)
    assert message.startswith(f"{cache / 'listing.npz'}: input ") and "\n" not in message
    assert "not a listing a walk of" in message and stated == []


@pytest.mark.parametrize(("field", "values"), [("label", ["x", "y"]), ("split", ["train", "val"]), ("id", [1, 2])])
def test_a_published_listing_of_the_wrong_types_is_one_line_and_never_adopted(field, values, tmp_path):
    """listing.npz arrays of other types than save_listing writes (labels or splits as strings, ids as
    numbers) are not a readable listing: one line naming the file (they raised a bare ValueError where
    an adopting worker cast them), and a --part worker lists the source itself instead."""
    import numpy as np

    from featcache.extractor.runner import ExtractConfig, share_listing
    from featcache.shared.cache._listing import load_listing, save_listing
    from featcache.shared.cache._parts import Part
    from featcache.shared.errors import FeatcacheError

    src, cache = tmp_path / "src", tmp_path / "cache"
    touch(src, "a/00.jpg", "b/00.jpg")
    listing = {
        "id": np.array(["a/00.jpg", "b/00.jpg"]),
        "label": np.array([0, 1], dtype=np.int32),
        "split": np.full(2, -1, dtype=np.int8),
        "size": np.ones(2, dtype=np.int64),
        "mtime_ns": np.array([(src / i).stat().st_mtime_ns for i in ("a/00.jpg", "b/00.jpg")]),
    }
    listing[field] = np.array(values)
    cache.mkdir()
    save_listing(cache, listing)
    with pytest.raises(FeatcacheError, match=rf"listing.npz: not a readable input listing \({field} is "):
        load_listing(cache)
    what, source = share_listing(ExtractConfig(source=src, cache=cache, shard_size=1, part=Part(1, 2)))
    assert what == "own" and source.ids == ["a/00.jpg", "b/00.jpg"] and source.labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("files", "listed", "claim"),
    [
        # train/ and val/ holding images: a walk makes them splits, not classes named train and val
        (("train/x.jpg", "val/y.jpg"), {"train/x.jpg": (0, -1), "val/y.jpg": (1, -1)}, "class folders"),
        # a class cat/ beside train/: a walk makes train/ a class, not a split of images without one
        (("train/x.jpg", "cat/y.jpg"), {"train/x.jpg": (-1, 0)}, "train/val/test folders"),
        # images beside a class folder: a walk ignores them (they have no class)
        (("loose.jpg", "cat/y.jpg"), {"loose.jpg": (-1, -1)}, "no folder"),
    ],
)
def test_a_published_listing_in_another_layout_than_the_folders_give_is_refused(
    files, listed, claim, tmp_path, monkeypatch
):
    """Ids, labels and splits consistent with each other, but in the layout of another folder: the
    walk decides between class and split folders from the folders at the top of the source, so an
    adopting worker reads them (one directory) instead of taking the listing's word for it (it
    adopted such a listing, labelling its part's rows otherwise than the walk)."""
    import os

    import numpy as np

    from featcache.extractor import sources
    from featcache.extractor.runner import ExtractConfig, share_listing
    from featcache.shared.cache._listing import save_listing
    from featcache.shared.cache._parts import Part

    src, cache = tmp_path / "src", tmp_path / "cache"
    touch(src, *files)
    ids = sorted(listed)
    cache.mkdir()
    save_listing(
        cache,
        {
            "id": np.array(ids),
            "label": np.array([listed[i][0] for i in ids], dtype=np.int32),
            "split": np.array([listed[i][1] for i in ids], dtype=np.int8),
            "size": np.ones(len(ids), dtype=np.int64),
            "mtime_ns": np.array([os.stat(src / i).st_mtime_ns for i in ids], dtype=np.int64),
        },
    )
    stated: list[bytes] = []
    monkeypatch.setattr(sources, "stat_files", lambda paths: stated.extend(paths) or None)
    with pytest.raises(BadInputError, match=rf"listing.npz: input 0 .* is listed as in {claim}, but the folders of "):
        share_listing(ExtractConfig(source=src, cache=cache, shard_size=1, part=Part(0, 2)))
    assert stated == []


def test_a_listing_declaring_more_than_memory_is_refused_before_it_is_inflated(tmp_path):
    """listing.npz is a zip of .npy arrays whose headers declare their shapes: a few bytes can
    declare terabytes (a MemoryError traceback, or, within the machine's memory, gigabytes really
    allocated). The headers are read first; more than half the machine's memory is one line."""
    import zipfile

    import numpy as np

    from featcache.shared.cache._listing import FIELDS, load_listing
    from featcache.shared.errors import FeatcacheError

    n = 2**40
    dtypes = {"id": "<U8", "label": "<i4", "split": "|i1", "size": "<i8", "mtime_ns": "<i8"}
    with zipfile.ZipFile(tmp_path / "listing.npz", "w", zipfile.ZIP_DEFLATED) as z:
        for key in FIELDS:
            with z.open(f"{key}.npy", "w") as f:  # the header alone: what a reader allocates from
                np.lib.format.write_array_header_1_0(f, {"descr": dtypes[key], "fortran_order": False, "shape": (n,)})
    assert (tmp_path / "listing.npz").stat().st_size < 2000
    with pytest.raises(FeatcacheError, match=rf"listing.npz: not a readable input listing \({n} inputs declared, "):
        load_listing(tmp_path)
