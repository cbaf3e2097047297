"""Image sources: turn what the user points at into a deterministic, labelled input listing.

Three kinds:

* a folder of class sub-folders (Keras ``image_dataset_from_directory`` convention: class names are
  the sorted folder names, images found recursively inside each); when the top level is ``train/``,
  ``val/`` (or ``valid/``, ``validation/``) and ``test/``, the classes are the folders under each and
  every image keeps its folder's split; a top level mixing split folders with other folders is refused;
* a folder of images with no sub-folders (unlabelled);
* a CSV ``path[,label[,split]]`` (header optional, columns found by name; labels are class names or
  class numbers; empty label means unknown; paths relative to the CSV's folder), or a
  ``.txt``/``.lst`` list of paths.

Hidden entries and known junk folders (:data:`IGNORED_FOLDERS`) are skipped everywhere. Ids and
class names are valid UTF-8 whatever the file names' bytes, and distinct names give distinct ids
(:func:`display_id`). The listing is sorted by id for folders and kept in file order for CSVs and
lists; either way the same source gives the same listing, so shard k always covers the same inputs.
docs/inputs.md is the user's description of these rules.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..shared.cache.schema import NO_SPLIT, SPLIT_CODES, SPLIT_FOLDER_ALIASES, UNKNOWN_LABEL
from ..shared.errors import BadInputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})
LIST_SUFFIXES = frozenset({".txt", ".lst"})
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
    """``(size, mtime_ns)``, ``(n,)`` int64 each, of ``paths`` (-1 and 0 for a file that cannot be
    stat'ed), on :data:`STAT_THREADS` threads."""

    def one(chunk: list[bytes]) -> list[tuple[int, int]]:
        out = []
        for p in chunk:
            try:
                st = os.stat(p)
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((-1, 0))
        return out

    step = max(1, -(-len(paths) // (STAT_THREADS * 8)))
    chunks = [paths[k : k + step] for k in range(0, len(paths), step)]
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        rows = [r for part in pool.map(one, chunks) for r in part]
    arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_FOLDERS


@dataclass
class Source:
    """A listing of ``n`` inputs.

    ``paths`` are file-system paths as bytes (any name the OS allows); ``ids`` the UTF-8 ids stored in
    the cache; ``labels`` ``(n,)`` int32 (-1 unknown); ``splits`` ``(n,)`` int8 (-1 when the source
    gives none); ``classes`` the class names in label order; ``notes`` things the user should hear.
    """

    kind: str
    root: Path
    paths: list[bytes]
    ids: list[str]
    labels: np.ndarray
    splits: np.ndarray
    classes: list[str]
    notes: list[str] = field(default_factory=list)
    _listing: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def split_source(self) -> str | None:
        """Where per-row splits come from, or None when the hash split applies to every row."""
        if not np.any(self.splits != NO_SPLIT):
            return None
        return "csv" if self.kind == "csv" else "folders"

    def listing(self) -> dict[str, np.ndarray]:
        """The listing as arrays (see :mod:`featcache.shared.cache.listing`): ids, labels, splits and each file's size
        and modification time (-1 and 0 when it cannot be stat'ed), read once and kept."""
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


def _walk_images(top: Path) -> list[str]:
    """Image files under ``top`` (recursively, hidden entries skipped) as paths relative to ``top``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not _ignored(d)]
        rel = os.path.relpath(dirpath, top)
        for name in filenames:
            if not name.startswith(".") and _is_image(name):
                found.append(name if rel == "." else os.path.join(rel, name))
    return found


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not _ignored(e.name))


def _top_images(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_file() and not e.name.startswith(".") and _is_image(e.name))


def _from_entries(kind: str, root: Path, entries: list[tuple[str, str | None, int]], notes: list[str]) -> Source:
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


def from_folder(root: Path) -> Source:
    """A folder source; see the module docstring for the layouts."""
    root = root.resolve()
    subdirs = _subdirs(root)
    notes: list[str] = []
    junk = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name in IGNORED_FOLDERS)
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


def _parse_split(value: str, where: str) -> int:
    if not value:
        return NO_SPLIT
    try:
        return SPLIT_CODES[SPLIT_FOLDER_ALIASES[value.strip().lower()]]
    except KeyError:
        raise BadInputError(f"{where}: unknown split {value!r} (use train, val or test)") from None


def _same_file(root: Path, written: str) -> str:
    """The key under which two spellings of one file meet (``img/a.jpg``, ``./img/a.jpg``,
    ``x/../img/a.jpg``, an absolute path, a symlink): the path resolved like the file system does.
    Nothing is opened (a FIFO or device in the listing is refused later, by the reader)."""
    return os.path.realpath(os.path.join(root, os.path.expanduser(written)))


def _is_file(root: Path, written: str) -> bool:
    return bool(written) and os.path.lexists(os.path.join(root, os.path.expanduser(written)))


def _csv_columns(rows: list[tuple[int, list[str]]], root: Path, where: Path) -> tuple[dict[str, int | None], bool]:
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


def _class_numbers(items: list[tuple[int, str, str, int]], where: Path) -> tuple[list[str], list[int]]:
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


def from_csv(path: Path) -> Source:
    """A CSV source ``path[,label[,split]]`` (see :func:`_csv_columns` for the header); a row naming
    the same file as an earlier one (however spelled) is dropped with a note when it agrees, refused
    when its label or split differs."""
    path = path.resolve()
    root = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [(n, [c.strip() for c in r]) for n, r in enumerate(csv.reader(fh), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
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
        paths=[os.fsencode(root / os.path.expanduser(p)) for _, p, _, _ in items],
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
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
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
        paths=[os.fsencode(path.parent / p) for p in ids],
        ids=ids,
        labels=np.full(len(ids), UNKNOWN_LABEL, dtype=np.int32),
        splits=np.full(len(ids), NO_SPLIT, dtype=np.int8),
        classes=[],
    )


def open_source(path: str | os.PathLike[str]) -> Source:
    """The source at ``path``: a folder, a ``.csv``, or a ``.txt``/``.lst`` list."""
    p = Path(path).expanduser()
    if p.is_dir():
        return from_folder(p)
    if not p.exists():
        raise BadInputError(f"{p}: no such file or folder")
    if p.suffix.lower() == ".csv":
        return from_csv(p)
    if p.suffix.lower() in LIST_SUFFIXES:
        return from_list(p)
    raise BadInputError(f"{p}: not a folder, .csv or .txt/.lst list of images")
