"""The pool of idle backend connections: one transaction per connection at a time, always."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from frontfilter.delivery.backend import Outcome
from frontfilter.delivery.forward import POOL_IDLE_SECONDS, Forwarder
from frontfilter.delivery.verify import RecipientVerifier, Verdict
from tests.delivery.test_worker_inprocess import Backend, config_for

MESSAGE = b"Subject: pooled\r\n\r\nhello\r\n"


def test_connections_taken_while_the_pool_is_pruned_are_never_handed_out_twice(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[bool], int]:
        backend = Backend()
        port = await backend.start()
        now = [1000.0]
        config = config_for(tmp_path, port).backend
        forwarder = Forwarder(config, "mx.test", clock=lambda: now[0])

        async def deliver() -> bool:
            attempt = await forwarder.deliver("alice@example.net", ["bob@example.org"], MESSAGE, ())
            return all(reply.ok for reply in attempt.results)

        try:
            oks = list(await asyncio.gather(deliver(), deliver()))   # two connections, idle since t
            now[0] += POOL_IDLE_SECONDS - 1
            oks.append(await deliver())                              # one of them idle since t + 4
            now[0] += 2                                              # the other is now stale
            pruning = asyncio.create_task(forwarder.prune())         # ... and its QUIT under way
            await asyncio.sleep(0)
            oks.append(await deliver())           # takes the fresh one while prune() awaits
            await pruning
            oks += await asyncio.gather(deliver(), deliver())        # each on its own connection
            return oks, len(backend.received)
        finally:
            await forwarder.close()
            await backend.stop()

    oks, received = asyncio.run(scenario())
    assert oks == [True] * 6
    assert received == 6


def test_bursts_at_full_concurrency_reuse_their_connections(tmp_path: Path) -> None:
    """backend.concurrency deliveries at once, again and again, on as many connections."""
    async def scenario() -> tuple[int, int]:
        backend = Backend()
        port = await backend.start()
        config = dataclasses.replace(config_for(tmp_path, port).backend, concurrency=12)
        forwarder = Forwarder(config, "mx.test")
        try:
            for _ in range(5):
                attempts = await asyncio.gather(*(forwarder.deliver("alice@example.net", ["bob@example.org"],
                                                                    MESSAGE, ()) for _ in range(12)))
                assert all(reply.ok for attempt in attempts for reply in attempt.results)
            return len(backend.protocols), len(backend.received)
        finally:
            await forwarder.close()
            await backend.stop()

    connections, received = asyncio.run(scenario())
    assert received == 60
    assert connections == 12


class OutOfStepOnce(Backend):
    """Answers one RCPT with 503, as a backend does whose session is out of step with ours."""

    def __init__(self) -> None:
        super().__init__()
        self.out_of_step_left = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.out_of_step_left:
            self.out_of_step_left -= 1
            return "503 5.5.1 Error: need MAIL command"
        return await super().handle_RCPT(server, session, envelope, address, options)


def test_a_503_from_the_backend_is_tried_again_not_bounced(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Outcome], int]:
        backend = OutOfStepOnce()
        port = await backend.start()
        pooled = Forwarder(config_for(tmp_path, port).backend, "mx.test")
        fresh = Forwarder(config_for(tmp_path, port).backend, "mx.test")

        async def deliver(forwarder: Forwarder) -> Outcome:
            attempt = await forwarder.deliver("alice@example.net", ["bob@example.org"], MESSAGE, ())
            return attempt.results[0].outcome

        try:
            outcomes = [await deliver(pooled)]           # its connection stays in the pool
            backend.out_of_step_left = 1
            outcomes.append(await deliver(pooled))       # pooled connection: 503, then a fresh one
            backend.out_of_step_left = 1
            outcomes.append(await deliver(fresh))        # a first connection meets the 503
            return outcomes, len(backend.received)
        finally:
            await pooled.close()
            await fresh.close()
            await backend.stop()

    outcomes, received = asyncio.run(scenario())
    assert outcomes == [Outcome.OK, Outcome.OK, Outcome.TRANSIENT]    # never PERMANENT: no bounce
    assert received == 2


def test_a_503_to_a_verification_probe_does_not_call_the_recipient_unknown(tmp_path: Path) -> None:
    async def scenario() -> Verdict:
        backend = OutOfStepOnce()
        port = await backend.start()
        config = config_for(tmp_path, port).backend
        forwarder = Forwarder(config, "mx.test")
        backend.out_of_step_left = 1
        try:
            return (await RecipientVerifier(config, forwarder).verify("bob@example.org")).verdict
        finally:
            await forwarder.close()
            await backend.stop()

    assert asyncio.run(scenario()) is Verdict.UNAVAILABLE      # not INVALID: no 550 at RCPT
