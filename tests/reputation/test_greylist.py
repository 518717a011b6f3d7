"""Greylisting: the triplet store on its own (a fake clock), across processes, and over SMTP."""

from __future__ import annotations

import ipaddress
import multiprocessing
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontfilter.config import GreylistConfig, parse_network
from frontfilter.reputation.greylist import Greylist, Verdict, normalise_sender
from tests.frontdoor.helpers import connect_from, read_reply
from tests.harness import RecordingSink, Relay, write_config

A = ipaddress.ip_address("192.0.2.10")
NEIGHBOUR = ipaddress.ip_address("192.0.2.200")     # same /24
ELSEWHERE = ipaddress.ip_address("198.51.100.10")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def greylist(tmp_path: Path, clock: Clock) -> Iterator[Greylist]:
    store = Greylist(GreylistConfig(enabled=True, database=tmp_path / "gl" / "greylist.sqlite",
                                    delay=300, retry_window=2 * 86400, expiry=35 * 86400), clock)
    yield store
    store.close()


def test_first_try_is_new_early_retry_still_new_later_retry_passes(greylist: Greylist, clock: Clock) -> None:
    assert greylist.check(A, "alice@example.net", "bob@example.org") is Verdict.NEW
    clock.now += 299
    assert greylist.check(A, "alice@example.net", "bob@example.org") is Verdict.EARLY
    clock.now += 1
    assert greylist.check(A, "alice@example.net", "bob@example.org") is Verdict.PASSED
    clock.now += 86400
    assert greylist.check(A, "alice@example.net", "bob@example.org") is Verdict.KNOWN


def test_triplet_is_per_client_network_sender_and_recipient(greylist: Greylist, clock: Clock) -> None:
    assert greylist.check(A, "alice@example.net", "bob@example.org") is Verdict.NEW
    clock.now += 600
    # A sending farm retrying from another address of the /24 is the same client.
    assert greylist.check(NEIGHBOUR, "alice@example.net", "bob@example.org") is Verdict.PASSED
    assert greylist.check(ELSEWHERE, "alice@example.net", "bob@example.org") is Verdict.NEW
    assert greylist.check(A, "alice@example.net", "carol@example.org") is Verdict.NEW
    assert greylist.check(A, "eve@example.net", "bob@example.org") is Verdict.NEW


def test_ipv6_clients_are_grouped_by_their_64(greylist: Greylist, clock: Clock) -> None:
    assert greylist.check(ipaddress.ip_address("2001:db8:1:2::10"), "a@example.net", "b@example.org") is Verdict.NEW
    clock.now += 600
    assert greylist.check(ipaddress.ip_address("2001:db8:1:2::99"), "a@example.net", "b@example.org") is Verdict.PASSED
    assert greylist.check(ipaddress.ip_address("2001:db8:1:3::10"), "a@example.net", "b@example.org") is Verdict.NEW


def test_verp_and_tagged_senders_match_their_retry(greylist: Greylist, clock: Clock) -> None:
    assert normalise_sender("prvs=1a2b3c4d=Bounce-1234@Lists.Example.NET") == "bounce-#@lists.example.net"
    assert normalise_sender("joe+newsletter@example.net") == "joe@example.net"
    assert normalise_sender("") == "<>"
    assert greylist.check(A, "bounces-1001@lists.example.net", "bob@example.org") is Verdict.NEW
    clock.now += 600
    assert greylist.check(A, "bounces-1002@lists.example.net", "bob@example.org") is Verdict.PASSED


def test_unanswered_triplets_and_unused_ones_expire(greylist: Greylist, clock: Clock) -> None:
    assert greylist.check(A, "a@example.net", "b@example.org") is Verdict.NEW
    clock.now += 300 + 2 * 86400 + 1          # no retry within the window: forgotten
    assert greylist.check(A, "a@example.net", "b@example.org") is Verdict.NEW
    clock.now += 600
    assert greylist.check(A, "a@example.net", "b@example.org") is Verdict.PASSED
    clock.now += 35 * 86400 + 1               # unused past expiry: forgotten
    assert greylist.check(A, "a@example.net", "b@example.org") is Verdict.NEW


def test_whitelisted_networks_and_sender_domains_are_never_delayed(tmp_path: Path, clock: Clock) -> None:
    config = GreylistConfig(enabled=True, database=tmp_path / "g.sqlite",
                            whitelist_networks=(parse_network("192.0.2.0/25"),),
                            whitelist_domains=("partner.example",))
    store = Greylist(config, clock)
    try:
        assert store.check(A, "x@example.net", "b@example.org") is Verdict.WHITELISTED
        assert store.check(ELSEWHERE, "x@mail.partner.example", "b@example.org") is Verdict.WHITELISTED
        assert store.check(ELSEWHERE, "x@notpartner.example", "b@example.org") is Verdict.NEW
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "g.sqlite") as db:      # whitelisted ones are not recorded
        assert db.execute("SELECT count(*) FROM triplets").fetchone()[0] == 1
    db.close()


def test_database_is_in_wal_mode_holds_no_addresses_and_survives_reopening(
        tmp_path: Path, clock: Clock) -> None:
    config = GreylistConfig(enabled=True, database=tmp_path / "g.sqlite", delay=300)
    first = Greylist(config, clock)
    assert first.check(A, "alice@example.net", "bob@example.org") is Verdict.NEW
    first.close()
    clock.now += 301
    second = Greylist(config, clock)
    try:
        assert second.check(A, "alice@example.net", "bob@example.org") is Verdict.PASSED
    finally:
        second.close()
    data = (tmp_path / "g.sqlite").read_bytes()
    assert b"alice" not in data and b"example" not in data
    with sqlite3.connect(tmp_path / "g.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def _hammer(database: str, worker: int, rounds: int) -> None:
    store = Greylist(GreylistConfig(enabled=True, database=Path(database), delay=0))
    try:
        for index in range(rounds):   # letters, not digits: senders fold digit runs to '#'
            store.check(A, f"sender-{'abcdefg'[index % 7]}@example.net", f"rcpt{index % 5}@example.org")
    finally:
        store.close()


def test_several_processes_share_one_database(tmp_path: Path) -> None:
    database = str(tmp_path / "shared.sqlite")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer, args=(database, n, 150)) for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    codes = [worker.exitcode for worker in workers]
    for worker in workers:
        worker.close()
    assert codes == [0, 0, 0]       # no "database is locked", no deadlock
    with sqlite3.connect(database) as db:
        # 7 senders x 5 recipients -> 35 distinct triplets, whichever process saw them first
        # (sender and recipient indexes advance together: lcm(7, 5) = 35 combinations).
        assert db.execute("SELECT count(*) FROM triplets").fetchone()[0] == 35
        assert db.execute("SELECT count(*) FROM triplets WHERE passed = 0").fetchone()[0] == 0
    db.close()


# ---- over SMTP -----------------------------------------------------------------------------

def rcpt(port: int, source: str, sender: str, recipient: str) -> str:
    """The answer to RCPT, then DATA with a short message when it was accepted."""
    with connect_from(source, port, timeout=20) as sock:
        def command(line: bytes) -> str:
            sock.sendall(line + b"\r\n")
            return read_reply(sock).strip()

        read_reply(sock)
        command(b"EHLO client.test")
        assert command(f"MAIL FROM:<{sender}>".encode()).startswith("250")
        answer = command(f"RCPT TO:<{recipient}>".encode())
        if answer.startswith("250"):
            assert command(b"DATA").startswith("354")
            assert command(b"Subject: greylisting\r\n\r\nHello.\r\n.").startswith("250 2.0.0")
        command(b"QUIT")
    return answer


def test_first_try_451_retry_after_the_delay_250_and_the_state_survives_a_restart(tmp_path: Path) -> None:
    delay = 1.0
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port],
                              greylist={"enabled": True, "delay": f"{delay}s",
                                        "database": str(tmp_path / "state" / "greylist.sqlite"),
                                        "whitelist_networks": ["127.0.0.9/32"]})
        with Relay(config) as relay:
            first = time.monotonic()
            assert rcpt(relay.port, "127.0.0.1", "alice@example.net", "bob@example.org") == \
                "451 4.7.1 Greylisted, please try again later"
            assert rcpt(relay.port, "127.0.0.1", "alice@example.net", "bob@example.org").startswith("451 4.7.1")
            # A whitelisted network is not delayed.
            assert rcpt(relay.port, "127.0.0.9", "alice@example.net", "bob@example.org").startswith("250")
        with Relay(config) as restarted:
            # The retry comes after the delay, to a relay that was restarted meanwhile: it
            # passes only because the first attempt was remembered on disk.
            time.sleep(max(0.0, first + delay + 0.1 - time.monotonic()))
            assert rcpt(restarted.port, "127.0.0.1", "alice@example.net", "bob@example.org").startswith("250")
            assert rcpt(restarted.port, "127.0.0.1", "alice@example.net", "carol@example.org").startswith("451 4.7.1")
            refused = restarted.wait_event("refused", stage="rcpt", reason="rule greylist")
            assert refused["reply"].startswith("451 4.7.1")
        assert [m.recipients for m in sink.wait_for(2)] == [["bob@example.org"], ["bob@example.org"]]


def test_a_relay_whose_greylist_database_cannot_be_opened_does_not_start(tmp_path: Path) -> None:
    # Found at start, named in one line, rather than a 451 for every message from the first RCPT on.
    (tmp_path / "state").write_text("a file where the database's directory should be\n")
    database = tmp_path / "state" / "greylist.sqlite"
    config = write_config(tmp_path, [25], greylist={"enabled": True, "database": str(database)})
    relay = Relay(config)
    expected = rf"greylist.database: {re.escape(str(database))}: {re.escape(str(database.parent))}: File exists"
    with pytest.raises(RuntimeError, match=expected):
        relay.start()
    relay.stop()
