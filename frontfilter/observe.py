"""Typed events: each writes one structured log line and moves the matching metrics.

This is the one chokepoint between what frontfilter does and what an administrator sees, so the
log and the dashboard never disagree (STYLE habit 4). Log lines are JSON by default, one object
per line, always with an `event` key; message decisions carry the queue id that the client also
saw in its reply, which joins a complaint to the log line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from frontfilter import metrics
from frontfilter.reply import Reply

log = logging.getLogger("frontfilter")

# Label values for stripped types: a fixed set, everything else is "other" (cardinality bound).
STRIPPED_TYPE_LABELS = frozenset({
    "application/vnd.microsoft.portable-executable", "application/x-dosexec",
    "application/x-executable", "application/x-sharedlib", "application/x-msi",
    "application/zip", "application/x-7z-compressed", "application/x-rar", "application/gzip",
    "application/pdf", "application/msword", "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint", "application/x-ole-storage",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "text/html", "text/plain", "application/javascript", "text/x-shellscript",
    "application/octet-stream", "image/jpeg", "image/png",
})


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        else:
            entry["event"] = "log"
            entry["logger"] = record.name
            entry["msg"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        if fields:
            body = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        else:
            body = f"{record.name}: {record.getMessage()}"
        line = f"{stamp} {record.levelname.lower()} {body}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and " " not in value:
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def setup_logging(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # aiosmtpd logs every command at INFO (with addresses); keep that for debug sessions only.
    logging.getLogger("mail.log").setLevel(logging.WARNING if level != "debug" else logging.DEBUG)


def _emit(level: int, event: str, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": {"event": event, **fields}})


# ---- process -----------------------------------------------------------------------------

def started(version: str, listen: Sequence[str], config: Mapping[str, Any]) -> None:
    metrics.build_info.labels(version=version).set(1)
    _emit(logging.INFO, "started", version=version, listen=list(listen), config=config)


def listening(address: str) -> None:
    _emit(logging.INFO, "listening", address=address)


def stopping(reason: str) -> None:
    _emit(logging.INFO, "stopping", reason=reason)


def stopped(sessions_cut: int) -> None:
    _emit(logging.INFO, "stopped", sessions_cut=sessions_cut)


def warning(event: str, **fields: Any) -> None:
    _emit(logging.WARNING, event, **fields)


def internal_error(where: str, queue_id: str | None = None, **fields: Any) -> None:
    """An unexpected exception: the detail (with traceback) goes here, never to the client."""
    log.error(where, exc_info=True,
              extra={"fields": {"event": "internal_error", "where": where, "queue_id": queue_id, **fields}})


# ---- rules ------------------------------------------------------------------------------

def rules_loaded(count: int, fingerprint: str, files: Sequence[str], reload: bool) -> None:
    metrics.rules_loaded.set(count)
    metrics.rules_reloads.labels(result="ok").inc()
    metrics.rules_last_reload_successful.set(1)
    _emit(logging.INFO, "rules_loaded", rules=count, fingerprint=fingerprint,
          files=list(files), reload=reload)


def rules_refused(errors: Sequence[str], reload: bool) -> None:
    metrics.rules_reloads.labels(result="invalid").inc()
    metrics.rules_last_reload_successful.set(0)
    _emit(logging.ERROR, "rules_refused", errors=list(errors), reload=reload,
          kept_previous=reload)


# ---- SMTP -------------------------------------------------------------------------------

def connection(result: str, client: str | None = None) -> None:
    metrics.connections.labels(result=result).inc()
    if result != "accepted":
        _emit(logging.INFO, "connection_refused", result=result, client=client)


def reply_sent(stage: str, code: str) -> None:
    """Every line the server writes, counted by stage and 3-digit code (354 and 334 included)."""
    metrics.smtp_replies.labels(stage=stage, code=code).inc()


def stage_decided(stage: str, seconds: float) -> None:
    metrics.processing_seconds.labels(stage=stage).observe(seconds)


def command_refused(client: str, stage: str, reply: Reply, reason: str,
                    queue_id: str | None = None, rules: Iterable[str] = ()) -> None:
    """A refusal before end of DATA (relay denied, bad address, a rule at RCPT)."""
    _emit(logging.INFO, "refused", queue_id=queue_id, client=client, stage=stage,
          reply=reply.wire, reason=reason, rules=list(rules))


def protocol_violation(client: str, what: str) -> None:
    _emit(logging.INFO, "protocol_violation", client=client, what=what)


def rule_matched(rule: str, action: str, mode: str) -> None:
    metrics.rule_matches.labels(rule=rule, action=action, mode=mode).inc()


def inspection_limit(limit: str) -> None:
    metrics.inspection_limits.labels(limit=limit).inc()


def attachment_stripped(detected_type: str) -> None:
    label = detected_type if detected_type in STRIPPED_TYPE_LABELS else "other"
    metrics.attachments_stripped.labels(type=label).inc()


def message_decided(*, queue_id: str, verdict: str, size: int, **fields: Any) -> None:
    """The one line per message: client, envelope, size, verdict, rules, delivery, durations."""
    metrics.messages.labels(verdict=verdict).inc()
    metrics.message_size.observe(size)
    _emit(logging.INFO, "message", queue_id=queue_id, verdict=verdict, size=size, **fields)


# ---- delivery ---------------------------------------------------------------------------

def forward_attempt(backend: str, result: str, seconds: float, queue_id: str | None = None,
                    detail: str | None = None) -> None:
    metrics.forward_attempts.labels(backend=backend, result=result).inc()
    metrics.forward_seconds.labels(backend=backend).observe(seconds)
    if result != "ok":
        _emit(logging.WARNING, "forward_failed", backend=backend, result=result,
              queue_id=queue_id, detail=detail)


def tls_session(direction: str, version: str) -> None:
    metrics.tls_sessions.labels(direction=direction, version=version or "unknown").inc()
