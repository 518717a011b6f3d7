"""How much DATA one relay process holds in memory at once: `limits.max_data_in_memory`.

A message is kept whole in memory from its first byte until its verdict is sent (inspection,
the spool write and forwarding read it there). Past `limits.data_spill_size` it is received
into its spill file instead and read there through a mapping (smtp/data.py, mapped.MappedText);
it is charged here all the same from its end on, since what inspection decodes from it is in
memory (the decoded parts of a message are at most its size). Without a bound, `limits.max_connections`
sessions each sending `server.max_message_size` could take that product (500 × 25 MiB: about
12 GiB a worker) and the kernel's OOM killer would end the relay — and the mail in it. With
one, a message that would go past it is drained without being kept and answered
`452 4.3.1` (the client tries again later), and so is DATA when the budget is spent.

Pure: a counter, no I/O; one per process, shared by its sessions (the event loop is one
thread). `frontfilter check` prints the worst case it allows.
"""

from __future__ import annotations


class DataBudget:
    def __init__(self, limit: int):
        self.limit = limit             # bytes; 0: no bound
        self.held = 0

    @property
    def spent(self) -> bool:
        return bool(self.limit) and self.held >= self.limit

    def take(self, size: int) -> bool:
        """Charge `size` more bytes; False (nothing charged) when it would go past the limit."""
        if self.limit and self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held = max(0, self.held - size)
