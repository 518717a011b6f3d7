"""A relay carries the libraries of the checks it is configured for, not the others.

Each process (the supervisor and every worker) pays for what it imports: dnspython and pyspf
3 MiB, dkimpy with cryptography 8 MiB, the public suffix list 2 MiB (bench/README.md, "Memory of
a worker"). With its default config (no DNS lists, SPF, DKIM, DMARC or ARC) the relay's
pipeline is built without them; switched on, each comes with its check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO, write_config

OPTIONAL = ("dns", "spf", "dkim", "publicsuffixlist", "cryptography")

PROBE = """
import json, sys
from frontfilter.config import load_config
from frontfilter.process.service import Service
service = Service(load_config(sys.argv[1]))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))))
"""


def loaded(config: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(config), *OPTIONAL], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_relay_without_dns_checks_does_not_import_their_libraries(tmp_path: Path) -> None:
    assert loaded(write_config(tmp_path, [25])) == []


def test_each_check_brings_its_library(tmp_path: Path) -> None:
    config = write_config(tmp_path, [25], dns={"resolvers": ["127.0.0.1:53"]}, spf={"enabled": True},
                          dkim={"enabled": True}, dmarc={"enabled": True})
    assert {"dns", "spf", "dkim", "publicsuffixlist"} <= set(loaded(config))
