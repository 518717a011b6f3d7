"""`limits.max_data_in_memory`: DATA one relay process holds at once is bounded (smtp/budget.py);
a message past it is drained and answered 452 4.3.1, and its bytes go back once it is decided."""

from __future__ import annotations

from pathlib import Path

from frontfilter import reply
from frontfilter.smtp.budget import DataBudget
from frontfilter.smtp.core import Answer, CoreLimits, Message, SmtpCore
from tests.harness import RawClient, RecordingSink, Relay, write_config
from tests.smtp.core_driver import GREETING, drive, replies

HELLO = b"HELO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"


def message(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line)) + b".\r\n"


def core(budget: DataBudget) -> SmtpCore:
    return SmtpCore(CoreLimits(max_message_size=1024 * 1024, budget=budget))


def test_a_message_past_the_budget_is_drained_and_told_to_come_back_later() -> None:
    budget = DataBudget(64 * 1024)
    driver = drive(core(budget), [HELLO + b"DATA\r\n" + message(100 * 1024) + b"QUIT\r\n"])
    said = replies(bytes(driver.output))
    assert said[-2:] == ["452 4.3.1 Insufficient system storage, try again later", "221 2.0.0 Bye"]
    assert budget.held == 0                 # nothing kept of it


def held_message(budget: DataBudget) -> SmtpCore:
    """A session whose message is with the handler: read, its verdict not sent yet."""
    session = core(budget)
    session.send(GREETING)
    session.receive(HELLO + b"DATA\r\n" + message(100 * 1024))
    for _ in range(10):                     # HELO, MAIL, RCPT, DATA: answered; then the message
        event = session.next_event()
        if isinstance(event, Message):
            return session
        assert event is not None
        session.send(event.reply if isinstance(event, Answer) else reply.OK)
    raise AssertionError("no message")


def test_the_budget_is_shared_and_given_back_when_the_message_is_decided() -> None:
    budget = DataBudget(150 * 1024)
    first = held_message(budget)
    assert budget.held > 100_000               # the message, held while it is decided
    # A second session meanwhile: its message does not fit beside the first.
    second = drive(core(budget), [HELLO + b"DATA\r\n" + message(100 * 1024)])
    assert replies(bytes(second.output))[-1].startswith("452 4.3.1")
    # The first one's verdict is sent: its bytes go back, and the next message fits.
    first.send(reply.OK)
    assert budget.held == 0
    third = drive(core(budget), [HELLO + b"DATA\r\n" + message(100 * 1024)])
    assert replies(bytes(third.output))[-1] == "250 2.0.0 OK"
    assert budget.held == 0


def test_a_session_that_ends_while_its_message_is_decided_gives_its_bytes_back() -> None:
    budget = DataBudget(150 * 1024)
    held_message(budget).close()
    assert budget.held == 0


def test_data_is_refused_at_once_when_the_budget_is_spent() -> None:
    budget = DataBudget(10)
    budget.take(10)
    said = replies(bytes(drive(core(budget), [HELLO + b"DATA\r\n"]).output))
    assert said[-1] == "452 4.3.1 Insufficient system storage, try again later"


def test_a_relay_refuses_a_message_that_does_not_fit_beside_one_being_read(tmp_path: Path) -> None:
    """Through a running relay: one client's message half sent holds its share; another's,
    which would take the process past limits.max_data_in_memory, gets 452 4.3.1 and comes back
    later; the first one is taken."""
    half = message(600 * 1024)
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], server={"max_message_size": "1MiB"},
                              limits={"max_data_in_memory": "1MiB", "connection_rate_per_ip": 0})
        with Relay(config) as relay, RawClient(relay.port) as first, RawClient(relay.port) as second:
            first.begin_data()
            first.send(half[:-len(b".\r\n")])             # all but its end: held
            second.begin_data()
            assert second.command(half[:-2]) == "452 4.3.1 Insufficient system storage, try again later"
            assert first.command(b".").startswith("250 2.0.0")
        assert len(sink.wait_for(1)) == 1
