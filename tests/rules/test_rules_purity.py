"""The rules engine stays pure: importing it pulls in no event loop, SMTP library or metrics."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("asyncio", "aiosmtpd", "aiosmtplib", "prometheus_client")


def test_importing_the_rules_engine_loads_no_io_frameworks() -> None:
    code = ("import sys, frontfilter.rules; "
            f"print(' '.join(m for m in {FORBIDDEN!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
