"""A real DNS server on 127.0.0.1 (UDP, ephemeral port) for the reputation tests.

Built on dnspython (a dependency of frontfilter already): it parses each query and answers from
an in-memory zone. Names not in the zone are NXDOMAIN; names in `servfail` answer SERVFAIL;
`silent=True` (or `DeadResolver`) never answers, which is what a dead resolver looks like.
Every query is recorded, so tests can tell whether the relay asked at all, and what.
Runs in its own thread; stopped by its context manager; every wait is bounded.
"""

from __future__ import annotations

import selectors
import socket
import threading
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 60


@dataclass
class DnsServer:
    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)   # (name, type) -> rdata texts
    servfail: set[str] = field(default_factory=set)
    silent: bool = False
    queries: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, rdtype: str, *values: str) -> None:
        with self._lock:
            self.records.setdefault((name.lower().rstrip("."), rdtype), []).extend(values)

    def txt(self, name: str, text: str) -> None:
        self.add(name, "TXT", '"' + text.replace('"', '\\"') + '"')

    def asked(self, name: str | None = None) -> list[tuple[str, str]]:
        with self._lock:
            return [q for q in self.queries if name is None or q[0] == name.lower()]

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not selector.select(0.05):
                    continue
                try:
                    wire, client = self.sock.recvfrom(4096)
                except OSError:
                    continue
                answer = self._answer(wire)
                if answer is not None:
                    self.sock.sendto(answer, client)

    def _answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            if self.silent:
                return None
            values = list(self.records.get((name, rdtype), ()))
            exists = any(key[0] == name for key in self.records)
            failing = name in self.servfail
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if failing:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif values:
            response.answer.append(dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN,
                                                            question.rdtype, values))
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def dead_resolver() -> DnsServer:
    """A resolver that receives queries and never answers (not a closed port: a real timeout)."""
    return DnsServer(silent=True)
