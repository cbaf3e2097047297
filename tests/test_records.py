"""Record-based sources: TFRecord files (plain and GZIP), WebDataset tar shards, and URLs.

The containers are written here by independent tools (TensorFlow's own ``TFRecordWriter`` and
``tf.train.Example``, Python's ``tarfile``) from the same small folder of images; each must give the
rows a folder source gives (same ids, labels, classes; pooled vectors equal), bad records must be
recorded with their reason while the job goes on, and resume and changed-input detection must work.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cachefiles import read_shards
from conftest import extract, make_sample

from featcache.extractor import records
from featcache.extractor.sources import open_source
from featcache.shared.errors import BadInputError, SourceMismatchError

tf = pytest.importorskip("tensorflow")


def example(data: bytes, name: str | None, label: int | None, text: str | None, **extra) -> bytes:
    """A serialized tf.train.Example, built by TensorFlow."""
    feats = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))}
    if name is not None:
        feats["image/filename"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()]))
    if label is not None:
        feats["image/class/label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    if text is not None:
        feats["image/class/text"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))
    feats.update(extra)
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_tfrecord(path: Path, items: list[bytes], gzip_: bool = False) -> Path:
    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip_ else "")
    with tf.io.TFRecordWriter(str(path), options=options) as w:
        for item in items:
            w.write(item)
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, list[tuple[str, str, bytes]]]:
    """A folder of 3 classes x 2 images (JPEG and PNG), and ``(id, class, bytes)`` of each in id order."""
    root = tmp_path_factory.mktemp("imgs")
    make_sample(root, per_class=2, classes=3, seed=5)
    src = open_source(root)
    items = zip(src.ids, src.labels.tolist(), src.paths, strict=True)
    files = [(i, src.classes[lab], Path(os.fsdecode(p)).read_bytes()) for i, lab, p in items]
    return root, files


@pytest.fixture(scope="module")
def folder_rows(images, tmp_path_factory) -> dict[str, np.ndarray]:
    cache = tmp_path_factory.mktemp("folder") / "c"
    extract(images[0], cache)
    return read_shards(cache)


def rows_by_id(rows: dict[str, np.ndarray]) -> dict[str, tuple[int, np.ndarray]]:
    return {str(i): (int(lab), p) for i, lab, p in zip(rows["id"], rows["label"], rows["pooled"], strict=True)}


def make_container(kind: str, folder: Path, files: list[tuple[str, str, bytes]], classes: list[str]) -> Path:
    """The images as a ``kind`` source: two TFRecord files (plain or GZIP) or two tar shards."""
    half = [files[: len(files) // 2], files[len(files) // 2 :]]
    folder.mkdir()
    for k, part in enumerate(half):
        if kind == "tar":
            members = []
            for i, cls, data in part:
                stem = i.rsplit(".", 1)[0]
                members += [(i, data), (f"{stem}.cls", cls.encode())]  # a class name (a number works too)
            write_tar(folder / f"shard-{k}.tar", members)
        else:
            items = [example(data, i, classes.index(cls), cls) for i, cls, data in part]
            gz = kind == "tfrecord-gzip"
            write_tfrecord(folder / f"part-{k}.tfrecord{'.gz' if gz else ''}", items, gzip_=gz)
    return folder


@pytest.mark.parametrize("kind", ["tfrecord", "tfrecord-gzip", "tar"])
def test_containers_give_the_folder_rows(images, folder_rows, tmp_path, kind):
    """The same images through a folder and through TFRecord (plain, GZIP) or tar shards: the same
    ids, labels and class names, and equal pooled vectors (GZIP: from a run stopped after one shard
    and resumed)."""
    root, files = images
    classes = sorted({c for _, c, _ in files})
    src = make_container(kind, tmp_path / "src", files, classes)
    s = open_source(src)
    assert s.kind == kind.split("-")[0] and s.classes == classes
    assert sorted(s.ids) == [i for i, _, _ in files]
    cache = tmp_path / "cache"
    if kind == "tfrecord-gzip":  # stopped after one shard, then resumed (gzip: the stream is read afresh)
        first = extract(src, cache, max_shards=1)
        assert first.shards_left == 1 and first.failed == 0
    rest = extract(src, cache)
    assert rest.shards_kept == (kind == "tfrecord-gzip") and rest.failed == 0
    got, want = rows_by_id(read_shards(cache)), rows_by_id(folder_rows)
    assert sorted(got) == sorted(want)
    for i, (label, pooled) in want.items():
        assert got[i][0] == label
        np.testing.assert_array_equal(got[i][1], pooled, err_msg=i)


def test_example_parser_and_crc_agree_with_tensorflow(tmp_path):
    """parse_example reads what tf.train.Example wrote (bytes, negative ints, floats, packed or not),
    and scan_tfrecord's offsets are TensorFlow's records (its length CRC checks pass on TF's file)."""
    extra = {
        "f": tf.train.Feature(float_list=tf.train.FloatList(value=[1.5, -2.0])),
        "n": tf.train.Feature(int64_list=tf.train.Int64List(value=[-3, 2**40])),
    }
    items = [example(b"\x00\xffimg", "a/b.jpg", 7, "cat", **extra), example(b"", None, None, None)]
    path = write_tfrecord(tmp_path / "x.tfrecord", items)
    with open(path, "rb") as fh:
        scanned = list(records.scan_tfrecord(fh, 1 << 20))
    assert [r.problem for r in scanned] == [None, None]
    raw = path.read_bytes()
    assert [raw[r.offset : r.offset + r.length] for r in scanned] == items
    got = records.parse_example(items[0], {"image/encoded", "image/filename", "image/class/label", "f", "n", "zz"})
    assert got == {
        "image/encoded": [b"\x00\xffimg"],
        "image/filename": [b"a/b.jpg"],
        "image/class/label": [7],
        "f": [1.5, -2.0],
        "n": [-3, 2**40],
    }
    with pytest.raises(ValueError):
        records.parse_example(b"\x0a\xff\xff\xff", {"x"})


def _ld(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (payloads here are < 128 bytes)."""
    return bytes([(number << 3) | 2, len(payload)]) + payload


@pytest.mark.parametrize(
    "feature",
    [
        _ld(2, _ld(1, b"\x01\x02\x03\x04\x05")),  # packed float_list of 5 bytes
        _ld(2, b"\x08\x07"),  # float_list whose value is a varint
        _ld(2, b"\x09" + bytes(8)),  # float_list whose value is a fixed64
        _ld(3, b"\x0d" + bytes(4)),  # int64_list whose value is a fixed32
        _ld(3, b"\x09" + bytes(8)),  # int64_list whose value is a fixed64
    ],
)
def test_malformed_feature_lists_are_value_errors(tmp_path, feature):
    """A hostile Example whose label is a float or int list of the wrong wire shape is a ValueError
    (a record listed as "not a tf.train.Example"), never a struct.error or TypeError traceback."""
    data = _ld(1, _ld(1, _ld(1, b"image/class/label") + _ld(2, feature)))
    with pytest.raises(ValueError):
        records.parse_example(data, {"image/class/label"})
    path = tmp_path / "x.tfrecord"
    path.write_bytes(write_tfrecord(tmp_path / "ok.tfrecord", [data]).read_bytes())
    src = open_source(path)
    with pytest.raises(records.RefusedInput, match="not a tf.train.Example"):
        src.records.read(0, src.paths[0], records.InputLimits())


def test_bad_records_are_recorded_and_the_job_goes_on(images, tmp_path):
    """A truncated TFRecord (cut inside its last record), a record without an image, a tar member
    that is not an image and a sample without a label: each bad input is a failed input with its
    reason, the others are extracted; a missing label is unknown (-1) with a note."""
    _, files = images
    (i0, c0, d0), (i1, c1, d1), (i2, c2, d2) = files[:3]
    tfr = tmp_path / "tfr"
    tfr.mkdir()
    path = write_tfrecord(tfr / "a.tfrecord", [example(d0, i0, 0, c0), example(b"", i1, 1, c1), example(d2, i2, 2, c2)])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 10])
    s = open_source(tfr)
    assert s.ids == [i0, i1, "a.tfrecord#2"]  # the cut record has no readable id
    report = extract(tfr, tmp_path / "c1")
    assert report.rows == 1
    reasons = {f.id: f.reason for f in report.failures}
    assert reasons[i1].startswith("cannot decode") or "image" in reasons[i1]
    assert reasons["a.tfrecord#2"].startswith("truncated")

    tars = tmp_path / "tars"
    tars.mkdir()
    write_tar(
        tars / "s.tar",
        [("x.jpg", d0), ("x.cls", b"1"), ("y.jpg", b"this is text, not a JPEG"), ("y.cls", b"0"), ("z.png", d1)],
    )
    s = open_source(tars)
    assert s.ids == ["x.jpg", "y.jpg", "z.png"] and s.labels.tolist() == [1, 0, -1]
    assert any("1 records have no label" in n for n in s.notes)
    report = extract(tars, tmp_path / "c2")
    assert report.rows == 2
    assert [(f.id, f.reason.split(":")[0]) for f in report.failures] == [("y.jpg", "cannot decode")]


def test_ids_keys_splits_and_changed_containers(images, tmp_path):
    """Without an id feature ids are FILE#RECORD; tfrecord_keys names other features; a file name
    gives the split; a rewritten container is refused on resume and is 'modified' on update."""
    _, files = images
    src = tmp_path / "src"
    src.mkdir()
    jpeg = tf.train.Feature(bytes_list=tf.train.BytesList(value=[files[0][2]]))
    y = tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))
    item = tf.train.Example(features=tf.train.Features(feature={"jpeg": jpeg, "y": y})).SerializeToString()
    path = write_tfrecord(src / "train-00000-of-00001", [item, item])
    with pytest.raises(BadInputError, match="not a folder, .csv"):
        open_source(path)
    s = open_source(path, "tfrecord", "image=jpeg,label=y")
    assert s.ids == ["train-00000-of-00001#0", "train-00000-of-00001#1"]
    assert s.labels.tolist() == [1, 1] and s.classes == ["0", "1"] and s.splits.tolist() == [0, 0]
    cache = tmp_path / "c"
    report = extract(path, cache, source_format="tfrecord", tfrecord_keys="image=jpeg,label=y")
    assert report.rows == 2 and report.failed == 0
    os.utime(path, ns=(1, 1))
    with pytest.raises(SourceMismatchError):
        extract(path, cache, source_format="tfrecord", tfrecord_keys="image=jpeg,label=y")
    report = extract(path, cache, source_format="tfrecord", tfrecord_keys="image=jpeg,label=y", update=True)
    assert report.changes == {"added": 0, "removed": 0, "modified": 2, "relabelled": 0} and report.rows == 2


def test_huge_ids_and_class_names_are_ignored(tmp_path):
    """A record's id (or class name) could be megabytes (up to the 256 MiB record limit), all kept in
    memory for every record: 80 MB of ids took 600 MB more. Values over MAX_TEXT_BYTES are ignored."""
    from featcache.extractor.sources import MAX_TEXT_BYTES

    big = b"y" * (MAX_TEXT_BYTES + 1)
    items = [
        example(
            b"img",
            None,
            None,
            None,
            **{
                "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[big + b"%d" % k])),
                "image/class/text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[big])),
            },
        )
        for k in range(2)
    ]
    items.append(example(b"img", "ok.jpg", None, "cat"))
    s = open_source(write_tfrecord(tmp_path / "x.tfrecord", items))
    assert s.ids == ["x.tfrecord#0", "x.tfrecord#1", "ok.jpg"]
    assert s.classes == ["cat"] and s.labels.tolist() == [-1, -1, 0]


def test_tar_members_with_huge_names_are_not_listed(tmp_path):
    """A GNU long name can be megabytes; each became an id held in memory (20 members of 2 MB: 300
    MB more). Names over MAX_MEMBER_NAME are not listed; the others are, with their labels."""
    long = "d" * (records.MAX_MEMBER_NAME + 1)
    path = write_tar(tmp_path / "x.tar", [(f"{long}.png", b"img"), ("a.png", b"img"), ("a.cls", b"3")])
    with open(path, "rb") as fh:
        members, problem = records.scan_tar(fh, {"cls"})
    assert problem is None and [(m.name, m.content) for m in members] == [("a.png", None), ("a.cls", b"3")]
    src = open_source(path)
    assert src.ids == ["a.png"] and src.classes == ["0", "1", "2", "3"]


def test_url_sources_read_like_local_ones(images, folder_rows, tmp_path):
    """TFRecord files given as a tf.io.gfile URL pattern (ram://, in memory; GZIP) and a local CSV of
    image URLs give the folder's rows; a CSV at a ram:// URL and a folder of class folders and tar
    shards at file:// URLs list the same inputs and read the same bytes."""
    files = images[1]
    classes = sorted({c for _, c, _ in files})
    gz = make_container("tfrecord-gzip", tmp_path / "gz", files, classes)
    for p in sorted(gz.iterdir()):
        with tf.io.gfile.GFile(f"ram://featcache-test/{p.name}", "wb") as fh:
            fh.write(p.read_bytes())
    want = rows_by_id(folder_rows)
    source = "ram://featcache-test/*.tfrecord.gz"
    assert all(records.is_url(p) for p in open_source(source).paths)
    extract(source, tmp_path / "c")
    got = rows_by_id(read_shards(tmp_path / "c"))
    assert sorted(got) == sorted(want)
    for i, (label, pooled) in want.items():
        assert got[i][0] == label
        np.testing.assert_array_equal(got[i][1], pooled, err_msg=f"{source} {i}")
    for i, _, data in files:  # the images at URLs, listed by a local CSV and by a CSV at a URL
        with tf.io.gfile.GFile(f"ram://featcache-csv/{i}", "wb") as fh:
            fh.write(data)
    csv_local = tmp_path / "remote.csv"
    csv_local.write_text("path,label\n" + "".join(f"ram://featcache-csv/{i},{c}\n" for i, c, _ in files))
    with tf.io.gfile.GFile("ram://featcache-csv/list.csv", "w") as fh:
        fh.write("".join(f"{i},{c}\n" for i, c, _ in files))
    folder = open_source(f"file://{images[0]}/")  # a folder of class folders at a URL (ram:// lists no folders)
    assert folder.kind == "folder" and folder.ids == [i for i, _, _ in files] and folder.classes == classes
    assert [folder.read(k, records.InputLimits()) for k in range(len(folder))] == [d for _, _, d in files]
    at_url = open_source("ram://featcache-csv/list.csv")
    assert [os.fsdecode(p) for p in at_url.paths] == [f"ram://featcache-csv/{i}" for i, _, _ in files]
    extract(csv_local, tmp_path / "c2")
    got = {f"ram://featcache-csv/{i}": v for i, v in want.items()}
    csv_rows = rows_by_id(read_shards(tmp_path / "c2"))
    assert len(csv_rows) == len(want)
    for i, (label, pooled) in csv_rows.items():
        assert got[i][0] == label
        np.testing.assert_array_equal(pooled, got[i][1], err_msg=f"CSV of URLs {i}")
    local = make_container("tar", tmp_path / "tar", files, classes)
    s = open_source(f"file://{local}")
    assert all(records.is_url(p) for p in s.paths) and s.ids == [i for i, _, _ in files]
    limits = records.InputLimits()
    assert [s.read(k, limits) for k in range(len(s))] == [d for _, _, d in files]


def test_gzip_reads_are_sequential_and_cut_streams_refused(tmp_path):
    """Records of a gzip'd container read in any order give the right bytes (backwards restarts the
    stream); a cut gzip stream is a refusal, not a crash."""
    data = [bytes([k]) * (1000 + k) for k in range(5)]
    path = write_tfrecord(tmp_path / "a.tfrecord.gz", data, gzip_=True)
    with records.open_stream(path) as fh:
        scanned = list(records.scan_tfrecord(fh, 1 << 20))
    limits = records.InputLimits()
    for r in [scanned[3], scanned[1], scanned[4], scanned[0]]:
        assert records.read_slice(os.fsencode(path), r.offset, r.length, limits) == data[scanned.index(r)]
    cut = tmp_path / "b.tfrecord.gz"
    cut.write_bytes(path.read_bytes()[:-30])
    with records.open_stream(cut) as fh:
        last = list(records.scan_tfrecord(fh, 1 << 20))[-1]
    assert last.problem is not None and "truncated" in last.problem
    with pytest.raises(records.RefusedInput, match="gzip|truncated"):
        records.read_slice(os.fsencode(cut), scanned[4].offset, scanned[4].length, limits)
