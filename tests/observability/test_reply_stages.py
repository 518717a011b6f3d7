"""`frontfilter_smtp_replies_total{stage}` names the command a reply answers.

The dashboard's "refusals by stage" panel reads it: an executable refused at the end of DATA
must show as a DATA refusal, not as one at MAIL (it did, until the stage was set back to
"mail" only after the reply to DATA had been counted).
"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

from tests.content import corpus
from tests.harness import eventually
from tests.observability.support import http_get, relay_with_endpoint


def replies(port: int) -> dict[tuple[str, str], float]:
    _, exposition = http_get(port, "/metrics")
    found = re.findall(r'^frontfilter_smtp_replies_total\{code="(\d+|other)",stage="(\w+)"\} (\S+)$',
                       exposition, re.MULTILINE)
    return {(stage, code): float(count) for code, stage, count in found}


@pytest.mark.parametrize("mode", ["sync", "queue"])
def test_each_reply_is_counted_under_the_command_it_answers(tmp_path: Path, mode: str) -> None:
    with relay_with_endpoint(tmp_path, backend={"mode": mode}) as (relay, port):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.sendmail("alice@example.net", ["bob@example.org"], corpus.plain())
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("alice@example.net", ["bob@example.org"],
                                corpus.message(corpus.attachment(corpus.pe(), "image/jpeg", "photo.jpg")))
            assert refused.value.smtp_code == 554
            client.mail("alice@example.net")           # MAIL after a transaction is MAIL's again
        counts = eventually(lambda: (c := replies(port)).get(("mail", "250"), 0) >= 4 and c)
        assert counts[("data", "354")] == 2
        assert counts[("data", "250")] == 1           # the message taken
        assert counts[("data", "554")] == 1           # the executable, refused after its DATA
        # three MAILs, and the RSET smtplib sends after a refused message
        assert counts[("mail", "250")] == 4 and ("mail", "554") not in counts
        assert counts[("rcpt", "250")] == 2


def test_quit_and_a_refused_starttls_are_counted_under_their_own_commands(tmp_path: Path) -> None:
    """221 was counted under whatever command came before QUIT, and a refused STARTTLS under
    the command before it."""
    with relay_with_endpoint(tmp_path) as (relay, port):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.docmd("STARTTLS")[0] == 502        # no certificate on this listener
            client.mail("alice@example.net")
        counts = eventually(lambda: (c := replies(port)).get(("quit", "221"), 0) >= 1 and c)
        assert counts[("starttls", "502")] == 1
        assert counts[("quit", "221")] == 1
        assert ("mail", "221") not in counts and ("mail", "502") not in counts
