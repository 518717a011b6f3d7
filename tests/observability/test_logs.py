"""The log an administrator reads: one line per message with everything about it, the effective
configuration at start-up, and the text format for humans."""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

from tests.harness import REPO, RawClient, RecordingSink, Relay, eventually, write_config
from tests.observability import mail


def test_one_line_per_message_carries_everything(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], backend={"mode": "sync"})
        with Relay(config) as relay:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=15) as client:
                client.ehlo("client.example.net")
                client.mail(mail.SENDER)
                client.rcpt(mail.RECIPIENT)
                code, text = client.data(mail.with_macros())
            assert code == 250
            queue_id = re.search(r"queued as (\w+)", text.decode()).group(1)
            line = relay.wait_event("message", queue_id=queue_id)
            assert mail.outcome(relay.port, mail.with_executable()) == "554"
            rejected = relay.wait_event("message", verdict="rejected")

    assert line["verdict"] == "accepted"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", line["client"])
    assert line["helo"] == "client.example.net"
    assert (line["sender"], line["recipients"]) == (mail.SENDER, [mail.RECIPIENT])
    assert line["size"] > 0 and line["forwarded_size"] > 0
    assert "office-macros" in line["rules"]
    [stripped] = [s for s in line["stripped"] if s["rule"] == "office-macros"]
    assert stripped["filename"] == "budget.docm"
    assert stripped["type"] and stripped["part"]
    assert line["delivery"].startswith(f"127.0.0.1:{sink.port}: 250")
    assert line["reply"].startswith("250 ") and queue_id in line["reply"]
    for duration in ("ms", "inspect_ms", "forward_ms"):
        assert isinstance(line[duration], float | int) and line[duration] >= 0, duration
    assert rejected["decided_by"] == "executable-by-type" and "executable-by-type" in rejected["rules"]
    assert rejected["reply"].startswith("554 5.7.1")


def test_start_up_logs_the_effective_configuration(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], backend={"mode": "sync"},
                              metrics={"type_labels": ["application/pdf"]})
        with Relay(config) as relay:
            started = relay.wait_event("started")
    effective = started["config"]
    assert effective["backend"]["servers"] == [f"127.0.0.1:{sink.port}"]
    assert effective["server"]["listen"] == started["listen"]
    assert effective["spool"]["dir"] == str(tmp_path / "spool")
    assert effective["metrics"] == {"listen": None, "type_labels": ["application/pdf"]}
    assert effective["log"] == {"format": "json", "level": "info"}
    json.dumps(effective)              # plain JSON values all the way down


def test_text_format_is_one_readable_line_per_event(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], backend={"mode": "sync"},
                              log={"format": "text", "level": "info"})
        proc = subprocess.Popen([sys.executable, "-m", "frontfilter", "serve", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
        reader.start()
        try:
            listening = eventually(lambda: [l for l in list(lines) if "event=listening" in l])
            port = int(re.search(r" address=\S+:(\d+)", listening[0]).group(1))
            assert mail.outcome(port, mail.clean()) == "250"
            message = eventually(lambda: [l for l in list(lines) if "event=message" in l])
        finally:
            proc.terminate()
            proc.wait(15)
            reader.join(5)
            proc.stderr.close()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d info event=message queue_id=\w+ verdict=accepted ",
                    message[0])
    assert "sender=alice@example.net" in message[0] and "{" not in message[0].split(" event=")[0]


# A HELO name with what ends a line for many readers (U+2028, U+0085), a bidi override, a C1
# control and DEL, and a forged JSON record after the separator.
TRICKY_HELO = "evil\u2028{\"event\":\"message\",\"verdict\":\"accepted\"}\x85\u202e\x9b\x7f.example"


def send_with_helo(port: int, helo: str) -> None:
    with RawClient(port) as client:
        client.begin_data(helo=helo)
        assert client.command(b"Subject: x\r\n\r\nhi\r\n.").startswith("250")


def test_json_lines_escape_what_would_split_or_disguise_them(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        with Relay(write_config(tmp_path, [sink.port], backend={"mode": "sync"})) as relay:
            send_with_helo(relay.port, TRICKY_HELO)
            line = relay.wait_event("message")
            raw = [text for text in relay.raw_stderr if '"event": "message"' in text]
    assert line["helo"] == TRICKY_HELO                 # read back exactly as sent
    assert len(raw) == 1 and raw[0].isprintable()
    assert len(raw[0].splitlines()) == 1               # one record, one line, for every reader
    assert all(json.loads(text) for text in relay.raw_stderr if text.startswith("{"))


def test_text_lines_escape_control_characters(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], backend={"mode": "sync"},
                              log={"format": "text", "level": "info"})
        proc = subprocess.Popen([sys.executable, "-m", "frontfilter", "serve", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, b"")), daemon=True)
        reader.start()
        try:
            listening = eventually(lambda: [l for l in list(lines) if b"event=listening" in l])
            port = int(re.search(rb" address=\S+:(\d+)", listening[0]).group(1))
            send_with_helo(port, TRICKY_HELO)
            message = eventually(lambda: [l for l in list(lines) if b"event=message" in l])
        finally:
            proc.terminate()
            proc.wait(15)
            reader.join(5)
            proc.stderr.close()
    text = message[0].decode("utf-8").rstrip("\n")
    assert text.isprintable() and len(text.splitlines()) == 1
    assert 'helo="evil\\u2028{\\"event\\":\\"message\\"' in text


def test_lines_carry_their_syslog_priority_where_stderr_is_the_journal(tmp_path: Path) -> None:
    """systemd names the journal's stream in JOURNAL_STREAM ("device:inode"); there every line
    starts with its priority, which journald strips and stores (`journalctl -p err` finds the
    errors). Here a pipe plays the journal's stream: the same check, the same bytes."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "00-broken.toml").write_text('[[rule]]\nname = "broken"\naction = "explode"\n')
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], rules_dir=rules, backend={"mode": "queue"},
                              spool={"dir": str(tmp_path / "spool")})
        read_end, write_end = os.pipe()
        stat = os.fstat(write_end)
        env = dict(os.environ, JOURNAL_STREAM=f"{stat.st_dev}:{stat.st_ino}")
        proc = subprocess.Popen([sys.executable, "-m", "frontfilter", "serve", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=write_end, env=env, cwd=REPO)
        os.close(write_end)
        lines: list[str] = []

        def read() -> None:
            with open(read_end, encoding="utf-8", errors="replace") as stream:
                lines.extend(stream)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            eventually(lambda: [l for l in list(lines) if '"event": "listening"' in l])
        finally:
            proc.terminate()
            proc.wait(15)
            reader.join(5)
    by_event = {json.loads(line[3:])["event"]: line[:3] for line in lines if line.startswith("<")}
    assert all(re.match(r"<[2-7]>\{", line) for line in lines), lines
    assert by_event["rules_refused"] == "<3>"          # error: the rules could not be loaded
    assert by_event["config_warning"] == "<4>"         # warning: queue mode without verification
    assert by_event["listening"] == "<6>"              # info
