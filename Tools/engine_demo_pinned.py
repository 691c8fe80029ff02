#!/usr/bin/env python3
"""Host-to-device bandwidth from the DRAM tier's mapping registered as pinned memory (issue 8, GPU part).

Two steps, because the GPU machine has no FUSE and no twfs:

  capture (here, as root, with twfs): mount a warehouse with a small DRAM tier, write KV-sized blocks,
      read them until they are resident (user.tw.tier = dram), copy the tier's bytes from the client's
      mapping (while the daemon runs, so its generation is live) and a manifest of the blocks' SHA-256
      into DIR.
  bench (on the GPU machine): serve the copied tier to the Python client the way the daemon's broker
      does (a unix socket named in .tw/dram handing over its descriptor: the client's own discovery and
      sequence-locked lookup, verify=True), check
      every block's SHA-256, then time host-to-device copies of the blocks from
        - pageable memory (a plain torch CPU tensor holding the same bytes),
        - the tier mapping as it is (shared memory, pageable),
        - the tier mapping after cudaHostRegister (pinned in place: no host copy at all),
        - a torch pinned buffer (cudaHostAlloc) filled by Client.get_into (one host copy, then DMA),
      and print one JSON object.

    python3 Tools/engine_demo_pinned.py capture .devcarry [--blocks 8 --block-mib 4 --dram 40M]
    python3 Tools/engine_demo_pinned.py bench .devcarry
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.fspath(REPO / "clients" / "python"))

from tokenwarehouse import Client  # noqa: E402
from tokenwarehouse.engine import prefix_hashes  # noqa: E402

NS = "pinned-bench@tp0"
MiB = 1 << 20


def capture(args) -> None:
    import numpy as np
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    binary = os.environ.get("TWFS_BIN") or os.fspath(REPO / ".build" / "release" / "twfs")
    base = Path(tempfile.mkdtemp(prefix="tw-pinned-"))
    mnt, store = base / "mnt", base / "store"
    mnt.mkdir()
    store.mkdir()
    log = open(base / "twfs.log", "wb")
    proc = subprocess.Popen([binary, os.fspath(mnt), "--store", os.fspath(store), "--capacity", "1G",
                             "--dram", args.dram, "-f"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while os.stat(mnt).st_dev == os.stat(base).st_dev:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("twfs did not mount: " + (base / "twfs.log").read_text()[-2000:])
            time.sleep(0.05)
        size = args.block_mib * MiB
        names = prefix_hashes(list(range(args.blocks * 16)), 16, salt="pinned-bench")
        rng = np.random.default_rng(5)
        manifest = []
        with Client(mnt, verify=True) as tw:
            tw.ensure_namespace(NS)
            for i, name in enumerate(names):
                data = rng.standard_normal(size // 4, dtype=np.float32).tobytes()   # KV-like float32
                tw.put(NS, name, data, parent=names[i - 1] if i else None, tokens=16)
                manifest.append(dict(name=name, size=size, sha256=hashlib.sha256(data).hexdigest()))
            tiers = {}
            for _ in range(args.rounds):        # read until resident (blocks read once may not be admitted)
                for m in manifest:
                    for _ in range(2):          # twice in a row: a block read again is kept (S3-FIFO)
                        assert hashlib.sha256(tw.get(NS, m["name"])).hexdigest() == m["sha256"]
                        time.sleep(0.05)
                time.sleep(0.2)
                tiers = {m["name"]: tw.tier(NS, m["name"]) for m in manifest}
                if all(t == "dram" for t in tiers.values()):
                    break
            with open(mnt / ".tw" / "status", "rb") as f:
                status = json.loads(f.read())
            tw.refresh()
            tier_file = tw.tiers.get(NS)
            (out / "tier").write_bytes(bytes(tw._conn.by_namespace[NS].mm))   # the daemon runs: generation is live
        (out / "manifest.json").write_text(json.dumps(dict(namespace=NS, blocks=manifest, tiers=tiers,
                                                           dram=args.dram, tier_file=tier_file,
                                                           status=status), indent=1))
        print(json.dumps(dict(blocks=len(manifest), resident=sum(t == "dram" for t in tiers.values()),
                              tier_bytes=os.path.getsize(out / "tier"))))
    finally:
        subprocess.run(["fusermount3", "-u", "-z", os.fspath(mnt)], capture_output=True, timeout=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _serve_tier(path: str, namespace: str, socket_path: Path):
    """A broker for one tier file, as docs/dram-tier.md "Access" describes it (one thread, until exit)."""
    import socket
    import struct
    import threading
    alive = os.memfd_create("alive")
    os.ftruncate(alive, 4096)
    os.pwrite(alive, struct.pack("<Q", 1), 0)
    hits = os.memfd_create("hits")
    os.ftruncate(hits, 1 << 24)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(os.fspath(socket_path))
    s.listen(4)

    def serve():
        while True:
            conn, _ = s.accept()
            with conn:
                fd = os.open(path, os.O_RDONLY)
                socket.send_fds(conn, [f"tier pinned\nnamespaces {namespace}\n".encode()], [fd, hits])
                os.close(fd)
                socket.send_fds(conn, [b"end 1\n"], [alive])
    threading.Thread(target=serve, daemon=True).start()
    return s


def bench(args) -> None:
    import numpy as np
    import torch
    src = Path(args.dir)
    man = json.loads((src / "manifest.json").read_text())
    mount = Path(tempfile.mkdtemp(prefix="tw-tier-only-"))
    (mount / ".tw").mkdir()
    shm = os.fspath(mount / "tier")
    shutil.copyfile(src / "tier", shm)
    sock = _serve_tier(shm, man["namespace"], mount / "broker.sock")
    (mount / ".tw" / "dram").write_text(f"socket {mount / 'broker.sock'}\n")
    res = dict(device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", torch=torch.__version__)
    tw = Client(mount, verify=True)
    assert tw.mapped, tw.tier_error
    # 1. every block through the client's map lookup, checked against the manifest
    ok = 0
    for m in man["blocks"]:
        if man["tiers"].get(m["name"]) != "dram":
            continue
        data = tw.get(man["namespace"], m["name"])
        assert hashlib.sha256(data).hexdigest() == m["sha256"], m["name"]
        ok += 1
    res["blocks_verified"] = ok
    res["client_stats"] = dict(tw.stats)
    assert tw.stats["map_hits"] == ok and ok > 0

    # where each block lies in the mapping (the client's lookup; the entry stays valid: no daemon runs)
    from tokenwarehouse.client import block_key
    mp = tw._conn.by_namespace[man["namespace"]]
    spans = []
    for m in man["blocks"]:
        if man["tiers"].get(m["name"]) != "dram":
            continue
        r = mp.find(*block_key(man["namespace"], m["name"]))
        spans.append((r[3], r[4]))
    total = sum(n for _, n in spans)
    res["bytes_per_pass"] = total
    res["block_bytes"] = spans[0][1]

    resident = [m for m in man["blocks"] if man["tiers"].get(m["name"]) == "dram"]
    if not torch.cuda.is_available():
        res["cuda"] = False
        tw.close()
        shutil.rmtree(mount, ignore_errors=True)
        print(json.dumps(res, indent=1))
        return
    import ctypes
    import warnings
    cudart = _cudart()
    dev = torch.device("cuda")
    dst = torch.empty(total, dtype=torch.uint8, device=dev)
    base_ptr = np.frombuffer(mp.mm, dtype=np.uint8).ctypes.data   # the read-only mapping, no copy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                # torch warns that the buffer is not writable
        mapped = torch.frombuffer(mp.mm, dtype=torch.uint8)
    data = (mp.data_lo, mp.data_hi - mp.data_lo)
    big = torch.empty(data[1], dtype=torch.uint8, device=dev)

    def timed(fn, nbytes=total, reps=args.reps):
        fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        ts.sort()
        med = ts[len(ts) // 2]
        return dict(median_s=med, gib_s=round(nbytes / med / (1 << 30), 2),
                    best_gib_s=round(nbytes / ts[0] / (1 << 30), 2))

    def copy_blocks(host, non_blocking):
        def f():
            o = 0
            for off, n in spans:
                dst[o:o + n].copy_(host[off:off + n], non_blocking=non_blocking)
                o += n
        return f

    def copy_area(host, non_blocking):
        return lambda: big.copy_(host[data[0]:data[0] + data[1]], non_blocking=non_blocking)

    pageable = torch.empty(mp.size, dtype=torch.uint8)
    pageable.copy_(mapped)
    res["blocks_from_pageable_tensor"] = timed(copy_blocks(pageable, False))
    res["blocks_from_tier_map_unregistered"] = timed(copy_blocks(mapped, False))
    res["area_from_pageable_tensor"] = timed(copy_area(pageable, False), data[1])
    res["area_from_tier_map_unregistered"] = timed(copy_area(mapped, False), data[1])

    reg = None
    for flags, label in ((8, "cudaHostRegisterReadOnly"), (0, "cudaHostRegisterDefault")):
        code = cudart.cudaHostRegister(ctypes.c_void_p(base_ptr), ctypes.c_size_t(mp.size), ctypes.c_uint(flags))
        cudart.cudaGetLastError()                      # a failed register must not poison torch's next check
        res.setdefault("register_attempts", []).append(dict(flags=flags, name=label, error=code))
        if code == 0:
            reg = label
            break
    res["registered_with"] = reg
    if reg is not None:
        res["is_pinned_after_register"] = bool(mapped.is_pinned())
        res["blocks_from_tier_map_registered"] = timed(copy_blocks(mapped, True))
        res["area_from_tier_map_registered"] = timed(copy_area(mapped, True), data[1])
        copy_blocks(mapped, True)()                    # what the DMA moved equals the manifest's blocks
        torch.cuda.synchronize()
        back = dst.cpu().numpy().tobytes()
        o, good = 0, 0
        for (off, n), m in zip(spans, resident):
            good += hashlib.sha256(back[o:o + n]).hexdigest() == m["sha256"]
            o += n
        res["gpu_blocks_verified"] = good

    pinned = torch.empty(total, dtype=torch.uint8, pin_memory=True)
    pinned_np = pinned.numpy()

    def via_client():
        o = 0
        for (off, n), m in zip(spans, resident):
            tw.get_into(man["namespace"], m["name"], pinned_np[o:o + n])
            o += n
        dst.copy_(pinned, non_blocking=True)
    res["blocks_client_get_into_pinned_then_h2d"] = timed(via_client)
    pinned.copy_(dst.cpu())
    res["one_copy_from_torch_pinned_alloc"] = timed(lambda: dst.copy_(pinned, non_blocking=True))
    pinned_big = torch.empty(data[1], dtype=torch.uint8, pin_memory=True)
    res["area_from_torch_pinned_alloc"] = timed(lambda: big.copy_(pinned_big, non_blocking=True), data[1])
    if reg is not None:
        res["unregister_error"] = cudart.cudaHostUnregister(ctypes.c_void_p(base_ptr))
    del mapped
    tw.close()
    shutil.rmtree(mount, ignore_errors=True)
    print(json.dumps(res, indent=1))


def _cudart():
    """The CUDA runtime library torch loaded (same process state and context), through ctypes."""
    import ctypes
    import torch
    torch.cuda.init()
    torch.empty(1, device="cuda")
    with open("/proc/self/maps") as f:
        paths = sorted({ln.split()[-1] for ln in f if "libcudart.so" in ln})
    lib = None
    for name in paths + ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise RuntimeError(f"no libcudart found (mapped: {paths})")
    lib.cudaHostRegister.restype = ctypes.c_int
    lib.cudaHostUnregister.restype = ctypes.c_int
    lib.cudaGetLastError.restype = ctypes.c_int
    return lib


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["capture", "bench"])
    ap.add_argument("dir")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--block-mib", type=int, default=4)
    ap.add_argument("--dram", default="40M")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    (capture if args.what == "capture" else bench)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
