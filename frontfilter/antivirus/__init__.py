"""Antivirus: asks ClamAV's daemon (clamd) about a message, and reports what it said as a fact.

`result` holds the value type (`ScanResult`), pure and shared with the rules engine, `decision`
and `frontfilter scan`; `clamd` holds the asyncio client. Importing this package loads only the
value type, so the pure cores (`rules`, `decision`) can use it without an event loop.

Detection apart from policy: this package never decides anything. A virus is a fact the rules
act on (`virus = true`, `virus.name`); what happens when clamd cannot answer is the config's
`[antivirus] on_error`, applied by `decision`.
"""

from frontfilter.antivirus.result import ScanResult, ScanStatus

__all__ = ["ScanResult", "ScanStatus"]
