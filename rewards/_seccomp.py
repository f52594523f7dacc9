"""Seccomp filters for the sandbox, built on the host as raw classic-BPF bytes.

The sandbox installs them with ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)`` before it execs an
interpreter, so nothing that runs afterwards (Python or native code) can remove or loosen them:
a filter lasts for the life of the process and its children, across ``exec``.

Two filters, stacked:

* **base** (the launcher, for everything in the sandbox): no new namespaces (``unshare``,
  ``setns``, namespace flags of ``clone``), no mounts (``mount``, ``umount2``, ``pivot_root``,
  ``chroot`` and the new mount API), no ``ptrace``, no reading other processes' memory or
  descriptors (``process_vm_*``, ``pidfd_*``), no SysV shared memory, semaphores or message
  queues, no POSIX message queues, no ``memfd_create``/``memfd_secret``, no sockets, no keyrings,
  ``bpf``, ``userfaultfd``, ``perf_event_open`` or ``io_uring``. These are the routes to memory
  that an address-space limit does not count (SysV segments and memfds outlive their mapping)
  and to kernel attack surface a test program never needs.
* **candidate** (each candidate program, on top of base): also no new processes — ``fork``,
  ``vfork`` and ``clone`` without ``CLONE_THREAD`` fail with EPERM (threads still work;
  ``clone3`` answers ENOSYS so the C library falls back to ``clone``). A candidate is therefore
  one process, and RLIMIT_AS caps all its memory.

Denied calls return EPERM (a Python ``PermissionError``), so the candidate fails with a reason
instead of dying. Another architecture's calling convention (x32, i386 on x86-64) kills the process.
"""
from __future__ import annotations

import platform
import struct

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000
CLONE_NS_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # struct seccomp_data; args[0]'s low word (little-endian)

_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_NUMBERS = {  # syscall numbers (x86-64 from arch/x86/entry/syscalls, aarch64 from asm-generic)
    "x86_64": {"fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "unshare": 272, "setns": 308,
               "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "open_tree": 428,
               "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
               "mount_setattr": 442, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
               "pidfd_open": 434, "pidfd_getfd": 438, "shmget": 29, "shmat": 30, "shmctl": 31,
               "semget": 64, "msgget": 68, "mq_open": 240, "memfd_create": 319, "memfd_secret": 447,
               "socket": 41, "socketpair": 53, "add_key": 248, "request_key": 249, "keyctl": 250,
               "bpf": 321, "userfaultfd": 323, "perf_event_open": 298, "io_uring_setup": 425,
               "io_uring_enter": 426, "io_uring_register": 427},
    "aarch64": {"clone": 220, "clone3": 435, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
                "pivot_root": 41, "chroot": 51, "open_tree": 428, "move_mount": 429, "fsopen": 430,
                "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "ptrace": 117,
                "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_open": 434, "pidfd_getfd": 438,
                "shmget": 194, "shmctl": 195, "shmat": 196, "semget": 190, "msgget": 186, "mq_open": 180,
                "memfd_create": 279, "memfd_secret": 447, "socket": 198, "socketpair": 199,
                "add_key": 217, "request_key": 218, "keyctl": 219, "bpf": 280, "userfaultfd": 282,
                "perf_event_open": 241, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427},
}
BASE_DENIED = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
               "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "ptrace", "process_vm_readv",
               "process_vm_writev", "pidfd_open", "pidfd_getfd", "shmget", "shmat", "shmctl", "semget",
               "msgget", "mq_open", "memfd_create", "memfd_secret", "socket", "socketpair", "add_key",
               "request_key", "keyctl", "bpf", "userfaultfd", "perf_event_open", "io_uring_setup",
               "io_uring_enter", "io_uring_register")
CANDIDATE_DENIED = ("fork", "vfork")


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)  # struct sock_filter


def build_filter(candidate: bool, machine: str | None = None) -> bytes:
    """The filter program as ``struct sock_filter`` bytes (8 bytes per instruction).

    ``candidate=False``: the base filter; ``True``: the candidate's extra rules (installed on top).
    Raises ValueError on an architecture without a syscall table here.
    """
    machine = machine or platform.machine()
    if machine not in _NUMBERS:
        raise ValueError(f"no seccomp syscall table for {machine!r} (supported: {sorted(_NUMBERS)})")
    nrs = _NUMBERS[machine]
    denied = [nrs[n] for n in (CANDIDATE_DENIED if candidate else BASE_DENIED) if n in nrs]
    prog = [_ins(_LD_W_ABS, _OFF_ARCH), _ins(_JEQ_K, _ARCH[machine], 1, 0), _ins(_RET_K, RET_KILL_PROCESS),
            _ins(_LD_W_ABS, _OFF_NR)]
    if machine == "x86_64":  # x32 ABI numbers carry bit 30
        prog += [_ins(_JGE_K, 0x40000000, 0, 1), _ins(_RET_K, RET_KILL_PROCESS)]
    # Layout after the checks: [denied jeqs][clone rules][allow][eperm]
    clone_rules: list[bytes] = []
    if candidate:
        # clone: allowed only with CLONE_THREAD; clone3: ENOSYS (its flags live in memory).
        clone_rules = [_ins(_JEQ_K, nrs["clone3"], 0, 1), _ins(_RET_K, RET_ERRNO | ENOSYS),
                       _ins(_JEQ_K, nrs["clone"], 0, 3), _ins(_LD_W_ABS, _OFF_ARG0),
                       _ins(_JSET_K, CLONE_THREAD, 1, 0), _ins(_RET_K, RET_ERRNO | EPERM)]
    else:
        # clone / clone3 with namespace flags: refused (clone3 cannot be inspected: ENOSYS makes the
        # C library use clone, whose flags can).
        clone_rules = [_ins(_JEQ_K, nrs["clone3"], 0, 1), _ins(_RET_K, RET_ERRNO | ENOSYS),
                       _ins(_JEQ_K, nrs["clone"], 0, 3), _ins(_LD_W_ABS, _OFF_ARG0),
                       _ins(_JSET_K, CLONE_NS_FLAGS, 0, 1), _ins(_RET_K, RET_ERRNO | EPERM)]
    tail = clone_rules + [_ins(_RET_K, RET_ALLOW), _ins(_RET_K, RET_ERRNO | EPERM)]
    for i, nr in enumerate(denied):
        to_eperm = (len(denied) - i - 1) + len(tail) - 1  # instructions to skip to reach the EPERM return
        prog.append(_ins(_JEQ_K, nr, to_eperm, 0))
    return b"".join(prog + tail)
