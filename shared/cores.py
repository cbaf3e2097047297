"""How many cores this process may use: what sizes the decode threads, the zlib pools and the
per-worker thread shares. The CPU affinity, not the machine's core count, because containers and
job schedulers (Slurm, Kubernetes CPU limits with static pinning) restrict it."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores in this process's CPU affinity (the machine's count where affinity is unknown)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
