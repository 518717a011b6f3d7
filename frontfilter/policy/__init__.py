"""Relay policy: who may relay, as whom, to where — pure functions of session facts, envelope
and config, decided before any rule.

- `relay`: address forms, relay access (`relay.domains`, trusted networks, AUTH) and
  domain-bound relaying (`relay.sender_domains`, `relay.outbound_senders`).
- `sendermap`: `relay.sender_map`, which login may send as which address.
"""

from frontfilter.policy.relay import (
    SENDER_NOT_OURS,
    SENDER_NOT_OWNED,
    Address,
    may_relay,
    may_relay_out_as,
    may_send_as,
    own_domains,
    parse_recipient,
    parse_sender,
)

__all__ = ["SENDER_NOT_OURS", "SENDER_NOT_OWNED", "Address", "may_relay", "may_relay_out_as", "may_send_as", "own_domains", "parse_recipient",
           "parse_sender"]
