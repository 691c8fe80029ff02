"""Block names (docs/design.md "Naming"): canonical MOUNT/NS/hh/HASH (16..128 lowercase hex, hh its first two;
the 256 fan-out directories always resolve and are listed when they hold something), and any other path
inside a namespace (components of 1..255 bytes, at most 16 directories deep)."""

import errno
import os
import random
import stat
import time

import pytest

from twfs_util import assert_errno, block_hash, canonical, first_difference, read_block, write_block

pytestmark = pytest.mark.timeout(60)

BAD_NAME = (errno.EINVAL, errno.ENAMETOOLONG)


def _create(path):
    write_block(os.fspath(path), b"payload")


# ------------------------------------------------------------------------------------ canonical names

def test_canonical_block_reads_back_with_logical_size_commit_mtime_and_mode_0444(ns):
    data = os.urandom(random.randint(1 << 20, 3 << 20))
    h = block_hash("canonical", 1)
    path = canonical(ns, h)
    t0 = time.time()
    write_block(path, data)
    t1 = time.time()
    got = read_block(path)
    assert got == data, first_difference(got, data)
    st = os.stat(path)
    assert st.st_size == len(data)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o444, oct(st.st_mode)
    assert t0 - 2 <= st.st_mtime <= t1 + 2, (t0, st.st_mtime, t1)


@pytest.mark.parametrize("length", [16, 17, 40, 64, 127, 128])
def test_canonical_hash_lengths_16_to_128_are_accepted(ns, length):
    h = block_hash("len", length, length=length)
    data = os.urandom(1000 + length)
    write_block(canonical(ns, h), data)
    assert read_block(canonical(ns, h)) == data


def test_all_256_fan_out_directories_exist_implicitly(ns):
    for i in range(256):
        d = ns / f"{i:02x}"
        assert os.path.isdir(d), d
        st = os.stat(d)
        assert stat.S_ISDIR(st.st_mode)
    assert os.listdir(ns / "ab") == []


def test_fan_out_directory_name_cannot_be_written_as_a_file(ns):
    assert_errno((errno.EISDIR, errno.EINVAL, errno.EEXIST), _create, ns / "ab")


def test_a_hash_in_another_fan_out_directory_is_a_plain_nested_block(ns):
    """Only NS/hh/HASH with hh = HASH[:2] is the canonical block; any other path is a file of its own."""
    from tokenwarehouse import Client
    h = block_hash("wrong-fanout")
    wrong = "00" if not h.startswith("00") else "11"
    write_block(ns / wrong / h, b"nested")
    assert read_block(ns / wrong / h) == b"nested"
    assert not os.path.exists(canonical(ns, h))                 # not the canonical block of h
    write_block(canonical(ns, h), b"canonical")
    with Client(ns.parent) as c:
        assert c.get(ns.name, f"{wrong}/{h}") == b"nested"
        assert c.get(ns.name, h) == b"canonical"


@pytest.mark.parametrize("case", ["non_hex", "uppercase", "uppercase_all", "too_short", "too_long",
                                  "trailing_suffix", "dashes"])
def test_other_names_in_a_fan_out_directory_are_plain_files(ns, case):
    name = {
        "non_hex": "ab" + "g" * 30,
        "uppercase": "ab" + "CDEF" * 4,
        "uppercase_all": "AB" + "CDEF" * 4,
        "too_short": "ab" + "0" * 13,          # 15 hex characters
        "too_long": "ab" + "0" * 127,          # 129 hex characters
        "trailing_suffix": "ab" + "0" * 30 + ".pt",
        "dashes": "ab" + "-" * 20,
    }[case]
    parent = ns / name[:2].lower()
    _create(parent / name)
    assert read_block(parent / name) == b"payload"
    assert os.listdir(parent) == [name]
    assert name[:2].lower() in os.listdir(ns)                   # the fan-out directory is listed now


def test_names_past_the_limits_get_enametoolong(ns):
    assert_errno(errno.ENAMETOOLONG, _create, ns / "ab" / ("ab" + "0" * 298))   # 300 bytes
    assert_errno(errno.ENAMETOOLONG, os.mkdir, ns / ("d" * 256))
    assert warehouse_alive(ns)


def test_lookup_of_a_malformed_canonical_name_is_enoent_or_einval(ns):
    assert_errno((errno.ENOENT, errno.EINVAL), os.stat, ns / "ab" / "xyz")
    assert_errno((errno.ENOENT, errno.EINVAL), os.stat, ns / "ab" / ("cd" + "0" * 30))


def warehouse_alive(ns) -> bool:
    # The daemon still answers: the namespace is still a directory.
    return os.path.isdir(ns)


# -------------------------------------------------------------------------------- compatibility names

@pytest.mark.parametrize("name", [
    "key@model@0.pt",
    "vllm@llama-3@tp0@0123456789abcdef.safetensors",
    "name with spaces.bin",
    "ünïcødé-блок-块.kv",
    "x",
    "HASH-UPPER-0123ABCD",
    ".hidden-tmp-file",
    "a" * 255,
    "é" * 127 + "a",   # 255 bytes in UTF-8
])
def test_compatibility_name_directly_under_namespace_is_a_block(ns, name):
    assert len(name.encode()) <= 255
    data = os.urandom(70000)
    path = os.path.join(ns, name)
    write_block(path, data)
    assert read_block(path) == data
    st = os.stat(path)
    assert st.st_size == len(data)
    assert stat.S_IMODE(st.st_mode) == 0o444
    assert name in os.listdir(ns)


def test_compatibility_name_that_is_not_utf8_is_einval(ns):
    # Names are kept as UTF-8 text (docs/fuse.md); other byte strings are refused, never altered.
    name = b"raw-\xff\xfe-bytes"
    path = os.fsencode(ns) + b"/" + name
    assert_errno(errno.EINVAL, write_block, path, b"bytes-name")
    assert name not in os.listdir(os.fsencode(ns))
    assert warehouse_alive(ns)


@pytest.mark.parametrize("nbytes", [256, 300, 1000])
def test_compatibility_name_longer_than_255_bytes_is_enametoolong(ns, nbytes):
    assert_errno(BAD_NAME, _create, ns / ("k" * nbytes))
    assert warehouse_alive(ns)


def test_two_byte_multibyte_name_over_255_bytes_is_rejected(ns):
    name = "é" * 128   # 128 characters but 256 bytes
    assert_errno(BAD_NAME, _create, ns / name)


def test_same_key_in_two_namespaces_holds_independent_blocks(warehouse):
    a = warehouse.namespace("model-a")
    b = warehouse.namespace("model-b")
    h = block_hash("shared-key")
    write_block(canonical(a, h), b"A" * 5000)
    write_block(canonical(b, h), b"B" * 7000)
    write_block(os.path.join(a, "k.pt"), b"a")
    write_block(os.path.join(b, "k.pt"), b"bb")
    assert read_block(canonical(a, h)) == b"A" * 5000
    assert read_block(canonical(b, h)) == b"B" * 7000
    assert read_block(os.path.join(a, "k.pt")) == b"a"
    assert read_block(os.path.join(b, "k.pt")) == b"bb"


def test_missing_block_is_enoent(ns):
    assert_errno(errno.ENOENT, os.open, canonical(ns, block_hash("absent")), os.O_RDONLY)
    assert_errno(errno.ENOENT, os.open, os.path.join(ns, "absent.pt"), os.O_RDONLY)
    assert_errno(errno.ENOENT, os.stat, os.path.join(ns, "absent.pt"))
