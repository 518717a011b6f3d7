"""The daemon's half of systemd's service protocol: notifications and socket activation.

Notifications (sd_notify(3)): one datagram of `KEY=VALUE` lines to the AF_UNIX socket named by
`$NOTIFY_SOCKET` (a path, or an abstract name written with a leading '@'). frontfilter sends
  READY=1                          once listening, and again when a reload has finished;
  RELOADING=1 + MONOTONIC_USEC=…   when SIGHUP starts a reload (systemd ≥ 253 wants the clock
                                   with it for Type=notify-reload; older versions ignore it);
  STOPPING=1                       when a graceful stop begins;
  WATCHDOG=1                       every half of `$WATCHDOG_USEC`, from the event loop itself,
                                   so a loop that is stuck stops the pings and systemd restarts us;
  STATUS=…                         one human line for `systemctl status`.
Without `$NOTIFY_SOCKET` (a terminal, the tests, another supervisor) every call is a no-op.
A failed send is ignored: a notification is advice to the service manager and must never take
the relay down; systemd's own timeouts (TimeoutStartSec=, WatchdogSec=) catch what is lost.

Socket activation (sd_listen_fds(3)): systemd passes listening sockets as file descriptors
3 … 3+N-1 with `LISTEN_PID` (ours, else they were meant for someone else), `LISTEN_FDS` (N) and
`LISTEN_FDNAMES` (FileDescriptorName= of the .socket unit, ':'-separated). They are taken once,
the variables removed so no child inherits them, and each descriptor must be a listening
stream socket: anything else is an error naming the descriptor, never a silent skip.

Pure standard library, no asyncio: the service calls it, it calls nobody.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import MutableMapping

LISTEN_FDS_START = 3          # SD_LISTEN_FDS_START, sd-daemon.h
MAX_STATUS_LENGTH = 200       # one line for `systemctl status`; longer text goes to the log
MAX_LISTEN_FDS = 64           # more passed sockets than listeners anyone writes is a mistake


class Notifier:
    """Sends notifications to the service manager, or nothing when there is none."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None):
        self.address: str | None = None
        self._sock: socket.socket | None = None
        self._watchdog_usec = watchdog_usec
        if not address or address[0] not in "/@":   # e.g. "vsock:…" (systemd ≥ 254): not ours
            return
        # An abstract socket name starts with a NUL byte; systemd writes it with '@'.
        self.address = "\0" + address[1:] if address[0] == "@" else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None without a watchdog."""
        if not self.enabled or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def send(self, *lines: str) -> bool:
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _status(text: str | None) -> list[str]:
    if text is None:
        return []
    line = " ".join(text.split())       # a newline would end the STATUS= field early
    return [f"STATUS={line[:MAX_STATUS_LENGTH]}"]


def _watchdog_usec(env: MutableMapping[str, str]) -> int | None:
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None                     # the watchdog is some other process's duty
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


class ActivationError(Exception):
    """The sockets systemd passed cannot be used; the message names the descriptor."""


def listen_fds(environ: MutableMapping[str, str] | None = None,
               unset_environment: bool = True) -> list[tuple[str, socket.socket]]:
    """Listening sockets passed by systemd, as (FileDescriptorName, socket); [] when none were.

    Each socket is made non-blocking and close-on-exec. Raises ActivationError when the
    variables are malformed or a descriptor is not a listening TCP/stream socket.
    """
    env = os.environ if environ is None else environ
    pid, count, names = env.get("LISTEN_PID"), env.get("LISTEN_FDS"), env.get("LISTEN_FDNAMES")
    if unset_environment:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if not pid or not count:
        return []
    try:
        if int(pid) != os.getpid():
            return []
        n = int(count)
    except ValueError:
        raise ActivationError(f"LISTEN_PID={pid!r} LISTEN_FDS={count!r}: not numbers") from None
    if not 0 <= n <= MAX_LISTEN_FDS:
        raise ActivationError(f"LISTEN_FDS={n}: expected 0 to {MAX_LISTEN_FDS}")
    fd_names = names.split(":") if names else []
    if len(fd_names) != n:
        fd_names = ["unknown"] * n      # sd_listen_fds_with_names(3) does the same
    sockets: list[tuple[str, socket.socket]] = []
    for offset in range(n):
        fd = LISTEN_FDS_START + offset
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as error:
            raise ActivationError(f"passed descriptor {fd} ({fd_names[offset]}): {error.strerror}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ActivationError(f"passed descriptor {fd} ({fd_names[offset]}): not a listening "
                                  "stream socket (ListenStream= in the .socket unit, Accept=no)")
        sock.setblocking(False)
        sockets.append((fd_names[offset], sock))
    return sockets


def assign_sockets(listeners: list[tuple[str, str, int]],
                   passed: list[tuple[str, socket.socket]]) -> list[socket.socket]:
    """One passed socket per configured listener, in the listeners' order.

    `listeners` are (name, host, port) as configured. A passed socket belongs to the listener
    whose name equals its FileDescriptorName=, else to the listener with the same bound
    address (so `ListenStream=0.0.0.0:25` serves `listen = ["0.0.0.0:25"]` without naming
    anything). Every listener needs exactly one socket and every socket a listener: anything
    else is an ActivationError saying which, because a listener silently not served (or a port
    systemd holds open that nobody answers) is worse than a unit that fails to start.
    """
    by_name = {name: sock for name, sock in passed if name not in ("", "unknown", "stored", "connection")}
    taken: set[int] = set()
    ordered: list[socket.socket] = []
    for name, host, port in listeners:
        sock = by_name.get(name) if name else None
        if sock is None or sock.fileno() in taken:
            sock = next((s for _, s in passed if s.fileno() not in taken and _bound_to(s, host, port)), None)
        if sock is None:
            label = f"{name} ({host}:{port})" if name else f"{host}:{port}"
            raise ActivationError(f"listener {label} has no socket from systemd: add ListenStream= for its "
                                  "address to the .socket unit, or FileDescriptorName= with its name")
        taken.add(sock.fileno())
        ordered.append(sock)
    for name, sock in passed:
        if sock.fileno() not in taken:
            raise ActivationError(f"socket {_describe(sock)} ({name}) passed by systemd matches no listener "
                                  "in the config: remove its ListenStream= or configure a listener for it")
    return ordered


def _bound_to(sock: socket.socket, host: str, port: int) -> bool:
    bound_host, bound_port = sock.getsockname()[:2]
    try:
        return bound_port == port and ipaddress.ip_address(bound_host) == ipaddress.ip_address(host)
    except ValueError:
        return False


def _describe(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
