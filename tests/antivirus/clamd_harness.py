"""A real clamd for the tests: its own folder, a tiny signature database, stopped at the end.

The database is two signatures, enough for everything the tests send (see ../shared/TOOLING.md):
- EICAR as an `.ndb` body signature, built here in code, so that no file of this repository
  holds the EICAR string and trips the scanner of a developer's machine;
- the MD5 of Debian's `/usr/share/clamav-testfiles/clam.exe` as an `.hdb` signature: clamd
  unpacks MIME and archives itself, so it finds that file inside all 44 test files.

clamd starts in ~20 ms with only these. It listens on a unix socket in a short temp folder
(a socket path is limited to 108 bytes, too little for some pytest folders) and, on request,
on a loopback TCP port. Its StreamMaxLength is small (`STREAM_MAX_LENGTH`), so the over-limit
case needs a few megabytes, not 25. Every wait is bounded; `stop` always reaps the process.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


from tests.requires import missing

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
TESTFILES = Path("/usr/share/clamav-testfiles")
CLAM_EXE_MD5 = "aa15bcf478d165efd2065190eb473bcb"     # /usr/share/clamav-testfiles/clam.exe
CLAM_EXE_SIZE = 544

EICAR_SIGNATURE = "Frontfilter.Test.EICAR"
CLAM_EXE_SIGNATURE = "Frontfilter.Test.ClamExe"
# The largest test file (clam_IScab_ext.exe, 1.7 MB) is 2.4 MB as a base64 attachment: the
# limit sits above it and below the over-limit test message.
STREAM_MAX_LENGTH = 4 * 1024 * 1024
START_TIMEOUT = 10.0    # seconds for clamd to answer PING
STOP_TIMEOUT = 10.0

INSTALL_HINT = ("clamd is not installed (Debian packages clamav-daemon clamdscan clamav-testfiles; "
                "`make test` as root installs them)")


def eicar() -> bytes:
    """The 68-byte EICAR test file, assembled here rather than stored."""
    return ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-" + "TEST-FILE!$H+H*").encode()


def require_clamd() -> None:
    if not Path(CLAMD).exists():
        missing(INSTALL_HINT)


def require_testfiles() -> list[Path]:
    require_clamd()
    files = sorted(TESTFILES.glob("*")) if TESTFILES.is_dir() else []
    if not files:
        missing(f"{TESTFILES} is empty or missing (Debian package clamav-testfiles)")
    return files


class ClamdProcess:
    """`clamd -c CONF` in the foreground, with its own socket, database and temp folder."""

    def __init__(self, tcp_port: int | None = None, stream_max_length: int = STREAM_MAX_LENGTH):
        self.tcp_port = tcp_port
        self.stream_max_length = stream_max_length
        self.dir = Path(tempfile.mkdtemp(prefix="ff-clamd-"))
        self.socket = self.dir / "clamd.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ClamdProcess:
        require_clamd()
        database = self.dir / "db"
        database.mkdir(exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        (database / "frontfilter-test.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{eicar().hex()}\n")
        (database / "frontfilter-test.hdb").write_text(f"{CLAM_EXE_MD5}:{CLAM_EXE_SIZE}:{CLAM_EXE_SIGNATURE}\n")
        lines = [
            "Foreground yes",
            f"LocalSocket {self.socket}",
            f"DatabaseDirectory {database}",
            f"TemporaryDirectory {self.dir / 'tmp'}",
            f"LogFile {self.dir / 'clamd.log'}",
            f"StreamMaxLength {self.stream_max_length}",
            "MaxThreads 4",
            "SelfCheck 0",
            "Bytecode no",
            # What the README recommends for mail: a message clamd cannot read to the end (too
            # deep, too many files) is reported as Heuristics.Limits.Exceeded.*, not as clean.
            "AlertExceedsMax yes",
        ]
        if self.tcp_port is not None:
            lines += [f"TCPSocket {self.tcp_port}", "TCPAddr 127.0.0.1"]
        config = self.dir / "clamd.conf"
        config.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([CLAMD, "-c", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"clamd exited ({self.proc.returncode}): {self.log()[-2000:]}")
            if self.ping():
                return self
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"clamd did not answer PING within {START_TIMEOUT}s: {self.log()[-2000:]}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket))
                sock.sendall(b"zPING\0")
                return sock.recv(16) == b"PONG\0"
        except OSError:
            return False

    def log(self) -> str:
        try:
            return (self.dir / "clamd.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop clamd (the socket file goes with it), and wait for the process to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ClamdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
