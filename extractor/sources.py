"""Image sources: turn what the user points at into a deterministic, labelled input listing.

Kinds (docs/inputs.md):

* a folder of class sub-folders (Keras ``image_dataset_from_directory`` convention: class names are
  the sorted folder names, images found recursively inside each); when the top level is ``train/``,
  ``val/`` (or ``valid/``, ``validation/``) and ``test/``, the classes are the folders under each and
  every image keeps its folder's split; a top level mixing split folders with other folders is refused;
* a folder of images with no sub-folders (unlabelled);
* a CSV ``path[,label[,split]]`` (header optional, columns found by name; labels are class names or
  class numbers; empty label means unknown; paths relative to the CSV's folder), or a
  ``.txt``/``.lst`` list of paths;
* TFRecord files and WebDataset tar shards (:func:`from_tfrecords`, :func:`from_tars`), each record
  an input read later as a slice of its file (:mod:`featcache.extractor.records`);
* any of these at a URL (``gs://``..., through ``tf.io.gfile``); CSV and list rows may be URLs.

Hidden entries and known junk folders (:data:`IGNORED_FOLDERS`) are skipped everywhere. Ids and
class names are valid UTF-8 whatever the file names' bytes, and distinct names give distinct ids
(:func:`display_id`). The listing is sorted by id for folders and kept in file order for CSVs and
lists; either way the same source gives the same listing, so shard k always covers the same inputs.
docs/inputs.md is the user's description of these rules.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..shared.cache.fsutil import sha256_file
from ..shared.cache.schema import NO_SPLIT, SPLIT_CODES, SPLIT_FOLDER_ALIASES, UNKNOWN_LABEL
from ..shared.errors import BadInputError, FeatcacheError
from . import records
from .inputs import InputLimits, RefusedInput, check_pixels, read_input

# What a walk lists as images. TensorFlow's decode_image reads JPEG, PNG, BMP, GIF and WebP; TIFF
# files are listed too, so that each is recorded as failed with its reason (extractor/inputs.py)
# instead of being silently left out.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".txt", ".lst"})
MAX_LIST_BYTES = 1 << 30  # a CSV or list file is read whole, at most this large
# Folders that tools leave beside the data (hidden ones, starting with ".", are skipped too:
# .ipynb_checkpoints, .git, .Trash-1000...): never a class, a split or a source of images.
IGNORED_FOLDERS = frozenset(
    {"__MACOSX", "__pycache__", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "lost+found"}
)
# CSV column names (compared lower-case), by the column they name.
CSV_COLUMNS = {
    "path": ("path", "filename", "file", "file_name", "filepath", "file_path", "image", "image_path", "img"),
    "label": ("label", "class", "category", "target", "class_name", "label_name"),
    "split": ("split", "subset", "fold"),
}
# Integer labels are class numbers: label k is class k of classes "0".."max". Only ASCII digits
# (not "²" or "٣", which str.isdigit accepts), and at most this many classes.
INTEGER_LABEL = re.compile(r"[0-9]+")
MAX_INTEGER_CLASSES = 100_000
_NAME_LIKE = re.compile(r"[^\W\d][\w .-]*")  # how a column name looks: starts with a letter or "_"


def display_id(raw: str) -> str:
    """A file name as valid UTF-8 that no other name maps to: undecodable bytes (kept by
    ``os.fsdecode`` as surrogates) are shown as ``\\xNN`` and a backslash as ``\\\\``, so a name
    spelling ``\\xff`` literally and a name with the byte 0xff get different ids."""
    return raw.replace("\\", "\\\\").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Threads that stat files side by side: os.stat releases the GIL, and on a network filesystem a stat
# is a round trip, so parallel stats are what makes a 10-million-file listing minutes, not hours.
STAT_THREADS = 16


def stat_files(paths: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """``(size, mtime_ns)``, ``(n,)`` int64 each, of ``paths`` (local files or URLs; -1 and 0 for one
    that cannot be stat'ed), each distinct path once (the records of a TFRecord or tar file share
    it), on :data:`STAT_THREADS` threads."""
    unique = list(dict.fromkeys(paths))

    def one(chunk: list[bytes]) -> list[tuple[int, int]]:
        return [records.stat_path(p) for p in chunk]

    step = max(1, -(-len(unique) // (STAT_THREADS * 8)))
    chunks = [unique[k : k + step] for k in range(0, len(unique), step)]
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        stats = dict(zip(unique, (r for part in pool.map(one, chunks) for r in part), strict=True))
    arr = np.array([stats[p] for p in paths], dtype=np.int64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_FOLDERS


@dataclass
class Source:
    """A listing of ``n`` inputs.

    ``paths`` are file-system paths as bytes (any name the OS allows); ``ids`` the UTF-8 ids stored in
    the cache; ``labels`` ``(n,)`` int32 (-1 unknown); ``splits`` ``(n,)`` int8 (-1 when the source
    gives none); ``classes`` the class names in label order; ``notes`` things the user should hear.
    For TFRecord and tar sources, ``paths`` are the container files (or URLs) and ``records`` says
    where in its container each input is (:class:`~featcache.extractor.records.Records`).
    """

    kind: str
    root: Path | str  # a str for a URL
    paths: list[bytes]
    ids: list[str]
    labels: np.ndarray
    splits: np.ndarray
    classes: list[str]
    notes: list[str] = field(default_factory=list)
    records: records.Records | None = None
    _listing: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def split_source(self) -> str | None:
        """Where per-row splits come from, or None when the hash split applies to every row."""
        if not np.any(self.splits != NO_SPLIT):
            return None
        if self.records is not None:
            return "file names"
        return "csv" if self.kind == "csv" else "folders"

    @property
    def sequential_reads(self) -> bool:
        """Whether inputs must be read in listing order (records in gzip'd containers: see
        :mod:`featcache.extractor.records`)."""
        return self.records is not None and any(records.is_gzip(p) for p in set(self.paths))

    def read(self, i: int, limits: InputLimits) -> bytes:
        """The encoded image of input ``i`` (a whole file, or a record inside its container), or
        :class:`RefusedInput` / ``OSError`` saying why not."""
        path = self.paths[i]
        if self.records is None:
            if not records.is_url(path):
                return read_input(path, limits)  # checks the pixels too
            data = records.read_url(path, limits)
            check_pixels(data, limits)
            return data
        data = self.records.read(i, path, limits)
        check_pixels(data, limits)
        return data

    def reindexed(self, ids: list[str], labels: np.ndarray, splits: np.ndarray) -> Source:
        """This source indexed by ``ids`` (a cache's listing order) with those ``labels`` and
        ``splits``; an id the source no longer has gets an empty path (never read again)."""
        where = {i: k for k, i in enumerate(self.ids)}
        pos = np.array([where.get(i, -1) for i in ids], dtype=np.int64)
        return replace(
            self,
            paths=[self.paths[k] if k >= 0 else b"" for k in pos.tolist()],
            ids=ids,
            labels=labels,
            splits=splits,
            records=None if self.records is None else self.records.take(pos),
            _listing=None,
        )

    def listing(self) -> dict[str, np.ndarray]:
        """The listing as arrays (see :mod:`featcache.shared.cache._listing`): ids, labels, splits and each file's size
        and modification time (-1 and 0 when it cannot be stat'ed; a record's are its container's), read
        once and kept."""
        if self._listing is None:
            size, mtime = stat_files(self.paths)
            self._listing = {
                "id": np.array(self.ids, dtype=str),
                "label": self.labels,
                "split": self.splits,
                "size": size,
                "mtime_ns": mtime,
            }
        return self._listing

    def content_sha256(self) -> np.ndarray:
        """``(n,)`` str: the sha256 of each input's file (a record's: its container's; ``""`` when it
        cannot be read), each distinct file read once, on :data:`STAT_THREADS` threads. What
        ``checksum=True`` records in the listing, so that an update sees a content change that kept
        the size and modification time. Reads every input in full."""
        unique = list(dict.fromkeys(self.paths))

        def one(path: bytes) -> str:
            if not path or records.is_url(os.fsdecode(path)):
                return ""
            try:
                return sha256_file(os.fsdecode(path))
            except (OSError, FeatcacheError):
                return ""

        with ThreadPoolExecutor(STAT_THREADS) as pool:
            found = dict(zip(unique, pool.map(one, unique), strict=True))
        return np.array([found[p] for p in self.paths], dtype="<U64")

    def adopt_listing(self, published: dict[str, np.ndarray], positions: np.ndarray) -> bool:
        """Take ``published`` (the job's listing, made by the first worker) as this source's listing
        when it lists the same inputs (ids, labels, splits) and the files at ``positions`` (this
        worker's share) still have the recorded size and modification time; those are the only
        files stat'ed. Whether it was adopted (else :meth:`listing` stats every file as usual, and
        the cache's resume check reports what changed)."""
        if not (
            len(published["id"]) == len(self.ids)
            and np.array_equal(published["label"], self.labels)
            and np.array_equal(published["split"], self.splits)
            and published["id"].tolist() == self.ids
        ):
            return False
        size, mtime = stat_files([self.paths[i] for i in positions.tolist()])
        if not (
            np.array_equal(size, published["size"][positions])
            and np.array_equal(mtime, published["mtime_ns"][positions])
        ):
            return False
        self._listing = {k: np.asarray(published[k]) for k in ("id", "label", "split", "size", "mtime_ns")}
        return True

    def listing_sha256(self) -> str:
        """Identity of the listing (ids, labels, splits, file sizes and times, classes): a resume
        must see the same one."""
        h = hashlib.sha256()
        h.update(("\x1f".join(self.classes) + "\n").encode())
        lst = self.listing()
        for row in zip(self.ids, *(lst[k].tolist() for k in ("label", "split", "size", "mtime_ns")), strict=False):
            h.update(("\t".join(map(str, row)) + "\n").encode("utf-8"))
        return h.hexdigest()

    def describe(self) -> dict:
        """The manifest's ``source`` entry."""
        return {
            "kind": self.kind,
            "root": str(self.root),
            "num_inputs": len(self),
            "listing_sha256": self.listing_sha256(),
            "split_source": self.split_source,
        }


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class UrlFolder(str):
    """A folder URL that joins like a ``Path`` (``url / name``) without folding its ``//``; listed
    through ``tf.io.gfile``."""

    def __truediv__(self, name: str) -> UrlFolder:
        return UrlFolder(f"{self.rstrip('/')}/{name}")

    def resolve(self) -> UrlFolder:
        return self


def _entries(path: Path | UrlFolder) -> list[tuple[str, bool]]:
    """``(name, is a folder)`` of what ``path`` holds (following symlinks, as ``os.scandir`` does)."""
    if isinstance(path, UrlFolder):
        g = records.gfile()
        return [(n.rstrip("/"), bool(g.isdir(path / n.rstrip("/")))) for n in g.listdir(path)]
    return [(e.name, e.is_dir()) for e in os.scandir(path) if e.is_dir() or e.is_file()]


def _walk_images(top: Path | UrlFolder) -> list[str]:
    """Image files under ``top`` (recursively, hidden entries skipped) as paths relative to ``top``."""
    found = []
    for dirpath, dirnames, filenames in records.gfile().walk(top) if isinstance(top, UrlFolder) else os.walk(top):
        dirnames[:] = [d for d in dirnames if not _ignored(d.rstrip("/"))]
        if isinstance(top, UrlFolder):
            rel = dirpath[len(top) :].strip("/") or "."
        else:
            rel = os.path.relpath(dirpath, top)
        for name in filenames:
            if not name.startswith(".") and _is_image(name):
                found.append(name if rel == "." else os.path.join(rel, name))
    return found


def _subdirs(path: Path | UrlFolder) -> list[str]:
    return sorted(n for n, is_dir in _entries(path) if is_dir and not _ignored(n))


def _top_images(path: Path | UrlFolder) -> list[str]:
    return sorted(n for n, is_dir in _entries(path) if not is_dir and not n.startswith(".") and _is_image(n))


def _from_entries(
    kind: str, root: Path | UrlFolder, entries: list[tuple[str, str | None, int]], notes: list[str]
) -> Source:
    """``entries`` are ``(relative path, class folder name or None, split code)``, sorted here by id;
    class names are the folder names as :func:`display_id` shows them."""
    entries = sorted(entries, key=lambda e: e[0])
    classes = sorted({display_id(c) for _, c, _ in entries if c is not None})
    number = {c: k for k, c in enumerate(classes)}
    number.update({c: number[display_id(c)] for _, c, _ in entries if c is not None})
    return Source(
        kind=kind,
        root=root,
        paths=[os.fsencode(root / rel) for rel, _, _ in entries],
        ids=[display_id(rel.replace(os.sep, "/")) for rel, _, _ in entries],
        labels=np.array([number[c] if c is not None else UNKNOWN_LABEL for _, c, _ in entries], dtype=np.int32),
        splits=np.array([s for _, _, s in entries], dtype=np.int8),
        classes=classes,
        notes=notes,
    )


def from_folder(root: Path | UrlFolder) -> Source:
    """A folder source; see the module docstring for the layouts."""
    root = root.resolve()
    subdirs = _subdirs(root)
    notes: list[str] = []
    junk = sorted(n for n, is_dir in _entries(root) if is_dir and n in IGNORED_FOLDERS)
    if junk:
        notes.append(f"{root}: ignored folders {', '.join(junk)}")
    entries: list[tuple[str, str | None, int]] = []
    split_like = [d for d in subdirs if d.lower() in SPLIT_FOLDER_ALIASES and _subdirs(root / d)]
    others = [d for d in subdirs if d.lower() not in SPLIT_FOLDER_ALIASES]
    if split_like and others:
        raise BadInputError(
            f"{root}: ambiguous layout: {', '.join(split_like)} look like split folders (they hold class "
            f"folders) but {', '.join(display_id(d) for d in others)} beside them are not train/val/test; "
            "move the other folders out (or hide them with a leading '.') for a split layout, or move the "
            "split folders out for a class layout"
        )
    if subdirs and not others:
        for split_dir in subdirs:
            code = SPLIT_CODES[SPLIT_FOLDER_ALIASES[split_dir.lower()]]
            for cls in _subdirs(root / split_dir):
                entries += [
                    (os.path.join(split_dir, cls, rel), cls, code) for rel in _walk_images(root / split_dir / cls)
                ]
            entries += [(os.path.join(split_dir, name), None, code) for name in _top_images(root / split_dir)]
        kind = "folder-splits"
    elif subdirs:
        for cls in subdirs:
            entries += [(os.path.join(cls, rel), cls, NO_SPLIT) for rel in _walk_images(root / cls)]
        loose = _top_images(root)
        if loose:
            notes.append(f"{root}: {len(loose)} images beside the class folders are ignored (they have no class)")
        kind = "folder"
    else:
        entries = [(name, None, NO_SPLIT) for name in _top_images(root)]
        kind = "unlabelled"
    if not entries:
        raise BadInputError(f"{root}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return _from_entries(kind, root, entries, notes)


# -- a folder source from a published listing (one listing per job: runner.share_listing) -----------

FOLDER_KINDS = ("folder", "folder-splits", "unlabelled")  # the kinds from_folder makes
_SHOWN_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")  # what display_id writes: "\\\\" and "\\xNN"


def shown_name(shown: str) -> str | None:
    """The file name (as ``os.fsdecode`` gives it) that :func:`display_id` shows as ``shown``, or
    None when no name is shown so (a stray backslash, an escape of a byte that needs none, a lone
    surrogate): the inverse of :func:`display_id`."""
    if shown.isascii() and "\\" not in shown:
        return shown
    out, pos = bytearray(), 0
    try:
        for m in _SHOWN_ESCAPE.finditer(shown):
            out += shown[pos : m.start()].encode("utf-8")
            out += b"\\" if m[1] == "\\" else bytes([int(m[1][1:], 16)])
            pos = m.end()
        out += shown[pos:].encode("utf-8")
    except UnicodeEncodeError:
        return None
    raw = os.fsdecode(bytes(out))
    return raw if display_id(raw) == shown else None


class _NotWalked(Exception):
    """Why a listed name is not one a walk of the folder could produce."""


def _listed_folder(kind: str, folder: str) -> tuple[str | None, int, int]:
    """``(class, split code, walk depth)`` of the inputs a walk finds in ``folder`` (relative to the
    root, ``/``-separated, as :func:`shown_name` gives it) for a source of ``kind``; the walk depth
    is how many of its leading folders the walk reached by name (they may be symbolic links: class
    and split folders are followed), the folders below were descended into by ``os.walk``, which
    never follows a link. Raise :class:`_NotWalked` for a folder a walk never lists images in."""
    parts = folder.split("/") if folder else []
    if any(not p or _ignored(p) for p in parts):
        raise _NotWalked("is under an empty, '.', '..', hidden or ignored folder name (or is an absolute path)")
    if kind == "unlabelled":
        if parts:
            raise _NotWalked("is in a sub-folder of a folder without class folders")
        return None, NO_SPLIT, 0
    if not parts:
        raise _NotWalked("is beside the class folders, where images have no class and are not listed")
    split = SPLIT_FOLDER_ALIASES.get(parts[0].lower())
    if kind == "folder":
        if split is not None and len(parts) > 1:
            raise _NotWalked(f"is under {parts[0]!r}, which then holds folders: a split folder, not a class")
        return display_id(parts[0]), NO_SPLIT, 1
    if split is None:
        raise _NotWalked("is not under a train/val/test folder")
    return (display_id(parts[1]) if len(parts) > 1 else None), SPLIT_CODES[split], min(len(parts), 2)


def folder_from_listing(root: Path, listing: Mapping[str, np.ndarray], where: Path, opened: np.ndarray) -> Source:
    """The folder source at ``root`` as ``listing`` (the job's published listing, read from the file
    ``where``) names it, without walking the folder: ids, labels and splits are the listing's, the
    kind and the classes follow from the ids by :func:`from_folder`'s rules, and each path is
    ``root`` joined to the name the id shows (:func:`shown_name`), as a walk of ``root`` makes it.

    The listing is data read from disk, so it must be one a walk of a folder could have made: every
    id a non-hidden image file name under non-hidden, non-ignored folders (no ``..``, no absolute
    path), in the walk's order, with the label and split its folders give, in the layout (class or
    split folders) the folders at the top of ``root`` give (one directory read); and for the inputs at
    ``opened`` (``(m,)`` positions: the only files this worker stats and reads), no symbolic link
    among the folders the walk descends into (``os.walk`` follows none). Anything else is a one-line
    :class:`BadInputError` naming ``where``, raised before any file of the source is touched but
    those folders. Files added to the folder since the listing was made are not in this source."""
    ids = [str(i) for i in listing["id"].tolist()]
    labels = np.asarray(listing["label"], dtype=np.int32)
    splits = np.asarray(listing["split"], dtype=np.int8)

    def refuse(k: int, why: str) -> BadInputError:
        shown = ids[k] if len(ids[k]) <= 200 else ids[k][:200] + "..."
        return BadInputError(
            f"{where}: input {k} {shown!r} {why}: not a listing a walk of {root} could make; "
            "refusing to read the files it names"
        )

    if not ids:
        raise BadInputError(f"{where}: lists no inputs: not a listing a walk of {root} could make")
    kind = "folder-splits" if np.any(splits != NO_SPLIT) else "folder" if any("/" in i for i in ids) else "unlabelled"
    names, of = _walkable_names(ids, kind, refuse)
    _check_layout(root, kind, refuse)
    classes = sorted({c for c, _, _ in of if c is not None})
    number = {c: n for n, c in enumerate(classes)}
    want_labels = np.array([UNKNOWN_LABEL if c is None else number[c] for c, _, _ in of], dtype=np.int32)
    want_splits = np.array([s for _, s, _ in of], dtype=np.int8)
    for what, got, want in (("label", labels, want_labels), ("split", splits, want_splits)):
        if len(got) != len(ids) or not np.array_equal(got, want):
            k = int(np.flatnonzero(got != want)[0]) if len(got) == len(ids) else 0
            raise refuse(k, f"has {what} {got[k] if len(got) > k else None}, its folders give {want[k]}")
    _check_no_links(root, names, of, opened, refuse)
    prefix = os.fsencode(os.path.join(root, ""))
    return Source(
        kind=kind,
        root=root,
        paths=[prefix + os.fsencode(n) for n in names],
        ids=ids,
        labels=labels,
        splits=splits,
        classes=classes,
    )


Refuse = Callable[[int, str], BadInputError]  # (input k, why) -> the one-line error naming the listing


def _walkable_names(ids: list[str], kind: str, refuse: Refuse) -> tuple[list[str], list[tuple[str | None, int, int]]]:
    """Each listed id's file name (relative to the root, ``/``-separated) and its folder's ``(class, split
    code, walk depth)`` (:func:`_listed_folder`, for a source of ``kind``); refused unless every name is a
    non-hidden image file under folders a walk enters, in the walk's sorted order, each once."""
    folders: dict[str, tuple[str | None, int, int]] = {}
    names: list[str] = []
    of: list[tuple[str | None, int, int]] = []
    for k, shown in enumerate(ids):
        raw = shown_name(shown)
        if raw is None or "\x00" in raw:
            raise refuse(k, "is not a file name as featcache shows one")
        folder, _, name = raw.rpartition("/")
        if name.startswith(".") or not _is_image(name):
            raise refuse(k, f"is not an image file a walk lists (hidden, or not {'/'.join(sorted(IMAGE_EXTENSIONS))})")
        info = folders.get(folder)
        if info is None:
            try:
                info = folders[folder] = _listed_folder(kind, folder)
            except _NotWalked as exc:
                raise refuse(k, str(exc)) from None
        names.append(raw)
        of.append(info)
    for k in range(1, len(names)):
        if names[k - 1] >= names[k]:
            raise refuse(k, "is out of the walk's sorted order (or listed twice)")
    return names, of


def _check_layout(root: Path, kind: str, refuse: Refuse) -> None:
    """Refuse a listing of ``kind`` when the folders at the top of ``root`` make a walk read another layout."""
    # the walk's layout is decided by root's folders alone: one directory read (~0.5 s for the 1M files
    # of an unlabelled folder, whose root holds them all; a few entries for class or split folders)
    top = _subdirs(root)
    walked = (
        "unlabelled"
        if not top
        else "folder"
        if any(d.lower() not in SPLIT_FOLDER_ALIASES for d in top)
        else "folder-splits"
    )
    if walked != kind:
        layout = {"folder": "class folders", "folder-splits": "train/val/test folders", "unlabelled": "no folder"}
        raise refuse(0, f"is listed as in {layout[kind]}, but the folders of {root} make a walk read {layout[walked]}")


def _check_no_links(
    root: Path, names: list[str], of: list[tuple[str | None, int, int]], opened: np.ndarray, refuse: Refuse
) -> None:
    """Refuse when an input at the positions ``opened`` is under a symbolic link among the folders the walk
    descends into by ``os.walk`` (below its walk depth), which follows none; each folder is checked once."""
    links: dict[str, bool] = {}
    for k in np.asarray(opened, dtype=np.int64).tolist():
        folder = names[k].rpartition("/")[0]
        parts = folder.split("/") if folder else []
        for depth in range(of[k][2] + 1, len(parts) + 1):
            below = "/".join(parts[:depth])
            if below not in links:
                links[below] = os.path.islink(os.path.join(root, below))
            if links[below]:
                raise refuse(k, f"is under {below!r}, a symbolic link the walk does not follow")


def _parse_split(value: str, where: str) -> int:
    if not value:
        return NO_SPLIT
    try:
        return SPLIT_CODES[SPLIT_FOLDER_ALIASES[value.strip().lower()]]
    except KeyError:
        raise BadInputError(f"{where}: unknown split {value!r} (use train, val or test)") from None


def _join(root: Path | str, written: str) -> str:
    """Where a listed path is: a URL as written; a path relative to ``root`` (a folder, or a URL's
    folder) joined to it; ``~`` expanded."""
    if records.is_url(written):
        return written
    if records.is_url(str(root)):
        return f"{str(root).rstrip('/')}/{written}"
    return os.path.join(root, os.path.expanduser(written))


def _same_file(root: Path | str, written: str) -> str:
    """The key under which two spellings of one file meet (``img/a.jpg``, ``./img/a.jpg``,
    ``x/../img/a.jpg``, an absolute path, a symlink): the path resolved like the file system does
    (a URL: as written). Nothing is opened (a FIFO or device in the listing is refused later, by the
    reader)."""
    where = _join(root, written)
    return where if records.is_url(where) else os.path.realpath(where)


def _is_file(root: Path | str, written: str) -> bool:
    return bool(written) and os.path.lexists(os.path.join(root, os.path.expanduser(written)))


def _csv_columns(
    rows: list[tuple[int, list[str]]], root: Path | str, where: Path | str
) -> tuple[dict[str, int | None], bool]:
    """Which column holds the paths, labels and splits, and whether the first row is a header.

    The first row is a header when (a) it names a known column (:data:`CSV_COLUMNS`), or (b) its
    first cell has no image extension while the next row's has one (or names a file), and all its
    cells look like names; and in either case its path cell has no image extension and is not an
    existing file. A header's known names place
    their columns (in any order; the path column is the first column no name claims when no name
    says it); otherwise the columns are ``path,label,split`` in order.
    """
    positional: dict[str, int | None] = {"path": 0, "label": 1, "split": 2}
    if not rows:
        return positional, False
    first = [c.lower() for c in rows[0][1]]
    found = {col: next((k for k, c in enumerate(first) if c in names), None) for col, names in CSV_COLUMNS.items()}
    if any(k is not None for k in found.values()):
        if found["path"] is None:
            found["path"] = next((k for k in range(len(first)) if k not in found.values()), None)
            if found["path"] is None:
                raise BadInputError(f"{where}:{rows[0][0]}: the header names no path column ({', '.join(first)})")
        cell = rows[0][1][found["path"]] if found["path"] < len(rows[0][1]) else ""
        if not _is_image(cell) and not _is_file(root, cell):
            return found, True
        return positional, False
    second = rows[1][1][0] if len(rows) > 1 else ""
    if (
        not _is_image(rows[0][1][0])
        and (_is_image(second) or _is_file(root, second))
        and all(_NAME_LIKE.fullmatch(c) for c in rows[0][1] if c)
        and not _is_file(root, rows[0][1][0])
    ):
        return positional, True
    return positional, False


def _class_numbers(items: list[tuple[int, str, str, int]], where: Path | str) -> tuple[list[str], list[int]]:
    """Class names and per-row labels for ``items`` ``(line, path, label, split)``.

    All-integer labels (ASCII digits) are class numbers: classes ``"0"..str(max)``, refused past
    :data:`MAX_INTEGER_CLASSES`; otherwise each distinct label is a class name (sorted). An empty
    label is unknown (-1)."""
    named = [(n, lab) for n, _, lab, _ in items if lab]
    if named and all(INTEGER_LABEL.fullmatch(lab) for _, lab in named):
        line, top = max(named, key=lambda e: (len(e[1].lstrip("0")), e[1].lstrip("0")))
        digits = top.lstrip("0") or "0"
        if len(digits) > len(str(MAX_INTEGER_CLASSES)) or int(digits) >= MAX_INTEGER_CLASSES:
            shown = digits if len(digits) <= 20 else digits[:20] + f"... ({len(digits)} digits)"
            raise BadInputError(
                f"{where}:{line}: integer label {shown} would make more than {MAX_INTEGER_CLASSES} classes "
                f"(integer labels are class numbers 0..max); write such labels as names (e.g. with a letter in front)"
            )
        return [str(k) for k in range(int(digits) + 1)], [int(lab) if lab else UNKNOWN_LABEL for _, _, lab, _ in items]
    classes = sorted({lab for _, lab in named})
    number = {c: k for k, c in enumerate(classes)}
    return classes, [number[lab] if lab else UNKNOWN_LABEL for _, _, lab, _ in items]


def _read_local_text(path: str | Path, encoding: str) -> str:
    """A local CSV or list file, whole: a regular file (a FIFO would block the open or the read for
    ever, a device never end; :class:`RefusedInput`) of at most :data:`MAX_LIST_BYTES`."""
    with records.open_container(os.fspath(path)) as fh:
        data = fh.read(MAX_LIST_BYTES + 1)
    if len(data) > MAX_LIST_BYTES:
        raise RefusedInput(f"file too large: over {MAX_LIST_BYTES} bytes")
    return data.decode(encoding)


def from_csv(path: Path | str) -> Source:
    """A CSV source ``path[,label[,split]]`` (see :func:`_csv_columns` for the header); a row naming
    the same file as an earlier one (however spelled) is dropped with a note when it agrees, refused
    when its label or split differs."""
    url = records.is_url(str(path))
    path = str(path) if url else Path(path).resolve()
    root: Path | str = str(path).rsplit("/", 1)[0] if url else Path(path).parent
    try:
        if url:
            text = records.read_url(str(path), InputLimits(max_input_bytes=MAX_LIST_BYTES)).decode("utf-8-sig")
        else:
            text = _read_local_text(path, "utf-8-sig")
        rows = [(n, [c.strip() for c in r]) for n, r in enumerate(csv.reader(io.StringIO(text, newline="")), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error, RefusedInput) as exc:
        raise BadInputError(f"{path}: cannot read CSV ({exc})") from None
    rows = [(n, r) for n, r in rows if r and any(r)]
    cols, header = _csv_columns(rows, root, path)
    if header:
        rows = rows[1:]
    if not rows:
        raise BadInputError(f"{path}: the CSV lists no images")

    def cell(r: list[str], key: str) -> str:
        k = cols[key]
        return r[k] if k is not None and k < len(r) else ""

    seen: dict[str, tuple[int, str, str, str]] = {}
    items: list[tuple[int, str, str, int]] = []
    dropped = 0
    for n, r in rows:
        p, lab, sp = cell(r, "path"), cell(r, "label"), cell(r, "split")
        if not p:
            raise BadInputError(f"{path}:{n}: empty path")
        key = _same_file(root, p)
        if key in seen:
            first, p0, lab0, sp0 = seen[key]
            if (lab0, sp0) != (lab, sp):
                also = "" if p0 == p else f", as {p0!r}"
                raise BadInputError(
                    f"{path}:{n}: {p!r} is listed again (first at line {first}{also}) with another label or split"
                )
            dropped += 1
            continue
        seen[key] = (n, p, lab, sp)
        items.append((n, p, lab, _parse_split(sp, f"{path}:{n}")))
    notes = [f"{path}: {dropped} duplicate rows ignored"] if dropped else []
    classes, labels = _class_numbers(items, path)
    return Source(
        kind="csv",
        root=root,
        paths=[os.fsencode(_join(root, p)) for _, p, _, _ in items],
        ids=[p for _, p, _, _ in items],
        labels=np.array(labels, dtype=np.int32),
        splits=np.array([s for *_, s in items], dtype=np.int8),
        classes=classes,
        notes=notes,
    )


def from_list(path: Path) -> Source:
    """A text file with one image path per line (``#`` comments and blank lines skipped): unlabelled.
    A line naming the same file as an earlier one (however spelled) is dropped."""
    path = path.resolve()
    try:
        lines = _read_local_text(path, "utf-8").splitlines()
    except (OSError, UnicodeDecodeError, RefusedInput) as exc:
        raise BadInputError(f"{path}: cannot read list ({exc})") from None
    by_file: dict[str, str] = {}
    for line in lines:
        if (s := line.strip()) and not s.startswith("#"):
            by_file.setdefault(_same_file(path.parent, s), s)
    ids = list(by_file.values())
    if not ids:
        raise BadInputError(f"{path}: the list names no images")
    return Source(
        kind="list",
        root=path.parent,
        paths=[os.fsencode(_join(path.parent, p)) for p in ids],
        ids=ids,
        labels=np.full(len(ids), UNKNOWN_LABEL, dtype=np.int32),
        splits=np.full(len(ids), NO_SPLIT, dtype=np.int8),
        classes=[],
    )


# -- record-based sources: TFRecord files and tar shards -------------------------------------------

SOURCE_FORMATS = ("auto", "folder", "csv", "list", *records.RECORD_FORMATS)
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# A TFRecord record larger than this is not read at listing time (it is listed, and refused when read).
MAX_LISTED_RECORD_BYTES = 256 * 1024 * 1024
# A record's id or class name longer than this is ignored (ids are kept in memory for every record).
MAX_TEXT_BYTES = 4096
# Tar members holding a label (WebDataset): the class as text, or JSON (a number, a name, or an
# object with one of JSON_LABEL_KEYS).
TAR_LABEL_EXTENSIONS = ("cls", "json")
JSON_LABEL_KEYS = ("label", "cls", "class")
_SPLIT_PREFIX = re.compile(r"(train|validation|valid|val|test)(?=[-_.]|$)", re.IGNORECASE)
EXAMPLES = 3


@dataclass(frozen=True)
class TFRecordKeys:
    """Which ``tf.train.Example`` features hold what: the encoded ``image``, the class number
    ``label`` (int64), the class name ``text`` (bytes) and the record's ``id`` (the first of these
    keys a record has). Defaults: the TensorFlow Object Detection / Slim names."""

    image: str = records.DEFAULT_IMAGE_KEY
    label: str = "image/class/label"
    text: str = "image/class/text"
    id: tuple[str, ...] = ("image/filename", "image/source_id")

    @classmethod
    def parse(cls, spec: str | Mapping[str, str] | TFRecordKeys | None) -> TFRecordKeys:
        """``"image=jpeg,label=y"`` (or a mapping) over the defaults; one-line error naming ``tfrecord_keys``."""
        if spec is None or isinstance(spec, TFRecordKeys):
            return spec or cls()
        pairs = spec.items() if isinstance(spec, Mapping) else [p.partition("=")[::2] for p in spec.split(",") if p]
        out: dict[str, object] = {}
        for name, key in pairs:
            name, key = name.strip(), key.strip()
            if name not in ("image", "label", "text", "id") or not key:
                raise FeatcacheError(
                    f"tfrecord_keys={spec!r}: expected 'name=feature' pairs with name image, label, text or id"
                )
            out[name] = (key,) if name == "id" else key
        return cls(**out)  # type: ignore[arg-type]

    def wanted(self) -> set[str]:
        return {self.label, self.text, *self.id}


def container_format(name: str) -> str | None:
    """``"tfrecord"`` or ``"tar"`` by the file name (``.tfrecord``/``.tfrecords``/``.tfrec``, each
    optionally ``.gz``; ``.tar``, ``.tar.gz``, ``.tgz``), else None."""
    low = name.lower()
    if low.endswith(TAR_SUFFIXES):
        return "tar"
    for gz in records.GZIP_SUFFIXES:
        if low.endswith(gz):
            low = low[: -len(gz)]
            break
    return "tfrecord" if low.endswith(TFRECORD_SUFFIXES) else None


def _split_of_file(path: str) -> int:
    """The split a container's file name gives (``train-00001-of-00010.tfrecord``), or NO_SPLIT."""
    m = _SPLIT_PREFIX.match(path.replace("\\", "/").rsplit("/", 1)[-1])
    return SPLIT_CODES[SPLIT_FOLDER_ALIASES[m.group(1).lower()]] if m else NO_SPLIT


def _container_name(path: str, root: str) -> str:
    """A container's name in ids: its path relative to the source's root (``/``-separated)."""
    if records.is_url(path):
        return path[len(root) :].lstrip("/") if path.startswith(root) else path
    return display_id(os.path.relpath(path, root).replace(os.sep, "/"))


def _open_container(path: str):
    try:
        return records.open_stream(path)
    except (OSError, RefusedInput) as exc:
        raise BadInputError(f"{path}: cannot read ({exc})") from None


def _numbered(
    kind: str, root: str, rows: list[tuple[str, int, int, str, str | None, int]], notes: list[str], **extra
) -> Source:
    """A record-based Source from ``rows`` ``(container, offset, length, fallback id, own id or None,
    split)`` plus ``extra`` (labels as text: ``label_text``, list; problems; records' format...)."""
    own = [r[4] for r in rows]
    ids = [o if o is not None else r[3] for o, r in zip(own, rows, strict=True)]
    if len(set(ids)) < len(ids):
        dup = Counter(ids).most_common(1)[0][0]
        notes.append(f"{root}: record ids are not unique (e.g. {dup!r}): ids are 'FILE#RECORD' instead")
        ids = [r[3] for r in rows]
    label_text: list[str] = extra.pop("label_text")
    items = [(k, ids[k], lab, rows[k][5]) for k, lab in enumerate(label_text)]
    classes, labels = _class_numbers(items, Path(root))
    names: dict[int, set[str]] = extra.pop("names", {})
    if names and all(len(v) == 1 for v in names.values()):  # class numbers with their names
        named = [next(iter(names[k])) if k in names else c for k, c in enumerate(classes)]
        if len(set(named)) == len(named):
            classes = named
    unlabelled = [ids[k] for k, lab in enumerate(label_text) if not lab]
    if unlabelled and len(unlabelled) < len(ids):
        notes.append(
            f"{root}: {len(unlabelled)} records have no label (unknown, -1), e.g. {', '.join(unlabelled[:EXAMPLES])}"
        )
    return Source(
        kind=kind,
        root=root if records.is_url(root) else Path(root),
        paths=[os.fsencode(r[0]) for r in rows],
        ids=ids,
        labels=np.array(labels, dtype=np.int32),
        splits=np.array([r[5] for r in rows], dtype=np.int8),
        classes=classes,
        notes=notes,
        records=records.Records(
            kind,
            np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.int64),
            extra.pop("problems"),
            **extra,
        ),
    )


def from_tfrecords(files: list[str], root: str, keys: TFRecordKeys | None = None) -> Source:
    """TFRecord files of ``tf.train.Example`` records, each record an input, in file then record order.

    Id: the record's own id (the first of ``keys.id`` it has, shown as :func:`display_id` does) when
    the ids so made are distinct, else ``FILE#RECORD`` (the file relative to ``root``, the record's
    number from 0) for every record. Label: ``keys.label`` (class numbers, named by ``keys.text``
    when each number has one name) or, without numbers, ``keys.text`` (class names, sorted). Split:
    the file name's (``train-*``, ``val*``, ``test*``), else the hash of the id. A record that is
    cut or not an Example is listed and fails when read, with the reason."""
    keys = keys or TFRecordKeys()
    wanted = keys.wanted()
    rows: list[tuple[str, int, int, str, str | None, int]] = []
    label_text: list[str] = []
    names: dict[int, set[str]] = {}
    problems: dict[int, str] = {}
    for f in files:
        name, split = _container_name(f, root), _split_of_file(f)
        with _open_container(f) as stream:
            for k, rec in enumerate(records.scan_tfrecord(stream, MAX_LISTED_RECORD_BYTES)):
                feats: dict = {}
                if rec.problem is not None:
                    problems[len(rows)] = rec.problem
                else:
                    assert rec.data is not None, "a record without a problem has its data"
                    try:
                        feats = records.parse_example(rec.data, wanted)
                    except ValueError as exc:
                        problems[len(rows)] = f"not a tf.train.Example ({exc})"
                own = _first_text(feats, keys.id)
                rows.append((f, rec.offset, rec.length, f"{name}#{k}", own, split))
                number = feats.get(keys.label)
                text = _first_text(feats, (keys.text,)) or ""
                if number and isinstance(number[0], int) and number[0] >= 0:
                    label_text.append(str(number[0]))
                    if text:
                        names.setdefault(number[0], set()).add(text)
                else:
                    label_text.append("" if number else text)
    if not rows:
        raise BadInputError(f"{root}: the TFRecord files hold no records ({len(files)} files)")
    if any(lab and not INTEGER_LABEL.fullmatch(lab) for lab in label_text) and names:
        names = {}  # some records have only a name: the names are the classes
    return _numbered(
        "tfrecord", root, rows, [], label_text=label_text, names=names, problems=problems, image_key=keys.image
    )


def _first_text(feats: dict, keys: tuple[str, ...]) -> str | None:
    """The first bytes value of the first of ``keys`` present in ``feats``, as an id-safe string
    (values over :data:`MAX_TEXT_BYTES` are ignored: a hostile record's id or class could be huge)."""
    for key in keys:
        value = feats.get(key)
        if value and isinstance(value[0], bytes) and len(value[0]) <= MAX_TEXT_BYTES:
            return display_id(value[0].decode("utf-8", "surrogateescape"))
    return None


def _tar_label(content: bytes | None, ext: str) -> str:
    """A tar label member's class (number or name, as text; "" when there is none or it is unreadable)."""
    if content is None:
        return ""
    try:
        text = content.decode("utf-8").strip()
        if ext == "json":
            value = json.loads(text)
            if isinstance(value, dict):
                value = next((value[k] for k in JSON_LABEL_KEYS if k in value), None)
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                return ""
            text = str(value).strip()
    except (UnicodeDecodeError, ValueError):
        return ""
    return text if "\n" not in text else ""


def _image_extension(ext: str) -> bool:
    return f".{ext.rsplit('.', 1)[-1]}" in IMAGE_EXTENSIONS


def from_tars(files: list[str], root: str) -> Source:
    """Tar shards in the WebDataset layout: members sharing a key (the path up to the first dot of
    the base name) are one sample; its image is the ``.jpg``/``.jpeg``/``.png``/``.bmp``/``.gif``
    member, its label the ``.cls`` member (a class number or name) or the ``.json`` one. Each sample
    is an input, in archive order; id: the image member's name (``FILE#MEMBER`` for all when two
    shards share names); split: the shard's file name's, as for TFRecord files. An image member
    whose name an earlier member of the same shard has is an input of its own (id ``MEMBER#2``...)
    refused with that reason, never merged into the first. Nothing is extracted: the image is read
    later as a slice of the archive."""
    rows: list[tuple[str, int, int, str, str | None, int]] = []
    label_text: list[str] = []
    notes: list[str] = []
    no_image: list[str] = []
    problems: dict[int, str] = {}
    for f in files:
        name, split = _container_name(f, root), _split_of_file(f)
        with _open_container(f) as stream:
            members, problem = records.scan_tar(stream, TAR_LABEL_EXTENSIONS)
        if problem:
            notes.append(f"{f}: {problem}")
        samples: dict[str, dict[str, records.TarMember]] = {}
        again: dict[str, list[records.TarMember]] = {}  # image members named like an earlier one
        for m in members:
            key, ext = records.member_key(m.name), records.member_extension(m.name)
            group = samples.setdefault(key, {})
            if ext not in group:
                group[ext] = m
            elif _image_extension(ext) and m.name == group[ext].name:
                again.setdefault(key, []).append(m)
        for key, group in samples.items():
            image = next((m for ext, m in group.items() if _image_extension(ext)), None)
            if image is None:
                no_image.append(f"{name}#{key}")
                continue
            own = display_id(image.name)
            rows.append((f, image.offset, image.size, f"{name}#{own}", own, split))
            label = next((_tar_label(group[e].content, e) for e in TAR_LABEL_EXTENSIONS if e in group), "")
            label_text.append(label)
            # the first member of a name is the sample; each later one is an input refused with its reason
            for k, m in enumerate(again.get(key, ()), start=2):
                problems[len(rows)] = (
                    f"tar member {display_id(m.name)} appears again in {name} (copy {k}): the first is used"
                )
                rows.append((f, m.offset, m.size, f"{name}#{own}#{k}", f"{own}#{k}", split))
                label_text.append(label)
    if no_image:
        notes.append(f"{root}: {len(no_image)} samples without an image ignored, e.g. {', '.join(no_image[:EXAMPLES])}")
    if not rows:
        raise BadInputError(f"{root}: the tar files hold no images ({len(files)} files)")
    return _numbered("tar", root, rows, notes, label_text=label_text, problems=problems)


# -- opening a source -----------------------------------------------------------------------------


def _exists(path: str) -> bool:
    return records.url_exists(path) if records.is_url(path) else os.path.exists(path)


def _isdir(path: str) -> bool:
    return bool(records.gfile().isdir(path)) if records.is_url(path) else os.path.isdir(path)


def _glob(pattern: str) -> list[str]:
    return sorted(records.gfile().glob(pattern) if records.is_url(pattern) else glob.glob(pattern))


def _folder_files(folder: str) -> list[str]:
    """The non-hidden files directly in ``folder``, sorted."""
    if records.is_url(folder):
        g = records.gfile()
        names = [n for n in g.listdir(folder) if not g.isdir(f"{folder.rstrip('/')}/{n}")]
        return sorted(f"{folder.rstrip('/')}/{n}" for n in names if not n.startswith("."))
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def _containers(files: list[str], root: str, fmt: str, keys: TFRecordKeys | None, where: str) -> Source:
    """Containers of one format (``fmt``: a record format, or "auto" to tell by the names)."""
    if not records.is_url(root):
        root = os.path.abspath(root)
    files = [f if records.is_url(f) else os.path.abspath(f) for f in files]
    if fmt == "auto":
        kinds = {container_format(f) for f in files}
        if len(kinds) != 1 or None in kinds:
            shown = ", ".join(sorted(str(k) for k in kinds))
            raise BadInputError(f"{where}: the files are not all TFRecord or all tar ({shown}); name source_format")
        fmt = kinds.pop()  # type: ignore[assignment]
    if fmt == "tfrecord":
        return from_tfrecords(files, root, keys)
    return from_tars(files, root)


def _list_lines(path: str) -> list[str]:
    try:
        text = _read_local_text(path, "utf-8")
    except (OSError, UnicodeDecodeError, RefusedInput) as exc:
        raise BadInputError(f"{path}: cannot read list ({exc})") from None
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def check_cache_outside(source: str | os.PathLike[str], cache: str | os.PathLike[str]) -> None:
    """Refuse (one line) a cache directory that is, or is inside, the source folder ``source``:
    the cache's own files would sit among the inputs, and an update or a part worker's walk would
    list what the extractor wrote. Links are resolved; a URL or a file source is not a folder."""
    if records.is_url(str(source)) or not os.path.isdir(source):
        return
    top, inside = os.path.realpath(source), os.path.realpath(cache)
    if inside == top or inside.startswith(top.rstrip(os.sep) + os.sep):
        raise FeatcacheError(
            f"{cache}: the cache directory is inside the source folder {source}; extract into a folder outside it"
        )


def open_source(
    path: str | os.PathLike[str],
    source_format: str | None = None,
    tfrecord_keys: str | Mapping[str, str] | TFRecordKeys | None = None,
) -> Source:
    """The source at ``path``: a folder, a ``.csv``, a ``.txt``/``.lst`` list (of images, or of
    container files), TFRecord files or tar shards (one file, a folder holding only them, a glob
    pattern such as ``data/*.tfrecord``, or a list file naming them). ``source_format`` (one of
    :data:`SOURCE_FORMATS`; default ``"auto"``: by the names) says which when names do not;
    ``tfrecord_keys`` maps Example features (:meth:`TFRecordKeys.parse`). A path with a URL scheme
    (``gs://``...) is read through ``tf.io.gfile``."""
    fmt = source_format or "auto"
    if fmt not in SOURCE_FORMATS:
        raise FeatcacheError(f"source_format={fmt!r}: choose one of {', '.join(SOURCE_FORMATS)}")
    keys = TFRecordKeys.parse(tfrecord_keys)
    text = os.fspath(path)
    if not records.is_url(text):
        text = os.path.expanduser(text)
    if glob.has_magic(text) and not _exists(text):
        files = _glob(text)
        if not files:
            raise BadInputError(f"{text}: no file matches")
        root = os.path.dirname(text[: min(text.index(c) for c in "*?[" if c in text)])
        return _containers(files, root, "auto" if fmt not in records.RECORD_FORMATS else fmt, keys, text)
    if _isdir(text):
        files = _folder_files(text)
        found = [f for f in files if container_format(f) == fmt or (fmt == "auto" and container_format(f))]
        if fmt in records.RECORD_FORMATS or (fmt == "auto" and found and not _has_images(text)):
            if not found and fmt in records.RECORD_FORMATS:
                found = files  # named explicitly: every file in the folder
            if not found:
                raise BadInputError(f"{text}: no {fmt} files in the folder")
            return _containers(found, text.rstrip("/"), fmt, keys, text)
        return from_folder(UrlFolder(text.rstrip("/")) if records.is_url(text) else Path(text))
    if not _exists(text):
        raise BadInputError(f"{text}: no such file or folder")
    suffix = os.path.splitext(text)[1].lower()
    if fmt in records.RECORD_FORMATS or (fmt == "auto" and container_format(text)):
        return _containers([text], os.path.dirname(text), fmt, keys, text)
    if fmt == "csv" or (fmt == "auto" and suffix == ".csv"):
        return from_csv(text if records.is_url(text) else Path(text))
    if records.is_url(text):
        raise BadInputError(f"{text}: only folders, CSV, TFRecord or tar files are read from URLs")
    if fmt == "list" or (fmt == "auto" and suffix in LIST_SUFFIXES):
        lines = _list_lines(text)
        if lines and all(container_format(s) for s in lines):
            base = os.path.dirname(os.path.abspath(text))
            files = [s if records.is_url(s) else os.path.join(base, os.path.expanduser(s)) for s in lines]
            return _containers(files, base, "auto", keys, text)
        return from_list(Path(text))
    raise BadInputError(f"{text}: not a folder, .csv, .txt/.lst list, TFRecord or tar file")


def local_image_folder(path: str | os.PathLike[str], source_format: str | None = None) -> Path | None:
    """The resolved root of the source :func:`open_source` opens at ``path`` when that is a local
    folder of images (kinds :data:`FOLDER_KINDS`), else None (a URL, a file, a folder of TFRecord or
    tar files, no such folder, a bad ``source_format``: :func:`open_source` says which). The same
    decision as :func:`open_source`'s, made without walking the folder: its top level is read up to
    the first image or sub-folder."""
    fmt = source_format or "auto"
    text = os.path.expanduser(os.fspath(path))
    if fmt not in SOURCE_FORMATS or fmt in records.RECORD_FORMATS or records.is_url(text) or not os.path.isdir(text):
        return None
    try:
        if fmt == "auto" and not _has_images(text):
            return None  # TFRecord or tar files, or nothing to read: open_source says which
        return Path(text).resolve()
    except OSError:
        return None


def _has_images(folder: str) -> bool:
    """Whether a folder holds images or sub-folders (then it is an image folder source); a local
    folder is read up to the first one (a flat folder of a million images: one entry, not a walk)."""
    if records.is_url(folder):
        return bool(_subdirs(UrlFolder(folder)) or _top_images(UrlFolder(folder)))
    with os.scandir(folder) as entries:
        return any(
            (e.is_dir() and not _ignored(e.name)) or (e.is_file() and not e.name.startswith(".") and _is_image(e.name))
            for e in entries
        )
