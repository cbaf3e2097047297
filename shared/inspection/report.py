"""``featcache-inspect report``: one self-contained HTML page about a cache, and the label-noise listing.

The page holds the summary, class balance per split, a 2-D map of the pooled vectors, near-duplicate
pairs and leaks across splits, label-noise suspects, outliers (rows unlike any other) and classes that
overlap in feature space, with thumbnails of the source images when they are still there. Made without
TensorFlow, from the pooled vectors only (never the maps), in bounded memory: beyond ``max_rows`` rows
the analyses run on a random sample of that many rows (read shard by shard), and the page says so.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import ROW, SHARD, FeatureCache, PooledRows, describe, schema, split_names
from ..errors import FeatcacheError
from . import cam as cam_mod
from . import html as H
from . import outliers, picture, similarity, suspects
from .summary import summarize

DEFAULT_MAX_ROWS = 10_000  # rows analysed; beyond, a random sample (the duplicate search is quadratic)
# rows the suspects command ranks (~11 KB of memory per row at 1280-d: the vectors, their unit copy for the
# neighbour search, the projection; time: the fit on a sample, then linear, plus the neighbour index)
SUSPECTS_MAX_ROWS = 1_000_000
MAP_POINTS = 2_000  # points drawn in each 2-D map (an SVG of many more is slow to open)
TSNE_POINTS = 1_500  # t-SNE is ~quadratic: it gets at most this many points
SHOWN = 40  # suspects, pairs and failed inputs listed on the page
EMBEDDINGS = ("auto", "pca", "tsne", "umap")


@dataclass
class Rows:
    """The rows analysed: ``rows`` (all of them, or a sample) and how many the cache holds."""

    rows: PooledRows
    total: int

    @property
    def sampled(self) -> bool:
        return len(self.rows) < self.total


def load_rows(cache: FeatureCache, max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0) -> Rows:
    """Every live row's pooled vector when there are at most ``max_rows``; else ``max_rows`` live rows chosen
    at random with ``seed``. The sample is drawn from the rows readers see (dead rows of an updated cache
    left out, labels and splits the current ones: :meth:`FeatureCache.read_columns`, one file when the row
    index is current); only the chosen rows' ``(C,)`` float32 vectors are then read, one shard at a time
    (memory: the small columns plus the sample)."""
    total = cache.num_rows
    if total <= max_rows:
        return Rows(cache.load_pooled(), total)
    c = cache.read_columns((schema.LABEL, schema.ID, schema.INDEX, schema.SPLIT, ROW, SHARD))
    keep = np.sort(np.random.default_rng(seed).choice(total, max_rows, replace=False))  # index order
    shard, row = c[SHARD][keep], c[ROW][keep]
    pooled: np.ndarray | None = None
    for s in np.unique(shard):
        at = np.flatnonzero(shard == s)  # increasing rows of one shard, as Shard.read wants them
        with cache.open_shard(cache.shards[int(s)]) as f:
            block = f.read(schema.POOLED, row[at])
        if pooled is None:
            pooled = np.empty((len(keep), *block.shape[1:]), block.dtype)
        pooled[at] = block
    assert pooled is not None  # max_rows >= 1 rows were chosen
    rows = PooledRows(
        pooled=pooled,
        label=c[schema.LABEL][keep],
        id=c[schema.ID][keep],
        index=c[schema.INDEX][keep],
        split=cache.splits(c[schema.ID][keep], c[schema.SPLIT][keep]),
    )
    return Rows(rows, total)


def class_name(classes: list[str], label: int) -> str:
    return classes[label] if 0 <= label < len(classes) else "(unlabelled)"


def find_suspects(
    cache: FeatureCache,
    rows: PooledRows,
    folds: int = suspects.DEFAULT_FOLDS,
    seed: int = 0,
    neighbours: bool = False,
    keep: Any = None,
) -> tuple[list[dict[str, Any]], suspects.LabelNoise | None]:
    """Labelled ``rows`` ranked by how unlikely their given label is, most suspect first, as JSON-ready
    dicts (index, id, split, label, suggested, p_label, p_suggested, score, and with ``neighbours``
    neighbours_agree: the share of the row's nearest rows with its label); with the verdict arrays."""
    labelled = np.flatnonzero(rows.label >= 0)
    n_classes = len(cache.classes)
    if len(labelled) < 2 or len(np.unique(rows.label[labelled])) < 2:
        return [], None
    noise = suspects.label_noise(
        rows.pooled[labelled],
        rows.label[labelled],
        n_classes,
        folds,
        seed,
        neighbours=neighbours,
        keep=keep if len(labelled) == len(rows) else None,  # the kept index covers every row of the cache
    )
    names = split_names(rows.split)
    out = []
    for rank, k in enumerate(noise.order.tolist(), 1):
        r = int(labelled[k])
        given, sugg = int(noise.given[k]), int(noise.suggested[k])
        out.append(
            {
                "rank": rank,
                "index": int(rows.index[r]),
                "id": str(rows.id[r]),
                "split": str(names[r]),
                "label": class_name(cache.classes, given),
                "suggested": class_name(cache.classes, sugg),
                "p_label": round(float(noise.probs[k, given]), 6),
                "p_suggested": round(float(noise.probs[k, sugg]), 6),
                "score": round(float(noise.score[k]), 6),
            }
        )
        if noise.agree is not None:
            agree = float(noise.agree[k])
            out[-1]["neighbours_agree"] = round(agree, 6) if np.isfinite(agree) else None
    return out, noise


class Thumbs:
    """Thumbnails of source images by id (found by :func:`.picture.source_image`, read by
    :func:`.picture.decode`), made once each; counts why the others are not drawn."""

    def __init__(self, cache: FeatureCache):
        self.source = cache.manifest.source
        self.seen = (tuple(cache.fingerprint.get("input_size") or (224, 224)), picture.resize_policy(cache.fingerprint))
        self.pillow = H.pillow_available()
        self.made = 0
        self.missing: Counter[str] = Counter()  # reason -> images not drawn
        self.example: dict[str, str] = {}  # reason -> the first image's detail
        self._cache: dict[str, str | None] = {}

    def __call__(self, image_id: str) -> str:
        if image_id not in self._cache:
            self._cache[image_id] = self._make(image_id) if self.pillow else None
        return H.img(self._cache[image_id], image_id)

    def _make(self, image_id: str) -> str | None:
        path, why = picture.source_image(self.source, image_id)
        if path is not None:
            try:
                uri = H.thumbnail(path)
            except FileNotFoundError:
                why = "moved or deleted"
            except picture.PictureError as exc:
                why = "could not be read"
                self.example.setdefault(why, f"{path}: {exc}")
            else:
                self.made += 1
                return uri
        self.missing[why] += 1
        return None

    def cam(self, image_id: str, grid: np.ndarray, title: str) -> str:
        """A thumbnail of the image as the backbone saw it (its resize policy, :func:`.picture.as_seen`)
        with the class activation map ``grid`` over it (:func:`.cam.overlay`); a placeholder when the image
        cannot be drawn (the plain thumbnail beside it, made by :meth:`__call__`, counts why)."""
        uri = None
        if self.pillow:
            path, _ = picture.source_image(self.source, image_id)
            (h, w), policy = self.seen
            size = (
                (H.THUMB_PX, max(1, round(H.THUMB_PX * w / h))) if h >= w else (round(H.THUMB_PX * h / w), H.THUMB_PX)
            )
            if path is not None:
                try:
                    seen = picture.as_seen(picture.decode(path, (size[1], size[0])), size, policy)
                except (FileNotFoundError, picture.PictureError):
                    pass
                else:
                    uri = H.jpeg_uri(cam_mod.overlay(np.asarray(seen, np.uint8), grid))
        return H.img(uri, title)

    def why_none(self) -> str | None:
        """A sentence for the page when some or all thumbnails are missing."""
        if not self.pillow:
            return "Pillow is not installed (pip install 'featcache[viz]'): no thumbnails."
        if not self.missing:
            return None
        reasons = "; ".join(
            f"{n} {why}" + (f" (e.g. {self.example[why]})" if why in self.example else "")
            for why, n in self.missing.most_common()
        )
        return f"{sum(self.missing.values())} source images not drawn (grey squares): {reasons}."


def _embedding(x: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str] | None:
    """A non-linear 2-D map of ``x`` with UMAP (``method`` auto or umap, when umap-learn is installed) or
    t-SNE (``method`` tsne, with scikit-learn); None when the package is missing. t-SNE is never chosen
    by ``auto``: it takes tens of seconds where the rest of the report takes a few."""
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            return None
        return umap.UMAP(random_state=seed).fit_transform(x), "UMAP"
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "t-SNE"


def _map_section(cache: FeatureCache, rows: PooledRows, embedding: str, seed: int) -> str:
    names = split_names(rows.split)
    n = len(rows)
    pick = np.arange(n) if n <= MAP_POINTS else np.sort(np.random.default_rng(seed).choice(n, MAP_POINTS, False))
    titles = [
        f"{rows.id[i]} ({class_name(cache.classes, int(rows.label[i]))}, {names[i] or 'no split'}, "
        f"index {rows.index[i]})"
        for i in pick
    ]
    x = suspects.standardize(rows.pooled)
    xy = suspects.pca_2d(x[pick], seed)
    body = [
        H.note(
            f"{len(pick)} of {n} rows{' (a random sample)' if len(pick) < n else ''}, on the first two principal "
            "components of the standardised pooled vectors; hover a point for its id, click a class to fade the others."
        ),
        H.scatter_svg(xy, rows.label[pick], cache.classes, titles, "map-pca"),
    ]
    notes = []
    if embedding != "pca" and len(pick) > 3:
        sub = pick[:TSNE_POINTS] if len(pick) > TSNE_POINTS else pick
        reduced = suspects.project(x[sub], *suspects.pca_basis(x[sub], 50, seed))
        t0 = time.perf_counter()
        got = _embedding(reduced, embedding, seed)
        if got is None:
            notes.append(
                "no t-SNE map: scikit-learn is not installed (pip install 'featcache[viz]')"
                if embedding == "tsne"
                else "a UMAP map is added when umap-learn is installed (pip install 'featcache[umap]'; a t-SNE map "
                "with the tsne embedding and pip install 'featcache[viz]')"
            )
        else:
            xy2, label = got
            body.append(
                H.note(
                    f"{label} of {len(sub)} of these rows (on 50 principal components), "
                    f"{time.perf_counter() - t0:.1f} s:"
                )
            )
            body.append(
                H.scatter_svg(
                    np.asarray(xy2), rows.label[sub], cache.classes, [titles[k] for k in range(len(sub))], "map-2"
                )
            )
    return "\n".join(body + [H.note(t) for t in notes])


Section = tuple[str, str, str]  # one part of the page: its id, its title and its HTML (html.page)


@dataclass
class _Analysed:
    """What the sections about rows read: the cache, the rows analysed, each row's split name
    (``names (n,)`` object, ``""`` for none) and the thumbnails (each made once, whichever section
    shows it first)."""

    cache: FeatureCache
    rows: PooledRows
    names: np.ndarray
    thumbs: Thumbs

    def row_cell(self, i: int) -> str:
        """Row ``i`` as a cell: its thumbnail, id, class, split and index."""
        rows = self.rows
        return (
            f'<div class="pair">{self.thumbs(str(rows.id[i]))}<div><b>{H.esc(rows.id[i])}</b><br>\n'
            f"{H.esc(class_name(self.cache.classes, int(rows.label[i])))}, {H.esc(self.names[i] or 'no split')}, "
            f"index {rows.index[i]}</div></div>"
        )


def build(
    cache_path: str | Path,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    threshold: float = similarity.DEFAULT_DUPLICATE_THRESHOLD,
    embedding: str = "auto",
    folds: int = suspects.DEFAULT_FOLDS,
    seed: int = 0,
    cam: str | Path | None = None,
) -> tuple[str, dict[str, Any]]:
    """The report's HTML, and the facts it shows as JSON-ready data (for scripts and tests). ``cam``: a
    run directory whose best head (linear or logreg on this cache's pooled vectors) draws, beside each
    suspect's thumbnail, its class activation map for the class it predicts (:mod:`.cam`)."""
    if embedding not in EMBEDDINGS:
        raise FeatcacheError(f"embedding={embedding!r}: choose one of {', '.join(EMBEDDINGS)}")
    t0 = time.perf_counter()
    cache = FeatureCache(cache_path)
    head = None
    if cam is not None:
        head = cam_mod.read_head(cam)
        cam_mod.check_cache(head, cache.fingerprint, cache.classes, str(cache.path))
    s = summarize(cache)
    loaded = load_rows(cache, max_rows, seed)
    rows = loaded.rows
    analysed = _Analysed(cache, rows, split_names(rows.split), Thumbs(cache))
    sections = [
        _summary_section(cache, s, loaded, max_rows),
        _balance_section(cache, s),
        ("map", "Map of the pooled vectors", _map_section(cache, rows, embedding, seed)),
    ]
    duplicates, pairs = _duplicates_section(analysed, threshold)
    noise, ranked = _suspects_section(analysed, folds, seed, head)
    isolated, unlike = _outliers_section(analysed)
    overlap, overlap_pairs = _overlap_section(cache, rows)
    sections += [duplicates, noise, isolated, overlap]
    facts_out = {
        "summary": s,
        "analysed_rows": len(rows),
        "sampled": loaded.sampled,
        "duplicates": pairs,
        "suspects": ranked,
        "outliers": unlike,
        "overlap": overlap_pairs,
        "thumbnails": analysed.thumbs.made,
        "cam": None if head is None else {"run": str(head.run), "head": head.name, "exact": head.exact},
    }
    header = _header(cache, s, analysed.thumbs, t0)
    return H.page(f"featcache cache report: {cache.path.name}", sections, header), facts_out


def _summary_section(cache: FeatureCache, s: dict[str, Any], loaded: Rows, max_rows: int) -> Section:
    """The summary's facts (``s``: :func:`.summary.summarize`), the failed inputs, and a warning when
    the analyses below read a sample."""
    fp = s["fingerprint"]
    facts = [
        ("rows", s["rows"]),
        ("inputs", s["inputs"]),
        ("shards done", s["shards"]["done"]),
        ("shards planned", s["shards"]["planned"]),
        ("complete", "yes" if s["complete"] else "NO"),
        *[(f"{k} rows", v) for k, v in s["splits"].items()],
        ("splits from", s["split_source"]),
        ("classes", len(cache.classes)),
        ("failed inputs", s["failed"]["count"]),
        ("backbone", describe(fp)),
        ("input", f"{fp.get('resize')} to {fp.get('input_size')}, {fp.get('preprocessing')}"),
        ("maps", f"{fp.get('maps_dtype')} {s['storage'].get('compression')}"),
        ("bytes on disk", s["bytes"]["total"]),
        ("bytes per row", round(s["bytes"]["per_row"]) if s["bytes"]["per_row"] else "-"),
        ("source", f"{s['source'].get('kind')} {s['source'].get('root')}"),
        ("created", s["created"]),
        ("updated", s["updated"]),
    ]
    summary_rows = [(H.raw(f'<span data-key="{H.esc(k)}">{H.esc(k)}</span>'), v) for k, v in facts]
    body = [H.table(["", "value"], summary_rows, 'id="summary"')]
    failed = cache.manifest.failed
    if failed:
        body.append(f"<h3>Failed inputs ({len(failed)})</h3>")
        body.append(
            H.table(["index", "id", "reason"], [(f.index, f.id, f.reason) for f in failed[:SHOWN]], 'id="failed"')
        )
        if len(failed) > SHOWN:
            body.append(H.note(f"... and {len(failed) - SHOWN} more in manifest.json"))
    if loaded.sampled:
        body.append(
            H.warning(
                f"The analyses below use a random sample of {len(loaded.rows)} of the {loaded.total} rows "
                f"(max_rows={max_rows}); the summary above counts every row."
            )
        )
    return ("summary", "Summary", "\n".join(body))


def _balance_section(cache: FeatureCache, s: dict[str, Any]) -> Section:
    """Rows per class and split (every row, from the summary ``s``), each count with a bar."""
    per_class = s["classes"]
    most = max((max(c.values()) for c in per_class.values()), default=1) or 1
    balance_rows = [
        [
            H.raw(
                f'<span style="color:{H.colour(cache.classes.index(cls) if cls in cache.classes else -1)}">'
                f"&#9632;</span> {H.esc(cls)}"
            )
        ]
        + [
            H.raw(f'<span data-class="{H.esc(cls)}" data-split="{sp}">{c[sp]}</span> {H.bar(c[sp] / most)}')
            for sp in schema.SPLITS
        ]
        + [sum(c.values())]
        for cls, c in per_class.items()
    ]
    table = H.table(["class", *schema.SPLITS, "total"], balance_rows, 'id="balance"')
    return ("balance", "Class balance per split", table)


def _duplicates_section(a: _Analysed, threshold: float) -> tuple[Section, list[dict[str, Any]]]:
    """Pairs of rows with cosine >= ``threshold``, leaks across splits first; with every pair as
    JSON-ready facts (a, b: ids; cosine; leak)."""
    rows, names = a.rows, a.names
    unit = similarity.normalize(rows.pooled)
    pairs = list(similarity.duplicate_pairs(unit, threshold))
    pairs.sort(key=lambda p: (names[p.a] == names[p.b], -p.cosine))
    leaks = [p for p in pairs if names[p.a] != names[p.b]]
    dup_rows = [
        (f"{p.cosine:.5f}", "LEAK" if names[p.a] != names[p.b] else "", H.raw(a.row_cell(p.a)), H.raw(a.row_cell(p.b)))
        for p in pairs[:SHOWN]
    ]
    body = [
        H.note(
            f"{len(pairs)} pairs with cosine >= {threshold} among {len(rows)} rows; {len(leaks)} straddle two splits "
            "(leaks: the same image, or nearly, in train and in val/test), listed first."
        ),
        H.table(["cosine", "leak", "row", "row"], dup_rows, 'id="duplicates"') if pairs else "",
    ]
    if len(pairs) > SHOWN:
        body.append(
            H.note(f"... and {len(pairs) - SHOWN} more: featcache-inspect neighbours CACHE --duplicates lists them all")
        )
    title = f"Near-duplicates and leaks ({len(pairs)} pairs, {len(leaks)} leaks)"
    facts = [
        {"a": str(rows.id[p.a]), "b": str(rows.id[p.b]), "cosine": p.cosine, "leak": bool(names[p.a] != names[p.b])}
        for p in pairs
    ]
    return ("duplicates", title, "\n".join(body)), facts


def _suspects_section(
    a: _Analysed, folds: int, seed: int, head: cam_mod.CamHead | None
) -> tuple[Section, list[dict[str, Any]]]:
    """The :data:`SHOWN` most suspect labels (:func:`find_suspects`), with their thumbnails and, with a
    ``head``, its class activation map for the class it predicts (recorded as ``cam_class``); with the
    rows listed as facts."""
    cache, thumbs = a.cache, a.thumbs
    ranked, noise = find_suspects(cache, a.rows, folds, seed)
    if noise is None:
        body = [H.note("Fewer than two labelled classes: no label-noise check.")]
        return ("suspects", "Label-noise suspects", "\n".join(body)), ranked[:SHOWN]
    top = ranked[:SHOWN]
    cams = {} if head is None else cam_mod.row_cams(cache, head, np.array([d["index"] for d in top]))

    def image(d: dict[str, Any]) -> str:
        if head is None:
            return thumbs(d["id"])
        grid, k = cams[d["index"]]
        d["cam_class"] = head.classes[k]
        return thumbs(d["id"]) + thumbs.cam(d["id"], grid, f"{d['id']}: where {head.name} looks for {head.classes[k]}")

    body = [
        H.note(
            f"Each labelled row's probability of its given label from a {folds}-fold cross-validated logistic "
            f"regression on the standardised pooled vectors (out-of-fold accuracy {noise.accuracy:.3f}): the "
            "lower, the more suspect. Suggested: the classifier's most probable other class. "
            "featcache-inspect suspects CACHE lists them all."
        ),
        *([] if head is None else [H.note(cam_mod.describe(head))]),
        H.table(
            ["rank", "image", "id", "split", "given label", "p(given)", "suggested", "p(suggested)"],
            [
                (
                    d["rank"],
                    H.raw(image(d)),
                    H.raw(f'<span data-suspect="{H.esc(d["id"])}">{H.esc(d["id"])}</span>'),
                    d["split"],
                    d["label"],
                    f"{d['p_label']:.3f}",
                    d["suggested"],
                    f"{d['p_suggested']:.3f}",
                )
                for d in top
            ],
            'id="suspects"',
        ),
    ]
    return ("suspects", "Label-noise suspects", "\n".join(body)), top


def _outliers_section(a: _Analysed) -> tuple[Section, list[dict[str, Any]]]:
    """The :data:`SHOWN` rows least like any other (:func:`.outliers.find_outliers`), with their thumbnails;
    with those rows as facts."""
    unlike = outliers.find_outliers(a.cache, rows=a.rows)[:SHOWN]
    body = [
        H.note(
            f"Rows unlike any other (placeholders, blank frames, corrupt crops, another domain): isolation is 1 - "
            f"the mean cosine similarity of a row's pooled vector to its {outliers.DEFAULT_K} nearest other rows (0: "
            "near-copies exist; 1: nothing alike). Label-noise scores cannot see these rows. Non-finite or constant "
            "vectors come first. featcache-inspect outliers CACHE lists them all."
        ),
        H.table(
            ["rank", "image", "id", "split", "label", "isolation", "most similar row"],
            [
                (
                    d["rank"],
                    H.raw(a.thumbs(d["id"])),
                    H.raw(f'<span data-outlier="{H.esc(d["id"])}">{H.esc(d["id"])}</span>'),
                    d["split"],
                    d["label"] or "",
                    "inf" if d["isolation"] is None else f"{d['isolation']:.3f}",
                    d["reason"] or d["nearest_id"] or "",
                )
                for d in unlike
            ],
            'id="outliers"',
        ),
    ]
    return ("outliers", "Unlike any other (outliers)", "\n".join(body)), unlike


def _overlap_section(cache: FeatureCache, rows: PooledRows) -> tuple[Section, list[dict[str, Any]]]:
    """The class pairs a nearest-centroid classifier mixes up most, and (up to 30 classes) its whole
    confusion matrix; with those pairs as facts (a, b: class names; cosine; mixed)."""
    labelled = rows.label >= 0
    if not (labelled.any() and len(cache.classes) > 1):
        body = [H.note("No labelled rows of two classes or more: no class overlap.")]
        return ("overlap", "Classes that overlap", "\n".join(body)), []
    ov = suspects.class_overlap(rows.pooled[labelled], rows.label[labelled], len(cache.classes))
    overlap_pairs = [
        {"a": cache.classes[a], "b": cache.classes[b], "cosine": cos, "mixed": mixed}
        for a, b, cos, mixed in ov.worst_pairs(10)
    ]
    acc = np.trace(ov.confusion) / max(ov.confusion.sum(), 1)
    body = [
        H.note(
            "Pairs of classes a nearest-centroid classifier mixes up most (share of the two classes' rows put in "
            f"the other; its accuracy over all labelled rows: {acc:.3f}), and the cosine between their centroids "
            "(after subtracting the mean vector): high cosine and much mixing mean the features hardly "
            "separate them."
        ),
        H.table(
            ["class", "class", "mixed", "centroid cosine"],
            [(p["a"], p["b"], f"{p['mixed']:.3f}", f"{p['cosine']:.3f}") for p in overlap_pairs],
            'id="overlap"',
        ),
    ]
    if len(cache.classes) <= 30:
        body += ["<h3>Nearest-centroid confusion (rows: given class, columns: nearest centroid)</h3>"]
        body.append(H.heat_table(ov.confusion, cache.classes, "given \\ nearest"))
    return ("overlap", "Classes that overlap", "\n".join(body)), overlap_pairs


def _header(cache: FeatureCache, s: dict[str, Any], thumbs: Thumbs, t0: float) -> str:
    """The lines above the sections: a warning for random weights, why thumbnails are missing (once
    every section has asked for its own), where the page comes from and how long it took since ``t0``."""
    header = []
    if s["random_weights"]:
        header.append(
            H.warning(
                "This cache was made with RANDOM weights: its features are meaningless, and so is everything below."
            )
        )
    why = thumbs.why_none()
    if why:
        header.append(H.note(why))
    header.append(
        H.note(
            f"{cache.path} - made by featcache-inspect report in {time.perf_counter() - t0:.1f} s, without TensorFlow."
        )
    )
    return "\n".join(header)


def write(cache_path: str | Path, out: str | Path, **kw: Any) -> dict[str, Any]:
    """Write the report of ``cache_path`` to ``out`` (see :func:`build` for the options); return its facts."""
    text, facts = build(cache_path, **kw)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return facts
