"""What one antivirus scan of a message found: a plain immutable value, no I/O.

A scan is conclusive (`CLEAN`, `INFECTED`) or failed (`ERROR`, `TIMEOUT`, `TOO_BIG`): a failed
scan says nothing about the message, so neither `virus = true` nor `virus = false` holds for it,
and `[antivirus] on_error` decides what happens to the message.

The signature names are for the log and `frontfilter scan` only: they never reach the client.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class ScanStatus(enum.Enum):
    """The result of a scan; the values are the `result` label of the scan metric."""

    CLEAN = "clean"        # clamd read it all and found nothing
    INFECTED = "infected"  # clamd found at least one signature
    ERROR = "error"        # clamd unreachable, closed early, or answered an error
    TIMEOUT = "timeout"    # no answer within [antivirus] timeout (waiting for a slot included)
    TOO_BIG = "too_big"    # over [antivirus] max_size, or over clamd's StreamMaxLength

    @property
    def conclusive(self) -> bool:
        return self in (ScanStatus.CLEAN, ScanStatus.INFECTED)


@dataclass(frozen=True)
class ScanResult:
    status: ScanStatus
    signatures: tuple[str, ...] = ()  # clamd's names, e.g. "Win.Test.EICAR_HDB-1" (INFECTED only)
    detail: str = ""                  # why a scan failed, for the log: never sent to the client
    seconds: float = 0.0              # connection, waiting for a slot, sending and clamd's work

    @property
    def infected(self) -> bool:
        return self.status is ScanStatus.INFECTED

    @property
    def failed(self) -> bool:
        return not self.status.conclusive

    def describe(self) -> str:
        """One line for people: `infected: Eicar-Signature`, `clean`, `error: connect ...`."""
        if self.infected:
            return f"infected: {', '.join(self.signatures)}"
        if self.failed and self.detail:
            return f"{self.status.value}: {self.detail}"
        return self.status.value

    def log_fields(self) -> dict[str, Any]:
        """The `antivirus` field of the message log line and of `frontfilter scan --json`."""
        fields: dict[str, Any] = {"result": self.status.value, "ms": round(self.seconds * 1000, 2)}
        if self.signatures:
            fields["signatures"] = list(self.signatures)
        if self.detail:
            fields["detail"] = self.detail
        return fields
