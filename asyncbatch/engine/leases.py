"""Who holds a shard, and when a holder counts as gone: the lease policy, the same for every store backend.

A lease owner id is ``host:pid:random``. The store judges expiry by its own clock; the engine adds one rule of
its own: a holder on this host whose process has died is taken over at once instead of after expiry (a restarted
worker resumes immediately). A holder on another host is trusted until its lease expires, whatever our clock says.
"""

from __future__ import annotations

import os
import socket

#: Set to give this process another host identity (tests of workers "on different machines" on one machine).
HOST_ENV = "ASYNCBATCH_HOST"


def host_identity() -> str:
    return os.environ.get(HOST_ENV) or socket.gethostname()


def new_owner() -> str:
    """A lease owner id: host and pid let a restarted process take over the leases of a dead one at once."""
    return f"{host_identity()}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_is_dead(owner: str) -> bool:
    """True only for an owner on this host whose process is gone; anyone else may be alive."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    return host == host_identity() and pid_text.isdigit() and not _pid_alive(int(pid_text))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True
