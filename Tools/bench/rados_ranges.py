#!/usr/bin/env python3
"""Whole-object reads against reads in ranges in flight, on a throwaway single-host Ceph cluster: the
measurement behind RadosTier.fetch's range constants (docs/cluster-tier.md "Read path").

For 1 MiB objects (200) and 16 MiB objects (20), one round per line: the mean time to read each object
once, whole in one `read`, and split into N ranges issued together (`aio_read`) and waited for. Each line
compares the ways within one round.

Needs root and the Ceph packages (Tools/install-deps.sh); runs with the system Python, which has the
`rados` module (`/usr/bin/python3 Tools/bench/rados_ranges.py`).
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "IntegrationTests" / "ceph"))

import rados  # noqa: E402
from ceph_cluster import CephCluster  # noqa: E402

MiB = 1 << 20


def whole(io, names: list[str], size: int) -> float:
    t = time.perf_counter()
    for n in names:
        assert len(io.read(n, size)) == size
    return (time.perf_counter() - t) / len(names) * 1e3


def ranges(io, names: list[str], size: int, parts: int) -> float:
    piece = size // parts
    t = time.perf_counter()
    for n in names:
        done = threading.Semaphore(0)
        got = []

        def finished(_completion, data) -> None:
            got.append(len(data))
            done.release()
        for i in range(parts):
            io.aio_read(n, piece, i * piece, finished)
        for _ in range(parts):
            done.acquire()
        assert sum(got) == size
    return (time.perf_counter() - t) / len(names) * 1e3


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="tw-rados-ranges-"))
    cluster = CephCluster(base / "ceph")
    try:
        cluster.start()
        cluster.create_pool("tw")
        r = rados.Rados(conffile=str(cluster.conf))
        r.connect()
        io = r.open_ioctx("tw")
        for size, count, splits in ((MiB, 200, (2, 4, 8)), (16 * MiB, 20, (4, 16))):
            names = [f"o{size}-{i}" for i in range(count)]
            data = os.urandom(size)
            for n in names:
                io.write_full(n, data)
            for rnd in range(3):
                figures = [f"whole {whole(io, names, size):.2f} ms"]
                figures += [f"{p} ranges {ranges(io, names, size, p):.2f} ms" for p in splits]
                print(f"{size // MiB} MiB objects, round {rnd}: " + ", ".join(figures), flush=True)
        io.close()
        r.shutdown()
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
