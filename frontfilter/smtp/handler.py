"""SMTP session -> pipeline calls -> replies. Thin glue: no policy is decided here.

The pipeline's per-connection `SessionState` rides on the session (`SmtpSession.state`); the
session core keeps the protocol's own state (HELO given, transaction open, TLS, AUTH).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from frontfilter import observe, reply
from frontfilter.mapped import MessageBytes
from frontfilter.pipeline.stages import Pipeline, SessionState
from frontfilter.reply import Reply

if TYPE_CHECKING:
    from frontfilter.smtp.session import SmtpSession


class Handler:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.sessions: set[SmtpSession] = set()    # live sessions, for graceful shutdown
        self.accepting = True

    def queue_id_of(self, session: SmtpSession) -> str | None:
        state: SessionState | None = session.state
        return state.txn.queue_id if state is not None and state.txn is not None else None

    # ---- connection ---------------------------------------------------------------------

    async def admit(self, session: SmtpSession) -> Reply | None:
        """The client (after PROXY, within the limits) asks to be greeted: None admits it."""
        peer = session.client
        if not self.accepting:
            observe.connection("refused_shutdown", str(peer), listener=session.listener.name)
            return reply.SHUTTING_DOWN
        if self.pipeline.rulebook.current is None:
            observe.connection("refused_not_ready", str(peer), listener=session.listener.name)
            return reply.NOT_READY
        started = time.monotonic()
        state, refusal = await self.pipeline.connect(peer, tls=session.tls_active)
        session.state = state
        observe.stage_decided("connect", time.monotonic() - started)
        if refusal is not None:
            observe.connection("refused_rule", str(state.peer))
            return Reply(refusal.code if refusal.code != 250 else 554, refusal.enhanced,
                         refusal.text, close=True)
        observe.connection("accepted")
        self.sessions.add(session)     # until the session's task ends (SmtpSession._run)
        return None

    async def session_closed(self, session: SmtpSession) -> None:
        if session.state is not None:
            await self.pipeline.close(session.state)

    def forget(self, session: SmtpSession) -> None:
        self.sessions.discard(session)

    def authenticated(self, session: SmtpSession, user: str) -> None:
        """AUTH succeeded: from now on relay policy and the rules see the user."""
        session.state.auth_user = user

    def tls_started(self, session: SmtpSession) -> None:
        """STARTTLS succeeded: the rules see TLS; what AUTH said before it is forgotten."""
        if session.state is not None:
            state = session.state
            state.tls, state.helo, state.auth_user, state.txn = True, None, None, None

    # ---- commands -----------------------------------------------------------------------

    async def helo(self, session: SmtpSession, hostname: str) -> Reply | None:
        return await self.pipeline.helo(session.state, hostname)

    async def mail(self, session: SmtpSession, address: str, options: list[str]) -> Reply:
        return await self.pipeline.mail(session.state, address, options,
                                        max_size=session.server.max_message_size)

    async def rcpt(self, session: SmtpSession, address: str) -> Reply:
        return await self.pipeline.rcpt(session.state, address)

    async def data(self, session: SmtpSession, content: MessageBytes) -> Reply:
        return await self.pipeline.data(session.state, content)

    async def reset(self, session: SmtpSession) -> None:
        await self.pipeline.reset(session.state)
