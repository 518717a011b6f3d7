"""Open files: what the relay may need at once, and the process limit raised to fit it.

Every SMTP session holds a socket, and one more while a big message waits in its spill file; in
sync mode each also holds one to the backend; the queue
opens up to `backend.concurrency` backend connections and a few spool files (with the spill, as
many big messages delivered from their spill files, each mapped: mapped.SpilledMessage); the listeners,
the HTTP endpoint, logs and libraries take a few dozen more. A process over its RLIMIT_NOFILE
gets EMFILE on accept(): new clients hang in the listen queue with no reply and no log line
from us. systemd gives services a soft limit of 1024 and a hard one far above it, and asks
programs that need more to raise the soft limit themselves (systemd.exec(5), LimitNOFILE=):
`raise_limit` does that at start, up to the hard limit, and says so when even that is short.
"""

from __future__ import annotations

import resource

from frontfilter.config import BackendMode, Config

OVERHEAD = 64       # listeners, the HTTP endpoint, the event loop, logs, libraries, spool files


def needed(config: Config) -> int:
    """Descriptors one worker may hold at once with this config."""
    per_session = 2 if config.backend.mode is BackendMode.SYNC else 1
    deliveries = config.backend.concurrency
    if config.limits.data_spill_size:
        per_session += 1         # the spill file of a message being received (smtp/data.py)
        if config.backend.mode is BackendMode.QUEUE:
            deliveries *= 2      # and a message being delivered from it (mapped.SpilledMessage)
    return config.limits.max_connections * per_session + deliveries + OVERHEAD


def raise_limit(config: Config) -> tuple[int, int, int]:
    """Raise the soft limit towards what `config` needs (never above the hard limit, never
    down). (needed, soft limit now, hard limit)."""
    want = needed(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
        except (ValueError, OSError):
            pass
    return want, soft, hard


def shortfall(want: int, soft: int) -> str | None:
    """Why the limit is too low for the config, or None."""
    if soft == resource.RLIM_INFINITY or soft >= want:
        return None
    return (f"open files limited to {soft}, the config may need {want} a worker "
            f"(limits.max_connections: a descriptor a session, one more in sync mode and for a spill file): raise "
            f"LimitNOFILE= in the unit, or lower limits.max_connections")
