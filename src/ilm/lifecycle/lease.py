"""Who holds a lease on a piece of work, and whether that holder still runs.

A lease owner is ``host:pid:nonce``: the host and process of the worker and a
nonce per claim (two threads of one process are two owners). A lease lapses at
its ``until`` time unless renewed; on the same host a lease whose process is
gone (killed, crashed) is void at once, so a worker restarted after a crash
does not wait for the lapse. On another host only the time counts.
"""

from __future__ import annotations

import os
import socket
import uuid

__all__ = ["new_owner", "owner_alive"]


def new_owner() -> str:
    """A fresh owner id for one claim (at most 128 characters)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def owner_alive(owner: str) -> bool:
    """False only when ``owner`` ran on this host in a process that no longer exists."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return True  # not ours to judge: the lease's time decides
    host, pid = parts[0], int(parts[1])
    if host != socket.gethostname()[:80] or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
