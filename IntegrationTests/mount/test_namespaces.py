"""Namespaces (docs/design.md "Naming"): mkdir MOUNT/NS, names [A-Za-z0-9._@+-]{1,128} not starting with '.',
owner, group and mode enforced like a directory's; the hidden control area MOUNT/.tw/."""

import errno
import os
import stat

import pytest

from twfs_util import assert_errno, errno_as_user, errname, mounts_at, proc_mounts_types, write_block

NOBODY = 65534

pytestmark = pytest.mark.timeout(60)


def test_mount_is_fuse_twfs_with_allow_other_and_default_permissions(warehouse):
    assert "fuse.twfs" in proc_mounts_types(warehouse.mount)
    (entry,) = [m for m in mounts_at(warehouse.mount) if m["fstype"] == "fuse.twfs"]
    assert "allow_other" in entry["options"], entry
    assert "default_permissions" in entry["options"], entry


@pytest.mark.parametrize("mode,umask", [(0o755, 0o022), (0o750, 0o022), (0o777, 0o027), (0o700, 0o000)])
def test_mkdir_namespace_applies_mode_umask_and_creator_owner(warehouse, mode, umask):
    old = os.umask(umask)
    try:
        os.mkdir(warehouse.mount / "model-a", mode)
    finally:
        os.umask(old)
    st = os.stat(warehouse.mount / "model-a")
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == mode & ~umask, oct(st.st_mode)
    assert st.st_uid == os.geteuid()
    assert st.st_gid == os.getegid()


def test_mkdir_existing_namespace_is_eexist(warehouse):
    warehouse.namespace("dup")
    assert_errno(errno.EEXIST, os.mkdir, warehouse.mount / "dup")


def test_namespace_owner_and_mode_are_enforced_for_other_users(warehouse):
    closed = warehouse.namespace("closed", 0o755)       # root's, not writable by others
    private = warehouse.namespace("private", 0o700)     # root's, not even listable by others
    shared = warehouse.namespace("given", 0o755)
    os.chown(shared, NOBODY, NOBODY)
    st = os.stat(shared)
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)

    def create(p):
        write_block(os.fspath(p), b"x" * 100)

    got = errno_as_user(NOBODY, NOBODY, create, closed / "k@0.pt")
    assert got in (errno.EACCES, errno.EPERM), errname(got)
    got = errno_as_user(NOBODY, NOBODY, os.listdir, private)
    assert got == errno.EACCES, errname(got)
    assert errno_as_user(NOBODY, NOBODY, create, shared / "k@0.pt") is None
    assert os.path.getsize(shared / "k@0.pt") == 100

    os.chmod(closed, 0o777)
    assert stat.S_IMODE(os.stat(closed).st_mode) == 0o777
    assert errno_as_user(NOBODY, NOBODY, create, closed / "k@1.pt") is None


@pytest.mark.parametrize("name", [
    "a", "Z", "0", "llama-3.1-8b@tp2+fp16_v1", "Qwen2.5-72B-Instruct@bf16@tp8@rank3",
    "a.", "x" * 128, "A-Za-z0-9._@+-",
])
def test_valid_namespace_names_are_accepted(warehouse, name):
    os.mkdir(warehouse.mount / name)
    assert os.path.isdir(warehouse.mount / name)
    assert name in os.listdir(warehouse.mount)
    assert name in warehouse.status()["namespaces"]


@pytest.mark.parametrize("name", [
    "has space", "dollar$", "semi;colon", "star*", "q?", "colon:x", "tab\tname", "back\\slash",
    "ünïcode", "percent%", "quote'", "equals=",
])
def test_namespace_name_with_bad_characters_is_einval(warehouse, name):
    assert_errno(errno.EINVAL, os.mkdir, warehouse.mount / name)
    assert name not in os.listdir(warehouse.mount)
    assert warehouse.alive()


@pytest.mark.parametrize("name", [".hidden", ".a", "..x", ".tw2"])
def test_namespace_name_starting_with_dot_is_einval(warehouse, name):
    assert_errno(errno.EINVAL, os.mkdir, warehouse.mount / name)
    assert warehouse.alive()


@pytest.mark.parametrize("length", [129, 200, 255, 256, 1000])
def test_namespace_name_longer_than_128_is_rejected(warehouse, length):
    # The spec allows EINVAL or ENAMETOOLONG for any name that breaks the rules.
    assert_errno((errno.EINVAL, errno.ENAMETOOLONG), os.mkdir, warehouse.mount / ("n" * length))
    assert warehouse.alive()


def test_mkdir_of_control_area_name_fails_without_crashing(warehouse):
    got = None
    try:
        os.mkdir(warehouse.mount / ".tw")
    except OSError as e:
        got = e.errno
    assert got in (errno.EEXIST, errno.EINVAL, errno.EPERM, errno.EACCES), errname(got)
    assert warehouse.alive()


def test_control_area_status_is_one_json_object_with_required_keys(warehouse):
    warehouse.namespace("m1")
    warehouse.namespace("m2")
    assert os.path.isdir(warehouse.mount / ".tw")
    st = warehouse.status()
    assert isinstance(st, dict)
    for key in ("blocks", "used_bytes", "capacity_bytes", "segments", "namespaces"):
        assert key in st, f"status lacks {key!r}: {st}"
    assert isinstance(st["blocks"], int) and not isinstance(st["blocks"], bool)
    assert isinstance(st["namespaces"], list)
    assert {"m1", "m2"} <= set(st["namespaces"])
    # --capacity 2G: accept binary (2 GiB) or decimal (2 GB) reading of the suffix.
    assert st["capacity_bytes"] in (2 << 30, 2 * 10**9), st["capacity_bytes"]


def test_status_block_count_follows_writes(warehouse):
    ns = warehouse.namespace("m")
    before = warehouse.status()["blocks"]
    for i in range(10):
        write_block(os.fspath(ns / f"blk-{i}"), os.urandom(4096))
    assert warehouse.status()["blocks"] == before + 10


def test_creating_a_regular_file_in_the_root_fails_without_crashing(warehouse):
    # Blocks live in namespaces; the spec does not say which errno a file in the root gets.
    with pytest.raises(OSError):
        write_block(os.fspath(warehouse.mount / "stray-file"), b"data")
    assert warehouse.alive()
    assert "stray-file" not in os.listdir(warehouse.mount)


def test_namespace_compression_is_set_with_an_xattr_and_blocks_read_back(warehouse):
    ns = os.path.join(warehouse.mount, "zipped")
    os.mkdir(ns)
    assert os.getxattr(ns, "user.tw.compression") == b"off"
    os.setxattr(ns, "user.tw.compression", b"lz4")
    assert os.getxattr(ns, "user.tw.compression") == b"lz4"
    data = (b"KV" * 512 + bytes(range(256))) * 1024     # compressible
    path = os.path.join(ns, "0123456789abcdef0123456789abcdef")
    with open(path, "wb") as f:
        f.write(data)
    assert open(path, "rb").read() == data
    assert int(os.getxattr(path, "user.tw.stored_size")) < len(data) // 2
    with pytest.raises(OSError) as e:
        os.setxattr(ns, "user.tw.compression", b"zstd")
    assert e.value.errno == errno.EINVAL
