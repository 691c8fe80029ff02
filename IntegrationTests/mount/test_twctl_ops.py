"""twctl operations and the metrics endpoint (issue 6), on real mounts through the built binaries.

What is checked, each test on its own warehouse (conftest.py: own directories, time limit, guaranteed
unmount and kill):
  - help text and exit codes: 0 for --help, 64 for usage errors (swift-argument-parser), 1 for a path
    that is not a warehouse (message on stderr, nothing on stdout, nothing created there);
  - online compaction (`twctl compact MOUNT`) while 8 readers check every byte of the blocks being moved
    and 2 writers add blocks: no error, dead bytes reclaimed, deleted blocks stay deleted (also after a
    restart), the --rate limit honoured;
  - offline compaction (`--store`) refused while a daemon holds the store, accepted after it stopped or
    died; --dry-run and --max-bytes;
  - `twctl verify` names the flipped record's segment and offset exactly;
  - namespace policy (`twctl ns`): quota (EDQUOT/ENOSPC for that namespace only), time to live,
    pinning under eviction pressure, persistence across a restart;
  - `twctl evict [--older-than]`, `twctl prefetch`;
  - `twfs --metrics ADDR` scraped with urllib and parsed as Prometheus text.

Background compaction in the daemon rewrites segments at 50% dead bytes; the compaction tests delete
40% of the blocks (evenly over the segments) so that the segments stay for `twctl compact --threshold
0.3` to do.

TW_OPS_SEED replays the random choices (printed at the start of the tests that use it).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from twfs_util import (block_hash, canonical, errname, first_difference, pattern, read_block, run_twctl,
                       segment_records, size_for, twctl_binary, wait_until, write_block)

SEED = int(os.environ.get("TW_OPS_SEED") or random.SystemRandom().randrange(1 << 32))
KiB = 1 << 10
MiB = 1 << 20
EX_USAGE = 64
QUOTA_ERRNOS = {errno.EDQUOT, errno.ENOSPC}
# The final line of `twctl compact` in text mode.
DONE = r"done: (\d+) segments compacted, (\d+) blocks moved, (\S+(?: \S+)?) reclaimed(?: in [\d.]+ ?s)?"

SUBCOMMANDS = ["status", "verify", "compact", "evict", "prefetch", "ns", "replay", "plan", "trace", "bench"]
OPTIONS = {
    ("status",): ["--json"],
    ("verify",): ["--store", "--json"],
    ("compact",): ["--store", "--threshold", "--max-bytes", "--rate", "--dry-run", "--json"],
    ("evict",): ["--older-than", "--json"],
    ("prefetch",): ["--json"],
    ("ns", "create"): ["--mode", "--quota", "--ttl", "--pin", "--compression"],
    ("ns", "list"): ["--json"],
    ("ns", "set"): ["--quota", "--ttl", "--pin", "--no-pin", "--compression"],
}


# --------------------------------------------------------------------------------------- helpers

def twctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_twctl(*[os.fspath(a) for a in args], timeout=timeout)


def show(r: subprocess.CompletedProcess) -> str:
    return f"`twctl {' '.join(r.args[1:])}` exited {r.returncode}\nstdout: {r.stdout[-3000:]!r}\nstderr: {r.stderr[-3000:]!r}"


def twctl_json(*args: str, timeout: float = 120) -> dict:
    """Run twctl ARGS --json; it must exit 0 and print exactly one JSON object on stdout."""
    r = twctl(*args, "--json", timeout=timeout)
    assert r.returncode == 0, show(r)
    try:
        obj = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"stdout is not one JSON object ({e}): {show(r)}") from None
    assert isinstance(obj, dict), show(r)
    return obj


def status(wh) -> dict:
    return twctl_json("status", wh.mount)


def ns_usage(wh, name: str) -> dict:
    usage = status(wh)["namespace_usage"]
    assert name in usage, f"status namespace_usage has no {name!r}: {sorted(usage)}"
    return usage[name]


def ns_list(wh) -> dict[str, dict]:
    out = twctl_json("ns", "list", wh.mount)
    assert isinstance(out.get("namespaces"), list), out
    return {n["name"]: n for n in out["namespaces"]}


def ns_create(wh, name: str, *opts: str) -> None:
    r = twctl("ns", "create", wh.mount, name, *opts)
    assert r.returncode == 0, show(r)
    assert (wh.mount / name).is_dir(), f"`twctl ns create {name}` exited 0 but MOUNT/{name} is not a directory"


def read_dropped(path) -> bytes:
    """Read a whole block with its page-cache pages dropped first, so the read reaches the daemon."""
    return read_block(path, uncached=True)


def outcome(path: str, data: bytes) -> str:
    """'ok', 'wrong: ...' or the errno name of reading a block (pages dropped)."""
    try:
        got = read_dropped(path)
    except OSError as e:
        return errname(e.errno)
    return "ok" if got == data else f"wrong: {first_difference(got, data)}"


def write_errno(path: str, data: bytes) -> int | None:
    try:
        write_block(path, data)
    except OSError as e:
        return e.errno
    return None


def make(ns_dir, tag: str, count: int, lo: int, hi: int) -> dict[str, bytes]:
    """Write `count` blocks at canonical paths; returns {path: bytes}."""
    out = {}
    for i in range(count):
        h = block_hash(tag, i)
        data = pattern(h, size_for(h, lo, hi))
        p = canonical(ns_dir, h)
        write_block(p, data)
        out[p] = data
    return out


def bad_blocks(blocks: dict[str, bytes]) -> list[str]:
    return [f"{os.path.basename(p)}: {o}" for p, data in blocks.items() if (o := outcome(p, data)) != "ok"]


def gone_blocks_back(paths, stat: bool = True) -> list[str]:
    """Deleted/expired/evicted paths that do not read as ENOENT (stat, then open; only open with stat=False).

    A daemon that removes a block by itself (evict, expiry) must also drop the kernel's cached entry
    (fuse_lowlevel_notify_inval_entry), or stat keeps succeeding for the entry timeout."""
    out = []
    for p in paths:
        if stat:
            try:
                os.stat(p)
                out.append(f"{os.path.basename(p)}: stat succeeds (stale kernel entry?)")
                continue
            except OSError as e:
                if e.errno != errno.ENOENT:
                    out.append(f"{os.path.basename(p)}: stat {errname(e.errno)}")
                    continue
        try:
            read_block(p)
            out.append(f"{os.path.basename(p)}: readable")
        except OSError as e:
            if e.errno != errno.ENOENT:
                out.append(f"{os.path.basename(p)}: open {errname(e.errno)}")
    return out


def segment_files(store) -> set[str]:
    return {p.name for p in store.glob("segment-*.twlog")}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def align4k(n: int) -> int:
    return (n + 4095) & ~4095


def compaction_store(wh, tag: str, count: int) -> tuple[dict[str, bytes], list[str]]:
    """Blocks of 56..60 KiB (64 KiB records: 4 KiB header area + payload) in namespace `c`, 40% of them
    deleted evenly (i % 5 in {1, 3}) so every sealed segment is ~40% dead: above twctl's 0.3, below the
    daemon's background threshold (0.5). Returns (survivors {path: bytes}, deleted paths)."""
    ns_dir = wh.mount / "c"
    if not ns_dir.exists():
        wh.namespace("c")
    survivors, deleted = {}, []
    for i in range(count):
        h = block_hash(tag, i)
        data = pattern(h, size_for(h, 56 * KiB + 1, 60 * KiB))
        p = canonical(ns_dir, h)
        write_block(p, data)
        survivors[p] = data
    for i in range(count):
        if i % 5 in (1, 3):
            p = canonical(ns_dir, block_hash(tag, i))
            os.unlink(p)
            deleted.append(p)
            del survivors[p]
    return survivors, deleted


# ------------------------------------------------------------------------------ help, exit codes

@pytest.mark.timeout(60)
def test_help_lists_every_subcommand_and_option():
    r = twctl("--help")
    assert r.returncode == 0, show(r)
    listed = set(re.findall(r"^\s{2,}([a-z][a-z-]*)\s", r.stdout.split("SUBCOMMANDS:", 1)[-1], re.M))
    missing = [c for c in SUBCOMMANDS if c not in listed]
    assert not missing, f"`twctl --help` does not list {missing}:\n{r.stdout}"

    r = twctl("ns", "--help")
    assert r.returncode == 0, show(r)
    listed = set(re.findall(r"^\s{2,}([a-z][a-z-]*)\s", r.stdout.split("SUBCOMMANDS:", 1)[-1], re.M))
    assert {"create", "list", "set"} <= listed, f"`twctl ns --help` lacks create/list/set:\n{r.stdout}"

    for cmd, opts in OPTIONS.items():
        r = twctl(*cmd, "--help")
        assert r.returncode == 0, show(r)
        assert "USAGE:" in r.stdout, show(r)
        missing = [o for o in opts if not re.search(rf"(^|[\s\[|,]){re.escape(o)}\b", r.stdout, re.M)]
        assert not missing, f"`twctl {' '.join(cmd)} --help` does not mention {missing}:\n{r.stdout}"
    # `twctl help SUB` is the argument parser's spelling of the same.
    r = twctl("help", "evict")
    assert r.returncode == 0 and "--older-than" in r.stdout, show(r)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    ["frobnicate"],                                  # unknown subcommand
    ["ns", "frobnicate"],                            # unknown sub-subcommand
    ["status"],                                      # missing MOUNT
    ["evict"],                                       # missing MOUNT NS
    ["evict", "/tmp"],                               # missing NS
    ["prefetch", "/tmp"],                            # missing NS (and names)
    ["ns", "create", "/tmp"],                        # missing NS
    ["ns", "set"],                                   # missing MOUNT NS
    ["compact"],                                     # neither MOUNT nor --store
    ["compact", "/tmp", "--threshold", "abc"],       # not a number
    ["verify", "--store"],                           # option without its value
    ["status", "/tmp", "--no-such-option"],          # unknown option
], ids=lambda a: "_".join(a).replace("/", "").replace("-", "") or "none")
def test_usage_errors_exit_64_with_a_message(args):
    r = twctl(*args)
    assert r.returncode == EX_USAGE, f"expected exit {EX_USAGE} (usage error): {show(r)}"
    assert r.stderr.strip(), f"usage error without a message on stderr: {show(r)}"
    assert not r.stdout.strip().startswith("{"), f"usage error printed JSON: {show(r)}"


@pytest.mark.timeout(60)
def test_bad_option_values_are_refused_with_the_value_named(warehouse):
    wh = warehouse
    wh.namespace("ns")
    for k, (bad, args) in enumerate((("5 fortnights", ["evict", wh.mount, "ns", "--older-than"]),
                                     ("lots", ["ns", "create", wh.mount, "x1", "--quota"]),
                                     ("-3s", ["ns", "create", wh.mount, "x2", "--ttl"]),
                                     ("zstd", ["ns", "create", wh.mount, "x3", "--compression"]),
                                     ("lots", ["ns", "set", wh.mount, "ns", "--quota"]),
                                     ("1.5", ["compact", wh.mount, "--threshold"]),
                                     ("fast", ["compact", wh.mount, "--rate"]))):
        r = twctl(*args[:-1], f"{args[-1]}={bad}")
        assert r.returncode in (1, EX_USAGE), f"expected exit 64 (or 1): {show(r)}"
        assert bad in r.stderr, f"the message does not name the bad value {bad!r}: {show(r)}"
        made = [n for n in ("x1", "x2", "x3") if (wh.mount / n).exists()]
        assert not made, f"a refused `{' '.join(map(str, args))}={bad}` still created namespace {made}"
    assert ns_list(wh)["ns"]["quota_bytes"] == 0, "a refused `ns set --quota` changed the quota"


@pytest.mark.timeout(60)
def test_commands_on_a_path_that_is_not_a_warehouse_exit_1(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    missing = tmp_path / "missing"
    for where in (plain, missing):
        for args in (["status", where], ["status", where, "--json"],
                     ["compact", where], ["compact", where, "--json"], ["compact", where, "--dry-run"],
                     ["evict", where, "ns"], ["prefetch", where, "ns", block_hash("x")],
                     ["ns", "list", where], ["ns", "list", where, "--json"],
                     ["ns", "create", where, "newns"], ["ns", "set", where, "newns", "--pin"]):
            r = twctl(*args)
            assert r.returncode == 1, f"expected exit 1 on a path that is not a mount: {show(r)}"
            assert os.fspath(where) in r.stderr, f"the message does not name the path: {show(r)}"
            assert not r.stdout.strip(), f"nothing belongs on stdout after an error: {show(r)}"
    assert sorted(os.listdir(plain)) == [], f"twctl wrote into a plain directory: {os.listdir(plain)}"
    assert not missing.exists()
    r = twctl("verify", "--store", missing)
    assert r.returncode == 1 and os.fspath(missing) in r.stderr, show(r)


# ------------------------------------------------------------------------------ online compaction

@pytest.mark.timeout(240)
def test_online_compaction_under_8_readers_and_2_writers_moves_every_byte_intact(warehouse_factory):
    print(f"\nseed={SEED}")
    rate = 8 * MiB
    wh = warehouse_factory("--segment-size", "4M", "--dram", "0")
    survivors, deleted = compaction_store(wh, "online", 1100)       # ~66 MiB in ~17 segments
    before = status(wh)
    assert before["dead_ratio"] >= 0.25, f"deleting 40% left dead_ratio {before['dead_ratio']}: {before}"
    dry = twctl_json("compact", wh.mount, "--threshold", "0.3", "--dry-run")
    cands = dry.get("candidates")
    assert isinstance(cands, list) and len(cands) >= 8, f"dry run: expected >= 8 candidates, got {dry}"
    for c in cands:
        assert {"segment", "bytes", "dead_ratio"} <= set(c), c
        assert 0.3 <= c["dead_ratio"] <= 1 and c["bytes"] > 0, c
    files_before = segment_files(wh.store)
    assert status(wh)["dead_bytes"] == before["dead_bytes"], "--dry-run changed the store"

    names = list(survivors)
    stop = threading.Event()
    compaction = {"start": None, "end": None}
    errors: list[str] = []
    lock = threading.Lock()
    reads = [0] * 8
    reads_during = [0] * 8
    passes_after = [0] * 8
    written: dict[str, bytes] = {}

    def reader(t: int) -> None:
        rnd = random.Random(SEED + t)
        order = names[:]
        while not stop.is_set():
            rnd.shuffle(order)
            started_after = compaction["end"] is not None
            for p in order:
                t0 = time.monotonic()
                o = outcome(p, survivors[p])
                reads[t] += 1
                if compaction["start"] and t0 >= compaction["start"] and not compaction["end"]:
                    reads_during[t] += 1
                if o != "ok":
                    with lock:
                        errors.append(f"reader {t}: {os.path.basename(p)}: {o}")
                if stop.is_set():
                    return
            if started_after:
                passes_after[t] += 1

    def writer(w: int) -> None:
        ns_dir = wh.mount / "c"
        k = 0
        while not stop.is_set():
            h = block_hash("online-new", w, k)
            data = pattern(h, size_for(h, 1, 128 * KiB))
            p = canonical(ns_dir, h)
            try:
                write_block(p, data)
                with lock:
                    written[p] = data
            except OSError as e:
                with lock:
                    errors.append(f"writer {w}: {h}: {errname(e.errno)}")
            k += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=reader, args=(t,), daemon=True) for t in range(8)]
    threads += [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(2)]
    gets0 = before["gets"]
    for th in threads:
        th.start()
    try:
        time.sleep(0.5)
        compaction["start"] = time.monotonic()
        r = twctl("compact", wh.mount, "--threshold", "0.3", "--rate", str(rate), "--json", timeout=150)
        compaction["end"] = time.monotonic()
        # One more whole pass of every reader over the blocks, now in their new places.
        wait_until(lambda: min(passes_after) >= 1 or not wh.alive(), 90, 0.1)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
    assert wh.alive(), f"twfs died during compaction: {show(r)}"
    assert r.returncode == 0, show(r)
    report = json.loads(r.stdout)
    assert {"segments_compacted", "blocks_moved", "bytes_moved", "bytes_reclaimed", "seconds"} <= set(report), report
    assert not errors, f"{len(errors)} errors while compacting (seed {SEED}), first: {errors[:10]}"
    assert min(passes_after) >= 1, f"readers did not finish a pass after compaction: {passes_after}"
    assert sum(reads_during) >= 8, f"only {sum(reads_during)} reads overlapped the compaction: {report}"
    after = status(wh)
    assert after["gets"] - gets0 >= sum(reads) // 2, \
        f"{sum(reads)} reads but the daemon counted {after['gets'] - gets0} gets: reads did not reach it"

    assert report["segments_compacted"] >= 1 and report["blocks_moved"] > 0, report
    assert report["bytes_moved"] > 0 and report["bytes_reclaimed"] > 0, report
    assert after["compacted_segments"] - before["compacted_segments"] >= len(cands), \
        f"{len(cands)} candidates, {after['compacted_segments'] - before['compacted_segments']} compacted: {report}"
    gone = files_before - segment_files(wh.store)
    assert len(gone) >= len(cands), f"only {sorted(gone)} of the old segment files were removed: {report}"
    assert after["dead_ratio"] < before["dead_ratio"] / 2, \
        f"dead_ratio {before['dead_ratio']:.3f} -> {after['dead_ratio']:.3f} after {report}"
    assert after["reclaimed_bytes"] > before["reclaimed_bytes"], (before["reclaimed_bytes"], after["reclaimed_bytes"])
    # --rate: bytes moved per second at most the limit (one segment of burst allowed, and 25% slack).
    allowed = (report["bytes_moved"] - 4 * MiB) / (rate * 1.25)
    assert report["seconds"] >= allowed, f"--rate {rate}: {report['bytes_moved']} bytes moved in {report['seconds']} s"
    print(f"compaction: {report}; reads {sum(reads)} ({sum(reads_during)} during), new blocks {len(written)}")

    # Text mode (not a terminal: plain lines), ending with the report line.
    r = twctl("compact", wh.mount, "--threshold", "0.3")
    assert r.returncode == 0, show(r)
    assert re.fullmatch(DONE, r.stdout.strip().splitlines()[-1]), show(r)
    left = {c["segment"] for c in twctl_json("compact", wh.mount, "--dry-run")["candidates"]}
    assert not left & {c["segment"] for c in cands}, f"segments still candidates after compaction: {left}"

    everything = {**survivors, **written}
    assert not bad_blocks(everything), f"after compaction: {bad_blocks(everything)[:10]}"
    assert not gone_blocks_back(deleted), f"deleted blocks came back: {gone_blocks_back(deleted)[:10]}"
    wh.restart()
    assert not bad_blocks(everything), f"after compaction and restart: {bad_blocks(everything)[:10]}"
    assert not gone_blocks_back(deleted), \
        f"deleted blocks came back after compaction and restart: {gone_blocks_back(deleted)[:10]}"


@pytest.mark.timeout(180)
def test_offline_compaction_refuses_a_store_in_use_and_runs_once_it_is_free(warehouse_factory):
    wh = warehouse_factory("--segment-size", "4M", "--dram", "0")
    survivors, deleted = compaction_store(wh, "offline", 500)
    files = segment_files(wh.store)
    for extra in ([], ["--json"], ["--threshold", "0.01"]):
        r = twctl("compact", "--store", wh.store, *extra)
        assert r.returncode == 1, f"offline compaction of a mounted store: {show(r)}"
        assert "in use" in r.stderr.lower() and ("online" in r.stderr or "unmount" in r.stderr), show(r)
        assert not r.stdout.strip(), show(r)
    assert wh.alive()
    assert segment_files(wh.store) == files, "a refused offline compaction changed the segments"
    assert not bad_blocks(survivors)

    # Dry run and --max-bytes online, then the rest in text mode with its final line.
    cands = twctl_json("compact", wh.mount, "--dry-run")["candidates"]
    assert len(cands) >= 3, cands
    one = twctl_json("compact", wh.mount, "--max-bytes", "1", "--rate", "0")
    assert 1 <= one["segments_compacted"] < len(cands), f"--max-bytes 1 with {len(cands)} candidates: {one}"
    r = twctl("compact", wh.mount, "--threshold", "0.3")
    assert r.returncode == 0, show(r)
    m = re.fullmatch(DONE, r.stdout.strip().splitlines()[-1])
    assert m and int(m[1]) >= 1 and int(m[2]) >= 1, show(r)
    left = {c["segment"] for c in twctl_json("compact", wh.mount, "--dry-run")["candidates"]}
    assert not left & {c["segment"] for c in cands}, f"segments still candidates after compaction: {left}"
    assert not bad_blocks(survivors) and not gone_blocks_back(deleted)

    # More dead bytes, then the daemon dies (SIGKILL): its lock must not block offline compaction.
    for p in list(survivors)[::2]:
        os.unlink(p)
        deleted.append(p)
        del survivors[p]
    time.sleep(1.0)                                               # --sync batch: the tombstones are durable
    wh.kill()
    report = twctl_json("compact", "--store", wh.store, "--threshold", "0.3")
    assert report["segments_compacted"] >= 1 and report["bytes_reclaimed"] > 0, report
    wh.start()
    assert not bad_blocks(survivors), f"after offline compaction: {bad_blocks(survivors)[:10]}"
    assert not gone_blocks_back(deleted), f"deleted blocks back after offline compaction: {gone_blocks_back(deleted)[:10]}"


# ---------------------------------------------------------------------------------------- verify

@pytest.mark.timeout(120)
def test_verify_names_the_flipped_records_segment_and_offset(warehouse_factory):
    print(f"\nseed={SEED}")
    rnd = random.Random(SEED)
    wh = warehouse_factory("--segment-size", "1M", "--dram", "0", sync="always")
    ns_dir = wh.namespace("v")
    make(ns_dir, "verify", 60, 20 * KiB, 90 * KiB)
    assert wh.stop() == 0
    clean = twctl("verify", "--store", wh.store, "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["damaged"] == [], show(clean)
    text = twctl("verify", "--store", wh.store)
    assert text.returncode == 0 and "DAMAGED" not in text.stdout, show(text)

    by_segment: dict[str, list[dict]] = {}
    for seg in sorted(wh.store.glob("segment-*.twlog")):
        recs = [r for r in segment_records(seg) if r["type"] == 1]
        if recs:
            by_segment[os.fspath(seg)] = recs
    assert len(by_segment) >= 3, f"expected blocks in several segments: {list(by_segment)}"
    seg_a, seg_b = rnd.sample(sorted(by_segment), 2)
    rec_a, rec_b = rnd.choice(by_segment[seg_a]), rnd.choice(by_segment[seg_b])
    flips = {
        # A payload byte of one record, a key byte of another (in another segment).
        (os.path.basename(seg_a), rec_a["offset"]):
            rec_a["offset"] + rec_a["header_area"] + rnd.randrange(rec_a["stored"]),
        (os.path.basename(seg_b), rec_b["offset"]):
            rec_b["offset"] + 64 + len(rec_b["namespace"].encode()) + rnd.randrange(len(rec_b["key"].encode())),
    }
    for (seg, _), pos in flips.items():
        with open(wh.store / seg, "r+b") as f:
            f.seek(pos)
            b = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([b ^ (1 << rnd.randrange(8))]))
    r = twctl("verify", "--store", wh.store, "--json")
    assert r.returncode == 1, show(r)
    found = json.loads(r.stdout)["damaged"]
    got = {(d["segment"], d["offset"]) for d in found}
    assert got == set(flips), f"flipped {flips} (segment, record offset: byte), verify listed {found} (seed {SEED})"
    for d in found:
        pos = flips[(d["segment"], d["offset"])]
        assert d["offset"] <= pos < d["offset"] + d["length"], f"{d} does not cover the flipped byte {pos}"
        assert d["reason"], d
    size_a = rec_a["size"]
    assert any(d["length"] == size_a for d in found if d["segment"] == os.path.basename(seg_a)), (found, size_a)
    text = twctl("verify", "--store", wh.store)
    assert text.returncode == 1, show(text)
    lines = [ln for ln in text.stdout.splitlines() if ln.startswith("DAMAGED ")]
    assert len(lines) == 2, show(text)
    for seg, off in flips:
        assert any(re.search(rf"\b{re.escape(seg)} offset {off}\b", ln) for ln in lines), (seg, off, lines)


# ------------------------------------------------------------------------------ namespace policy

def mode_value(v) -> int:
    if isinstance(v, int):
        return v
    s = str(v)
    return int(s[2:] if s.startswith("0o") else s, 8)


@pytest.mark.timeout(120)
def test_ns_create_list_set_and_the_policy_survives_a_restart(warehouse):
    wh = warehouse
    ns_create(wh, "alpha", "--mode", "0750", "--quota", "10M", "--ttl", "1h", "--pin", "--compression", "lz4")
    ns_create(wh, "beta")
    wh.namespace("gamma")                                    # plain mkdir makes a namespace too
    assert os.stat(wh.mount / "alpha").st_mode & 0o7777 == 0o750
    listed = ns_list(wh)
    assert {"alpha", "beta", "gamma"} <= set(listed), listed
    for n in listed.values():
        assert {"name", "owner", "group", "mode", "blocks", "logical_bytes", "quota_bytes", "ttl_seconds",
                "pinned", "compression"} <= set(n), n
    a, b = listed["alpha"], listed["beta"]
    assert mode_value(a["mode"]) == 0o750, a
    assert a["owner"] in ("root", 0) and a["group"] in ("root", 0), a
    assert (a["quota_bytes"], a["ttl_seconds"], a["pinned"], a["compression"]) == (10 * MiB, 3600, True, "lz4"), a
    assert (b["quota_bytes"], b["ttl_seconds"], b["pinned"]) == (0, 0, False), b
    assert b["compression"] in ("off", "lz4", "auto"), b
    text = twctl("ns", "list", wh.mount)
    assert text.returncode == 0 and all(n in text.stdout for n in ("alpha", "beta", "gamma")), show(text)

    r = twctl("ns", "set", wh.mount, "alpha", "--quota", "none", "--ttl", "none", "--no-pin", "--compression", "off")
    assert r.returncode == 0, show(r)
    r = twctl("ns", "set", wh.mount, "beta", "--quota", "1G", "--ttl", "30m", "--pin", "--compression", "auto")
    assert r.returncode == 0, show(r)
    want = {"alpha": (0, 0, False, "off"), "beta": (1 << 30, 1800, True, "auto")}

    def policy(listing):
        return {k: (listing[k]["quota_bytes"], listing[k]["ttl_seconds"], listing[k]["pinned"],
                    listing[k]["compression"]) for k in want}
    assert policy(ns_list(wh)) == want
    usage = status(wh)["namespace_usage"]
    for k, (quota, ttl, pinned, _) in want.items():
        assert (usage[k]["quota_bytes"], usage[k]["ttl_seconds"], usage[k]["pinned"]) == (quota, ttl, pinned), usage[k]

    for args in (["ns", "create", wh.mount, "alpha"],                  # exists
                 ["ns", "set", wh.mount, "nosuch", "--pin"],          # no such namespace
                 ["ns", "create", wh.mount, ".hidden"],               # invalid name
                 ["ns", "create", wh.mount, "a/b"]):
        r = twctl(*args)
        assert r.returncode in (1, EX_USAGE) and r.stderr.strip(), show(r)
    assert not (wh.mount / ".hidden").exists() and not (wh.mount / "nosuch").exists()

    wh.restart()
    assert policy(ns_list(wh)) == want, "namespace policy lost at restart"


@pytest.mark.timeout(120)
def test_namespace_over_its_quota_gets_edquot_and_the_others_do_not(warehouse):
    wh = warehouse
    ns_create(wh, "q", "--quota", "1M")
    ns_create(wh, "free")
    q, free = wh.mount / "q", wh.mount / "free"
    blocks = {}
    # Quotas count stored bytes (docs/operations.md): a record is a 4 KiB header page and its payload in
    # whole pages, so a 300,000-byte block takes 307,200; three take 921,600 of 1,048,576.
    for i in range(3):
        h = block_hash("quota", i)
        blocks[canonical(q, h)] = pattern(h, 300_000)
        write_block(canonical(q, h), blocks[canonical(q, h)])
    over = canonical(q, block_hash("quota", "over"))
    over_data = pattern("over", 300_000)
    e = write_errno(over, over_data)
    assert e in QUOTA_ERRNOS, f"a write taking q over its quota: expected EDQUOT or ENOSPC, got {errname(e)}"
    assert not gone_blocks_back([over]), "the refused block is visible"
    assert ns_usage(wh, "q")["stored_bytes"] <= 1 * MiB

    others = {}
    for i in range(8):                                           # 2.4 MB: not limited by q's quota
        h = block_hash("free", i)
        others[canonical(free, h)] = pattern(h, 300_000)
        e = write_errno(canonical(free, h), others[canonical(free, h)])
        assert e is None, f"namespace without quota: write {i} failed with {errname(e)}"
    fits = canonical(q, block_hash("quota", "fits"))
    blocks[fits] = pattern("fits", 1 * MiB - 3 * 307_200 - 4096)  # its record brings q exactly to the quota
    e = write_errno(fits, blocks[fits])
    assert e is None, f"a block that brings q exactly to its quota failed with {errname(e)}"
    assert write_errno(canonical(q, block_hash("quota", "one")), b"x") in QUOTA_ERRNOS, "1 byte over the quota"
    first = next(iter(blocks))
    os.unlink(first)                                              # frees 307,200 stored bytes
    del blocks[first]
    e = write_errno(over, over_data)
    assert e is None, f"after an unlink freed room under the quota, the write failed with {errname(e)}"
    blocks[over] = over_data
    over2 = canonical(q, block_hash("quota", "over2"))
    assert write_errno(over2, over_data) in QUOTA_ERRNOS
    r = twctl("ns", "set", wh.mount, "q", "--quota", "none")
    assert r.returncode == 0, show(r)
    assert write_errno(over2, over_data) is None, "still refused after `ns set q --quota none`"
    blocks[over2] = over_data
    assert not bad_blocks(blocks) and not bad_blocks(others)


@pytest.mark.timeout(120)
def test_blocks_past_their_ttl_read_as_enoent_and_are_removed(warehouse):
    wh = warehouse
    ttl = 3.0
    ns_create(wh, "t", "--ttl", "3s")
    ns_create(wh, "keep")
    t0 = time.monotonic()
    short = make(wh.mount / "t", "ttl", 6, 10 * KiB, 100 * KiB)
    t1 = time.monotonic()
    kept = make(wh.mount / "keep", "keep", 3, 10 * KiB, 100 * KiB)
    assert time.monotonic() - t0 < ttl - 1, "writing took too long for the test to mean anything"
    assert not bad_blocks(short), f"blocks not yet expired: {bad_blocks(short)}"
    assert len(os.listdir(wh.mount / "t")) > 0
    assert wait_until(lambda: not any(outcome(p, d) == "ok" for p, d in short.items()), ttl + 4, 0.05), \
        f"{ttl + 4} s after the writes (ttl {ttl} s): {[outcome(p, d) for p, d in short.items()]}"
    expired_at = time.monotonic()
    assert expired_at - t0 >= ttl - 1.0, f"blocks with ttl {ttl} s expired after {expired_at - t0:.2f} s"
    # Right at expiry (before the maintenance removed anything): stat and readdir agree with open.
    stale = gone_blocks_back(short)
    hashes = {os.path.basename(p) for p in short}
    listed = set()
    for _, _, files in os.walk(wh.mount / "t"):
        listed |= set(files) & hashes
    # The maintenance removes them (within ~2 s of expiry).
    assert wait_until(lambda: ns_usage(wh, "t")["blocks"] == 0, max(0.5, t1 + ttl + 3 - time.monotonic()), 0.1), \
        f"3 s after expiry: {ns_usage(wh, 't')}"
    assert ns_usage(wh, "t")["logical_bytes"] == 0, ns_usage(wh, "t")
    assert not bad_blocks(kept), "a namespace without ttl lost blocks"
    assert not stale, f"expired blocks that open refuses but stat still finds: {stale[:3]}"
    assert not listed, f"readdir lists {len(listed)} expired blocks that open refuses: {sorted(listed)[:3]}"
    # The namespace still takes blocks, also under an expired name (O_EXCL: it is gone).
    p, data = next(iter(short.items()))
    write_block(p, data, flags=os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert outcome(p, data) == "ok"


@pytest.mark.timeout(180)
def test_pinned_namespace_survives_eviction_pressure(warehouse_factory):
    wh = warehouse_factory("--segment-size", "4M", "--dram", "0", capacity="64M")
    ns_create(wh, "pinned", "--pin", "--quota", "16M")
    ns_create(wh, "other")
    pinned, other = {}, {}
    size = 256 * KiB
    for i in range(600):                                        # 150 MiB of others into 64 MiB
        h = block_hash("other", i)
        other[canonical(wh.mount / "other", h)] = data = pattern(h, size)
        write_block(canonical(wh.mount / "other", h), data)
        if i % 4 == 0 and len(pinned) < 48:                     # 12 MiB pinned, mixed into the same segments
            h = block_hash("pinned", i)
            pinned[canonical(wh.mount / "pinned", h)] = data = pattern(h, size)
            write_block(canonical(wh.mount / "pinned", h), data)
    st = status(wh)
    assert st["evicted_segments"] > 0, f"no eviction happened: the test put no pressure on the store: {st}"
    lost = [p for p, d in other.items() if outcome(p, d) != "ok"]
    assert lost, "no block of the unpinned namespace was evicted"
    bad = bad_blocks(pinned)
    assert not bad, f"{len(bad)} of {len(pinned)} pinned blocks lost after {st['evicted_segments']} " \
                    f"evicted segments ({len(lost)} unpinned lost): {bad[:10]}"
    assert ns_usage(wh, "pinned")["blocks"] == len(pinned)
    wh.restart()
    assert not bad_blocks(pinned), f"pinned blocks lost across a restart: {bad_blocks(pinned)[:10]}"


# --------------------------------------------------------------------------------- evict, prefetch

@pytest.mark.timeout(120)
def test_evict_older_than_removes_only_old_blocks_then_evict_removes_all(warehouse):
    wh = warehouse
    ns_create(wh, "e")
    ns_create(wh, "other")
    old = make(wh.mount / "e", "old", 5, 10 * KiB, 80 * KiB)
    bystanders = make(wh.mount / "other", "bystander", 3, 10 * KiB, 80 * KiB)
    time.sleep(3.2)
    new = make(wh.mount / "e", "new", 4, 10 * KiB, 80 * KiB)
    rep = twctl_json("evict", wh.mount, "e", "--older-than", "2s")
    assert rep.get("namespace") == "e" and rep.get("removed_blocks") == len(old), f"expected {len(old)} removed: {rep}"
    logical = sum(len(d) for d in old.values())
    assert logical <= rep["removed_bytes"] <= sum(align4k(len(d)) + 8 * KiB for d in old.values()), \
        f"removed_bytes {rep['removed_bytes']} for {logical} logical bytes"
    assert not gone_blocks_back(old, stat=False), gone_blocks_back(old, stat=False)
    stale = gone_blocks_back(old)
    assert not bad_blocks(new) and not bad_blocks(bystanders)
    rep = twctl_json("evict", wh.mount, "e", "--older-than", "10m")
    assert rep["removed_blocks"] == 0, rep
    r = twctl("evict", wh.mount, "e")
    assert r.returncode == 0, show(r)
    assert not gone_blocks_back(new, stat=False), gone_blocks_back(new, stat=False)
    stale += gone_blocks_back(new)
    assert ns_usage(wh, "e")["blocks"] == 0
    assert not bad_blocks(bystanders)
    r = twctl("evict", wh.mount, "nosuch")
    assert r.returncode == 1 and "nosuch" in r.stderr, show(r)
    assert not stale, f"evicted blocks that open refuses but stat still finds: {stale[:3]}"
    # ... and an engine that finds an evicted name gone writes it again.
    p, data = next(iter(old.items()))
    write_block(p, data, flags=os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert outcome(p, data) == "ok"


def tier(path: str) -> str:
    return os.getxattr(path, "user.tw.tier").decode()


@pytest.mark.timeout(120)
def test_prefetch_command_loads_the_named_blocks_into_dram(warehouse_factory):
    wh = warehouse_factory("--dram", "256M")
    ns_dir = wh.namespace("p")
    blocks = make(ns_dir, "prefetch", 10, 512 * KiB, 512 * KiB)
    wh.restart()                                                 # a fresh (empty) DRAM tier
    paths = list(blocks)
    assert all(tier(p) == "nvme" for p in paths), [tier(p) for p in paths]
    want, rest = paths[:5], paths[5:]
    rep = twctl_json("prefetch", wh.mount, "p", *[os.path.basename(p) for p in want])
    assert rep.get("queued") == len(want), rep
    assert wait_until(lambda: all(tier(p) == "dram" for p in want), 10, 0.05), [tier(p) for p in want]
    assert all(tier(p) == "nvme" for p in rest), f"blocks that were not hinted loaded: {[tier(p) for p in rest]}"
    pf = status(wh)["prefetch"]
    assert pf["hinted"] >= 5 and pf["loaded"] >= 5, pf
    assert not bad_blocks({p: blocks[p] for p in want})
    assert wait_until(lambda: status(wh)["prefetch"]["used"] >= 5, 5, 0.1), status(wh)["prefetch"]
    # Compatibility names work as well.
    write_block(os.fspath(ns_dir / "compat.kv"), pattern("compat", 4096))
    wh.restart()
    assert twctl_json("prefetch", wh.mount, "p", "compat.kv")["queued"] == 1
    assert wait_until(lambda: tier(os.fspath(ns_dir / "compat.kv")) == "dram", 10, 0.05)


# ------------------------------------------------------------------------------------------ metrics

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> tuple[dict, dict]:
    """GET /metrics; returns ({(name, frozenset(labels)): value}, {family: type})."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        ctype = resp.headers.get("Content-Type", "")
        body = resp.read().decode("utf-8")
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, f"Content-Type: {ctype!r}"
    samples, types = {}, {}
    for line in body.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(LABEL.findall(m[2] or ""))
        key = (m[1], labels)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(m[3])
    return samples, types


def value(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    assert found, f"no sample {name}{labels or ''}; names: {sorted({n for n, _ in samples})}"
    return sum(found)


def check_histogram(samples: dict, name: str) -> None:
    series: dict[frozenset, list[tuple[float, float]]] = {}
    for (n, ls), v in samples.items():
        if n == name + "_bucket":
            d = dict(ls)
            le = d.pop("le")
            series.setdefault(frozenset(d.items()), []).append((float(le), v))
    assert series, f"histogram {name} has no buckets"
    for labels, buckets in series.items():
        buckets.sort()
        assert buckets[-1][0] == float("inf"), f"{name}{dict(labels)} has no +Inf bucket"
        counts = [c for _, c in buckets]
        assert all(a <= b for a, b in zip(counts, counts[1:])), f"{name}{dict(labels)} buckets not monotone: {buckets}"
        assert counts[-1] == samples[(name + "_count", labels)], f"{name}{dict(labels)}: +Inf bucket != _count"
        assert samples[(name + "_sum", labels)] >= 0


@pytest.mark.timeout(120)
def test_metrics_endpoint_serves_prometheus_text_that_counts_reads(warehouse_factory):
    port = free_port()
    wh = warehouse_factory("--metrics", f"127.0.0.1:{port}", "--dram", "64M")
    assert wait_until(lambda: _answers(port), 10, 0.1), f"nothing answers on 127.0.0.1:{port}"
    s0, types = scrape(port)
    for fam, kind in (("tw_operations_total", "counter"), ("tw_read_bytes_total", "counter"),
                      ("tw_read_latency_seconds", "histogram"), ("tw_written_bytes_total", "counter"),
                      ("tw_hit_ratio", "gauge"), ("tw_evicted_segments_total", "counter"),
                      ("tw_compacted_segments_total", "counter"), ("tw_reclaimed_bytes_total", "counter"),
                      ("tw_store_used_bytes", "gauge"), ("tw_store_capacity_bytes", "gauge"),
                      ("tw_dram_resident_bytes", "gauge"), ("tw_prefetch_loaded_total", "counter"),
                      ("tw_prefetch_used_total", "counter"), ("tw_prefetch_wasted_total", "counter"),
                      ("tw_recovery_blocks", "gauge"), ("tw_recovery_corrupt_records", "gauge")):
        # Prometheus text format: a counter's TYPE line names the family without `_total` in newer
        # clients and with it in older ones; accept either.
        t = types.get(fam) or types.get(fam.removesuffix("_total"))
        assert t == kind, f"# TYPE of {fam}: expected {kind}, got {t!r} (types: {types})"

    ns_dir = wh.namespace("m")
    blocks = make(ns_dir, "metrics", 6, 256 * KiB, 256 * KiB)
    for _ in range(2):
        assert not bad_blocks(blocks)                            # at least the first 6 reach the daemon
    s1, _ = scrape(port)
    nbytes = sum(len(d) for d in blocks.values())
    assert value(s1, "tw_operations_total", op="read") - value(s0, "tw_operations_total", op="read") >= 6
    assert value(s1, "tw_operations_total", op="commit") - value(s0, "tw_operations_total", op="commit") >= 6
    assert value(s1, "tw_operations_total", op="write") > value(s0, "tw_operations_total", op="write")
    # The first pass cannot come from the page cache (writes bypass it); on the second, DONTNEED is
    # advice and the kernel may keep a readahead window, so only the first pass is certain.
    read_bytes = value(s1, "tw_read_bytes_total") - value(s0, "tw_read_bytes_total")
    assert nbytes <= read_bytes <= 2 * nbytes, (read_bytes, nbytes)
    assert value(s1, "tw_written_bytes_total") - value(s0, "tw_written_bytes_total") >= nbytes
    assert value(s1, "tw_read_latency_seconds_count") - value(s0, "tw_read_latency_seconds_count") >= 6
    for tier_name in ("dram", "nvme"):
        assert 0 <= value(s1, "tw_hit_ratio", tier=tier_name) <= 1
        value(s1, "tw_read_bytes_total", tier=tier_name)
    check_histogram(s1, "tw_read_latency_seconds")
    for (n, ls), v in s0.items():
        if n.endswith("_total") or n.endswith("_count") or n.endswith("_bucket"):
            assert s1.get((n, ls), 0) >= v, f"counter {n}{dict(ls)} went down: {v} -> {s1.get((n, ls))}"
    st = status(wh)
    assert value(s1, "tw_store_capacity_bytes") == st["capacity_bytes"] == 2 << 30
    assert value(s1, "tw_store_used_bytes") > 0

    for path in ("/", "/nope", "/metrics/x"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert exc.value.code == 404, f"GET {path}: {exc.value.code}"

    # A restart binds the same address again (SO_REUSEADDR) and reports what recovery found.
    wh.restart()
    assert wait_until(lambda: _answers(port), 10, 0.1), f"after a restart nothing answers on 127.0.0.1:{port}"
    s2, _ = scrape(port)
    rec = status(wh)["recovery"]
    assert value(s2, "tw_recovery_blocks") == rec["blocks"], (value(s2, "tw_recovery_blocks"), rec)
    assert value(s2, "tw_recovery_corrupt_records") == rec["corrupt_records"] == 0, rec


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False
