"""Sandbox launcher: run as ``python -I -S _sandbox_init.py CONFIG.json`` by :mod:`rewards.sandbox`.

Standard library only (it runs under ``-I -S`` and must not import the project). Steps:

1. ``unshare`` new mount, network, PID, IPC and UTS namespaces (plus a user namespace when not
   root), then ``fork``: the child is PID 1 of the new PID namespace, so when it exits (or is
   killed) the kernel kills every process the sandboxed code started.
2. In the child: make all mounts private, mount a size-limited tmpfs as the new root, bind-mount
   read-only only what the interpreter needs (its binary, the stdlib, libpython, the system
   shared-library directories, the ELF loader), ``/dev/null``, ``/dev/zero``, ``/dev/urandom``;
   create ``/tmp`` and ``/sandbox`` (files copied in, owned by the sandbox uid); ``pivot_root`` into it
   and detach the old root, so no host path is reachable.
3. Drop privileges: as root, switch to a dedicated uid/gid (``UID_BASE + launcher pid``, unique
   among live sandboxes, so RLIMIT_NPROC counts only this sandbox's processes) with no
   supplementary groups; set ``no_new_privs``; apply the rlimits; install the seccomp filters
   the host built (``rewards/_seccomp.py``); ``exec`` the interpreter.

Exit status: the child's status (``128 + signal`` when killed); 125 and a line starting with
``SANDBOX_SETUP_ERROR:`` on stderr when the sandbox could not be built.
"""
import ctypes
import json
import os
import platform
import resource
import shutil
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECCOMP = 1, 38, 24, 22
SECCOMP_MODE_FILTER = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SETUP_ERROR_EXIT = 125
UID_BASE = 2_000_000

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, dst, fstype, flags, data=None) -> None:
    enc = [x.encode() if isinstance(x, str) else x for x in (src, dst, fstype, data)]
    _check(libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {src} -> {dst}")


def _replicate(root: str, path: str, is_dir: bool) -> str:
    """Create ``path`` under ``root`` (symlinks along the way recreated); return its host realpath."""
    parts = [p for p in path.split("/") if p]
    cur = "/"
    for i, comp in enumerate(parts):
        nxt = os.path.join(cur, comp)
        inside = root + nxt
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            if not os.path.lexists(inside):
                os.symlink(target, inside)
            rest = "/".join(parts[i + 1:])
            resolved = os.path.normpath(os.path.join(cur, target))
            return _replicate(root, os.path.join(resolved, rest) if rest else resolved, is_dir)
        if i == len(parts) - 1:
            if is_dir:
                os.makedirs(inside, exist_ok=True)
            elif not os.path.exists(inside):
                open(inside, "w").close()
            return nxt
        os.makedirs(inside, exist_ok=True)
        cur = nxt
    return "/"


def _build_root(cfg: dict) -> None:
    root = cfg["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['tmpfs_mb']}m,nr_inodes={cfg['tmpfs_inodes']},mode=755")
    binds = []
    for path, is_dir, writable in cfg["binds"]:
        if os.path.exists(path):
            binds.append((_replicate(root, path, is_dir), writable))
    done: list[str] = []
    for real, writable in sorted(set(binds), key=lambda b: b[0].count("/")):
        if any(real == d or real.startswith(d.rstrip("/") + "/") for d in done):
            continue  # already visible through a parent bind
        _mount(real, root + real, None, MS_BIND)
        # Keep the flags the source mount already has (a user namespace may not clear them).
        kept = os.statvfs(real).f_flag & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        extra = (0 if writable else MS_RDONLY) | (0 if real.startswith("/dev/") else MS_NODEV)
        _mount(None, root + real, None, MS_BIND | MS_REMOUNT | MS_NOSUID | kept | extra)
        done.append(real)
    uid = cfg["uid"]
    for d, mode in (("/tmp", 0o1777), ("/sandbox", 0o700)):
        os.makedirs(root + d, exist_ok=True)
        os.chmod(root + d, mode)
    for name in sorted(os.listdir(cfg["files_dir"])):
        shutil.copy(os.path.join(cfg["files_dir"], name), os.path.join(root, "sandbox", name))
        os.chown(os.path.join(root, "sandbox", name), uid, uid)
    os.chown(root + "/sandbox", uid, uid)
    os.chdir(root)
    os.makedirs("old_root", exist_ok=True)
    nr = SYS_PIVOT_ROOT.get(platform.machine())
    if nr is not None and libc.syscall(nr, b".", b"old_root") == 0:
        os.chroot(".")
        _check(libc.umount2(b"/old_root", MNT_DETACH), "umount old root")
        os.rmdir("/old_root")
    else:  # unknown syscall number: chroot (safe here: the code runs with no capabilities)
        os.rmdir("old_root")
        os.chroot(".")
    os.chdir("/sandbox")


def _drop_privileges(cfg: dict) -> None:
    if cfg["userns"]:
        for cap in range(64):  # no capability may come back at exec, even as uid 0 of the namespace
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    else:
        uid = cfg["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    lim = cfg["limits"]
    for name, soft, hard in (("RLIMIT_CPU", lim["cpu_s"], lim["cpu_s"] + 1),  # SIGXCPU, then SIGKILL
                             ("RLIMIT_AS", lim["memory_mb"] << 20, lim["memory_mb"] << 20),
                             ("RLIMIT_NPROC", lim["nproc"], lim["nproc"]),
                             ("RLIMIT_FSIZE", lim["file_mb"] << 20, lim["file_mb"] << 20),
                             ("RLIMIT_NOFILE", lim["nofile"], lim["nofile"]), ("RLIMIT_CORE", 0, 0)):
        resource.setrlimit(getattr(resource, name), (soft, hard))
    # Set after the uid change (which clears it): if the launcher dies, so does PID 1.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_seccomp(filters: list) -> None:
    """Install each classic-BPF program (hex of ``struct sock_filter``s); needs no_new_privs first."""
    for hex_prog in filters:
        prog = bytes.fromhex(hex_prog)
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
        _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp filter")


def _write_id_maps(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def main() -> int:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        cfg["uid"] = UID_BASE + os.getpid()
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        outer_uid, outer_gid = os.getuid(), os.getgid()
        cfg["userns"] = outer_uid != 0
        if cfg["userns"]:
            flags |= CLONE_NEWUSER
            cfg["uid"] = 0  # the one uid mapped inside the user namespace
        _check(libc.unshare(flags), "unshare")
        if cfg["userns"]:
            _write_id_maps(outer_uid, outer_gid)
    except Exception as e:  # noqa: BLE001 - any set-up failure is reported the same way
        print(f"SANDBOX_SETUP_ERROR: {e}", file=sys.stderr, flush=True)
        return SETUP_ERROR_EXIT
    pid = os.fork()
    if pid == 0:
        try:
            _build_root(cfg)
            libc.sethostname(b"sandbox", 7)
            _drop_privileges(cfg)
            _install_seccomp(cfg["seccomp"])
            env = {"PATH": "/usr/bin:/bin", "HOME": "/sandbox", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
                   "PYTHONIOENCODING": "utf-8"}
            os.execve(cfg["argv"][0], cfg["argv"], env)
        except BaseException as e:  # noqa: BLE001 - report any failure to the host, then die
            print(f"SANDBOX_SETUP_ERROR: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            os._exit(SETUP_ERROR_EXIT)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
