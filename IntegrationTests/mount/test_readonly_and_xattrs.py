"""Committed blocks are read-only, for root too; xattrs user.tw.parent/tokens (set by writers before close)
and user.tw.tier/stored_size (read-only) (docs/design.md "Block file semantics")."""

import errno
import os
import stat

import pytest

from twfs_util import assert_errno, block_hash, canonical, errname, pattern, read_block, write_block

pytestmark = pytest.mark.timeout(60)

DENIED = (errno.EACCES, errno.EPERM)


@pytest.fixture
def committed(ns):
    path = canonical(ns, block_hash("read-only"))
    data = pattern(path, 250000)
    write_block(path, data)
    return path, data


# O_WRONLY|O_TRUNC without O_CREAT is left out on purpose: FUSE strips O_CREAT from FUSE_OPEN, so the
# daemon sees exactly what open(p, "wb") on an existing block sends, which the spec accepts.
@pytest.mark.parametrize("flags", [
    os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND, os.O_RDWR | os.O_APPEND,
], ids=["O_WRONLY", "O_RDWR", "O_WRONLY|O_APPEND", "O_RDWR|O_APPEND"])
def test_opening_committed_block_for_writing_without_o_creat_is_denied(committed, flags):
    path, data = committed
    assert_errno(DENIED, os.open, path, flags)
    assert read_block(path) == data
    assert os.stat(path).st_size == len(data)


def test_compat_block_is_read_only_too(ns):
    path = os.path.join(ns, "k@m@0.pt")
    write_block(path, b"compat")
    assert_errno(DENIED, os.open, path, os.O_RDWR)
    assert read_block(path) == b"compat"


@pytest.mark.parametrize("size", [0, 100, 10 << 20], ids=["to-zero", "shrink", "grow"])
def test_truncate_of_committed_block_is_eperm(committed, size):
    path, data = committed
    # The spec says EPERM; EACCES is accepted as the same refusal.
    assert_errno((errno.EPERM, errno.EACCES), os.truncate, path, size)
    assert read_block(path) == data
    assert os.stat(path).st_size == len(data)


def test_chmod_cannot_make_committed_block_writable(committed):
    path, data = committed
    try:
        os.chmod(path, 0o644)
    except OSError as e:
        assert e.errno in (errno.EPERM, errno.EACCES, errno.EROFS), errname(e.errno)
    # Whether chmod failed or was accepted, writing must still be refused.
    assert_errno(DENIED, os.open, path, os.O_WRONLY)
    assert_errno((errno.EPERM, errno.EACCES), os.truncate, path, 0)
    assert read_block(path) == data
    assert stat.S_ISREG(os.stat(path).st_mode)


def test_mode_of_committed_block_is_0444(committed):
    path, _ = committed
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444


# --------------------------------------------------------------------------------------------- xattrs

def test_writer_xattrs_set_before_close_read_back_after_commit(ns):
    parent = block_hash("parent-block", length=64)
    path = canonical(ns, block_hash("child-block"))
    data = pattern(path, 131072)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.setxattr(fd, "user.tw.parent", parent.encode())
        os.setxattr(fd, "user.tw.tokens", b"512")
    finally:
        os.close(fd)
    assert os.getxattr(path, "user.tw.parent") == parent.encode()
    assert os.getxattr(path, "user.tw.tokens") == b"512"
    assert read_block(path) == data


def test_listxattr_of_block_names_the_writer_attributes(ns):
    path = os.path.join(ns, "listed.pt")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"abc" * 1000)
        os.setxattr(fd, "user.tw.parent", block_hash("p").encode())
    finally:
        os.close(fd)
    names = set(os.listxattr(path))
    assert "user.tw.parent" in names, names


def test_tier_and_stored_size_xattrs_are_readable(committed):
    path, data = committed
    tier = os.getxattr(path, "user.tw.tier")
    assert tier.rstrip(b"\0\n") in (b"dram", b"nvme"), tier
    stored = os.getxattr(path, "user.tw.stored_size").strip(b"\0\n ")
    assert stored.isdigit(), stored
    assert int(stored) > 0


def test_setxattr_on_committed_block_is_refused(committed):
    path, _ = committed
    refused = (errno.EPERM, errno.EACCES, errno.EROFS)
    assert_errno(refused, os.setxattr, path, "user.tw.parent", block_hash("late").encode())
    assert_errno(refused, os.setxattr, path, "user.tw.tier", b"dram")
    assert_errno(refused, os.setxattr, path, "user.tw.stored_size", b"1")
    assert os.getxattr(path, "user.tw.tier").rstrip(b"\0\n") in (b"dram", b"nvme")


def test_missing_xattr_is_enodata(committed):
    path, _ = committed
    assert_errno(errno.ENODATA, os.getxattr, path, "user.tw.no-such-attribute")
