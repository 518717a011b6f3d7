"""A message through the relay's own pipeline, with no spool and no backend.

`frontfilter scan`, `frontfilter test` and `quarantine release --rescan` decide a message here.
They drive `pipeline.Pipeline` itself — connect, HELO, MAIL, each RCPT, DATA — so a dry run
cannot drift from the relay: relay policy, the rules of every stage, the reputation checks the
rules read, the content walk, clamd, the rewrite are the same code. What differs is only the
pipeline's edges to the outside, overridden in `DryPipeline`:

- RCPT is not mirrored to the backend (sync mode) nor probed (`backend.verify_recipients`);
- a message to be forwarded is not forwarded: its bytes are kept (`DryResult.forwarded`);
- a quarantined message is not written to the quarantine;
- greylisting is never consulted (a dry run must not record triplets), and without `lookups`
  no DNS check is made (no DNS lists, SPF or sender-domain lookups): their facts are "not
  looked up", as in a relay configured without them.

The log lines the relay would have written (`message`, `refused`, `dnsbl`, ...) are captured,
not printed, and returned in `DryResult.events`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from frontfilter import reply
from frontfilter.config import Config
from frontfilter.model import Peer, Stage
from frontfilter.mapped import MessageBytes
from frontfilter.pipeline.decision import Decision
from frontfilter.pipeline.disposition import Disposition, queued
from frontfilter.pipeline.stages import Pipeline, RuleBook, SessionState, Transaction
from frontfilter.reply import Reply
from frontfilter.rules.facts import Facts
from frontfilter.rules.model import Rule, Verdict

# The log lines of the relay that a dry run keeps (the others are about the process).
KEPT_EVENTS = frozenset({"message", "refused", "dnsbl", "sender_domain", "rules_monitored",
                         "antivirus_failed", "internal_error"})
# The port a dry run's client is taken to come from (nothing is listened on or sent to).
DRY_CLIENT_PORT = 25


@dataclass(frozen=True)
class DryEnvelope:
    """What the relay would have learnt from the client before the message."""

    sender: str = "sender@example.net"
    recipients: tuple[str, ...] = ("postmaster@example.org",)
    client_ip: str = "192.0.2.1"
    helo: str = "client.example.net"
    auth_user: str | None = None
    tls: bool = False


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the rules: at which stage, for which recipient (RCPT), what it said."""

    stage: Stage
    recipient: str | None
    verdict: Verdict


@dataclass
class DryResult:
    disposition: Disposition      # what became of the message, as the relay's `message` line says
    reply: Reply                  # the client's last answer (the one that decided)
    stage: Stage                  # where it was decided: DATA, or an earlier stage that refused
    decided_by: str | None        # the rule, or for a refusal before any rule, its reason
    refused_by_policy: bool = False   # refused by relay policy (relay access, addresses, logins)
    decision: Decision | None = None  # the content decision (None: decided before DATA)
    forwarded: bytes | None = None    # the message as it would reach the backend
    refused_recipients: list[tuple[str, Reply]] = field(default_factory=list)   # the others went on
    evaluations: list[Evaluation] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    state: SessionState | None = None
    own_domains: frozenset[str] = frozenset()

    @property
    def verdict(self) -> str:
        """The relay's word for it: accepted, rejected, tempfailed, discarded, quarantined."""
        return self.disposition.value

    @property
    def action(self) -> str:
        """The deciding rule action, as `scan` reports it and its exit status says: accept,
        reject, tempfail, discard, quarantine (strip, tag and add_header by name)."""
        if self.decision is not None and self.stage is Stage.DATA:
            action = self.decision.verdict.action
            if action is not None:
                return action.value
        return self.disposition.action_word

    def early(self) -> list[Evaluation]:
        """The evaluations before DATA in which a rule matched."""
        return [e for e in self.evaluations if e.stage is not Stage.DATA and e.verdict.matches]

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("event") == name), None)


def dry_config(config: Config, lookups: bool) -> Config:
    """The relay's config as a dry run uses it: never greylisting; DNS checks only if asked."""
    config = dataclasses.replace(config, greylist=dataclasses.replace(config.greylist, enabled=False))
    if lookups:
        return config
    return dataclasses.replace(
        config, dnsbl=dataclasses.replace(config.dnsbl, lists=()),
        spf=dataclasses.replace(config.spf, enabled=False),
        dkim=dataclasses.replace(config.dkim, enabled=False),
        dmarc=dataclasses.replace(config.dmarc, enabled=False),
        arc=dataclasses.replace(config.arc, key_file=None),     # a key turns on chain verification
        dns=dataclasses.replace(config.dns, check_sender_domain=False))


class RecordingRules:
    """The rule set, as the pipeline sees it, noting each evaluation (any thread)."""

    def __init__(self, rules: Any, evaluations: list[Evaluation]):
        self._rules = rules
        self._evaluations = evaluations

    @property
    def stages(self) -> frozenset[Stage]:
        return self._rules.stages

    def evaluate(self, facts: Facts, *, soft_reject: bool = False) -> Verdict:
        verdict: Verdict = self._rules.evaluate(facts, soft_reject=soft_reject)
        self._evaluations.append(Evaluation(facts.stage, facts.recipient, verdict))
        return verdict

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules)

    def __getattr__(self, name: str) -> Any:     # reads, fingerprint, ...: the rule set's own
        return getattr(self._rules, name)


class DryPipeline(Pipeline):
    """The relay's pipeline with its edges to the backend, the spool and the quarantine cut."""

    def __init__(self, config: Config, rules: Any):
        self.evaluations: list[Evaluation] = []
        super().__init__(config, RuleBook(RecordingRules(rules, self.evaluations)))
        self.decision: Decision | None = None
        self.forwarded: bytes | None = None
        # What the relay decided, taken where it decides it (the same calls log it):
        self.disposition: Disposition | None = None       # end of DATA, and who decided
        self.decided_by: str | None = None
        self.refusals: dict[Stage, tuple[str, bool]] = {}  # stage -> (why, by a rule) of the last refusal

    async def _backend_recipient(self, state: SessionState, recipient: Any) -> Reply | None:
        return None

    async def _judge(self, state: SessionState, txn: Transaction, judge: Any, size: int, on_loop: Any = None) -> Any:
        judged = await super()._judge(state, txn, judge, size, on_loop)
        if judged is not None:
            self.decision = judged[0]
        return judged

    async def _forward(self, state: SessionState, txn: Transaction, head: bytes, message: MessageBytes
                       ) -> tuple[Reply, str]:
        self.forwarded = head + message
        return queued(txn.queue_id), "dry run: not forwarded"

    async def _hold(self, state: SessionState, txn: Transaction, raw: MessageBytes, verdict: Verdict,
                    answer: Reply) -> tuple[Reply, str] | None:
        return None          # the reply is the relay's; nothing is kept

    def _decided(self, txn: Transaction, disposition: Disposition, size: int, answer: Reply, started: float,
                 log: dict[str, Any], **extra: object) -> None:
        decided_by = extra.get("decided_by")
        self.disposition, self.decided_by = disposition, str(decided_by) if decided_by is not None else None
        super()._decided(txn, disposition, size, answer, started, log, **extra)

    def _refused(self, state: SessionState, stage: Stage, answer: Reply, reason: str, kind: str,
                 rules: Sequence[str] = ()) -> None:
        by_rule = kind == "rule"          # the reason then reads "rule NAME"
        self.refusals[stage] = (reason.removeprefix("rule ") if by_rule else reason, by_rule)
        super()._refused(state, stage, answer, reason, kind, rules)


class _Capture(logging.Handler):
    def __init__(self, events: list[dict[str, Any]]):
        super().__init__(logging.DEBUG)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields.get("event") in KEPT_EVENTS:
            self.events.append(dict(fields))


def run(config: Config, rules: Any, raw: bytes, envelope: DryEnvelope = DryEnvelope()) -> DryResult:
    """Decide `raw` (the message as the client sent it, CRLF lines) as the relay would."""
    return asyncio.run(run_async(config, rules, raw, envelope))


async def run_async(config: Config, rules: Any, raw: bytes, envelope: DryEnvelope = DryEnvelope()) -> DryResult:
    events: list[dict[str, Any]] = []
    logger = logging.getLogger("frontfilter")
    capture, level, propagate = _Capture(events), logger.level, logger.propagate
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    pipeline = DryPipeline(config, rules)
    try:
        await pipeline.load_sender_map()     # relay.sender_map: MAIL decided as the relay decides it
        result = await _drive(pipeline, raw, envelope)
    finally:
        pipeline.shutdown()
        logger.removeHandler(capture)
        logger.setLevel(level)
        logger.propagate = propagate
    result.evaluations, result.events = pipeline.evaluations, events
    result.own_domains = pipeline.checks.own_domains
    return result


async def _drive(pipeline: DryPipeline, raw: bytes, envelope: DryEnvelope) -> DryResult:
    peer = Peer(ipaddress.ip_address(envelope.client_ip), DRY_CLIENT_PORT)
    state, refusal = await pipeline.connect(peer, tls=envelope.tls)
    try:
        if refusal is not None:     # the handler turns a rule's refusal at connect into a close
            return _refused(Stage.CONNECT, refusal, state, pipeline)
        refusal = await pipeline.helo(state, envelope.helo)
        if refusal is not None:
            return _refused(Stage.HELO, refusal, state, pipeline)
        state.auth_user = envelope.auth_user
        answer = await pipeline.mail(state, envelope.sender, _mail_options(envelope, raw),
                                     max_size=pipeline.config.server.max_message_size)
        if not answer.is_success:
            return _refused(Stage.MAIL, answer, state, pipeline)
        refusals = []
        for recipient in envelope.recipients:
            answer = await pipeline.rcpt(state, recipient)
            if not answer.is_success:
                refusals.append((recipient, answer))
        if state.txn is None or not state.txn.recipients:
            result = _refused(Stage.RCPT, refusals[0][1] if refusals else reply.BAD_SEQUENCE, state, pipeline)
            result.refused_recipients = refusals
            return result
        if len(raw) > pipeline.config.server.max_message_size:     # the session's DATA bound
            result = _refused(Stage.DATA, reply.MESSAGE_TOO_BIG, state, pipeline)
            result.decided_by = "server.max_message_size"
            return result
        answer = await pipeline.data(state, raw)
        result = _decided(answer, state, pipeline)
        result.refused_recipients = refusals
        return result
    finally:
        # The client's DNS lists are awaited by the first stage whose rules read them: a message
        # decided before it leaves them unanswered. The administrator is shown them anyway.
        await pipeline.checks.settle_listing(state.checks)
        await pipeline.close(state)


def _mail_options(envelope: DryEnvelope, raw: bytes) -> list[str]:
    """MAIL parameters a client would have given for this envelope and message."""
    options = []
    if not raw.isascii():
        options.append("BODY=8BITMIME")
    if not (envelope.sender + "".join(envelope.recipients)).isascii():
        options.append("SMTPUTF8")
    return options


def _refused(stage: Stage, answer: Reply, state: SessionState, pipeline: DryPipeline) -> DryResult:
    """Refused before the message: by a rule of that stage (named), or by relay policy."""
    why, by_rule = pipeline.refusals.get(stage, (None, False))
    return DryResult(disposition=Disposition.of_reply(answer), reply=answer, stage=stage,
                     decided_by=why, refused_by_policy=not by_rule, state=state)


def _decided(answer: Reply, state: SessionState, pipeline: DryPipeline) -> DryResult:
    disposition = pipeline.disposition or Disposition.of_reply(answer)
    return DryResult(disposition=disposition, reply=answer, stage=Stage.DATA, decided_by=pipeline.decided_by,
                     decision=pipeline.decision, forwarded=pipeline.forwarded, state=state)
