"""Crash reliability (issue 7): kill -9 at random moments of a mixed load, recover, verify.

Each cycle runs writers (new blocks, write-then-rename, unlinks, discarded overwrites) and readers
against a `--sync always` daemon with small segments (so segments seal, and the daemon's background
compaction rewrites the ones that unlinks left half dead), SIGKILLs the daemon after a random delay,
detaches the dead mount, restarts on the same store and checks, after every cycle:

- every block whose close (or rename) returned reads back whole and byte-exact (docs/format.md: a killed
  daemon loses nothing that close returned; `--sync always` also survives a power cut);
- every block whose unlink returned stays gone (a tombstone must not be lost, nor dropped by compaction
  while an older copy survives);
- blocks in flight at the kill (write or unlink not returned) are either absent or whole;
- the listing holds exactly the expected names (no stray, partial or foreign block), and the rebuilt
  index (`blocks` in .tw/status) counts them.

The random generator is seeded: the seed is printed and put in every failure message; set
TW_REL_SEED to replay one. TW_REL_CRASH_CYCLES (default 50) sets the cycles; the soak variant is
`TW_REL_CRASH_CYCLES=1000 pytest IntegrationTests/mount/test_reliability_crash.py` (docs/reliability.md).
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time

import pytest

from twfs_util import (block_hash, canonical, errname, first_difference, lazy_unmount, pattern, read_block,
                       size_for, wait_until, write_block)

SEED = int(os.environ.get("TW_REL_SEED") or random.SystemRandom().randrange(1 << 32))
CYCLES = int(os.environ.get("TW_REL_CRASH_CYCLES", "50"))
KiB = 1 << 10
WRITERS, READERS = 3, 2
# Errors a call may get when the daemon dies under it.
DEAD = {errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENODEV}


def _path(ns, name: str) -> str:
    # Canonical hashes go to NS/hh/HASH; compatibility names (kv-..., tmp-...) sit directly under NS.
    return os.path.join(ns, name) if "-" in name else canonical(ns, name)


def _data(name: str) -> bytes:
    """A block's bytes derive from its name; a temporary `tmp-NAME` holds what NAME will hold."""
    name = name.removeprefix("tmp-")
    return pattern(name, size_for(name, 1, 160 * KiB))


class Ledger:
    """What the load did, as far as the application can know: which calls returned."""

    def __init__(self):
        self.lock = threading.Lock()
        self.committed: set[str] = set()      # close/rename returned: must survive
        self.gone: set[str] = set()           # unlink returned: must stay gone
        self.uncertain: set[str] = set()      # a write or unlink was in flight at the kill
        self.attempted: set[str] = set()
        self.busy: set[str] = set()
        self.ops = dict(writes=0, renames=0, unlinks=0, overwrites=0, reads=0, read_errors_at_kill=0)
        self.errors: list[str] = []

    def error(self, msg: str):
        with self.lock:
            if len(self.errors) < 30:
                self.errors.append(msg)


def _writer(ns, ledger: Ledger, rnd: random.Random, prefix: str, stop: threading.Event):
    i = 0
    while not stop.is_set():
        op = rnd.random()
        victim = None
        with ledger.lock:
            if op >= 0.55 and ledger.committed:
                victim = rnd.choice(sorted(ledger.committed - ledger.busy)) if ledger.committed - ledger.busy else None
                if victim is None:
                    continue
                ledger.busy.add(victim)
        try:
            if victim is None:
                name = f"kv-{prefix}-{i}.bin" if rnd.random() < 0.2 else block_hash(prefix, i)
                i += 1
                with ledger.lock:
                    ledger.attempted.add(name)
                    ledger.uncertain.add(name)
                if op < 0.45:
                    write_block(_path(ns, name), _data(name))
                    kind = "writes"
                else:   # write-then-rename: commits at the rename
                    tmp = "tmp-" + name
                    with ledger.lock:
                        ledger.attempted.add(tmp)
                        ledger.uncertain.add(tmp)
                    write_block(_path(ns, tmp), _data(tmp))
                    os.rename(_path(ns, tmp), _path(ns, name))
                    with ledger.lock:
                        ledger.uncertain.discard(tmp)
                        ledger.gone.add(tmp)
                    kind = "renames"
                with ledger.lock:
                    ledger.uncertain.discard(name)
                    ledger.committed.add(name)
                    ledger.ops[kind] += 1
            elif op < 0.85:
                with ledger.lock:
                    ledger.committed.discard(victim)
                    ledger.uncertain.add(victim)
                os.unlink(_path(ns, victim))
                with ledger.lock:
                    ledger.uncertain.discard(victim)
                    ledger.gone.add(victim)
                    ledger.ops["unlinks"] += 1
            else:       # open "wb" on a committed block: accepted, bytes discarded
                with open(_path(ns, victim), "wb") as f:
                    f.write(b"\xee" * rnd.randrange(1, 64 * KiB))
                with ledger.lock:
                    ledger.ops["overwrites"] += 1
        except OSError as e:
            if e.errno not in DEAD:
                ledger.error(f"writer {prefix}: {errname(e.errno)}: {e}")
            return
        finally:
            if victim is not None:
                with ledger.lock:
                    ledger.busy.discard(victim)


def _reader(ns, ledger: Ledger, rnd: random.Random, stop: threading.Event):
    while not stop.is_set():
        with ledger.lock:
            candidates = sorted(ledger.committed - ledger.busy)
            name = rnd.choice(candidates) if candidates else None
            if name is not None:
                ledger.busy.add(name)   # not unlinked while we read it
        if name is None:
            time.sleep(0.005)
            continue
        try:
            got = read_block(_path(ns, name))
            if got != _data(name):
                ledger.error(f"reader: wrong bytes in committed {name}: {first_difference(got, _data(name))}")
            with ledger.lock:
                ledger.ops["reads"] += 1
        except OSError as e:
            if e.errno not in DEAD:
                ledger.error(f"reader: {errname(e.errno)} reading committed {name}")
            with ledger.lock:
                ledger.ops["read_errors_at_kill"] += 1
            return
        finally:
            with ledger.lock:
                ledger.busy.discard(name)


def _visible_names(ns) -> set[str]:
    names = set()
    for entry in os.listdir(ns):
        if len(entry) == 2 and all(c in "0123456789abcdef" for c in entry) and os.path.isdir(os.path.join(ns, entry)):
            names.update(os.listdir(os.path.join(ns, entry)))
        else:
            names.add(entry)
    return names


def _check_after_recovery(wh, ns, ledger: Ledger, rnd: random.Random, cycle: int, recent: set[str]) -> list[str]:
    """Verify the store against the ledger; resolve uncertain names. Returns problems found."""
    problems = []
    visible = _visible_names(ns)
    for name in sorted(visible - ledger.attempted):
        problems.append(f"unknown name {name!r} visible (a temporary or partial block?)")
    for name in sorted(ledger.committed - visible):
        problems.append(f"committed block {name} lost")
    for name in sorted(ledger.gone & visible):
        problems.append(f"unlinked block {name} came back")
    # Contents: every block touched since the last check, the uncertain ones, and a sample of the rest.
    sample = set(rnd.sample(sorted(ledger.committed), min(40, len(ledger.committed))))
    for name in sorted((recent | ledger.uncertain | sample) & visible):
        try:
            got = read_block(_path(ns, name))
        except OSError as e:
            problems.append(f"{name}: {errname(e.errno)} reading a visible block")
            continue
        if got != _data(name):
            problems.append(f"{name}: wrong bytes after recovery: {first_difference(got, _data(name))}")
    # An in-flight write that is visible after recovery is whole (checked above): it is durable from now
    # on. An in-flight unlink either happened or not.
    for name in ledger.uncertain:
        (ledger.committed.add if name in visible else ledger.gone.add)(name)
        if name in visible:
            ledger.gone.discard(name)
    ledger.uncertain.clear()
    blocks = wh.status()["blocks"]
    if blocks != len(visible):
        problems.append(f"rebuilt index counts {blocks} blocks, the listing shows {len(visible)}")
    return [f"seed={SEED} cycle={cycle}: {p}" for p in problems]


@pytest.mark.timeout(max(600, CYCLES * 20))
def test_sigkill_at_random_moments_of_mixed_load_loses_no_committed_block(warehouse_factory):
    print(f"\ncrash test: seed={SEED} (TW_REL_SEED to replay), cycles={CYCLES}")
    rnd = random.Random(SEED)
    wh = warehouse_factory("--segment-size", "2M", "--dram", "64M", sync="always")
    ns = wh.namespace("crash")
    ledger = Ledger()
    problems: list[str] = []
    kill_delays = []
    t0 = time.monotonic()
    compacted = life_compacted = evicted = corrupt = torn = 0
    for cycle in range(CYCLES):
        stop = threading.Event()
        before = set(ledger.attempted) | set(ledger.gone)
        threads = [threading.Thread(target=_writer, args=(ns, ledger, random.Random(rnd.random()), f"c{cycle}w{w}", stop),
                                    daemon=True) for w in range(WRITERS)]
        threads += [threading.Thread(target=_reader, args=(ns, ledger, random.Random(rnd.random()), stop), daemon=True)
                    for _ in range(READERS)]
        for t in threads:
            t.start()
        delay = rnd.uniform(0.02, 1.5)
        kill_delays.append(delay)
        time.sleep(delay)
        if rnd.random() < 0.2:                                # a control-area read in the mix
            life_compacted = max(life_compacted, wh.status()["compacted_segments"])
        wh.kill(unmount=False)                                # kill -9
        compacted += life_compacted
        life_compacted = 0
        stop.set()
        for t in threads:
            t.join(30)
        hung = [t.name for t in threads if t.is_alive()]
        assert not hung, f"seed={SEED} cycle={cycle}: load threads hung after the kill: {hung}"
        lazy_unmount(wh.mount)
        assert not ledger.errors, f"seed={SEED} cycle={cycle}: " + "\n".join(ledger.errors)
        wh.start()
        rec = wh.status()["recovery"]
        corrupt += rec["corrupt_records"]
        torn += rec["torn_tail_bytes"] > 0
        recent = (ledger.attempted | ledger.gone) - before
        problems += _check_after_recovery(wh, ns, ledger, rnd, cycle, recent)
        st = wh.status()
        life_compacted = st["compacted_segments"]
        evicted += st["evicted_segments"]
        assert not problems, "\n".join(problems[:30])

    # A last full pass: every committed block byte-exact, then a clean stop and restart keeps them.
    compacted += max(life_compacted, wh.status()["compacted_segments"])
    wh.restart()
    for name in sorted(ledger.committed):
        got = read_block(_path(ns, name))
        assert got == _data(name), f"seed={SEED} final: {name}: {first_difference(got, _data(name))}"
    assert _visible_names(ns) == ledger.committed, f"seed={SEED} final listing differs from the ledger"
    elapsed = time.monotonic() - t0
    print(f"crash test: seed={SEED} cycles={CYCLES} in {elapsed:.0f}s; ops: "
          + ", ".join(f"{k}={v}" for k, v in ledger.ops.items())
          + f"; live blocks={len(ledger.committed)}, unlinked={len(ledger.gone)}; kill delay "
          f"{min(kill_delays):.2f}..{max(kill_delays):.2f}s; recoveries with a torn tail={torn}, "
          f"corrupt records skipped={corrupt}; segments compacted in the background (seen)={compacted}, "
          f"evicted={evicted}")
    assert ledger.ops["writes"] + ledger.ops["renames"] > CYCLES, "the load hardly wrote anything"
    assert evicted == 0, "eviction ran: the capacity is too small for the durability check"
