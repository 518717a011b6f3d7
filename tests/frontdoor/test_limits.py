"""Connection limits and AUTH lockout as pure counters, on a fake clock."""

from __future__ import annotations

import ipaddress

from frontfilter.smtp import limits
from frontfilter.smtp.limits import AuthLockout, ConnectionLimits, Limit

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock | None = None, **kw: object) -> ConnectionLimits:
    settings: dict = dict(max_connections=10, max_per_ip=2, rate_per_ip=0, rate_window=60.0)
    settings.update(kw)
    return ConnectionLimits(clock=clock or Clock(), **settings)


def test_per_address_limit_refuses_the_extra_connection_and_frees_on_release() -> None:
    table = make()
    assert table.acquire(A) is None and table.acquire(A) is None
    assert table.acquire(A) is Limit.PER_IP
    assert table.acquire(B) is None                # others are still served
    table.release(A)
    assert table.acquire(A) is None
    assert table.total == 3


def test_total_limit_counts_every_client() -> None:
    table = make(max_connections=2, max_per_ip=0)
    assert table.acquire(A) is None and table.acquire(B) is None
    assert table.acquire(ipaddress.ip_address("192.0.2.3")) is Limit.TOTAL


def test_rate_limit_is_a_sliding_window() -> None:
    clock = Clock()
    table = make(clock, max_per_ip=0, rate_per_ip=3, rate_window=60.0)
    for _ in range(3):
        assert table.acquire(A) is None
        table.release(A)
    assert table.acquire(A) is Limit.RATE
    clock.now += 61
    assert table.acquire(A) is None


def test_refused_connections_do_not_fill_the_rate_window() -> None:
    clock = Clock()
    table = make(clock, max_per_ip=0, rate_per_ip=2)
    assert table.acquire(A) is None and table.acquire(A) is None
    for _ in range(5):
        assert table.acquire(A) is Limit.RATE
    clock.now += 60.5
    assert table.acquire(A) is None


def test_trusted_networks_are_exempt_from_per_address_limits_only() -> None:
    table = make(max_connections=3, max_per_ip=1, rate_per_ip=1,
                 exempt=[ipaddress.ip_network("192.0.2.0/24")])
    assert [table.acquire(A) for _ in range(3)] == [None, None, None]
    assert table.acquire(A) is Limit.TOTAL


def test_ipv6_clients_are_counted_per_64() -> None:
    table = make(max_per_ip=1)
    assert table.acquire(ipaddress.ip_address("2001:db8:1:2::1")) is None
    assert table.acquire(ipaddress.ip_address("2001:db8:1:2::ffff")) is Limit.PER_IP
    assert table.acquire(ipaddress.ip_address("2001:db8:1:3::1")) is None


def test_zero_means_no_limit() -> None:
    table = make(max_connections=0, max_per_ip=0, rate_per_ip=0)
    assert all(table.acquire(A) is None for _ in range(1000))


def test_tracked_addresses_are_bounded(monkeypatch: object) -> None:
    monkeypatch.setattr(limits, "TRACKED_ADDRESSES_MAX", 10)  # type: ignore[attr-defined]
    table = make(max_per_ip=0, rate_per_ip=5, max_connections=0)
    for n in range(50):
        ip = ipaddress.ip_address(f"198.51.100.{n}")
        assert table.acquire(ip) is None
        table.release(ip)
    assert len(table._recent) == 10


def test_lockout_after_max_failures_then_expires() -> None:
    clock = Clock()
    lockout = AuthLockout(max_failures=3, lockout_time=600.0, clock=clock)
    assert [lockout.failed(A) for _ in range(3)] == [False, False, True]
    assert lockout.locked(A) and not lockout.locked(B)
    clock.now += 599
    assert lockout.locked(A)
    clock.now += 2
    assert not lockout.locked(A)
    assert lockout.failed(A) is False          # the count started again


def test_old_failures_fall_out_of_the_window() -> None:
    clock = Clock()
    lockout = AuthLockout(max_failures=3, lockout_time=60.0, clock=clock)
    lockout.failed(A)
    lockout.failed(A)
    clock.now += 61
    assert lockout.failed(A) is False
    assert not lockout.locked(A)


def test_lockout_disabled_with_zero() -> None:
    lockout = AuthLockout(max_failures=0, lockout_time=60.0, clock=Clock())
    assert not any(lockout.failed(A) for _ in range(100))
    assert not lockout.locked(A)
