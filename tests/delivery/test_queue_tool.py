"""`frontfilter queue list | show | retry | delete` against a running relay's spool."""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from frontfilter.tools import queuectl
from frontfilter.delivery.spool import Envelope, Layout, open_message, write_message

from tests.delivery.support import (
    DRAIN_TIMEOUT, dead_port, message, message_ids, queue_config, run_cli, send_one, spooled)
from tests.harness import REPO, RecordingSink, Relay, eventually


def test_queue_list_show_retry_delete_on_a_running_daemon(tmp_path: Path) -> None:
    port = dead_port()
    # Retries an hour apart: whatever moves after the first attempt is the tool's doing.
    config = queue_config(tmp_path, [port], spool={"retry_min": "1h", "retry_max": "1h"})
    with Relay(config) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            ids = [send_one(client, "alice@example.net", ["bob@example.org", "carol@example.org"],
                            message(f"tool-{n}")) for n in range(3)]
        for queue_id in ids:
            relay.wait_event("delivery", queue_id=queue_id, status="deferred")

        listed = run_cli("queue", "list", "--config", str(config))
        assert listed.returncode == 0, listed.stderr
        for queue_id in ids:
            assert queue_id in listed.stdout
        assert listed.stdout.count("pending   <bob@example.org>") == 3
        assert "-- 3 messages" in listed.stdout
        assert len(re.findall(r" in (1h0\dm|5\dm\d\ds) ", listed.stdout)) == 3   # 1h +- jitter

        shown = run_cli("queue", "--config", str(config), "show", ids[1])
        assert shown.returncode == 0, shown.stderr
        assert "sender:     <alice@example.net>" in shown.stdout
        assert "recipient:  <carol@example.org> pending" in shown.stdout
        assert "Message-ID: <tool-1@test>" in shown.stdout

        deleted = run_cli("queue", "delete", "--config", str(config), ids[0])
        assert (deleted.returncode, deleted.stdout.strip()) == (0, f"{ids[0]}: deleted")
        relay.wait_event("spool_removed", queue_id=ids[0])     # the daemon noticed

        with RecordingSink(port=port) as sink:                  # the backend is back ...
            retried = run_cli("queue", "retry", "--config", str(config))   # ... and we say so
            assert retried.returncode == 0, retried.stderr
            assert retried.stdout.count("will be retried now (2 recipients pending)") == 2
            assert eventually(lambda: not spooled(tmp_path), DRAIN_TIMEOUT)
            assert message_ids(sink.messages) == {"tool-1@test": 1, "tool-2@test": 1}

        empty = run_cli("queue", "list", "--config", str(config), "--json")
        assert json.loads(empty.stdout) == []
        assert run_cli("queue", "list", "--config", str(config)).stdout.strip() == "Queue is empty."


def test_a_retry_the_administrator_asks_for_happens_now_even_right_after_a_failure(tmp_path: Path) -> None:
    # The shipped skip_failed_for (30 s): the relay's own retries skip a backend that failed a
    # moment ago, but `queue retry` says "now" and must mean it.
    port = dead_port()
    config = queue_config(tmp_path, [port], backend={"skip_failed_for": "30s"},
                          spool={"retry_min": "1h", "retry_max": "1h"})
    with Relay(config) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            queue_id = send_one(client, "alice@example.net", ["bob@example.org"], message("asked"))
        relay.wait_event("delivery", queue_id=queue_id, status="deferred")
        with RecordingSink(port=port) as sink:
            retried = run_cli("queue", "retry", "--config", str(config), queue_id)
            assert retried.returncode == 0 and "will be retried now" in retried.stdout, retried.stdout
            assert eventually(lambda: not spooled(tmp_path), timeout=20)
            assert message_ids(sink.messages) == {"asked@test": 1}
        assert relay.wait_event("delivery", queue_id=queue_id, status="delivered")["attempts"] == 2


def test_queue_tool_answers_bad_ids_with_one_line_each(tmp_path: Path) -> None:
    with RecordingSink() as sink, Relay(queue_config(tmp_path, [sink.port])) as relay:
        relay.wait_event("spool_recovered")
        config = str(relay.config)
        result = run_cli("queue", "delete", "--config", config, "../../etc/passwd", "2Q3ZZZZZZZZZZZZZZZZZZ")
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            "'../../etc/passwd': not a queue id",
            "2Q3ZZZZZZZZZZZZZZZZZZ: not in the queue (delivered or deleted already?)"]
        missing = run_cli("queue", "show", "--config", config, "2Q3ZZZZZZZZZZZZZZZZZZ")
        assert missing.returncode == 2
        assert missing.stderr.strip() == "frontfilter: 2Q3ZZZZZZZZZZZZZZZZZZ: not in the queue nor in the dead letters"
        assert "Traceback" not in result.stderr + missing.stderr


def test_queue_tool_without_a_spool_says_so(tmp_path: Path) -> None:
    config = queue_config(tmp_path, [dead_port()])
    result = run_cli("queue", "list", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith("frontfilter: ") and "no spool here" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_with_an_unusable_spool_exits_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool should be")
    config = queue_config(tmp_path, [dead_port()], spool={"dir": str(blocker / "spool")})
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert lines == [f"frontfilter: cannot use the spool {blocker / 'spool'} (spool.dir): Not a directory"]


def test_retry_run_twice_before_the_daemon_looks_is_not_lost(tmp_path: Path) -> None:
    """ext4 hands a freed inode straight back: two state rewrites between two spool scans can
    leave a state file with the very inode the daemon saw last. The daemon must still notice.
    (The tool's function is called twice in this process, back to back, so that no scan of the
    running daemon can fall between the two; the CLI runs the same function.)"""
    port = dead_port()
    config = queue_config(tmp_path, [port], spool={"retry_min": "1h", "retry_max": "1h",
                                                   "scan_interval": "500ms"})
    with Relay(config) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            queue_id = send_one(client, "alice@example.net", ["bob@example.org"], message("twice"))
        relay.wait_event("delivery", queue_id=queue_id, status="deferred")    # next try in 1h
        layout = Layout(tmp_path / "spool")
        with RecordingSink(port=port) as sink:
            for _ in range(2):
                lines, ok = queuectl.retry(layout, [queue_id])
                assert ok, lines
            assert eventually(lambda: not spooled(tmp_path), DRAIN_TIMEOUT), queuectl.format_list(
                *queuectl.list_queue(layout), dead=0, now=time.time())
            assert message_ids(sink.messages) == {"twice@test": 1}


def test_queue_list_and_show_print_a_backend_answer_in_latin1_in_any_locale(tmp_path: Path) -> None:
    """aiosmtplib keeps a reply's bytes that are not UTF-8 as surrogates. `queue list --json`
    printed them raw (JSON no reader takes) or, in a UTF-8 locale, died with a traceback."""
    config = queue_config(tmp_path, [dead_port()])
    layout = Layout(tmp_path / "spool")
    layout.create()
    sent = Envelope(id="2Q3DWAAAAAAAAAAAAAAAA", sender="alice@example.net", recipients=("bob@example.org",),
                    arrived=time.time(), size=0)
    write_message(layout, sent, b"")
    with open_message(layout, sent.id) as spooled_message:
        assert spooled_message.state is not None
        spooled_message.state.recipients[0].detail = "451 4.3.0 R\udce9essayez plus tard"
        spooled_message.save(spooled_message.state)
    for encoding in ("utf-8:strict", "utf-8:surrogateescape"):      # a UTF-8 locale; the C locale
        done = subprocess.run([sys.executable, "-m", "frontfilter", "queue", "list", "--config", str(config),
                               "--json"], capture_output=True, cwd=REPO, timeout=60,
                              env={**os.environ, "PYTHONIOENCODING": encoding})
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
        [listed] = json.loads(done.stdout.decode("utf-8"))      # strict: valid UTF-8
        assert listed["recipients"][0]["last"] == "451 4.3.0 R\udce9essayez plus tard"
        shown = subprocess.run([sys.executable, "-m", "frontfilter", "queue", "show", "--config", str(config),
                                sent.id], capture_output=True, cwd=REPO, timeout=60,
                               env={**os.environ, "PYTHONIOENCODING": encoding})
        assert shown.returncode == 0 and b"last: 451 4.3.0 R\\udce9essayez" in shown.stdout, shown
