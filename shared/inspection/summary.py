"""What a cache holds, as JSON-ready facts: what ``featcache-inspect summary`` prints and the cache report
shows (rows and classes per split, generations, shards, failed inputs, fingerprint, bytes, workers).

Read from the manifest alone when it has the per-class counts; from the shards' label/id/split
columns otherwise.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from ..cache import (
    FeatureCache,
    Manifest,
    awaiting_merge,
    cache_path,
    describe_holder,
    parts_dir,
    recorded_holders,
    schema,
)

FIRST_FAILURES = 5  # failed inputs listed in the summary (the manifest lists them all)


def summarize(cache: FeatureCache) -> dict[str, Any]:
    """The facts ``summary`` prints, as JSON-ready data."""
    m = cache.manifest
    totals = m.count_rows()
    if totals is not None:  # the manifest has the counts: no shard is opened (verify and readers check shards)
        cache_path(cache.path, schema.SHARDS_DIR)  # but never report on shards behind a link out of the cache
        pairs = Counter(totals)
    else:
        cols = cache.read_columns((schema.LABEL, schema.ID, schema.SPLIT))
        split = cache.splits(cols[schema.ID], cols[schema.SPLIT])
        pairs = Counter(zip(cols[schema.LABEL].tolist(), split.tolist(), strict=False))
    names = list(cache.classes)
    per_class: dict[str, dict[str, int]] = {}
    for (label, code), n in sorted(pairs.items()):
        cls = names[label] if 0 <= label < len(names) else "(unlabelled)"
        per_class.setdefault(cls, {s: 0 for s in schema.SPLITS})[schema.SPLITS[code]] += n
    disk = sum(s.bytes for s in m.shards)
    return {
        "cache": str(cache.path),
        "rows": m.live_rows,
        "dead_rows": len(m.dead),
        "inputs": int(m.source["num_inputs"]),
        "generation": m.generation,
        "generations": [
            {
                "generation": g.generation,
                "created": g.created,
                "inputs": g.num_inputs,
                "shards": [g.first_shard, g.first_shard + math.ceil(g.num_inputs / m.shard_size)],
                "changes": g.changes,
            }
            for g in m.plan()
        ],
        "relabelled": len(m.relabelled),
        "shards": {"done": len(m.shards), "planned": m.num_shards, "size": m.shard_size},
        "complete": m.complete,
        "classes": per_class,
        "splits": {s: sum(n for (_, code), n in pairs.items() if code == c) for c, s in enumerate(schema.SPLITS)},
        "split_source": m.split.get("source") or f"hash of id, fractions {m.split.get('fractions')}",
        "failed": {"count": len(m.failed), "first": [vars(f) for f in m.failed[:FIRST_FAILURES]]},
        "fingerprint": m.fingerprint,
        "random_weights": cache.random_weights,
        "storage": m.storage,
        "bytes": {"total": disk, "per_row": disk / m.rows if m.rows else None},
        "source": m.source,
        "created": m.created,
        "updated": m.updated,
        "parts": _parts_state(cache.path, m),
    }


def _parts_state(path: Path, m: Manifest) -> dict[str, Any] | None:
    """Workers of a partitioned run: who is recorded as running, and finished shards not merged."""
    if not parts_dir(path).is_dir():
        return None
    return {
        "recorded_running": {str(p): describe_holder(h) for p, h in recorded_holders(path).items()},
        "awaiting_merge": awaiting_merge(path, m),
    }
