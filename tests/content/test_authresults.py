"""Authentication-Results (RFC 8601 §5): fields from outside that claim the relay's authserv-id
never reach the backend, which trusts that name; other hosts' fields are left as they are."""

from __future__ import annotations

from pathlib import Path

import authres

from frontfilter.content.authresults import field_value, remove_claims
from tests.harness import RecordingSink, Relay, send, write_config

BODY = b"\r\nhello\r\n"


def test_only_the_fields_that_claim_our_authserv_id_are_removed() -> None:
    header = (b"From: a@example.net\r\n"
              b"Authentication-Results: MX.Test; spf=pass\r\n smtp.mailfrom=evil.example\r\n"
              b"authentication-results : (a comment) mx.test ; dkim=pass\r\n"
              b"Authentication-Results: other.example; spf=fail\r\n"
              b"Subject: hi\r\n")
    kept = remove_claims(header + BODY, "mx.test")
    assert kept == (b"From: a@example.net\r\nAuthentication-Results: other.example; spf=fail\r\n"
                    b"Subject: hi\r\n" + BODY)


def test_a_message_without_any_is_not_copied_and_the_body_is_never_read() -> None:
    message = b"Subject: hi\r\n\r\nAuthentication-Results: mx.test; spf=pass\r\n"
    assert remove_claims(message, "mx.test") is message


def test_the_field_says_none_when_nothing_was_evaluated() -> None:
    assert field_value("mx.test", []) == "mx.test; none"
    assert field_value("mx.test", [("spf", "pass", {"smtp.mailfrom": "example.net"})]) == \
        "mx.test; spf=pass smtp.mailfrom=example.net"
    # A login or domain from a client cannot add a method, a comment or a property of its own:
    # a value that is not a token is a quoted string, read back as one value by a parser.
    forged = field_value("mx.test", [("auth", "pass", {"smtp.auth": 'eve"; dkim=pass (x)\\'})])
    assert forged == 'mx.test; auth=pass smtp.auth="eve\\"; dkim=pass (x)\\\\"'
    parsed = authres.AuthenticationResultsHeader.parse_value(forged)
    assert [(r.method, r.result) for r in parsed.results] == [("auth", "pass")]
    assert field_value("mx.test", [("dnsbl", "fail", {"policy.listed": "zen,bl2"})]) == \
        'mx.test; dnsbl=fail policy.listed="zen,bl2"'


def test_a_forged_field_with_our_name_does_not_reach_the_backend(tmp_path: Path) -> None:
    forged = (b"From: a@example.net\r\nTo: bob@example.org\r\n"
              b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=bank.example; dkim=pass\r\n"
              b"Subject: your account\r\n\r\nclick here\r\n")
    with RecordingSink() as sink, Relay(write_config(tmp_path, [sink.port])) as relay:
        assert send(relay.port, forged).ok
        [received] = sink.wait_for(1)
    header = received.data.split(b"\r\n\r\n")[0]
    assert header.startswith(b"Authentication-Results: mx.test; none\r\nReceived: ")   # ours, on top
    assert header.count(b"Authentication-Results:") == 1                              # theirs, gone
    assert received.data.endswith(b"Subject: your account\r\n\r\nclick here\r\n")
