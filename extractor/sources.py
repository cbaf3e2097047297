"""Image sources: turn what the user points at into a deterministic, labelled input listing.

Three kinds:

* a folder of class sub-folders (Keras ``image_dataset_from_directory`` convention: class names are
  the sorted folder names, images found recursively inside each); when the top level is ``train/``,
  ``val/`` (or ``valid/``, ``validation/``) and ``test/``, the classes are the folders under each and
  every image keeps its folder's split;
* a folder of images with no sub-folders (unlabelled);
* a CSV ``path[,label[,split]]`` (header optional; labels are class names or non-negative integers;
  empty label means unknown; paths relative to the CSV's folder), or a ``.txt``/``.lst`` list of paths.

The listing is sorted by id for folders and kept in file order for CSVs and lists; either way the
same source gives the same listing, so shard k always covers the same inputs.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..shared.cache.schema import NO_SPLIT, SPLIT_CODES, SPLIT_FOLDER_ALIASES, UNKNOWN_LABEL
from ..shared.errors import BadInputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})
LIST_SUFFIXES = frozenset({".txt", ".lst"})
CSV_HEADER_NAMES = frozenset({"path", "file", "filename", "filepath", "image"})


def display_id(raw: str) -> str:
    """A file name as valid UTF-8: undecodable bytes (kept by ``os.fsdecode``) shown as ``\\xNN``."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
            stats = []
            for p in self.paths:
                try:
                    st = os.stat(p)
                    stats.append((st.st_size, st.st_mtime_ns))
                except OSError:
                    stats.append((-1, 0))
            st_arr = np.array(stats, dtype=np.int64).reshape(-1, 2)
            self._listing = {
                "id": np.array(self.ids, dtype=str),
                "label": self.labels,
                "split": self.splits,
                "size": st_arr[:, 0],
                "mtime_ns": st_arr[:, 1],
            }
        return self._listing

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
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, top)
        for name in filenames:
            if not name.startswith(".") and _is_image(name):
                found.append(name if rel == "." else os.path.join(rel, name))
    return found


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _top_images(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_file() and not e.name.startswith(".") and _is_image(e.name))


def _from_entries(kind: str, root: Path, entries: list[tuple[str, str | None, int]], notes: list[str]) -> Source:
    """``entries`` are ``(relative path, class name or None, split code)``, sorted here by id."""
    entries = sorted(entries, key=lambda e: e[0])
    classes = sorted({c for _, c, _ in entries if c is not None})
    number = {c: k for k, c in enumerate(classes)}
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
    entries: list[tuple[str, str | None, int]] = []
    if subdirs and all(d.lower() in SPLIT_FOLDER_ALIASES for d in subdirs):
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


def from_csv(path: Path) -> Source:
    """A CSV source ``path[,label[,split]]``; duplicate rows are dropped with a note, conflicting ones refused."""
    path = path.resolve()
    root = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [(n, [c.strip() for c in r]) for n, r in enumerate(csv.reader(fh), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path}: cannot read CSV ({exc})") from None
    rows = [(n, r) for n, r in rows if r and any(r)]
    cols = {"path": 0, "label": 1, "split": 2}
    if rows and rows[0][1][0].lower() in CSV_HEADER_NAMES:
        header = [c.lower() for c in rows[0][1]]
        cols = {
            "path": 0,
            "label": header.index("label") if "label" in header else None,
            "split": header.index("split") if "split" in header else None,
        }
        rows = rows[1:]
    if not rows:
        raise BadInputError(f"{path}: the CSV lists no images")

    def cell(r: list[str], key: str) -> str:
        k = cols[key]
        return r[k] if k is not None and k < len(r) else ""

    seen: dict[str, tuple[int, str, str]] = {}
    items: list[tuple[str, str, int]] = []
    dropped = 0
    for n, r in rows:
        p, lab, sp = cell(r, "path"), cell(r, "label"), cell(r, "split")
        if not p:
            raise BadInputError(f"{path}:{n}: empty path")
        if p in seen:
            first, lab0, sp0 = seen[p]
            if (lab0, sp0) != (lab, sp):
                raise BadInputError(
                    f"{path}:{n}: {p!r} is listed again (first at line {first}) with another label or split"
                )
            dropped += 1
            continue
        seen[p] = (n, lab, sp)
        items.append((p, lab, _parse_split(sp, f"{path}:{n}")))
    notes = [f"{path}: {dropped} duplicate rows ignored"] if dropped else []
    names = [lab for _, lab, _ in items if lab]
    if names and all(lab.isdigit() for lab in names):
        classes = [str(k) for k in range(max(int(lab) for lab in names) + 1)]
        labels = [int(lab) if lab else UNKNOWN_LABEL for _, lab, _ in items]
    else:
        classes = sorted(set(names))
        number = {c: k for k, c in enumerate(classes)}
        labels = [number[lab] if lab else UNKNOWN_LABEL for _, lab, _ in items]
    return Source(
        kind="csv",
        root=root,
        paths=[os.fsencode(root / os.path.expanduser(p)) for p, _, _ in items],
        ids=[p for p, _, _ in items],
        labels=np.array(labels, dtype=np.int32),
        splits=np.array([s for _, _, s in items], dtype=np.int8),
        classes=classes,
        notes=notes,
    )


def from_list(path: Path) -> Source:
    """A text file with one image path per line (``#`` comments and blank lines skipped): unlabelled."""
    path = path.resolve()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read list ({exc})") from None
    ids = list(dict.fromkeys(s for line in lines if (s := line.strip()) and not s.startswith("#")))
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
