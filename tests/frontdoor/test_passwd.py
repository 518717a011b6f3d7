"""The users file and `frontfilter passwd`: scrypt hashes, atomic rewrite, clear errors."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from frontfilter.smtp.passwd import (UsersFileError, hash_password, load_users, parse_hash, parse_users,
                                set_user)
from tests.harness import REPO


def passwd(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontfilter", "passwd", *args], input=stdin,
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)


def test_hash_round_trip_and_wrong_password() -> None:
    hashed = hash_password(b"correct horse")
    again = parse_hash(hashed.encode())
    assert again.encode().startswith("$scrypt$ln=15,r=8,p=1$")
    assert again.matches(b"correct horse") and not again.matches(b"correct horsE")


def test_each_bad_line_is_named_with_its_number() -> None:
    good = hash_password(b"x").encode()
    text = f"# comment\nalice:{good}\nbob\ncarol:$scrypt$ln=40,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\nalice:{good}\n"
    with pytest.raises(UsersFileError) as caught:
        parse_users(text, "users")
    assert caught.value.problems == [
        "users:3: expected name:hash",
        "users:4: scrypt parameters out of bounds (ln<=20, r<=16, p<=4)",
        "users:5: user 'alice' appears twice",
    ]


def test_set_user_keeps_comments_and_other_users(tmp_path: Path) -> None:
    path = tmp_path / "users"
    assert set_user(path, "alice", hash_password(b"a")) is False
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    set_user(path, "bob@example.org", hash_password(b"b"))
    assert set_user(path, "alice", hash_password(b"new")) is True
    users = load_users(path)
    assert sorted(users) == ["alice", "bob@example.org"]
    assert users["alice"].matches(b"new")
    assert path.read_text().startswith("# frontfilter SMTP AUTH users")
    assert set_user(path, "bob@example.org", None) is True
    assert sorted(load_users(path)) == ["alice"]


def test_passwd_command_reads_stdin_and_refuses_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "users"
    done = passwd(str(path), "alice", stdin="s3cret\n")
    assert done.returncode == 0, done.stderr
    assert "added alice" in done.stdout
    assert load_users(path)["alice"].matches(b"s3cret")
    assert passwd(str(path), "alice", stdin="other\r\n").returncode == 0
    assert load_users(path)["alice"].matches(b"other")

    bad_name = passwd(str(path), "ali:ce", stdin="x\n")
    assert bad_name.returncode == 2
    assert bad_name.stderr.strip() == "frontfilter: 'ali:ce': user name must not contain ':', spaces or control characters"
    empty = passwd(str(path), "bob", stdin="\n")
    assert (empty.returncode, empty.stderr.strip()) == (2, "frontfilter: password is empty")
    missing = passwd(str(path), "--delete", "nobody")
    assert (missing.returncode, missing.stderr.strip()) == (2, f"frontfilter: {path}: no user 'nobody'")
    nowhere = passwd(str(tmp_path / "no" / "dir" / "users"), "bob", stdin="x\n")
    assert nowhere.returncode == 2 and "Traceback" not in nowhere.stderr
    assert len(nowhere.stderr.strip().splitlines()) == 1


def test_passwd_command_refuses_a_user_name_that_is_not_utf8(tmp_path: Path) -> None:
    """A Latin-1 name typed in a non-UTF-8 terminal reaches Python with surrogate escapes:
    refused with one line, not a UnicodeEncodeError traceback, and the file is left alone."""
    path = tmp_path / "users"
    assert passwd(str(path), "alice", stdin="s3cret\n").returncode == 0
    before = path.read_bytes()
    done = subprocess.run([sys.executable, "-m", "frontfilter", "passwd", str(path), b"j\xf6rg"],
                          input="x\n", capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("user name must be UTF-8")
    assert path.read_bytes() == before
