"""aiosmtpd hooks -> pipeline calls -> replies. Thin glue: no policy is decided here.

The pipeline's per-connection `SessionState` rides on aiosmtpd's `Session` object. aiosmtpd's
envelope is kept in step with what the pipeline accepted, because aiosmtpd itself checks it for
command sequencing (no RCPT before MAIL, no DATA before RCPT).
"""

from __future__ import annotations

import time
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from frontfilter import observe, reply
from frontfilter.model import Peer, Stage
from frontfilter.pipeline import Pipeline, SessionState
from frontfilter.reply import Reply


class Handler:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.sessions: set[Any] = set()    # live FrontSMTP protocols, for graceful shutdown
        self.accepting = True

    def _state(self, session: Session) -> SessionState:
        return session.frontfilter  # type: ignore[attr-defined,no-any-return]

    def queue_id_of(self, session: Session | None) -> str | None:
        state = getattr(session, "frontfilter", None)
        return state.txn.queue_id if state is not None and state.txn is not None else None

    # ---- connection ---------------------------------------------------------------------

    async def admit(self, server: Any, session: Session, peer: Peer) -> Reply | None:
        """The client (after PROXY, within the limits) asks to be greeted: None admits it."""
        if not self.accepting:
            observe.connection("refused_shutdown", str(peer), listener=server.listener.name)
            return reply.SHUTTING_DOWN
        if self.pipeline.rulebook.current is None:
            observe.connection("refused_not_ready", str(peer), listener=server.listener.name)
            return reply.NOT_READY
        started = time.monotonic()
        state, refusal = await self.pipeline.connect(peer, tls=server.tls_active)
        session.frontfilter = state  # type: ignore[attr-defined]
        observe.stage_decided("connect", time.monotonic() - started)
        if refusal is not None:
            observe.connection("refused_rule", str(state.peer))
            return Reply(refusal.code if refusal.code != 250 else 554, refusal.enhanced,
                         refusal.text, close=True)
        observe.connection("accepted")
        self.sessions.add(server)
        return None

    async def session_closed(self, session: Session) -> None:
        state = getattr(session, "frontfilter", None)
        if state is not None:
            await self.pipeline.close(state)

    def forget(self, server: Any) -> None:
        self.sessions.discard(server)

    def authenticated(self, session: Session, user: str) -> None:
        """AUTH succeeded: from now on relay policy and the rules see the user."""
        self._state(session).auth_user = user

    # ---- commands -----------------------------------------------------------------------

    async def handle_EHLO(self, server: Any, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        server.stage = "helo"
        refusal = await self.pipeline.helo(self._state(session), hostname)
        if refusal is not None:
            return [refusal.wire]
        session.host_name = hostname
        # aiosmtpd ends with "250 HELP"; PIPELINING is safe because DATA is read in blocks and
        # what follows the terminator goes back to the command reader (see smtp.data).
        # STARTTLS and AUTH are the listener's to offer (server.extension_lines), not aiosmtpd's.
        size = f"250-SIZE {server.max_message_size}"
        middle = [r for r in responses[1:-1] if not r.startswith(("250-AUTH", "250-STARTTLS"))]
        return (responses[:1] + [size] + middle + server.extension_lines()
                + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]])

    async def handle_HELO(self, server: Any, session: Session, envelope: Envelope,
                          hostname: str) -> str:
        server.stage = "helo"
        refusal = await self.pipeline.helo(self._state(session), hostname)
        if refusal is not None:
            return refusal.wire
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server: Any, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        server.stage = "mail"
        refusal = server.role_refusal()
        if refusal is not None:    # submission: TLS and AUTH first
            needs = "TLS" if refusal is reply.TLS_REQUIRED else "AUTH"
            observe.command_refused(str(server.client), Stage.MAIL.value, refusal,
                                    f"listener {server.listener.name} requires {needs} before MAIL")
            return refusal.wire
        # aiosmtpd hands the null sender over as "<>", and needs a non-empty mail_from to
        # allow RCPT: it keeps "<>", the pipeline gets "".
        answer = await self.pipeline.mail(self._state(session), "" if address == "<>" else address,
                                          options, max_size=server.max_message_size)
        if answer.is_success:
            envelope.mail_from = address
            envelope.mail_options.extend(options)
        return answer.wire

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        server.stage = "rcpt"
        answer = await self.pipeline.rcpt(self._state(session), address)
        if answer.is_success:
            envelope.rcpt_tos.append(address)
        return answer.wire

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        server.stage = "data"
        assert isinstance(envelope.content, bytes)
        answer = await self.pipeline.data(self._state(session), envelope.content)
        envelope.content = envelope.original_content = None
        return answer.wire

    async def handle_RSET(self, server: Any, session: Session, envelope: Envelope) -> str:
        await self.pipeline.reset(self._state(session))
        return reply.OK.wire

    async def handle_QUIT(self, server: Any, session: Session, envelope: Envelope) -> str:
        return reply.BYE.wire
