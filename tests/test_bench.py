"""The benchmark harness runs end to end on a tiny load, so `make bench` cannot rot.

No speed is asserted here (speed belongs to bench/README.md): only that every contender and
every rule set got all its mail to the sink, and that the table a reader compares has a row
for each.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("postfix", "smtp-source", "smtp-sink")),
    reason="Postfix's tools are installed by `make test` (Debian package postfix)")


def test_quick_bench_measures_every_contender_load_and_rule_set(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--json", str(results)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(results.read_text())
    measured = {(row["contender"], row["load"]) for row in report["results"] if row["rate"] > 0}
    contenders = ("limit", "postfix", "ff-queue", "ff-sync", "floor-queue", "floor-sync")
    assert measured == {(contender, load) for contender in contenders for load in ("5KB plain", "100KB + PDF", "mix")}
    assert not [row for row in report["results"] + report["rules"] if row["failed"]]
    assert len(report["rules"]) == 3 and all(row["rate"] > 0 for row in report["rules"])
    assert set(report["latency_ms"]) == set(contenders) - {"limit"}
    assert all("loaded_p99" in got for got in report["latency_ms"].values())
    assert report["memory"]["peak_mib"] >= report["memory"]["idle_mib"] > 0
    for contender in ("postfix", "ff-queue", "ff-sync"):
        assert f"| {contender} | 5KB plain |" in done.stdout
