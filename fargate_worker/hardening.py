"""Process hardening shared by the worker and its sandbox children (Linux ``prctl``).

The children run hostile input as the worker's uid (in the container the worker is a non-root
user, which cannot give a child another uid). What stands between a compromised child and the
worker's memory and environment (``/proc/<pid>/mem``, ``/proc/<pid>/environ``: the Redis token,
the database URL, the ECS credentials path) is then the kernel's ptrace access check: for a
process of the same uid it refuses only when the target is not *dumpable* and the caller lacks
``CAP_SYS_PTRACE`` (which the container does not grant). Dumpability is reset to 1 by every
``exec``, so each process that holds something worth reading clears it itself at start.
"""

from __future__ import annotations

import ctypes
import sys

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38


def prctl(option: int, arg: int, name: str) -> int:
    """``prctl(option, arg)``; raises OSError on failure (a control that silently did not take
    effect is worse than none). No-op returning 0 off Linux (development machines)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.prctl(option, arg, 0, 0, 0))
    if result < 0:
        raise OSError(ctypes.get_errno(), f"prctl({name}) failed")
    return result


def make_undumpable() -> None:
    """Refuse this process's memory, environment and file descriptors (``/proc/<pid>/mem``,
    ``environ``, ``fd``; ptrace) to other processes of the same uid, and write no core dump."""
    prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")


def forbid_privilege_gain() -> None:
    """``no_new_privs``: a setuid binary or file capabilities exec'd from here grant nothing."""
    prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
