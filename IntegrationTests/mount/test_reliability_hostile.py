"""Hostile names and calls (issue 7): a table of bad inputs, each with the errno or outcome that
docs/design.md ("Naming", "Block file semantics") and docs/fuse.md give for it.

Every case runs against one daemon (`--max-block 1M`); after each, a sentinel block must still read
back exactly and the daemon must be alive, so a case that crashes or corrupts the daemon fails too.
All mismatches are reported together, one line per case.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import threading

import pytest

from twfs_util import block_hash, canonical, errname, pattern, read_block, write_block

E = errno
NAME = (E.EINVAL, E.ENAMETOOLONG)        # "a name that breaks the rules: EINVAL or ENAMETOOLONG"
MAX_BLOCK = 1 << 20


class Ctx:
    def __init__(self, wh):
        self.wh = wh
        self.root = os.fspath(wh.mount)
        self.ns = os.fspath(wh.namespace("hostile"))
        self.other = os.fspath(wh.namespace("other"))
        self.h = block_hash("hostile", "committed")
        self.block = canonical(self.ns, self.h)
        self.data = pattern(self.h, 70000)
        write_block(self.block, self.data)
        self.compat = os.path.join(self.ns, "committed.kv")
        write_block(self.compat, b"compat" * 1000)
        self.n = 0

    def fresh(self, tag: str = "") -> str:
        """A canonical path no block has used."""
        self.n += 1
        return canonical(self.ns, block_hash("fresh", tag, self.n))


def _create(path, data=b"payload"):
    write_block(os.fspath(path) if not isinstance(path, bytes) else path, data)


def _open_close(path, flags):
    os.close(os.open(path, flags, 0o644))


def _staged(c: Ctx, tag: str, fn) -> None:
    """fn(fd) on a new block being written; the descriptor is closed whatever happens."""
    fd = os.open(c.fresh(tag), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        fn(fd)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def _committed_unchanged(c: Ctx) -> None:
    assert read_block(c.block) == c.data, "committed block changed"
    assert os.stat(c.block).st_size == len(c.data)


def _plain_file(path, data=b"payload"):
    """The case made a plain file (a path inside the namespace that is not a canonical hash's)."""
    def check(c):
        assert read_block(path(c)) == data
    return check


def _chmod_recorded(c):
    st = os.stat(c.block)
    assert stat.S_IMODE(st.st_mode) == 0o666, oct(st.st_mode)   # recorded as given...
    _committed_unchanged(c)                                   # ...and the block is still immutable
    os.chmod(c.block, 0o444)


def _chown_recorded(c):
    st = os.stat(c.block)
    assert (st.st_uid, st.st_gid) == (1, 1), (st.st_uid, st.st_gid)
    _committed_unchanged(c)


def _rename_into_other_fanout(c):
    tmp = os.path.join(c.ns, "to-move.kv")
    write_block(tmp, b"moved")
    c.moved = os.path.join(c.ns, "00", "ff" + "1" * 30)
    os.rename(tmp, c.moved)


# Each case: (id, action(ctx) raising OSError or returning, expected errnos or None for success,
# optional check(ctx) run afterwards that asserts the outcome).

def _write_past_max(c):
    fd = os.open(c.fresh("big"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.pwrite(fd, b"x", MAX_BLOCK)
    finally:
        os.close(fd)


def _close_after_efbig(c):
    # The write past the maximum fails, and close then reports EFBIG too: nothing becomes visible.
    path = c.fresh("big-close")
    c.last = path
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"y" * 4096)
    try:
        os.pwrite(fd, b"y", MAX_BLOCK + 4096)
    except OSError as e:
        assert e.errno == E.EFBIG, errname(e.errno)
    os.close(fd)


def _overwrite_wb(c):
    with open(c.block, "wb") as f:          # open(p, "wb") on a committed block: accepted, discarded
        f.write(b"\xff" * 1000)
        f.truncate(10)


def _append_creat(c):
    fd = os.open(c.block, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    os.write(fd, b"appended")
    os.close(fd)


def _ctypes_nul_name(c):
    # A NUL ends a C path: the kernel sees "nul-a", and nothing named "...\0hidden" can exist.
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.open(os.fsencode(os.path.join(c.ns, "nul-a")) + b"\0hidden", os.O_CREAT | os.O_WRONLY, 0o644)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "open")
    os.write(fd, b"n")
    os.close(fd)


def _nul_name_check(c):
    names = os.listdir(c.ns)
    assert "nul-a" in names and not any("hidden" in n for n in names), names


def _mmap_write(c):
    fd = os.open(c.block, os.O_RDONLY)
    try:
        mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _two_writers(c):
    """Two writers create one name at once with different bytes: exactly one whole version wins."""
    path = c.fresh("race")
    c.last = path
    a, b = pattern("writer-a", 300000), pattern("writer-b", 200000)
    fa = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    fb = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    barrier = threading.Barrier(2)
    errs = []

    def run(fd, data):
        try:
            barrier.wait()
            for off in range(0, len(data), 16384):
                os.pwrite(fd, data[off:off + 16384], off)
        except OSError as e:
            errs.append(e)

    ts = [threading.Thread(target=run, args=(fa, a)), threading.Thread(target=run, args=(fb, b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    os.close(fa)                 # the first to close commits
    os.close(fb)                 # the other's bytes are discarded
    assert not errs, errs
    got = read_block(path)
    assert got == a, f"got {len(got)} bytes: {'writer b' if got == b else 'a mix' if got else 'nothing'}"


def _two_processes(c):
    """Two processes create one name at once; whichever closes first wins, never a mix."""
    path = c.fresh("race-proc")
    versions = {}
    pids = []
    for tag in ("p1", "p2"):
        data = pattern(tag, 250000)
        versions[tag] = data
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
                for off in range(0, len(data), 8192):
                    os.pwrite(fd, data[off:off + 8192], off)
                os.close(fd)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    got = read_block(path)
    assert got in versions.values(), f"{len(got)} bytes that are neither writer's block"


def _rename_onto_committed(c):
    tmp = os.path.join(c.ns, "tmp-onto")
    write_block(tmp, b"newer bytes")
    os.rename(tmp, c.block)               # first write wins: final kept, tmp gone


def _excl_race_check(c):
    assert not os.path.exists(os.path.join(c.ns, "tmp-onto"))


def _uncommitted_invisible(c):
    assert not os.path.exists(c.last), f"{c.last} visible after a failed commit"


def _long_path(c):
    """16 directories of 240 bytes hold a file whose path in the namespace passes 4096 bytes (opened
    relative to its directory, so the kernel's own PATH_MAX on the whole path is not what refuses it)."""
    deep = os.path.join(c.ns, *[chr(ord("a") + i) * 240 for i in range(16)])
    os.makedirs(deep)
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(os.open("f" * 255, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def _utime_recorded(c):
    os.utime(c.block, (1, 1))
    assert os.stat(c.block).st_mtime == 1, "utimes is recorded (rsync -a, shutil.copy2 set it)"
    _committed_unchanged(c)


def _ctrl_name_check(c):
    name = "ctl\x01\x1f\x7f\n\t.kv"
    assert read_block(os.path.join(c.ns, name)) == b"ctrl"
    assert name in os.listdir(c.ns)


CASES = [
    # --- names under NS/hh/: the canonical hash of hh, or any other file name (a plain nested file)
    ("non-hex name in a fan-out dir", lambda c: _create(os.path.join(c.ns, "ab", "ab" + "g" * 30)), None,
     _plain_file(lambda c: os.path.join(c.ns, "ab", "ab" + "g" * 30))),
    ("uppercase hex in a fan-out dir", lambda c: _create(os.path.join(c.ns, "ab", "AB" + "CD" * 15)), None, None),
    ("15 hex chars in a fan-out dir", lambda c: _create(os.path.join(c.ns, "ab", "ab" + "0" * 13)), None, None),
    ("129 hex chars in a fan-out dir", lambda c: _create(os.path.join(c.ns, "ab", "ab" + "0" * 127)), None, None),
    ("256-byte name in a fan-out dir", lambda c: _create(os.path.join(c.ns, "ab", "ab" + "0" * 254)), NAME, None),
    ("a hash in another fan-out directory", lambda c: _create(os.path.join(c.ns, "00", "ff" + "0" * 30)), None,
     _plain_file(lambda c: os.path.join(c.ns, "00", "ff" + "0" * 30))),
    ("directory that does not exist", lambda c: _create(os.path.join(c.ns, "zz", "zz" + "0" * 30)), E.ENOENT, None),
    ("fan-out directory written as a file", lambda c: _create(os.path.join(c.ns, "ab")),
     (E.EISDIR, E.EEXIST), None),
    ("mkdir of a fan-out directory: it exists", lambda c: os.mkdir(os.path.join(c.ns, "cd")), E.EEXIST, None),
    ("control bytes in a name in a fan-out dir", lambda c: _create(os.path.join(c.ns, "ab", "ab\x01" + "0" * 30)),
     None, None),
    # --- compatibility names under NS/
    ("compat 256-byte name", lambda c: _create(os.path.join(c.ns, "k" * 256)), NAME, None),
    ("compat 1000-byte name", lambda c: _create(os.path.join(c.ns, "k" * 1000)), NAME, None),
    ("compat 128 two-byte chars (256 bytes)", lambda c: _create(os.path.join(c.ns, "é" * 128)), NAME, None),
    ("compat name not UTF-8", lambda c: _create(os.fsencode(c.ns) + b"/bad-\xff\xfe"), E.EINVAL, None),
    ("compat name with control bytes (valid: a block)",
     lambda c: _create(os.path.join(c.ns, "ctl\x01\x1f\x7f\n\t.kv"), b"ctrl"), None, _ctrl_name_check),
    ("name with an embedded NUL (C string ends there)", _ctypes_nul_name, None, _nul_name_check),
    ("'..' as a block name", lambda c: _open_close(os.path.join(c.ns, ".."), os.O_CREAT | os.O_WRONLY),
     E.EISDIR, None),
    ("'..' climbing out of a fan-out dir", lambda c: _open_close(os.path.join(c.ns, "ab", "..", ".."),
                                                                 os.O_CREAT | os.O_WRONLY), E.EISDIR, None),
    ("path below a block", lambda c: _create(os.path.join(c.block, "x")), E.ENOTDIR, None),
    ("O_DIRECTORY open of a block", lambda c: _open_close(c.block, os.O_RDONLY | os.O_DIRECTORY), E.ENOTDIR, None),
    # --- namespaces and the mount root
    ("namespace starting with '.'", lambda c: os.mkdir(os.path.join(c.root, ".hidden")), E.EINVAL, None),
    ("namespace of 129 chars", lambda c: os.mkdir(os.path.join(c.root, "n" * 129)), E.EINVAL, None),
    ("namespace with a space", lambda c: os.mkdir(os.path.join(c.root, "sp ace")), E.EINVAL, None),
    ("namespace with a control byte", lambda c: os.mkdir(os.path.join(c.root, "ns\x01")), E.EINVAL, None),
    ("namespace with non-ASCII", lambda c: os.mkdir(os.path.join(c.root, "ünï")), E.EINVAL, None),
    ("namespace named .tw", lambda c: os.mkdir(os.path.join(c.root, ".tw")), (E.EEXIST, E.EINVAL), None),
    ("file at the mount root", lambda c: _create(os.path.join(c.root, "rootfile")), E.EPERM, None),
    ("mkdir over a block", lambda c: os.mkdir(c.compat), E.EEXIST, None),
    ("directories 17 deep", lambda c: os.makedirs(os.path.join(c.ns, *["d"] * 17)), E.ENAMETOOLONG, None),
    ("a path inside the namespace longer than 4096 bytes", _long_path, E.ENAMETOOLONG, None),
    ("rmdir of a non-empty namespace", lambda c: os.rmdir(c.ns), E.ENOTEMPTY, None),
    ("rmdir of a non-empty directory", lambda c: os.rmdir(os.path.join(c.ns, "ab")), E.ENOTEMPTY, None),
    ("rmdir of a block", lambda c: os.rmdir(c.compat), E.ENOTDIR, None),
    ("rmdir of an empty fan-out directory", lambda c: os.rmdir(os.path.join(c.ns, "fe")), None, None),
    ("unlink of a namespace", lambda c: os.unlink(c.ns), (E.EISDIR, E.EPERM), None),
    ("unlink of a directory", lambda c: os.unlink(os.path.join(c.ns, "ab")), (E.EISDIR, E.EPERM), None),
    ("rename of a directory into itself", lambda c: (os.makedirs(os.path.join(c.ns, "outer", "inner")),
                                                   os.rename(os.path.join(c.ns, "outer"),
                                                             os.path.join(c.ns, "outer", "inner", "x"))),
     E.EINVAL, None),
    ("rename of a directory that holds blocks", lambda c: (os.makedirs(os.path.join(c.ns, "full")),
                                                         _create(os.path.join(c.ns, "full", "f")),
                                                         os.rename(os.path.join(c.ns, "full"), os.path.join(c.ns, "moved"))),
     E.EXDEV, None),
    ("rename of a namespace", lambda c: os.rename(c.other, os.path.join(c.root, "renamed")), (E.EPERM, E.EXDEV), None),
    # --- links and special files
    ("symlink in a namespace", lambda c: os.symlink("x", os.path.join(c.ns, "sl")), E.EPERM, None),
    ("symlink in a fan-out dir", lambda c: os.symlink("x", c.fresh("sl")), (E.EPERM, E.EINVAL), None),
    ("symlink at the root", lambda c: os.symlink("hostile", os.path.join(c.root, "sl")), E.EPERM, None),
    ("hard link of a committed block", lambda c: os.link(c.block, os.path.join(c.ns, "hl")), E.EPERM, None),
    ("hard link across namespaces", lambda c: os.link(c.block, canonical(c.other, c.h)), (E.EPERM, E.EXDEV), None),
    ("hard link of the control file", lambda c: os.link(os.path.join(c.root, ".tw", "status"),
                                                       os.path.join(c.ns, "st")), E.EPERM, None),
    ("mknod character device", lambda c: os.mknod(os.path.join(c.ns, "null"), 0o600 | stat.S_IFCHR,
                                                  os.makedev(1, 3)), E.EPERM, None),
    ("mknod block device", lambda c: os.mknod(os.path.join(c.ns, "blk"), 0o600 | stat.S_IFBLK,
                                              os.makedev(7, 0)), E.EPERM, None),
    ("mknod FIFO", lambda c: os.mknod(os.path.join(c.ns, "fifo"), 0o600 | stat.S_IFIFO), E.EPERM, None),
    # --- committed blocks are read-only, root included
    ("chmod of a committed block: recorded", lambda c: os.chmod(c.block, 0o666), None, _chmod_recorded),
    ("chown of a committed block: recorded", lambda c: os.chown(c.block, 1, 1), None, _chown_recorded),
    ("truncate of a committed block", lambda c: os.truncate(c.block, 0), E.EPERM, _committed_unchanged),
    ("truncate to grow a committed block", lambda c: os.truncate(c.block, 1 << 20), E.EPERM, _committed_unchanged),
    ("O_WRONLY open of a committed block", lambda c: _open_close(c.block, os.O_WRONLY), (E.EACCES, E.EPERM), None),
    ("O_RDWR open of a committed block", lambda c: _open_close(c.block, os.O_RDWR), (E.EACCES, E.EPERM), None),
    ("O_APPEND open of a committed block", lambda c: _open_close(c.block, os.O_WRONLY | os.O_APPEND),
     (E.EACCES, E.EPERM), _committed_unchanged),
    ("O_CREAT|O_APPEND on a committed block: discarded", _append_creat, None, _committed_unchanged),
    ("O_CREAT|O_EXCL on a committed block", lambda c: _open_close(c.block, os.O_CREAT | os.O_EXCL | os.O_WRONLY),
     E.EEXIST, _committed_unchanged),
    ("open 'wb' + write + truncate on a committed block: discarded", _overwrite_wb, None, _committed_unchanged),
    ("writable shared mmap of a committed block", _mmap_write, E.EACCES, _committed_unchanged),
    ("utimes of a committed block: recorded", _utime_recorded, None, None),
    ("rename onto a committed block: first write wins", _rename_onto_committed, None,
     lambda c: (_committed_unchanged(c), _excl_race_check(c))),
    # --- sizes
    ("write past the maximum block size", _write_past_max, E.EFBIG, None),
    ("close after a write past the maximum", _close_after_efbig, E.EFBIG, _uncommitted_invisible),
    ("ftruncate of a new block past the maximum", lambda c: _staged(
        c, "ftr", lambda fd: os.ftruncate(fd, MAX_BLOCK + 1)), E.EFBIG, None),
    # --- renames
    ("rename across namespaces", lambda c: os.rename(c.block, canonical(c.other, c.h)), E.EXDEV,
     _committed_unchanged),
    ("rename of a compat block across namespaces", lambda c: os.rename(c.compat, os.path.join(c.other, "x.kv")),
     E.EXDEV, None),
    ("rename into another fan-out dir: a plain nested file", _rename_into_other_fanout, None,
     lambda c: _plain_file(lambda c: c.moved, b"moved")(c)),
    ("rename to the mount root", lambda c: os.rename(c.block, os.path.join(c.root, "x")), (E.EPERM, E.EXDEV),
     _committed_unchanged),
    ("rename to a 256-byte name", lambda c: os.rename(c.compat, os.path.join(c.ns, "r" * 256)), NAME, None),
    ("rename of the control area", lambda c: os.rename(os.path.join(c.root, ".tw"), os.path.join(c.root, "tw")),
     (E.EPERM, E.EXDEV), None),
    # --- xattrs
    ("setxattr user.tw.tier", lambda c: os.setxattr(c.block, "user.tw.tier", b"dram"), E.EPERM, None),
    ("setxattr user.tw.stored_size", lambda c: os.setxattr(c.block, "user.tw.stored_size", b"1"), E.EPERM, None),
    ("setxattr user.tw.parent after commit", lambda c: os.setxattr(c.block, "user.tw.parent", b"ab" * 8),
     E.EPERM, None),
    ("removexattr user.tw.parent after commit", lambda c: os.removexattr(c.block, "user.tw.parent"),
     (E.EPERM, E.ENODATA), None),
    ("setxattr user.tw.tier while staging", lambda c: _staged(
        c, "x1", lambda fd: os.setxattr(fd, "user.tw.tier", b"dram")), E.EPERM, None),
    ("setxattr user.tw.parent not hex", lambda c: _staged(
        c, "x2", lambda fd: os.setxattr(fd, "user.tw.parent", b"zz")), E.EINVAL, None),
    ("setxattr user.tw.tokens over 16 KiB", lambda c: _staged(
        c, "x3", lambda fd: os.setxattr(fd, "user.tw.tokens", b"1" * 20000)),
     (E.E2BIG, E.ERANGE, E.EINVAL, E.ENOSPC), None),
    ("setxattr user.* over 4 KiB", lambda c: _staged(
        c, "x4", lambda fd: os.setxattr(fd, "user.big", b"1" * 5000)), (E.E2BIG, E.ENOSPC), None),
    ("user.* attributes over 4 KiB in all", lambda c: _staged(
        c, "x5", lambda fd: [os.setxattr(fd, f"user.a{i}", b"1" * 1500) for i in range(3)]), E.ENOSPC, None),
    ("setxattr trusted.*", lambda c: _staged(c, "x6", lambda fd: os.setxattr(fd, "trusted.x", b"1")),
     (E.ENOTSUP, E.EPERM), None),
    ("setxattr user.* on a committed block", lambda c: os.setxattr(c.block, "user.late", b"1"), E.EPERM, None),
    ("getxattr of an unknown name", lambda c: os.getxattr(c.block, "user.nope"), E.ENODATA, None),
    # --- control area
    ("write open of .tw/status", lambda c: _open_close(os.path.join(c.root, ".tw", "status"), os.O_WRONLY),
     (E.EACCES, E.EPERM), None),
    ("create in .tw", lambda c: _create(os.path.join(c.root, ".tw", "new")), (E.EPERM, E.EACCES), None),
    ("unlink .tw/status", lambda c: os.unlink(os.path.join(c.root, ".tw", "status")), (E.EPERM, E.EACCES), None),
    ("mkdir in .tw", lambda c: os.mkdir(os.path.join(c.root, ".tw", "d")), (E.EPERM, E.EACCES), None),
    # --- concurrency
    ("two threads write one name with different bytes", _two_writers, None, None),
    ("two processes write one name with different bytes", _two_processes, None, None),
]


@pytest.mark.timeout(180)
def test_hostile_names_and_calls_get_the_documented_errno(warehouse_factory):
    wh = warehouse_factory("--max-block", "1M")
    c = Ctx(wh)
    assert len(CASES) >= 40
    mismatches, rows = [], []
    for case_id, action, expected, check in CASES:
        allowed = {None} if expected is None else {expected} if isinstance(expected, int) else set(expected)
        got = None
        try:
            action(c)
        except OSError as e:
            got = e.errno
        except AssertionError as e:
            mismatches.append(f"{case_id}: {e}")
            continue
        want = " or ".join(sorted(errname(x) for x in allowed))
        rows.append(f"{case_id:60} want {want:28} got {errname(got)}")
        if got not in allowed:
            mismatches.append(f"{case_id}: want {want}, got {errname(got)}")
            continue
        try:
            if check is not None:
                check(c)
            assert wh.alive(), "daemon died"
            assert read_block(c.block) == c.data, "sentinel block changed"
        except (AssertionError, OSError) as e:
            mismatches.append(f"{case_id}: outcome: {e!r}")
            if not wh.alive():
                break
    print("\n" + "\n".join(rows))
    print(f"{len(CASES)} hostile cases, {len(mismatches)} mismatches")
    assert not mismatches, "\n".join(mismatches)
