"""What a rule can look at, at one stage of the SMTP dialogue.

The pipeline builds a `Facts` at each stage; the engine reads only this. Facts not known yet at
a stage are `None` (no sender before MAIL, no message before end of DATA); the loader refuses a
rule whose conditions need facts its stage cannot have. `antivirus` is also None at data when
no scan was made (no `[antivirus]`, or an earlier `accept` let the message through).
"""

from __future__ import annotations

from dataclasses import dataclass

from frontfilter.antivirus.result import ScanResult
from frontfilter.content.facts import MessageView
from frontfilter.model import EnvelopeFacts, SessionFacts, Stage
from frontfilter.reputation.facts import NO_CHECKS, CheckFacts


@dataclass(frozen=True)
class Facts:
    stage: Stage
    session: SessionFacts
    envelope: EnvelopeFacts
    recipient: str | None = None        # the recipient being decided, at stage rcpt
    message: MessageView | None = None  # at stage data only
    checks: CheckFacts = NO_CHECKS      # DNSBL, SPF, greylisting, own domains (frontfilter.reputation)
    antivirus: ScanResult | None = None  # at stage data, when [antivirus] is configured
