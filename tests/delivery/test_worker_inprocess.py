"""The delivery worker in this process, against real loopback backends: metrics move, TLS to
the backend is required and verified when configured, verification answers from its cache."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP

from frontfilter import metrics
from frontfilter.config import HostPort, build_config
from frontfilter.delivery.queue import StoreAndForward
from frontfilter.delivery.spool import Admission, Envelope
from frontfilter.delivery.verify import Verdict
from frontfilter.model import new_queue_id

WAIT = 15.0


class Backend:
    """A tiny aiosmtpd backend on this loop; optionally offering STARTTLS."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.tls = tls
        self.received: list[tuple[str, list[str]]] = []
        self.server: asyncio.base_events.Server | None = None
        self.protocols: list[SMTP] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("reject"):
            return "550 5.1.1 User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    async def start(self) -> int:
        def make() -> SMTP:
            smtp = SMTP(self, hostname="backend.test", tls_context=self.tls, data_size_limit=None)
            self.protocols.append(smtp)
            return smtp

        self.server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for smtp in self.protocols:
            if smtp.transport is not None:
                smtp.transport.close()
        await self.server.wait_closed()


def config_for(tmp_path: Path, port: int, **backend: Any) -> Any:
    raw = {"backend": {"servers": [f"127.0.0.1:{port}"], "mode": "queue", "verify_recipients": True,
                       **backend},
           "spool": {"dir": str(tmp_path / "spool"), "retry_min": "100ms", "retry_max": "200ms",
                     "scan_interval": "100ms"},
           "rules": {"dir": str(tmp_path)}}
    return build_config(raw, tmp_path / "frontfilter.toml")


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def until(predicate: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_worker_delivers_over_verified_starttls_and_moves_its_metrics(tmp_path: Path) -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("backend.test").configure_cert(server_tls)
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls_before = sample("frontfilter_tls_sessions_total", direction="outbound", version="TLSv1.3")
    dead_before = sample("frontfilter_dead_letters_total")
    verified_before = sample("frontfilter_recipient_verifications_total", result="invalid", source="cache")

    async def scenario() -> None:
        backend = Backend(tls=server_tls)
        port = await backend.start()
        queue = StoreAndForward(config_for(tmp_path, port, tls="required", tls_verify_name="backend.test",
                                           tls_ca_file=str(tmp_path / "ca.pem")))
        await queue.start()
        try:
            sent = 0
            for recipients in (("bob@example.org",), ("reject@example.org",)):
                data = b"Subject: x\r\n\r\nhello\r\n"
                envelope = Envelope(id=new_queue_id(), sender="alice@example.net", recipients=recipients,
                                    arrived=time.time(), size=len(data))
                assert (await queue.spool.submit(envelope, data)).result is Admission.OK
                sent += 1
            assert sample("frontfilter_spool_messages") >= 1
            # bob delivered, reject@ bounced: a DSN to alice, the original dead-lettered.
            await until(lambda: len(backend.received) == 2)
            await until(lambda: sample("frontfilter_spool_messages") == 0)
            assert sorted(backend.received) == [("<>", ["alice@example.net"]),
                                                ("alice@example.net", ["bob@example.org"])]
            assert queue.verifier is not None
            first = await queue.verifier.verify("reject@example.org")
            second = await queue.verifier.verify("reject@example.org")
            assert (first.verdict, first.cached, second.cached) == (Verdict.INVALID, False, True)
            assert (await queue.verifier.verify("bob@example.org")).verdict is Verdict.VALID
        finally:
            await queue.stop(time.monotonic() + 5)
            await queue.close()
            await backend.stop()

    asyncio.run(scenario())
    assert sample("frontfilter_tls_sessions_total", direction="outbound", version="TLSv1.3") > tls_before
    assert sample("frontfilter_dead_letters_total") == dead_before + 1
    assert sample("frontfilter_recipient_verifications_total", result="invalid", source="cache") == verified_before + 1
    backend_label = [s for s in metrics.REGISTRY.collect() if s.name == "frontfilter_forward_attempts"]
    assert any(x.labels.get("result") == "ok" and x.value > 0 for m in backend_label for x in m.samples)
    assert sample("frontfilter_spool_oldest_age_seconds") == 0


def test_required_tls_to_a_backend_without_starttls_keeps_the_mail_spooled(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = Backend(tls=None)                   # offers no STARTTLS
        port = await backend.start()
        queue = StoreAndForward(config_for(tmp_path, port, tls="required", skip_failed_for="50ms"))
        await queue.start()
        try:
            data = b"Subject: x\r\n\r\nhello\r\n"
            envelope = Envelope(id=new_queue_id(), sender="alice@example.net",
                                recipients=("bob@example.org",), arrived=time.time(), size=len(data))
            assert (await queue.spool.submit(envelope, data)).result is Admission.OK
            await until(lambda: sample("frontfilter_forward_attempts_total", backend=f"127.0.0.1:{port}",
                                       result="transient") >= 2)
            assert backend.received == [] and queue.spool.count == 1   # never sent in the clear
        finally:
            await queue.stop(time.monotonic() + 5)
            await queue.close()
            await backend.stop()

    asyncio.run(scenario())


def test_a_backend_is_skipped_after_a_failure_until_skip_failed_for_passes(tmp_path: Path) -> None:
    from frontfilter.delivery.forward import Forwarder

    now = [1000.0]
    config = dataclasses.replace(config_for(tmp_path, 1).backend, servers=(
        HostPort("127.0.0.1", 1), HostPort("127.0.0.1", 2)), skip_failed_for=30.0)
    forwarder = Forwarder(config, "mx.test", clock=lambda: now[0])
    forwarder.mark_down(HostPort("127.0.0.1", 1))
    assert forwarder.usable() == [HostPort("127.0.0.1", 2)]
    now[0] += 31
    assert forwarder.usable() == [HostPort("127.0.0.1", 1), HostPort("127.0.0.1", 2)]
