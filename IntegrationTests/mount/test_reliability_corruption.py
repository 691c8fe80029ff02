"""Corruption (issue 7): byte flips in segment files, while unmounted and while mounted.

A flipped byte inside what a checksum covers (fixed header, namespace, key, metadata, stored payload:
docs/format.md) makes its block read as EIO (record found, checksum fails) or ENOENT (recovery skipped
the record), never as other bytes; no other block is affected; `twctl verify --store DIR` lists a damaged
region covering each flipped record and exits 1. Flips anywhere else (padding, segment headers,
summaries) may go unnoticed but must still never produce wrong bytes, and the daemon must start.

TW_REL_SEED replays a run (the seed is printed and in every failure message).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re

import pytest

from twfs_util import (block_hash, canonical, errname, first_difference, pattern, read_block, run_twctl,
                       segment_records, size_for, write_block)

SEED = int(os.environ.get("TW_REL_SEED") or random.SystemRandom().randrange(1 << 32))
KiB = 1 << 10
GONE = {errno.EIO, errno.ENOENT}


def _make_blocks(wh, rnd: random.Random, tag: str, count: int) -> dict[str, tuple[str, bytes]]:
    """Write `count` blocks over two namespaces; returns {"ns/key": (path, data)}."""
    blocks = {}
    for i in range(count):
        ns_name = "corrupt-a" if i % 2 else "corrupt-b"
        ns = wh.mount / ns_name
        if not ns.exists():
            wh.namespace(ns_name)
        key = block_hash(tag, i) if rnd.random() < 0.7 else f"{tag}-{i}.kv"
        path = canonical(ns, key) if "." not in key else os.path.join(ns, key)
        data = pattern(f"{tag}/{i}", size_for(f"{tag}/{i}", 1, 96 * KiB))
        write_block(path, data)
        blocks[f"{ns_name}/{key}"] = (path, data)
    return blocks


def _records(store) -> dict[str, tuple[str, dict]]:
    """{"ns/key": (segment path, record)} for every block record of the store's segments."""
    out = {}
    for seg in sorted(store.glob("segment-*.twlog")):
        for rec in segment_records(seg):
            if rec["type"] == 1:
                key = f"{rec['namespace']}/{rec['key']}"
                assert key not in out, f"two records of {key}: the test assumes no compaction or eviction"
                out[key] = (os.fspath(seg), rec)
    return out


def _flip(path: str, offset: int, rnd: random.Random) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ rnd.randrange(1, 256)]))
        f.flush()
        os.fsync(f.fileno())


def _flip_records(records, keys, rnd) -> list[str]:
    """Flip one byte in a checksummed range of each record; returns descriptions for messages."""
    done = []
    for key in keys:
        seg, rec = records[key]
        start, end = rnd.choice(rec["checked"])
        off = rnd.randrange(start, end)
        _flip(seg, off, rnd)
        done.append(f"{key}@{os.path.basename(seg)}+{off}")
    return done


def _verify(store) -> tuple[int, dict, str]:
    """(exit code, parsed --json report, text output) of twctl verify --store."""
    j = run_twctl("verify", "--store", os.fspath(store), "--json")
    t = run_twctl("verify", "--store", os.fspath(store))
    assert j.returncode == t.returncode, (j.returncode, t.returncode, t.stderr)
    report = json.loads(j.stdout)
    assert set(report) >= {"segments", "records", "bytes_read", "damaged"}, report.keys()
    return j.returncode, report, t.stdout


def _uncovered(report: dict, records, keys) -> list[str]:
    """Flipped records that no finding's [offset, offset+length) of their segment overlaps."""
    missing = []
    for key in keys:
        seg, rec = records[key]
        name = os.path.basename(seg)
        lo, hi = rec["offset"], rec["offset"] + rec["size"]
        if not any(d["segment"] == name and d["offset"] < hi and lo < d["offset"] + d["length"]
                   for d in report["damaged"]):
            missing.append(f"{key} ({name} [{lo}, {hi}))")
    return missing


def _read_outcome(path: str, data: bytes):
    """'ok', 'wrong: ...', or an errno."""
    try:
        got = read_block(path)
    except OSError as e:
        return e.errno
    return "ok" if got == data else f"wrong: {first_difference(got, data)}"


@pytest.mark.timeout(300)
def test_flipped_bytes_read_as_eio_or_missing_never_wrong_and_verify_lists_each(warehouse_factory):
    print(f"\ncorruption test: seed={SEED}")
    rnd = random.Random(SEED)
    wh = warehouse_factory("--segment-size", "1M", "--dram", "0", sync="always")
    blocks = _make_blocks(wh, rnd, "old", 120)
    assert wh.stop() == 0
    records = _records(wh.store)
    assert set(records) == set(blocks), "the segment walk and the blocks written disagree"
    segments = sorted({seg for seg, _ in records.values()})
    assert len(segments) >= 4, f"expected several segments, got {segments}"

    # Round 1, unmounted: flip 12 records; drop one segment's summary so that recovery scans it.
    offline = rnd.sample(sorted(records), 12)
    flips = _flip_records(records, offline, rnd)
    scanned = records[offline[0]][0]
    os.unlink(scanned.replace(".twlog", ".twsum"))
    rc, report, text = _verify(wh.store)
    msg = f"seed={SEED} flips={flips}"
    assert rc == 1, f"{msg}: twctl verify exited {rc} on a damaged store"
    assert not _uncovered(report, records, offline), f"{msg}: verify missed {_uncovered(report, records, offline)}"
    damaged_lines = [line for line in text.splitlines() if line.startswith("DAMAGED ")]
    assert len(damaged_lines) == len(report["damaged"]), text
    assert re.search(rf"\b{len(report['damaged'])} damaged regions", text), text
    for line, d in zip(damaged_lines, report["damaged"]):
        assert f"{d['segment']} offset {d['offset']} length {d['length']}" in line, (line, d)

    wh.start()
    # Round 2, mounted: blocks written in this life (active segment) and old ones not read since mount.
    fresh = _make_blocks(wh, rnd, "new", 16)
    blocks.update(fresh)
    records = _records(wh.store)
    online = rnd.sample(sorted(set(records) - set(offline) - set(fresh)), 6) + rnd.sample(sorted(fresh), 4)
    flips += _flip_records(records, online, rnd)
    msg = f"seed={SEED} flips={flips}"

    bad, seen = [], {"EIO": 0, "ENOENT": 0}
    for key, (path, data) in sorted(blocks.items()):
        out = _read_outcome(path, data)
        if key in offline or key in online:
            if out in GONE:
                seen[errname(out)] += 1
            else:
                bad.append(f"damaged {key}: {out if isinstance(out, str) else errname(out)}, want EIO or ENOENT")
        elif out != "ok":
            bad.append(f"undamaged {key}: {out if isinstance(out, str) else errname(out)}")
    assert not bad, f"{msg}:\n" + "\n".join(bad)
    print(f"{len(offline)} records flipped unmounted, {len(online)} mounted; damaged blocks read as {seen}; "
          f"{len(blocks) - len(offline) - len(online)} others intact")
    assert wh.alive()
    st = wh.status()
    assert st["corrupt_reads"] + st["recovery"]["corrupt_records"] > 0, st

    # verify reads a mounted store too (it takes no lock): it lists the online flips.
    rc, report, _ = _verify(wh.store)
    assert rc == 1 and not _uncovered(report, records, online), f"{msg}: {_uncovered(report, records, online)}"
    # The store still takes writes, and a clean restart changes nothing of the above.
    h = block_hash("after-corruption")
    write_block(canonical(wh.mount / "corrupt-a", h), b"still writable" * 100)
    wh.restart()
    for key, (path, data) in sorted(blocks.items()):
        out = _read_outcome(path, data)
        assert out in (GONE if key in offline or key in online else {"ok"}), f"{msg}: after restart {key}: {out}"


@pytest.mark.timeout(300)
def test_random_flips_anywhere_never_serve_wrong_bytes_and_the_daemon_starts(warehouse_factory):
    # Flips in padding, segment headers or summaries need not be detected; they must not do harm.
    rnd = random.Random(SEED + 1)
    wh = warehouse_factory("--segment-size", "1M", "--dram", "0", sync="always")
    blocks = _make_blocks(wh, rnd, "any", 100)
    assert wh.stop() == 0
    files = sorted(p for p in wh.store.iterdir() if p.name.startswith("segment-"))
    flips = []
    for _ in range(40):
        f = rnd.choice(files)
        off = rnd.randrange(f.stat().st_size)
        _flip(os.fspath(f), off, rnd)
        flips.append(f"{f.name}+{off}")
    wh.start()
    outcomes = {"ok": 0, "EIO": 0, "ENOENT": 0}
    for key, (path, data) in sorted(blocks.items()):
        out = _read_outcome(path, data)
        assert out == "ok" or out in GONE, f"seed={SEED + 1} flips={flips}: {key}: {out}"
        outcomes["ok" if out == "ok" else errname(out)] += 1
    print(f"\nrandom flips (seed={SEED + 1}): 40 flips over {len(files)} files: {outcomes}")
    # verify runs to completion on such a store: exit 1 with findings, or 0 with none (never a crash).
    assert wh.stop() == 0
    rc, report, _ = _verify(wh.store)
    assert (rc, bool(report["damaged"])) in ((0, False), (1, True)), (rc, report)
