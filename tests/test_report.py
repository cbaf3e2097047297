"""featcache-inspect report and suspects: the page's numbers, leaks, label-noise recall, a real browser."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REAL_WEIGHTS, extract, make_sample, synthetic_cache
from typer.testing import CliRunner

from featcache.shared.inspection.cli import app

runner = CliRunner()
CIFAR = REAL_WEIGHTS.parents[1] / "data" / "cifar10-dev.tar"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def inspect(*args: object):
    return runner.invoke(app, [str(a) for a in args])


class Page(HTMLParser):
    """What the tests read from a report: summary facts, balance cells, table rows by table id, images,
    and every external reference (there must be none)."""

    def __init__(self, text: str):
        super().__init__()
        self.facts: dict[str, str] = {}
        self.balance: dict[tuple[str, str], int] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.external: list[str] = []
        self._key: str | None = None
        self._cell: tuple[str, str] | None = None
        self._table: list[str | None] = []
        self._row: list[str] | None = None
        self._text: list[str] | None = None
        self._grab_next_td = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            v = a.get(k) or ""
            if v and not v.startswith(("data:", "#")):
                self.external.append(v)
        if tag == "link":
            self.external.append(str(a))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "table":
            self._table.append(a.get("id"))
        if tag == "tr":
            self._row = []
        if tag == "td":
            self._text = []
        if "data-key" in a:
            self._key = a["data-key"]
        if "data-class" in a:
            self._cell = (a["data-class"], a["data-split"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table.pop()
        if tag == "td" and self._text is not None:
            text = "".join(self._text).strip()
            if self._row is not None:
                self._row.append(text)
            if self._grab_next_td:
                self.facts[self._grab_next_td] = text
                self._grab_next_td = False
            elif self._key is not None:
                self._grab_next_td, self._key = self._key, None
            self._text = None
        if tag == "tr" and self._row is not None:
            if self._table and self._table[-1]:
                self.tables.setdefault(self._table[-1], []).append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)
        if self._cell is not None:
            self.balance[self._cell] = int(data)
            self._cell = None


def test_report_numbers_equal_summary_json(tiny_cache, tmp_path):
    out = tmp_path / "r.html"
    r = inspect("report", tiny_cache, out, "--embedding", "pca")
    assert r.exit_code == 0, r.output
    s = json.loads(inspect("summary", tiny_cache, "--json").output)
    page = Page(out.read_text(encoding="utf-8"))
    assert page.external == []  # self-contained: nothing fetched from anywhere
    assert int(page.facts["rows"]) == s["rows"] == 15
    assert int(page.facts["inputs"]) == s["inputs"]
    assert int(page.facts["shards done"]) == s["shards"]["done"]
    assert int(page.facts["failed inputs"]) == s["failed"]["count"]
    assert int(page.facts["bytes on disk"]) == s["bytes"]["total"]
    for split, n in s["splits"].items():
        assert int(page.facts[f"{split} rows"]) == n
    assert page.balance == {(c, sp): n for c, d in s["classes"].items() for sp, n in d.items()}
    assert "RANDOM weights" in out.read_text()  # the tiny cache's weights are random: said loudly
    # thumbnails of every listed suspect, inlined from the source images (Pillow is in the test extra)
    assert len(page.tables["suspects"]) == 1 + 15 and page.images
    assert all(src.startswith("data:image/jpeg;base64,") for src in page.images)


def test_report_without_source_images_still_works(tiny_cache, tmp_path):
    cache = Path(shutil.copytree(tiny_cache, tmp_path / "c"))
    m = json.loads((cache / "manifest.json").read_text())
    m["source"]["root"] = str(tmp_path / "gone")
    (cache / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "r.html"
    r = inspect("report", cache, out, "--embedding", "pca")
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "no longer where the cache was made from" in text and "data:image" not in text
    assert len(Page(text).tables["suspects"]) == 16


def test_report_lists_every_train_image_copied_into_test_and_failed_inputs(tmp_path):
    src = tmp_path / "src"
    make_sample(src, per_class=6, classes=3, seed=3, splits=True)
    train = sorted((src / "train").rglob("*.*"))
    copies = {}
    for k, p in enumerate(train[::4]):  # every 4th train image, under a new name in test/
        dest = src / "test" / p.parent.name / f"copy{k}{p.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
        copies[str(p.relative_to(src))] = str(dest.relative_to(src))
    (train[0].parent / "empty.jpg").write_bytes(b"")  # a failed input, listed with its reason
    cache = tmp_path / "cache"
    extract(src, cache, shard_size=8)
    out = tmp_path / "r.html"
    r = inspect("report", cache, out, "--embedding", "pca")
    assert r.exit_code == 0, r.output
    page = Page(out.read_text())
    failed = page.tables["failed"][1:]
    assert [(row[1], row[2]) for row in failed] == [
        (str((train[0].parent / "empty.jpg").relative_to(src)), "empty file (0 bytes)")
    ]
    rows = page.tables["duplicates"][1:]
    listed = {frozenset((a.split()[0], b.split()[0])) for cos, leak, a, b in rows if leak == "LEAK"}
    assert {frozenset(p) for p in copies.items()} <= listed
    assert len(copies) >= 3


def test_suspects_cli_ranks_flipped_labels_first(tmp_path):
    cache = synthetic_cache(tmp_path / "c", n=200, classes=4)
    flipped = [7, 42, 99, 150]
    with (
        h5py.File(next((cache / "shards").glob("shard-00000.h5")), "r+") as f0,
        h5py.File(next((cache / "shards").glob("shard-00001.h5")), "r+") as f1,
    ):
        for i in flipped:
            f, j = (f0, i) if i < 100 else (f1, i - 100)
            f["label"][j] = (f["label"][j] + 1) % 4
    r = inspect("suspects", cache, "--json", "--top", "4", "--csv", tmp_path / "s.csv")
    assert r.exit_code == 0, r.output
    top = json.loads(r.output)
    assert sorted(d["index"] for d in top) == flipped
    # the suggested label is the true one (class of row i is i % 4), the given one is not
    assert all(d["suggested"] == f"class{d['index'] % 4}" != d["label"] for d in top)
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert len(lines) == 201 and lines[0].startswith("rank,index,id,split,label,suggested")
    text = inspect("suspects", cache, "--top", "3").output
    assert "most suspect first" in text and len(text.strip().splitlines()) == 2 + 3


def test_report_module_imports_no_tensorflow(tiny_cache, tmp_path):
    code = (
        "import sys\nfrom featcache.shared.inspection import report\n"
        f"report.write({str(tiny_cache)!r}, {str(tmp_path / 'r.html')!r}, embedding='pca')\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sampled_report_says_so(tiny_cache, tmp_path):
    out = tmp_path / "r.html"
    r = inspect("report", tiny_cache, out, "--max-rows", "9", "--embedding", "pca")
    assert r.exit_code == 0, r.output
    assert "random sample of 9 of the 15 rows" in out.read_text()
    assert len(Page(out.read_text()).tables["suspects"]) == 1 + 9


@pytest.mark.skipif(not (REAL_WEIGHTS.is_file() and CIFAR.is_file()), reason="real weights or cifar10-dev.tar absent")
def test_label_noise_recall_on_natural_images(tmp_path):
    """Flip the labels of a known 5% of 1,000 CIFAR-10 images (by moving the files to another class's
    folder), extract with real weights, and find >= 70% of them in the suspects' top 10%."""
    per_class, classes = 100, 10
    with tarfile.open(CIFAR) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        by_class: dict[str, list] = {}
        for m in members:
            by_class.setdefault(m.name.split("/")[-2], []).append(m)
        names = sorted(by_class)[:classes]
        chosen = [m for c in names for m in sorted(by_class[c], key=lambda m: m.name)[:per_class]]
        tar.extractall(tmp_path, members=chosen, filter="data")
    root = tmp_path / "cifar10-dev"
    files = sorted(root.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    flipped = set()
    for p in rng.choice(files, len(files) // 20, replace=False):
        k = names.index(p.parent.name)
        target = names[(k + int(rng.integers(1, classes))) % classes]
        dest = root / target / f"flip-{p.name}"
        p.rename(dest)
        flipped.add(str(dest.relative_to(root)))
    cache = tmp_path / "cache"
    extract(root, cache, backbone="mobilenet_v2", weights=str(REAL_WEIGHTS), shard_size=1024, batch_size=32)
    r = inspect("suspects", cache, "--json", "--top", str(len(files) // 10))
    assert r.exit_code == 0, r.output
    top = {d["id"] for d in json.loads(r.output)}
    recall = len(top & flipped) / len(flipped)
    print(f"label-noise recall in the top 10% of {len(files)} rows: {recall:.3f}")
    assert recall >= 0.70, recall


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_opens_in_a_headless_browser_without_console_errors(tiny_cache, tmp_path):
    out = tmp_path / "r.html"
    assert inspect("report", tiny_cache, out, "--embedding", "pca").exit_code == 0
    shot = tmp_path / "shot.png"
    p = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1000,1400",
            f"--screenshot={shot}",
            out.as_uri(),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    console = [line for line in p.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert _png_size(shot) == (1000, 1400)
    assert shot.stat().st_size > 20_000  # something was drawn, not a blank page
