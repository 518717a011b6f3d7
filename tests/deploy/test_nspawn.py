"""The real thing: deploy/README.md followed inside a container booted with the real systemd.

How (see ../../../shared/TOOLING.md, systemd): in a private mount namespace (`unshare --mount`),
an overlay of the host's `/` with its upper layer on a tmpfs — whatever the container writes
(the venv under /opt, /etc/frontfilter, units) dies with the namespace and the host is
untouched — and `systemd-nspawn -b` boots the host's own systemd in it, with a network of its
own (loopback only: port 25 inside is not the host's), into a target whose one oneshot unit
runs nspawn_check.py and powers the container off.

The bundle is built on the host by the README's build block (with the system Python, as the
README asks of a build machine; pip reaches PyPI, or its cache, for the dependency wheels), so
the container needs no network: it installs from the bundle with `pip install --no-index`,
exactly as a DMZ host does. What the container does and checks: nspawn_check.py.

Skipped, with the reason, only where nspawn cannot run: not root, systemd-nspawn missing, no
overlayfs or mount namespaces. A failure to build the bundle or any failed check inside fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.requires import missing

REPO = Path(__file__).resolve().parents[2]
README = REPO / "deploy" / "README.md"
CHECK_SCRIPT = Path(__file__).with_name("nspawn_check.py")
SYSTEM_PYTHON = Path("/usr/bin/python3")
# The whole test stays under 90 s: the bundle takes 5-10 s here (a venv, then wheels from pip's
# cache or PyPI), the container 12-16 s (boot, install, both units exercised, power-off).
BUILD_TIMEOUT = 40.0
CONTAINER_TIMEOUT = 45.0
CHECK_TARGET = "frontfilter-deploy-check.target"

pytestmark = pytest.mark.slow


def readme_blocks() -> dict[str, str]:
    """The command blocks of deploy/README.md marked `<!-- nspawn-test: NAME -->`."""
    found = re.findall(r"<!-- nspawn-test: (\w+) -->\n```sh\n(.*?)```", README.read_text(), re.S)
    return {name: body for name, body in found}


def test_readme_marks_the_blocks_the_container_runs() -> None:
    assert set(readme_blocks()) == {"build", "install", "start", "socket", "queue"}


def nspawn_unavailable() -> str | None:
    """Why this machine cannot run the test (a tool `make test` installs is missing: see
    tests/requires.py), or None."""
    if os.geteuid() != 0:
        return "needs root: mount namespaces, overlayfs and systemd-nspawn"
    for tool in ("systemd-nspawn", "unshare", "mount"):
        if shutil.which(tool) is None and not Path("/usr/bin", tool).exists():
            missing(f"{tool} is not installed (make test installs systemd-container)")
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is missing: the container needs the system Python"
    root_dev = os.stat("/").st_dev
    for path in ("/usr", "/etc", "/var", "/opt"):
        if Path(path).exists() and os.stat(path).st_dev != root_dev:
            return f"{path} is a separate filesystem: an overlay of / would not show it to the container"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'T=$(mktemp -d) && mount -t tmpfs tmpfs "$T" && mkdir "$T/u" "$T/w" "$T/r" && '
         'mount -t overlay overlay -o "lowerdir=/,upperdir=$T/u,workdir=$T/w" "$T/r" && '
         'test -x "$T/r/usr/bin/python3"; rc=$?; umount -R "$T" 2>/dev/null; rmdir "$T"; exit $rc'],
        capture_output=True, text=True, timeout=5)
    if probe.returncode != 0:
        return f"cannot make an overlay of / in a mount namespace: {probe.stderr.strip() or probe.returncode}"
    return None


def build_bundle(work: Path, blocks: dict[str, str]) -> Path:
    """The README's build block, run in a copy of the source with the system Python first in PATH."""
    source = work / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("frontfilter", "rules", "deploy"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    python_dir = work / "system-python"
    python_dir.mkdir()
    (python_dir / "python3").symlink_to(SYSTEM_PYTHON)
    # The one change to the block: its scratch venv goes in our temporary folder, not /tmp.
    script = blocks["build"].replace("/tmp/frontfilter-build", str(work / "build-venv"))
    env = dict(os.environ, PATH=f"{python_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(["bash", "-euxo", "pipefail", "-c", script], cwd=source, env=env,
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert result.returncode == 0, f"the README's build block failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    bundle = source / "frontfilter-bundle.tar.gz"
    assert bundle.is_file()
    return bundle


BOOT = """\
set -eu
mount -t tmpfs -o mode=0755 tmpfs "$WORK/layers"
mkdir "$WORK/layers/upper" "$WORK/layers/work" "$WORK/layers/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$WORK/layers/upper,workdir=$WORK/layers/work" "$WORK/layers/root"
ROOT="$WORK/layers/root"
# nspawn keeps state in /run/systemd/nspawn: a tmpfs of this namespace, not the host's /run.
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir /run/systemd/nspawn
cp "$WORK/bundle/check.service" "$ROOT/etc/systemd/system/frontfilter-deploy-check.service"
cp "$WORK/bundle/check.target" "$ROOT/etc/systemd/system/{target}"
exec systemd-nspawn --quiet --console=pipe --directory="$ROOT" --private-network --register=no \\
    --keep-unit --link-journal=no --bind-ro="$WORK/bundle:/bundle" --bind="$WORK/results:/results" \\
    --boot systemd.unit={target}
""".replace("{target}", CHECK_TARGET)

CHECK_SERVICE = f"""\
[Unit]
Description=frontfilter deploy check (tests/deploy/test_nspawn.py)
After=basic.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart={SYSTEM_PYTHON} /bundle/nspawn_check.py
TimeoutStartSec={int(CONTAINER_TIMEOUT) - 5}s
StandardOutput=append:/results/check.log
StandardError=append:/results/check.log
"""

CHECK_TARGET_UNIT = """\
[Unit]
Description=frontfilter deploy check: basic system plus the check, nothing else
Requires=basic.target frontfilter-deploy-check.service
After=basic.target
AllowIsolate=yes
"""


def test_deploy_readme_under_real_systemd(tmp_path: Path) -> None:
    reason = nspawn_unavailable()
    if reason is not None:
        print(f"nspawn test skipped: {reason}")
        pytest.skip(reason)
    blocks = readme_blocks()
    started = time.monotonic()
    bundle = build_bundle(tmp_path, blocks)
    built = time.monotonic() - started

    for name in ("bundle", "results", "layers"):
        (tmp_path / name).mkdir()
    shutil.copy2(bundle, tmp_path / "bundle" / bundle.name)
    shutil.copy2(CHECK_SCRIPT, tmp_path / "bundle" / CHECK_SCRIPT.name)
    for name in ("install", "start", "socket", "queue"):
        (tmp_path / "bundle" / f"block-{name}.sh").write_text(blocks[name])
    (tmp_path / "bundle" / "check.service").write_text(CHECK_SERVICE)
    (tmp_path / "bundle" / "check.target").write_text(CHECK_TARGET_UNIT)
    (tmp_path / "boot.sh").write_text(BOOT)

    booted = time.monotonic()
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", str(tmp_path / "boot.sh")],
                            env=dict(os.environ, WORK=str(tmp_path)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        console, _ = proc.communicate(timeout=CONTAINER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)      # nspawn and, with it, the container's PID 1
        console, _ = proc.communicate(timeout=10)
    ran = time.monotonic() - booted
    print(f"nspawn test: bundle built in {built:.1f}s, container booted, checked and gone in {ran:.1f}s")

    results_file = tmp_path / "results" / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"done": False, "checks": []}
    for check in results["checks"]:
        print(("ok    " if check["ok"] else "FAILED ") + check["name"])
    failed = [c for c in results["checks"] if not c["ok"]]
    if failed or not results["done"] or not results["checks"]:
        logs = ""
        for path in sorted((tmp_path / "results").glob("*")):
            if path.suffix in (".txt", ".log"):
                logs += f"\n--- {path.name} (end)\n" + path.read_text(errors="replace")[-3000:]
        details = "\n".join(f"{c['name']}: {c['detail']}" for c in failed)
        pytest.fail(textwrap.dedent(f"""\
            nspawn deploy check: {len(failed)} failed, done={results['done']}, nspawn exit {proc.returncode}
            {details}
            --- console (end)
            {console.decode(errors='replace')[-2000:]}""") + logs)
