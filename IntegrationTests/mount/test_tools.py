"""Everyday tools on a namespace (issue 14, docs/compat.md): cp, rsync, tar, shutil, shell redirection from
programs that exit without closing, killed writers, rm -rf, ls, chmod/chown/touch, xattrs, and the errnos of
bad input. Each test copies or writes, checks the bytes, remounts (SIGTERM, a new daemon on the same store)
and checks again. Source trees live on the local disk (the test's tmp_path).

Names at the top of a namespace that are two hex digits are fan-out directories (`NS/ab`), so the trees
here use other names there.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from twfs_util import assert_errno, block_hash, canonical, pattern

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20


# ------------------------------------------------------------------------------------------- helpers

def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (Tools/install-deps.sh must install it)")
    return path


def run(cmd, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def make_tree(root: Path) -> None:
    """A small tree with nesting, an empty directory, an empty file, odd but legal names and sizes."""
    files = {
        "top.bin": 3 * MiB + 17,
        "empty": 0,
        "dir one/nested/deeper/leaf.txt": 4096,
        "dir one/nested/a.pt": 70000,
        "dir one/nested/deeper/even/deeper/x@model@0.safetensors": 1234,
        "model_r0/3fa/9c_g0/3fa9c1d2e3f4a5b6c7d8e9f0a1b2c3d4.bin": 64 * 1024,
        "unicodé ☃/файл": 10,
    }
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(pattern(rel, size))
    (root / "empty dir").mkdir()
    (root / "dir one" / "also empty").mkdir()


def tree_of(root: Path) -> dict:
    """{relative path: ('dir',) or ('file', size, sha256)} of everything under root."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root)] = ("dir",)
        for name in files:
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                data = f.read()
            out[os.path.relpath(p, root)] = ("file", len(data), hashlib.sha256(data).hexdigest())
    return out


def meta_of(root: Path) -> dict:
    """{relative path: (mode, mtime_ns)} of the files under root."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), root)] = (oct(st.st_mode & 0o7777), st.st_mtime_ns)
    return out


def set_source_metadata(root: Path) -> None:
    """Modes with write bits and mtimes in the past, distinct per file, so that preserving them shows."""
    for i, (d, _, files) in enumerate(os.walk(root)):
        for j, name in enumerate(sorted(files)):
            p = os.path.join(d, name)
            os.chmod(p, (0o640, 0o600, 0o644, 0o664)[(i + j) % 4])
            t = 1_600_000_000_123_456_789 + (i * 100 + j) * 1_000_000_007
            os.utime(p, ns=(t, t))


# --------------------------------------------------------------------------------------- copy tools

def test_cp_r_copies_a_tree(warehouse, ns, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    run([need("cp"), "-r", os.fspath(src), os.fspath(ns / "copy")])
    assert tree_of(ns / "copy") == tree_of(src)
    warehouse.restart()
    assert tree_of(ns / "copy") == tree_of(src)


def test_rsync_a_twice_second_run_transfers_nothing(warehouse, ns, tmp_path):
    """rsync -a exits 0; after a remount a second rsync -a finds every file and directory up to date
    (size, mtime, mode, owner kept) and transfers nothing. (While the empty-block commit race of
    test_empty_block_is_visible_when_close_returns is open, the tree's empty file makes this fail at times.)"""
    rsync = need("rsync")
    src = tmp_path / "src"
    make_tree(src)
    set_source_metadata(src)
    first = run([rsync, "-a", "--itemize-changes", f"{src}/", f"{ns / 'mirror'}/"])
    assert ">f+++++++++ top.bin" in first.stdout
    assert tree_of(ns / "mirror") == tree_of(src)
    assert meta_of(ns / "mirror") == meta_of(src)

    warehouse.restart()

    second = run([rsync, "-a", "--itemize-changes", "--stats", f"{src}/", f"{ns / 'mirror'}/"])
    changes = [line for line in second.stdout.splitlines() if line[:2] in (">f", "cd", ".d", ".f", "*d")]
    assert changes == [], f"second rsync changed things:\n{second.stdout}"
    assert "Number of regular files transferred: 0" in second.stdout, second.stdout
    assert tree_of(ns / "mirror") == tree_of(src)


def test_rsync_X_cannot_copy_xattrs_after_close(ns, tmp_path):
    """rsync -X sets a file's xattrs after closing its temporary file (a committed block: EPERM) and tries to
    remove the daemon's read-only user.tw.* attributes: exit 23, data still copied (docs/compat.md)."""
    rsync = need("rsync")
    src = tmp_path / "src"
    src.mkdir()
    (src / "tagged").write_bytes(b"payload")
    os.setxattr(src / "tagged", "user.tag", b"v1")
    proc = run([rsync, "-aX", f"{src}/", f"{ns / 'x'}/"], check=False)
    assert proc.returncode == 23, proc
    assert "Operation not permitted" in proc.stderr
    assert (ns / "x" / "tagged").read_bytes() == b"payload"


def test_tar_x_of_a_tree(warehouse, ns, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    archive = tmp_path / "tree.tar"
    run([need("tar"), "-C", os.fspath(src), "-cf", os.fspath(archive), "."])
    (ns / "untarred").mkdir()
    run(["tar", "-C", os.fspath(ns / "untarred"), "-xf", os.fspath(archive)])
    assert tree_of(ns / "untarred") == tree_of(src)
    # And back out: tar c from the mount, x to local disk.
    run(["tar", "-C", os.fspath(ns / "untarred"), "-cf", os.fspath(tmp_path / "back.tar"), "."])
    (tmp_path / "back").mkdir()
    run(["tar", "-C", os.fspath(tmp_path / "back"), "-xf", os.fspath(tmp_path / "back.tar")])
    assert tree_of(tmp_path / "back") == tree_of(src)
    warehouse.restart()
    assert tree_of(ns / "untarred") == tree_of(src)


def test_tar_x_xattrs_cannot_make_files_with_mknod(ns, tmp_path):
    """tar --xattrs creates each file that carries xattrs with mknod(S_IFREG) before opening it; twfs makes
    blocks only through open(O_CREAT) and refuses mknod of any kind (EPERM), so tar reports "Cannot open"
    and exits 2 for those files; the others are extracted (docs/compat.md)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "tagged").write_bytes(b"tagged")
    os.setxattr(src / "tagged", "user.tag", b"v1")
    (src / "plain").write_bytes(b"plain")
    run([need("tar"), "--xattrs", "-C", os.fspath(src), "-cf", os.fspath(tmp_path / "x.tar"), "."])
    (ns / "xt").mkdir()
    proc = run(["tar", "--xattrs", "--xattrs-include=user.*", "-C", os.fspath(ns / "xt"), "-xf",
                os.fspath(tmp_path / "x.tar")], check=False)
    assert proc.returncode == 2 and "tagged: Cannot open: Operation not permitted" in proc.stderr, proc
    assert (ns / "xt" / "plain").read_bytes() == b"plain"
    assert not (ns / "xt" / "tagged").exists()


def test_tar_x_restores_modes_and_mtimes(ns, tmp_path):
    """tar x sets each file's mtime (futimens) and mode (fchmod) on its descriptor before close.
    twfs bug: both are lost at the commit (mtime becomes the commit time, write bits are dropped), while the
    same calls after close are recorded (rsync, shutil.copy2)."""
    src = tmp_path / "src"
    make_tree(src)
    set_source_metadata(src)
    run([need("tar"), "-C", os.fspath(src), "--format=posix", "-cf", os.fspath(tmp_path / "t.tar"), "."])  # pax: nanosecond times
    (ns / "untarred").mkdir()
    run(["tar", "-C", os.fspath(ns / "untarred"), "-xf", os.fspath(tmp_path / "t.tar")])
    assert meta_of(ns / "untarred") == meta_of(src)


def test_cp_a_preserves_modes_mtimes_and_xattrs(warehouse, ns, tmp_path):
    """cp -a copies data, then sets times, xattrs and mode on the new file's descriptor before close.
    The xattrs are kept; twfs bug: the mtime and the mode's write bits are lost at the commit."""
    src = tmp_path / "src"
    make_tree(src)
    set_source_metadata(src)
    os.setxattr(src / "top.bin", "user.origin", b"local")
    run([need("cp"), "-a", os.fspath(src), os.fspath(ns / "copy")])
    assert tree_of(ns / "copy") == tree_of(src)
    assert os.getxattr(ns / "copy" / "top.bin", "user.origin") == b"local"
    warehouse.restart()
    assert os.getxattr(ns / "copy" / "top.bin", "user.origin") == b"local"
    assert meta_of(ns / "copy") == meta_of(src)


def test_shutil_copy2_and_copytree(warehouse, ns, tmp_path):
    """copy2/copytree copy the data, then copystat after close: mode and times are recorded on the
    committed blocks. Their user.* xattrs are not copied: setting them on a committed block is refused and
    shutil ignores EPERM (docs/compat.md)."""
    src = tmp_path / "src"
    make_tree(src)
    set_source_metadata(src)
    os.setxattr(src / "top.bin", "user.origin", b"local")
    dst = shutil.copy2(src / "top.bin", ns / "top-copy.bin")
    assert Path(dst).read_bytes() == (src / "top.bin").read_bytes()
    shutil.copytree(src, ns / "tree")
    shutil.copytree(src, ns / "tree", dirs_exist_ok=True)  # again over itself: first write wins, no error
    assert tree_of(ns / "tree") == tree_of(src)
    assert meta_of(ns / "tree") == meta_of(src)
    assert "user.origin" not in os.listxattr(ns / "tree" / "top.bin")
    warehouse.restart()
    assert tree_of(ns / "tree") == tree_of(src)
    assert meta_of(ns / "tree") == meta_of(src)
    assert (ns / "top-copy.bin").read_bytes() == (src / "top.bin").read_bytes()


# ------------------------------------------------------------------ processes that exit without closing

N_BYTES = 300_000
EXPECTED = bytes((i * 7 + 3) & 0xFF for i in range(N_BYTES))

PY_STDOUT = textwrap.dedent(f"""
    import os
    data = bytes((i * 7 + 3) & 0xFF for i in range({N_BYTES}))
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
    os._exit(0)  # no flush, no close
""")
PY_OPEN = textwrap.dedent(f"""
    import os, sys
    fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    data = bytes((i * 7 + 3) & 0xFF for i in range({N_BYTES}))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os._exit(0)  # the descriptor is still open
""")
PERL_STDOUT = f"""use POSIX (); my $d = join('', map {{ chr(($_ * 7 + 3) & 255) }} 0 .. {N_BYTES - 1});
my $off = 0; while ($off < length $d) {{ $off += syswrite(STDOUT, $d, length($d) - $off, $off); }} POSIX::_exit(0);"""
PERL_OPEN = f"""use POSIX (); use Fcntl; sysopen(my $fh, $ARGV[0], O_CREAT | O_WRONLY | O_TRUNC, 0644) or die;
my $d = join('', map {{ chr(($_ * 7 + 3) & 255) }} 0 .. {N_BYTES - 1});
my $off = 0; while ($off < length $d) {{ $off += syswrite($fh, $d, length($d) - $off, $off); }} POSIX::_exit(0);"""
C_SOURCE = f"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {{
    static unsigned char d[{N_BYTES}];
    for (long i = 0; i < {N_BYTES}; i++) d[i] = (unsigned char)((i * 7 + 3) & 0xFF);
    int fd = argc > 1 ? open(argv[1], O_CREAT | O_WRONLY | O_TRUNC, 0644) : 1;
    if (fd < 0) return 2;
    for (long off = 0; off < {N_BYTES};) {{
        long n = write(fd, d + off, {N_BYTES} - off);
        if (n <= 0) return 3;
        off += n;
    }}
    _exit(0); /* no close */
}}
"""


@pytest.fixture(scope="module")
def c_writer(tmp_path_factory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc) for the C writer")
    d = tmp_path_factory.mktemp("cwriter")
    (d / "w.c").write_text(C_SOURCE)
    run([cc, "-O1", "-o", os.fspath(d / "w"), os.fspath(d / "w.c")])
    return os.fspath(d / "w")


def writer_argv(lang: str, c_writer: str, own_file: str | None) -> list[str]:
    if lang == "python":
        return [sys.executable, "-c", PY_OPEN if own_file else PY_STDOUT] + ([own_file] if own_file else [])
    if lang == "perl":
        return [need("perl"), "-e", PERL_OPEN if own_file else PERL_STDOUT] + ([own_file] if own_file else [])
    return [c_writer] + ([own_file] if own_file else [])


@pytest.mark.parametrize("lang", ["python", "perl", "c"])
def test_redirect_from_program_that_exits_without_closing(warehouse, ns, c_writer, lang):
    """`prog > NS/file` (the shell opens, the program writes and _exits) and a program that opens the file
    itself and _exits with it open: both commit what was written."""
    redirected = ns / f"redirected-{lang}.out"
    argv = writer_argv(lang, c_writer, None)
    run(["sh", "-c", " ".join(shlex.quote(a) for a in argv) + " > " + shlex.quote(os.fspath(redirected))])
    own = ns / "sub dir" / f"own-{lang}.out"
    own.parent.mkdir(exist_ok=True)
    run(writer_argv(lang, c_writer, os.fspath(own)))
    for p in (redirected, own):
        assert p.read_bytes() == EXPECTED, f"{p.name}: {p.stat().st_size} bytes"
    warehouse.restart()
    for p in (redirected, own):
        assert p.read_bytes() == EXPECTED


def test_touch_truncating_redirect_dd_and_compound_redirects(warehouse, ns, tmp_path):
    run(["touch", os.fspath(ns / "touched")])
    run(["sh", "-c", f": > '{ns / 'colon'}'"])
    src = tmp_path / "src.bin"
    src.write_bytes(pattern("dd", 1 * MiB + 5))
    run(["dd", f"if={src}", f"of={ns / 'dd.bin'}", "bs=64k", "status=none"])
    # A compound command: builtins and forked programs share the shell's descriptor; the children exit first.
    run(["sh", "-c", f"{{ echo a; /bin/echo b; echo c; }} > '{ns / 'group.txt'}'"])
    run(["bash", "-c", f"for i in 1 2 3; do /bin/echo $i; done > '{ns / 'loop.txt'}'"])
    run(["sh", "-c", f"echo x > '{ns / 'append.txt'}.tmp' && {{ echo y; echo z; }} >> '{ns / 'append.txt'}'"])
    for _ in range(2):
        assert (ns / "touched").stat().st_size == 0 and (ns / "colon").stat().st_size == 0
        assert (ns / "dd.bin").read_bytes() == src.read_bytes()
        assert (ns / "group.txt").read_text() == "a\nb\nc\n"
        assert (ns / "loop.txt").read_text() == "1\n2\n3\n"
        assert (ns / "append.txt").read_text() == "y\nz\n"
        warehouse.restart()


def test_shell_descriptor_written_twice(warehouse, ns):
    """`exec 3> f; echo first >&3; echo second >&3`: dash runs each echo with fd 1 a duplicate of fd 3 and
    closes that duplicate afterwards. twfs bug: closing the duplicate commits the block, so the second echo
    fails (I/O error, exit 1) and its bytes are lost."""
    p = ns / "dup.txt"
    run(["sh", "-c", f"exec 3> '{p}'; echo first >&3; echo second >&3; exec 4>&3; echo third >&4"])
    assert p.read_text() == "first\nsecond\nthird\n"
    warehouse.restart()
    assert p.read_text() == "first\nsecond\nthird\n"


def test_closing_a_duplicate_descriptor_does_not_commit(ns):
    """Minimal reproduction: write, dup, close the dup, write again through the first descriptor. twfs bug:
    the close of the duplicate commits the block; the second write fails (EBADF) and is lost."""
    p = ns / "dupped.bin"
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"first\n")
        os.close(os.dup(fd))
        os.write(fd, b"second\n")
    finally:
        os.close(fd)
    assert p.read_bytes() == b"first\nsecond\n"


def test_empty_block_is_visible_when_close_returns(ns):
    """close() of a block that got no write must return after the commit, as with written blocks. twfs bug:
    an empty block commits at RELEASE, which the kernel sends after close returned (docs/fuse.md says so), so a
    stat right after close sometimes answers ENOENT (about 1 in 100 to 1 in 1000 here); rsync -a then fails
    with exit 23 on empty files (its receiver stats the closed temporary file)."""
    missing = []
    for i in range(2000):
        p = ns / f"empty-{i}"
        os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        if not p.exists():
            missing.append(p.name)
    assert missing == [], f"{len(missing)} of 2000 empty blocks were not there when close returned"
    for name in missing:
        assert (ns / name).exists()


KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    n = int(sys.argv[2])
    if n:
        os.write(fd, b"k" * n)
    print("ready", flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("written,sig", [(0, signal.SIGKILL), (1 * MiB, signal.SIGKILL), (4096, signal.SIGTERM)],
                         ids=["sigkill-before-first-write", "sigkill-after-1MiB", "sigterm-after-4KiB"])
def test_killed_writer_leaves_nothing_and_name_stays_free(warehouse, ns, written, sig):
    path = ns / "victim.bin"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, os.fspath(path), str(written)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == -sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # the release arrives after the exit: the name must never appear
        assert not path.exists(), "a killed writer's block was committed"
        assert "victim.bin" not in os.listdir(ns)
        time.sleep(0.1)
    warehouse.restart()
    assert not path.exists()
    data = pattern("after-kill", 100_000)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # EEXIST would mean a leftover
    os.write(fd, data)
    os.close(fd)
    assert path.read_bytes() == data
    warehouse.restart()
    assert path.read_bytes() == data


# ------------------------------------------------------------------------------ removal and listing

def populate_namespace(ns: Path) -> int:
    n = 0
    for i in range(40):  # canonical blocks in many fan-out directories
        h = block_hash("rmrf", i)
        p = Path(canonical(ns, h))
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(pattern(h, 1000 + i))
        n += 1
    deep = ns / "model_r0" / "abc" / "de_g0" / "l3" / "l4"
    deep.mkdir(parents=True)
    for i in range(10):
        fd = os.open(deep / f"{i}.bin", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x" * 100)
        os.setxattr(fd, "user.vllm.kv_crc32c", b"\0\1\2\3")
        os.close(fd)
        n += 1
    (ns / "empty" / "dirs" / "only").mkdir(parents=True)
    (ns / "flat.pt").write_bytes(b"flat")
    return n + 1


@pytest.mark.parametrize("how", ["rm -rf", "shutil.rmtree"])
def test_remove_a_whole_namespace(warehouse, ns, how):
    populate_namespace(ns)
    if how == "rm -rf":
        proc = run(["rm", "-rf", os.fspath(ns)])
        assert proc.stderr == ""
    else:
        shutil.rmtree(ns)
    assert "ns" not in os.listdir(warehouse.mount)
    assert_errno(errno.ENOENT, os.stat, ns)
    warehouse.restart()
    assert "ns" not in os.listdir(warehouse.mount)
    os.mkdir(ns)
    assert os.listdir(ns) == []
    assert not Path(canonical(ns, block_hash("rmrf", 0))).exists()


def test_ls_shows_only_what_exists(warehouse, ns):
    assert os.listdir(ns) == [], "a fresh namespace lists nothing (no empty fan-out directories)"
    assert run(["ls", "-A", os.fspath(ns)]).stdout == ""
    h = "ab" + block_hash("ls", length=62)
    fd = os.open(canonical(ns, h), os.O_CREAT | os.O_WRONLY, 0o644)  # fan-out directories always resolve
    os.write(fd, b"block")
    os.close(fd)
    (ns / "a dir").mkdir()
    assert sorted(os.listdir(ns)) == ["a dir", "ab"]
    assert os.listdir(ns / "ab") == [h]
    assert os.path.isdir(ns / "cd") and "cd" not in os.listdir(ns), "empty fan-out: resolves, not listed"
    assert_errno(errno.EEXIST, os.mkdir, ns / "ab")
    assert_errno(errno.EEXIST, os.mkdir, ns / "cd")
    assert_errno(errno.EISDIR, os.open, ns / "ef", os.O_CREAT | os.O_WRONLY, 0o644)
    warehouse.restart()
    assert sorted(os.listdir(ns)) == ["a dir", "ab"]
    os.unlink(canonical(ns, h))
    os.rmdir(ns / "a dir")
    assert os.listdir(ns) == []
    assert run(["ls", "-A", os.fspath(ns)]).stdout == ""
    warehouse.restart()
    assert os.listdir(ns) == []


# ------------------------------------------------------------------------------------------ metadata

def test_chmod_chown_touch_on_committed_blocks_are_recorded(warehouse, ns):
    p = ns / "meta.bin"
    data = pattern("meta", 50_000)
    p.write_bytes(data)
    run(["chmod", "0640", os.fspath(p)])
    run(["chown", "1234:5678", os.fspath(p)])
    os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_500_000_000))
    for _ in range(2):
        st = p.stat()
        assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == ("0o640", 1234, 5678)
        assert st.st_mtime_ns == 1_000_000_000_500_000_000
        assert p.read_bytes() == data
        warehouse.restart()
    # Whatever the mode bits say, the block stays immutable (root included).
    run(["chmod", "0666", os.fspath(p)])
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(OSError) as e:
            os.open(p, flags)
        assert e.value.errno in (errno.EACCES, errno.EPERM)
    assert_errno(errno.EPERM, os.truncate, p, 0)
    assert p.read_bytes() == data


def test_touch_d_on_committed_block_records_time(warehouse, ns):
    """touch -d opens the file O_WRONLY|O_CREAT and sets the times on that descriptor. twfs bug: on a
    committed block touch exits 0 and the time is not recorded."""
    p = ns / "touched.bin"
    p.write_bytes(b"data")
    run(["touch", "-d", "2001-02-03 04:05:06", os.fspath(p)])
    want = int(time.mktime(time.strptime("2001-02-03 04:05:06", "%Y-%m-%d %H:%M:%S")))
    assert int(p.stat().st_mtime) == want
    warehouse.restart()
    assert int(p.stat().st_mtime) == want
    assert p.read_bytes() == b"data"


def test_mode_and_times_set_on_pending_descriptor_survive_commit(warehouse, ns):
    """Minimal reproduction of what tar x and cp -p/-a do: fchmod and futimens on the block's descriptor
    before close. twfs bug: after the commit the mode has lost its write bits (0640 -> 0440) and the mtime is
    the commit time, while chmod/utime after close are kept."""
    p = ns / "pending-meta.bin"
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"payload")
    os.fchmod(fd, 0o640)
    os.utime(fd, ns=(1_500_000_000_000_000_000, 1_500_000_000_250_000_000))
    os.close(fd)
    st = p.stat()
    assert (oct(st.st_mode & 0o7777), st.st_mtime_ns) == ("0o640", 1_500_000_000_250_000_000)
    warehouse.restart()
    st = p.stat()
    assert (oct(st.st_mode & 0o7777), st.st_mtime_ns) == ("0o640", 1_500_000_000_250_000_000)


def test_metadata_changes_on_committed_blocks_move_ctime(ns):
    """POSIX: chmod, chown and utimes update st_ctime. twfs bug: on a committed block they do not (they do
    on directories). Shown by pjdfstest chmod/00.t and chown/00.t too."""
    p = ns / "ctime.bin"
    p.write_bytes(b"x")
    for change in (lambda: os.chmod(p, 0o600), lambda: os.chown(p, 7, 8), lambda: os.utime(p, (1e9, 1e9))):
        before = p.stat().st_ctime_ns
        time.sleep(1.05)
        change()
        assert p.stat().st_ctime_ns > before


def test_utimes_records_atime_and_mtime(warehouse, ns):
    """twfs bug: atime is not recorded; it reads back as the mtime (pjdfstest utimensat/02, 04, 08, 09)."""
    p = ns / "atime.bin"
    p.write_bytes(b"x")
    os.utime(p, ns=(1_900_000_000_100_000_000, 1_950_000_000_200_000_000))
    st = p.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_900_000_000_100_000_000, 1_950_000_000_200_000_000)
    warehouse.restart()
    st = p.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_900_000_000_100_000_000, 1_950_000_000_200_000_000)


def test_block_belongs_to_its_creator(warehouse, ns):
    os.chmod(ns, 0o777)
    run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", f"echo mine > '{ns / 'owned'}'"])
    st = (ns / "owned").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    warehouse.restart()
    st = (ns / "owned").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert (ns / "owned").read_text() == "mine\n"


# ---------------------------------------------------------------------------------------------- xattrs

def test_xattrs_on_pending_blocks_survive_remount(warehouse, ns):
    """user.* xattrs set while the block is pending (by descriptor, by path from the writer, and by setfattr
    through the writer's /dev/fd/N) are stored with it, travel through rename and survive a remount; on a
    committed block setting or removing one is refused. (Another process cannot see a pending block by its
    name: `setfattr NAME` from outside answers ENOENT until the commit.)"""
    setfattr, getfattr = need("setfattr"), need("getfattr")
    p = ns / "deep" / "er" / "x.bin"
    p.parent.mkdir(parents=True)
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"kv" * 1000)
    os.setxattr(fd, "user.by_fd", b"\x00\x01\xff")
    os.setxattr(p, "user.by_path", b"path")
    run([setfattr, "-n", "user.by_setfattr", "-v", "0x6869", f"/dev/fd/{fd}"], pass_fds=[fd])
    outsider = run([setfattr, "-n", "user.outsider", "-v", "1", os.fspath(p)], check=False)
    assert outsider.returncode != 0 and "No such file" in outsider.stderr
    os.close(fd)
    # Through a rename: tmp with an xattr, renamed onto the final name.
    tmp = ns / "deep" / "tmp.part"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b"renamed")
    os.setxattr(fd, "user.vllm.kv_crc32c", b"\xde\xad\xbe\xef")
    os.close(fd)
    os.replace(tmp, ns / "deep" / "final.bin")

    want = {"user.by_fd": b"\x00\x01\xff", "user.by_path": b"path", "user.by_setfattr": b"hi"}
    for _ in range(2):
        for k, v in want.items():
            assert os.getxattr(p, k) == v
        assert os.getxattr(ns / "deep" / "final.bin", "user.vllm.kv_crc32c") == b"\xde\xad\xbe\xef"
        dump = run([getfattr, "-d", "-e", "hex", os.fspath(p)]).stdout
        assert "user.by_setfattr=0x6869" in dump
        warehouse.restart()
    assert_errno(errno.EPERM, os.setxattr, p, "user.late", b"1")
    assert_errno(errno.EPERM, os.removexattr, p, "user.by_path")
    assert run([setfattr, "-n", "user.late", "-v", "1", os.fspath(p)], check=False).returncode != 0
    assert p.read_bytes() == b"kv" * 1000


# ------------------------------------------------------------------------------------------- bad input

def test_bad_input_gets_clear_errnos_and_loses_nothing(warehouse, ns):
    keep = ns / "keep" / "kept.bin"
    keep.parent.mkdir()
    keep.write_bytes(pattern("kept", 10_000))

    # A name of 256 bytes (255 is fine).
    assert_errno(errno.ENAMETOOLONG, os.open, ns / ("n" * 256), os.O_CREAT | os.O_WRONLY, 0o644)
    assert_errno(errno.ENAMETOOLONG, os.mkdir, ns / ("d" * 256))
    (ns / ("n" * 255)).write_bytes(b"255")
    # Depth: 16 levels below the namespace are fine, the 17th is not.
    deep = ns.joinpath(*["lv"] * 16)
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"at depth 16")
    assert_errno(errno.ENAMETOOLONG, os.mkdir, deep / "lv")
    # A path of more than 4096 bytes inside the namespace (16 levels of 255 bytes, then a file).
    dfd = os.open(ns, os.O_RDONLY)
    try:
        for i in range(16):
            name = chr(ord("g") + i) * 255
            os.mkdir(name, dir_fd=dfd)
            nfd = os.open(name, os.O_RDONLY, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        assert_errno(errno.ENAMETOOLONG, os.open, "f" * 10, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd)
    finally:
        os.close(dfd)
    # xattrs: one value over 4 KiB, or more than 4 KiB in all.
    fd = os.open(ns / "xattr-limit", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        with pytest.raises(OSError) as e:
            os.setxattr(fd, "user.big", b"z" * 5000)
        assert e.value.errno in (errno.E2BIG, errno.ENOSPC)
        with pytest.raises(OSError) as e:
            for i in range(6):
                os.setxattr(fd, f"user.k{i}", b"z" * 1000)
        assert e.value.errno in (errno.E2BIG, errno.ENOSPC)
        os.write(fd, b"still fine")
    finally:
        os.close(fd)
    assert (ns / "xattr-limit").read_bytes() == b"still fine"
    # mkdir over a block; a block over a directory; a directory renamed into itself.
    assert_errno(errno.EEXIST, os.mkdir, keep)
    assert_errno(errno.EISDIR, os.open, keep.parent, os.O_CREAT | os.O_WRONLY, 0o644)
    (ns / "keep" / "sub").mkdir()
    assert_errno(errno.EINVAL, os.rename, ns / "keep", ns / "keep" / "sub" / "moved")
    # Nothing was lost.
    for _ in range(2):
        assert keep.read_bytes() == pattern("kept", 10_000)
        assert (deep / "leaf").read_bytes() == b"at depth 16"
        assert (ns / ("n" * 255)).read_bytes() == b"255"
        assert not (deep / "lv").exists()
        warehouse.restart()
