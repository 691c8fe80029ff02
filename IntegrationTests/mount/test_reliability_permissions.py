"""Permissions (issue 7): other users get exactly what namespace owners and modes allow.

The second user is a separate process started with `setpriv --reuid --regid --clear-groups` running the
system /usr/bin/python3 with no imports beyond the standard library (a pyenv interpreter under /root is
not readable by other users). Users are bare numeric ids (no passwd entry needed).

allow_other: a daemon started by root mounts with `allow_other,default_permissions` (Mount/twfs/main.swift),
so other users reach the mount and the kernel checks owners and modes. A daemon started by another user
mounts without allow_other: then only that user may use the mount. docs/reliability.md has the details.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
import shutil
import stat
import subprocess

import pytest

from twfs_util import block_hash, canonical, mounts_at, pattern, read_block, write_block

pytestmark = pytest.mark.timeout(120)
ALICE, BOB, CAROL, TEAM = 4101, 4102, 4103, 4200   # CAROL is in ALICE's group TEAM
SYS_PY = "/usr/bin/python3"

_PROBE = r"""
import errno, hashlib, json, os, sys
def run(op, path):
    if op == "list": os.listdir(path); return "ok"
    if op == "stat": os.stat(path); return "ok"
    if op == "read":
        with open(path, "rb") as f: return "sha:" + hashlib.sha256(f.read()).hexdigest()
    if op == "create":
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644); os.write(fd, b"from " + str(os.getuid()).encode()); os.close(fd); return "ok"
    if op == "mkdir": os.mkdir(path, 0o700); return "ok"
    if op == "mkdir750": os.mkdir(path, 0o750); return "ok"
    if op == "unlink": os.unlink(path); return "ok"
    if op == "rmdir": os.rmdir(path); return "ok"
    if op == "chmod": os.chmod(path, 0o777); return "ok"
    if op == "chown": os.chown(path, os.getuid(), os.getgid()); return "ok"
    if op == "write": fd = os.open(path, os.O_WRONLY); os.close(fd); return "ok"
    if op == "trunc": fd = os.open(path, os.O_WRONLY | os.O_TRUNC); os.close(fd); return "ok"
    if op == "rw": fd = os.open(path, os.O_RDWR); os.close(fd); return "ok"
    raise SystemExit("unknown op " + op)
out = []
for op, path in json.loads(sys.argv[1]):
    try:
        out.append(run(op, path))
    except OSError as e:
        out.append(errno.errorcode.get(e.errno, str(e.errno)))
print(json.dumps(out))
"""


def as_user(uid: int, gid: int, ops: list[tuple[str, str]], groups: list[int] | None = None) -> list[str]:
    """Run (op, path) pairs as uid/gid in a fresh process; return 'ok', 'sha:...' or an errno name each."""
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}"]
    cmd += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    r = subprocess.run(cmd + [SYS_PY, "-I", "-c", _PROBE, json.dumps([[o, os.fspath(p)] for o, p in ops])],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, f"probe as uid {uid} failed: {r.stderr}"
    return json.loads(r.stdout)


@pytest.fixture
def outsider_tools():
    if shutil.which("setpriv") is None or not os.access(SYS_PY, os.X_OK):
        pytest.skip("needs setpriv and /usr/bin/python3")


def _sha(data: bytes) -> str:
    return "sha:" + hashlib.sha256(data).hexdigest()


def test_namespace_0700_of_one_user_is_closed_to_another(warehouse, outsider_tools):
    root = warehouse.mount
    # Alice creates her namespace. The mount root belongs to root, so root makes it and hands it over,
    # unless the root directory lets other users create namespaces (then Alice mkdirs it herself).
    mine = root / "alice"
    made = as_user(ALICE, TEAM, [("mkdir", mine)])[0]
    if made != "ok":
        assert made in ("EACCES", "EPERM"), made
        os.mkdir(mine, 0o700)
        os.chown(mine, ALICE, TEAM)
    st = os.stat(mine)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (ALICE, TEAM, 0o700), st
    h = block_hash("alice", 1)
    block = canonical(mine, h)
    compat = mine / "alice.kv"
    assert as_user(ALICE, TEAM, [("create", block), ("create", compat)]) == ["ok", "ok"]
    alice_bytes = f"from {ALICE}".encode()
    assert as_user(ALICE, TEAM, [("read", block), ("list", mine)]) == [_sha(alice_bytes), "ok"]

    bob = as_user(BOB, BOB, [
        ("list", mine), ("list", mine / h[:2]), ("stat", block), ("read", block), ("read", compat),
        ("create", canonical(mine, block_hash("bob"))), ("create", mine / "bob.kv"), ("unlink", block),
        ("rmdir", mine), ("chmod", mine), ("chown", mine), ("mkdir", mine / "sub"),
    ])
    want = ["EACCES"] * 8 + [("EACCES", "ENOTEMPTY", "EPERM"), "EPERM", "EPERM", ("EACCES", "EPERM")]
    bad = [(op, g, w) for op, g, w in zip(["list", "list hh", "stat", "read", "read compat", "create", "create compat",
                                            "unlink", "rmdir", "chmod", "chown", "mkdir"], bob, want)
           if g != w and g not in (w if isinstance(w, tuple) else ())]
    assert not bad, f"another user on a 0700 namespace (op, got, want): {bad}"
    # Same group, mode 0700: still closed.
    carol = as_user(CAROL, CAROL, [("list", mine), ("read", block)], groups=[TEAM])
    assert carol == ["EACCES", "EACCES"], carol
    # Nothing changed for Alice; root (the daemon's user) still sees her blocks.
    assert read_block(block) == alice_bytes
    assert as_user(ALICE, TEAM, [("read", block)]) == [_sha(alice_bytes)]


def test_group_mode_0750_lets_the_group_read_but_not_write(warehouse, outsider_tools):
    ns = warehouse.namespace("team", 0o750)
    os.chown(ns, ALICE, TEAM)
    h = block_hash("team", 1)
    data = pattern(h, 100000)
    write_block(canonical(ns, h), data)
    carol = as_user(CAROL, CAROL, [("list", ns), ("read", canonical(ns, h)),
                                   ("create", canonical(ns, block_hash("carol"))), ("unlink", canonical(ns, h))],
                    groups=[TEAM])
    assert carol == ["ok", _sha(data), "EACCES", "EACCES"], carol
    bob = as_user(BOB, BOB, [("list", ns), ("read", canonical(ns, h))])
    assert bob == ["EACCES", "EACCES"], bob


def test_open_namespace_blocks_are_readable_by_others_but_read_only(warehouse, outsider_tools):
    # allow_other: another user reaches the mount; a 0755 namespace's blocks read, never write.
    ns = warehouse.namespace("public", 0o755)
    h = block_hash("public", 1)
    data = pattern(h, 200000)
    write_block(canonical(ns, h), data)
    opts = [m["options"] for m in mounts_at(warehouse.mount)]
    assert any({"allow_other", "default_permissions"} <= o for o in opts), opts
    bob = as_user(BOB, BOB, [("read", canonical(ns, h)), ("write", canonical(ns, h)), ("rw", canonical(ns, h)),
                             ("trunc", canonical(ns, h)), ("create", canonical(ns, block_hash("bob"))),
                             ("unlink", canonical(ns, h)), ("mkdir", warehouse.mount / "bobs")])
    assert bob[0] == _sha(data), bob
    assert all(g in ("EACCES", "EPERM") for g in bob[1:]), bob
    assert read_block(canonical(ns, h)) == data


def test_control_area_and_runtime_files_are_not_writable_by_others(warehouse_factory, outsider_tools):
    wh = warehouse_factory("--dram", "64M")
    ns = wh.namespace("ctl", 0o755)
    h = block_hash("ctl")
    write_block(canonical(ns, h), pattern(h, 50000))
    tw = wh.mount / ".tw"
    # The daemon's runtime directory: the tier broker's socket, the liveness page, the pid file.
    sock = Path(open(tw / "dram").read().split(" ", 1)[1].strip())
    run = sock.parent
    ops = [("write", tw / "status"), ("rw", tw / "status"), ("trunc", tw / "status"), ("unlink", tw / "status"),
           ("create", tw / "evil"), ("mkdir", tw / "d"), ("chmod", tw), ("rmdir", tw),
           ("create", run / "evil"), ("mkdir", run / "d"), ("unlink", sock), ("chmod", run), ("rmdir", run)]
    for name in ("alive", "pid"):
        ops += [("write", run / name), ("rw", run / name), ("trunc", run / name), ("unlink", run / name),
                ("chmod", run / name)]
    got = as_user(BOB, BOB, ops)
    bad = [(op, os.fspath(p), g) for (op, p), g in zip(ops, got) if g not in ("EACCES", "EPERM", "ENOENT")]
    # .tw/status reads are not asked for; a rmdir of .tw may say ENOENT (it is hidden), never "ok".
    assert not bad, f"another user changed the control area or the daemon's runtime files: {bad}"
    st = os.stat(run)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o711, oct(st.st_mode)
    assert wh.status()["blocks"] == 1
    assert wh.alive()
