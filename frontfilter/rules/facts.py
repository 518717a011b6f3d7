"""What a rule can look at, at one stage of the SMTP dialogue.

The pipeline builds a `Facts` at each stage; the engine reads only this. Facts not known yet at
a stage are `None` (no sender before MAIL, no message before end of DATA); the loader refuses a
rule whose conditions need facts its stage cannot have.
"""

from __future__ import annotations

from dataclasses import dataclass

from frontfilter.content.view import MessageView
from frontfilter.model import EnvelopeFacts, SessionFacts, Stage


@dataclass(frozen=True)
class Facts:
    stage: Stage
    session: SessionFacts
    envelope: EnvelopeFacts
    recipient: str | None = None        # the recipient being decided, at stage rcpt
    message: MessageView | None = None  # at stage data only
