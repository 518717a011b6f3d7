"""The nftables example of deploy/README.md is a ruleset nft itself accepts.

`nft -c -f` parses and checks the ruleset without loading it, in a network namespace of its own
(`unshare --net`) so that not even the check can touch the host's firewall.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.requires import installed

README = Path(__file__).resolve().parents[2] / "deploy" / "README.md"
NFT = shutil.which("nft") or "/usr/sbin/nft"


@installed(Path(NFT).exists(), "nft is not installed (make test installs nftables)")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace of its own")
def test_the_readme_firewall_is_a_valid_nftables_ruleset(tmp_path: Path) -> None:
    blocks = re.findall(r"```nft\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1
    ruleset = tmp_path / "nftables.conf"
    ruleset.write_text(blocks[0])
    result = subprocess.run(["unshare", "--net", NFT, "-c", "-f", str(ruleset)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for port in ("25", "587", "9425"):
        assert port in blocks[0]
