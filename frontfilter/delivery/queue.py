"""Queue mode, assembled: the spool, the forwarder, the worker and (optionally) verification.

The composition root (`process/service.py`) builds one `StoreAndForward` in queue mode, starts it before
the SMTP listeners (so crash recovery has run before any new message arrives) and stops it after
they closed. The pipeline gets `spool` (acknowledged writes, back-pressure) and `verifier`.

Shutdown comes in two steps because sessions outlive the worker: `stop` ends deliveries (run
alongside the sessions' `server.shutdown_grace`), while a session still in DATA may yet spool
its message and must get its 250; only `close`, once no session is left, ends the spool's
writer threads. (Without `close`, they end with the process, after any write in progress.)
"""

from __future__ import annotations

import asyncio

from frontfilter import observe
from frontfilter.config import Config
from frontfilter.delivery.forward import Forwarder
from frontfilter.delivery.spool import Spool
from frontfilter.delivery.verify import RecipientVerifier
from frontfilter.delivery.worker import Worker


class StartError(Exception):
    """Queue mode cannot start (the spool directory): one readable line, naming the key. (The
    backend's TLS files are read by Service.start, with the relay's other files.)"""


class StoreAndForward:
    def __init__(self, config: Config):
        self.spool = Spool(config.spool)
        self.forwarder = Forwarder(config.backend, config.server.hostname)
        self.worker = Worker(config, self.spool, self.forwarder)
        self.verifier = (RecipientVerifier(config.backend, self.forwarder)
                         if config.backend.verify_recipients else None)

    async def start(self) -> None:
        """Crash recovery (drop what was never acknowledged), then deliver what is spooled."""
        try:
            recovery = await self.spool.open()
        except OSError as error:
            raise StartError(f"cannot use the spool {self.spool.layout.root} (spool.dir): "
                             f"{error.strerror or error}") from None
        observe.spool_recovered(recovery.messages, recovery.temps_discarded, recovery.orphan_states)
        try:
            self.spool.start_committing()
        except OSError as error:
            raise StartError(f"{error.strerror or error} (spool.dir {self.spool.layout.root})") from None
        await self.worker.start()

    async def stop(self, deadline: float) -> None:
        """No new attempts; those in flight until `deadline` (monotonic), the rest stay spooled."""
        cut = await self.worker.stop(deadline)
        observe.delivery_stopped(cut)

    async def close(self) -> None:
        """After the last session: no message can be spooled any more."""
        await asyncio.to_thread(self.spool.shutdown)
