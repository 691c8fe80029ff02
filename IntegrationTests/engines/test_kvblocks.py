"""The connectors' shared pieces (tokenwarehouse._kvblocks) without an engine or a daemon: the block
trailer's bytes, one check per way a stored block can be wrong, the byte runs of a block in KV layouts
vLLM uses, loading and storing through a Client on a plain directory, the engine counter lines."""

from __future__ import annotations

import json
import os
import re
import struct

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
xxhash = pytest.importorskip("xxhash")

from tokenwarehouse import Client  # noqa: E402
from tokenwarehouse import _kvblocks as kvb  # noqa: E402

NS, NAME, FP = "model@tp0", "ab" * 32, 0x1234_5678_9ABC_DEF0


def sealed(payload: bytes, ns=NS, name=NAME, fp=FP, tokens=32) -> bytearray:
    buf = bytearray(payload) + bytearray(kvb.TRAILER_SIZE)
    kvb.seal(buf, len(payload), ns, name, fp, tokens)
    return buf


def verify(buf, ns=NS, name=NAME, fp=FP, payload_len=None):
    n = len(buf) - kvb.TRAILER_SIZE if payload_len is None else payload_len
    mv = memoryview(buf)
    kvb.check(mv[len(buf) - kvb.TRAILER_SIZE:], n, ns, name, fp, lambda: xxhash.xxh3_64_intdigest(mv[:n]))


def test_trailer_bytes_are_pinned():
    payload = bytes(range(256)) * 4
    buf = sealed(payload, tokens=32)
    t = bytes(buf[len(payload):])
    assert len(t) == 64
    assert t[0:8] == b"TWKVBLK1"
    assert struct.unpack_from("<IIQQQQII", t, 8) == (
        1, 64, len(payload), xxhash.xxh3_64_intdigest(payload), xxhash.xxh3_64_intdigest(f"{NS}/{NAME}".encode()),
        FP, 32, 0)
    assert struct.unpack_from("<Q", t, 56)[0] == xxhash.xxh3_64_intdigest(t[:56])
    verify(buf)


@pytest.mark.parametrize("damage, foreign", [
    ("payload byte flipped", False),
    ("trailer byte flipped", False),
    ("another name", False),
    ("another layout", True),
    ("another payload length", False),
    ("not a block at all", False),
])
def test_each_kind_of_wrong_block_is_refused(damage, foreign):
    payload = os.urandom(4096)
    buf = sealed(payload)
    kw = {}
    if damage == "payload byte flipped":
        buf[100] ^= 1
    elif damage == "trailer byte flipped":
        buf[len(payload) + 20] ^= 1
    elif damage == "another name":
        kw["name"] = "cd" * 32
    elif damage == "another layout":
        kw["fp"] = FP + 1
    elif damage == "another payload length":
        kw["payload_len"] = len(payload) - 64
        buf = buf[64:]
    else:
        buf = bytearray(os.urandom(len(buf)))
    with pytest.raises(kvb.BlockFormatError) as e:
        verify(buf, **kw)
    assert e.value.foreign is foreign


def test_namespace_names_follow_the_rules():
    rule = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
    for parts in [("Meta-Llama-3.1-8B-Instruct", "bfloat16", "L32H8D128B16"), (".hidden/model name", "f32"),
                  ("x" * 300, "float16", "L2")]:
        ns = kvb.safe_namespace(*parts, fingerprint="0123456789ab", suffix="@tp3")
        assert rule.fullmatch(ns) and not ns.startswith("."), ns
        assert ns.endswith("-0123456789ab@tp3"), ns     # the identity survives any cut
    assert kvb.safe_namespace("a b/c") == "a-b-c"


def backing(num_layers, num_blocks, page_shape, block_outermost=False):
    """Per-layer [B, H, N, C] views of one allocation, layer-outermost (vLLM's LBHNC) or
    block-outermost (BLHNC)."""
    h, n, c = page_shape
    if block_outermost:
        buf = torch.zeros(num_blocks, num_layers, h, n, c)
        return [buf[:, l] for l in range(num_layers)]
    buf = torch.zeros(num_layers, num_blocks, h, n, c)
    return [buf[l] for l in range(num_layers)]


def write_through_views(regions, block):
    for v in regions.views(block):
        v[:] = 0xFF


def touched_rows(t):
    """Indices along dimension 0 of `t` whose elements were overwritten with 0xFF bytes."""
    marked = torch.isnan(t)          # 0xFFFFFFFF is a NaN float32
    return sorted({int(i) for i in marked.nonzero()[:, 0].tolist()})


@pytest.mark.parametrize("layout", ["LBHNC", "BLHNC", "LBNHC", "LHBNC", "kernel-split"])
def test_block_regions_cover_exactly_one_block_in_each_layout(layout):
    layers, blocks = 3, 5
    k = 1
    if layout in ("LBHNC", "BLHNC"):
        tensors = backing(layers, blocks, (2, 4, 8), block_outermost=layout == "BLHNC")
    elif layout == "LBNHC":          # memory [L, B, N, H, C], viewed as [B, H, N, C]
        buf = torch.zeros(layers, blocks, 4, 2, 8)
        tensors = [buf[l].permute(0, 2, 1, 3) for l in range(layers)]
    elif layout == "LHBNC":          # memory [L, H, B, N, C]: a block is H separate runs per layer
        buf = torch.zeros(layers, 2, blocks, 4, 8)
        tensors = [buf[l].permute(1, 0, 2, 3) for l in range(layers)]
    else:                            # blocks of 8 tokens split into kernel blocks of 4: 2 rows per block
        k = 2
        tensors = backing(layers, blocks * 2, (2, 4, 8))
    regions = kvb.BlockRegions(tensors, k)
    assert regions.num_blocks == blocks
    page = 2 * 4 * 8 * 4 * k
    assert regions.payload_bytes == layers * page
    expect_runs = {"LBHNC": layers, "BLHNC": 1, "LBNHC": layers, "LHBNC": layers * 2, "kernel-split": layers}
    assert len(regions.runs) == expect_runs[layout]
    write_through_views(regions, 3)
    for t in tensors:
        assert touched_rows(t) == list(range(3 * k, 4 * k))
        assert torch.isnan(t[3 * k:4 * k]).all()


def test_a_block_loads_back_from_files_into_host_and_device_style_destinations(tmp_path):
    tensors = backing(2, 4, (2, 32, 16))
    for t in tensors:
        t.copy_(torch.randn(t.shape))
    regions = kvb.BlockRegions(tensors)
    client = Client(tmp_path)                # a plain directory: no DRAM tier, files only
    client.ensure_namespace(NS)
    io = kvb.BlockIO(client, regions.payload_bytes, regions.fingerprint, 32)
    data = io.stored_form(NS, NAME, regions.views(1))
    assert client.put(NS, NAME, data, parent="cd" * 32, tokens=32)
    assert not client.put(NS, NAME, data)                           # first write wins
    want = [t[1].clone() for t in tensors]
    for t in tensors:
        t[2].zero_()
    assert io.load(NS, NAME, regions.views(2)) == "file"             # preadv straight into the cache
    assert all(torch.equal(t[2], w) for t, w in zip(tensors, want))
    # torch destinations (how a GPU cache is addressed) go through the staging buffer
    dests = [torch.zeros(v.nbytes, dtype=torch.uint8) for v in regions.views(0)]
    assert io.load(NS, NAME, dests) == "file"
    assert b"".join(d.numpy().tobytes() for d in dests) == bytes(data[:regions.payload_bytes])
    # a block that is not this one: refused; a missing block: FileNotFoundError
    other = kvb.BlockIO(client, regions.payload_bytes, regions.fingerprint + 1, 32)
    with pytest.raises(kvb.BlockFormatError):
        other.load(NS, NAME, regions.views(3))
    with pytest.raises(FileNotFoundError):
        io.load(NS, "ef" * 32, regions.views(3))
    path = client.path(NS, NAME)
    raw = bytearray(open(path, "rb").read())
    os.unlink(path)
    raw[10] ^= 0x40
    open(path, "wb").write(raw)
    with pytest.raises(kvb.BlockFormatError):
        io.load(NS, NAME, regions.views(3))


def test_engine_counter_lines_are_json_under_4_kib_and_a_missing_control_file_is_ignored(tmp_path):
    path = tmp_path / "engine"
    c = kvb.EngineCounters("vllm", "host-1-worker", os.fspath(path), interval=3600, create=True)
    c.add(loaded_blocks_dram_map=3, saved_blocks=2)
    assert c.delta() == {"loaded_blocks_dram_map": 3, "saved_blocks": 2}
    c.add(saved_blocks=1)
    assert c.delta() == {"saved_blocks": 1}
    for i in range(400):
        c.add(**{f"counter_with_a_long_name_{i:04d}": 1})
    c.close()
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 and len(lines[0]) <= 4096
    obj = json.loads(lines[0])
    assert obj["engine"] == "vllm" and obj["instance"] == "host-1-worker"
    assert all(isinstance(v, int) for v in obj["counters"].values())
    gone = kvb.EngineCounters("vllm", "x", os.fspath(tmp_path / "no" / "such" / "engine"), interval=3600)
    gone.add(lookups=1)
    assert gone.flush() is False and gone.write_errors == 0
    gone.close()
