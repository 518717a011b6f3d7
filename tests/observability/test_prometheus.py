"""The acceptance test: a real Prometheus scrapes a running frontfilter while it handles a mix of
clean, rejected and stripped mail; then every dashboard query and every alert rule is asked of
that Prometheus. Each must parse and evaluate, the core panels must show data, and every metric
name they use must be one frontfilter exports.

Timeline (~15 s): relay up and ready (~1 s), Prometheus up and its first scrape of frontfilter
(~6 s: a fixed discovery delay in Prometheus), the mail mix (~1 s), two more scrapes and rule
evaluations (~2 s), the queries (~1 s).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.frontdoor.helpers import frontdoor_config, make_pki, write_users
from tests.harness import REPO, RecordingSink, Relay, closed_port, eventually, free_port
from tests.observability import mail
from tests.observability.coverage import COVERAGE, E2E
from tests.observability.promql import (ALERT_RULES, dashboard_queries, exported_names,
                                        metric_names, panels, rule_count, selectors, substitute)
from tests.observability.support import http_get
from tests.requires import installed

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = [
    pytest.mark.slow,
    installed(PROMETHEUS is not None and PROMTOOL is not None,
              "Prometheus is not installed (Debian package 'prometheus'; `make test` installs it)"),
]

MAX_PARTS = 8                 # inspection.max_parts of the relay under test: the mix crosses it
FIRST_SCRAPE_TIMEOUT = 25.0   # Prometheus' first scrape comes ~6 s after start

# Panels that must show data after the mix: "nonzero" (some finite value other than 0), "finite"
# (some finite value), "series" (some series, a zero is a right answer in sync mode).
CORE = {
    "Messages / s": "nonzero", "Rejected share": "nonzero", "Ready": "nonzero",
    "Last rule reload": "nonzero", "Rules loaded": "nonzero", "Spool": "series",
    "Messages per second by verdict": "nonzero", "Rejects by rule": "nonzero",
    "Rejects by rule (time range)": "nonzero", "Stripped attachments by type (time range)": "nonzero",
    "Monitor-mode hits (time range)": "nonzero", "Message size": "nonzero",
    "Decision time by stage (p99)": "nonzero", "Inspection limits crossed": "nonzero",
    "Forward latency by backend": "nonzero", "Forward failures by backend": "nonzero",
    "Backend reachable": "nonzero", "Spool depth": "series", "Oldest spooled message": "series",
    "Dead letters (time range)": "series", "Connections by result": "nonzero",
    "Refusals by stage and code": "nonzero", "Readiness checks": "nonzero", "Rule reloads": "nonzero",
    "Build info": "nonzero", "Event loop lag (p99)": "finite", "CPU": "finite", "Memory": "nonzero",
}
CORE |= {"TLS share of inbound sessions": "nonzero", "TLS sessions by version": "nonzero",
         "AUTH failures": "nonzero", "Refusals by reason": "nonzero"}
# The quarantine's gauges are set by the relay's retention pass from its start (0 here).
CORE |= {"Quarantine held": "series", "Quarantine size": "series", "Oldest quarantined message": "series"}
# Panels whose data needs a feature this relay does not run; they must still evaluate.
PENDING = {
    "Antivirus scans": "needs clamd",
    "DNS block lists": "needs a DNS list",
    "SPF results": "needs SPF checks",
    "DKIM, ARC and DMARC": "needs [dkim], [dmarc] or [arc] (their counters: tests/reputation/test_dkim_dmarc.py)",
    "Greylisting": "needs greylisting",
    "Antivirus scan time": "needs clamd",
    "DNS check time (p99)": "needs a DNS list or SPF checks",
    "Recipient verifications and sender refusals": "needs backend.verify_recipients or domain-bound relaying",
    "Quarantine, discard and tag by rule": "needs a rule that quarantines, discards or tags",
    "Quarantine releases and expiries (time range)": "needs a release or an expiry "
                                                      "(tests/test_quarantine_tool.py scrapes both)",
}

MONITOR_RULE = """\
# Added by tests/observability: a rule on trial, counted but never acting.
[[rule]]
name = "trial-pdf"
description = "PDFs, counted before a decision is taken about them"
attachment.detected_type = ["application/pdf"]
action = "reject"
mode = "monitor"
"""


class Prometheus:
    """A real Prometheus on 127.0.0.1:<ephemeral>, with its own data dir, scraping every second."""

    def __init__(self, directory: Path, target: str, rule_files: list[Path]):
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(p) for p in rule_files],
                  "scrape_configs": [{"job_name": "frontfilter", "static_configs": [{"targets": [target]}]}]}
        (directory / "prometheus.yml").write_text(json.dumps(config))    # JSON is YAML

    def start(self) -> Prometheus:
        assert PROMETHEUS is not None
        self._log = (self.directory / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.directory / 'prometheus.yml'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.directory / 'data'}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.directory)
        eventually(self._ready, timeout=FIRST_SCRAPE_TIMEOUT)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError("prometheus exited: " + (self.directory / "prometheus.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        """GET /api/v1/<path>; the JSON answer, errors (status "error") included."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return json.loads(error.read())

    def query(self, expr: str, instant: bool = True) -> dict[str, Any]:
        now = time.time()
        if instant:
            return self.api("query", query=expr, time=now)
        return self.api("query_range", query=expr, start=now - 60, end=now, step=1)

    def value(self, expr: str) -> float | None:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@dataclass
class Stack:
    prometheus: Prometheus
    relay: Relay
    http_port: int
    outcomes: Any
    exposition: str
    dead_backend: str
    sink_backend: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("prometheus-e2e")
    rules = directory / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "90-trial.toml").write_text(MONITOR_RULE)
    pki = make_pki(directory / "tls")
    users = write_users(directory / "users", {"alice": "her password"})
    # `dead`: nothing answers there, every message fails over past it.
    with RecordingSink() as sink, closed_port() as dead:
        # One listener: STARTTLS offered, AUTH optional (inside TLS), like a port 25 that also
        # serves the organisation's own senders.
        config = frontdoor_config(
            directory, [dead, sink.port],
            [{"address": "127.0.0.1:0", "tls": "starttls", "auth": "optional"}],
            backend={"mode": "sync"}, metrics={"listen": "127.0.0.1:0"},
            # Two workers, as `workers = "auto"` on a two-core host: every query is evaluated on
            # what several processes export together (metrics.py's multiprocess mode).
            server={"workers": 2},
            inspection={"max_parts": MAX_PARTS}, rules={"dir": str(rules)},
            tls={"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
            auth={"users_file": str(users), "failure_delay": "0s"})
        with Relay(config) as relay:
            http_port = relay.http_port
            eventually(lambda: http_get(http_port, "/readyz")[0] == 200)
            prometheus = Prometheus(directory, f"127.0.0.1:{http_port}", [ALERT_RULES]).start()
            try:
                eventually(lambda: prometheus.value('up{job="frontfilter"}') == 1, timeout=FIRST_SCRAPE_TIMEOUT)
                # Twice, a scrape between: series born in the first round (a new SMTP code, a
                # new backend histogram) have grown by the second, as they do on a live relay.
                outcomes = send_all(relay.port, pki.client_context())
                eventually(lambda: (prometheus.value("sum(frontfilter_messages_total)") or 0) >= 9)
                outcomes += send_all(relay.port, pki.client_context())
                sent = time.time()
                eventually(lambda: (prometheus.value("sum(frontfilter_messages_total)") or 0) >= 18)
                eventually(lambda: rules_evaluated_after(prometheus, sent))
                exposition = http_get(http_port, "/metrics")[1]
                yield Stack(prometheus, relay, http_port, outcomes, exposition,
                            f"127.0.0.1:{dead}", f"127.0.0.1:{sink.port}")
            finally:
                prometheus.stop()


def defined_names() -> set[str]:
    """Every name frontfilter exports. With several workers a family no process has moved yet is
    absent from the exposition (the workers' files hold only what was written), so the names
    come from the definitions (metrics.REGISTRY in this, single, process) and the scrape."""
    from prometheus_client import generate_latest

    from frontfilter import metrics
    return set(exported_names(generate_latest(metrics.REGISTRY).decode()))


def send_all(port: int, context: Any) -> Any:
    outcomes = mail.send_mix(port, MAX_PARTS)
    outcomes[f"tls {mail.send_over_tls(port, context, mail.clean(7))}"] += 1
    outcomes[f"auth {mail.fail_auth(port, context)}"] += 1
    return outcomes


EXPECTED = mail.EXPECTED_MIX + mail.EXPECTED_MIX + Counter({"tls 250": 2, "auth 535": 2})


def rules_evaluated_after(prometheus: Prometheus, moment: float) -> bool:
    """Every rule of every group evaluated (once more) after `moment`."""
    groups = prometheus.api("rules")["data"]["groups"]
    evaluations = [rule.get("lastEvaluation", "") for group in groups for rule in group["rules"]]
    return bool(evaluations) and all(_rfc3339(e) > moment + 1 for e in evaluations)


def _rfc3339(text: str) -> float:
    if not text or text.startswith("0001"):
        return 0.0
    from datetime import datetime

    return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()


def values(answer: dict[str, Any]) -> list[float]:
    result = answer["data"]["result"]
    if answer["data"]["resultType"] == "matrix":
        return [float(v) for series in result for _, v in series["values"]]
    if answer["data"]["resultType"] == "vector":
        return [float(series["value"][1]) for series in result]
    return [float(result[1])]


# ---- the tests -------------------------------------------------------------------------------

def test_the_mail_mix_got_the_expected_answers(stack: Stack) -> None:
    assert stack.outcomes == EXPECTED


def test_live_exposition_lints_clean(stack: Stack) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=stack.exposition, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == done.stderr == "", done.stdout + done.stderr


def test_every_e2e_metric_moved(stack: Stack) -> None:
    """coverage.py's E2E metrics each have a non-zero sample after the flow."""
    from prometheus_client.parser import text_string_to_metric_families

    moved: set[str] = set()
    for family in text_string_to_metric_families(stack.exposition):
        for sample in family.samples:
            if sample.value and not sample.name.endswith("_bucket"):
                moved.add(family.name + ("_total" if family.type == "counter" else ""))
    expected = {name for name, where in COVERAGE.items() if where == E2E}
    assert not expected - moved, sorted(expected - moved)


def test_every_dashboard_query_evaluates_and_core_panels_show_data(stack: Stack) -> None:
    exported = defined_names()
    titles = {panel["title"] for panel in panels()}
    assert titles == set(CORE) | set(PENDING), "classify each panel as CORE or PENDING"
    by_panel: dict[str, list[float]] = {}
    for query in dashboard_queries():
        answer = stack.prometheus.query(query.promql, instant=query.instant)
        assert answer["status"] == "success", f"{query.where}: {query.promql}: {answer.get('error')}"
        unknown = metric_names(query.expr) - set(exported)
        assert not unknown, f"{query.where} uses {sorted(unknown)}, which frontfilter does not export"
        if query.where.startswith("panel "):
            title = query.where.split("'")[1] if "'" in query.where else query.where.split('"')[1]
            found = values(answer)
            by_panel.setdefault(title, []).extend(found)
            if CORE.get(title) and not answer["data"]["result"]:
                pytest.fail(f"{query.where} returned no series: {query.promql}")
    for title, need in CORE.items():
        finite = [v for v in by_panel[title] if math.isfinite(v)]
        if need == "finite":
            assert finite, f"{title}: no finite value"
        elif need == "nonzero":
            assert any(v != 0 for v in finite), f"{title}: only zeros or NaN"


def test_every_selector_matches_real_series(stack: Stack) -> None:
    """A misspelt label value evaluates fine and returns nothing: ask each selector alone (of
    the core panels, the annotation and the rules: pending features have no series yet)."""
    expressions = [q.promql for q in dashboard_queries()
                   if not any(f"'{title}'" in q.where for title in PENDING)]
    expressions += [rule["query"] for group in stack.prometheus.api("rules")["data"]["groups"]
                    for rule in group["rules"]]
    for expr in expressions:
        for name, matchers in selectors(expr):
            if ":" in name:
                continue               # recorded series: checked with the rules
            selector = substitute(name + "{" + ",".join(f'{l}{op}"{v}"' for l, op, v in matchers) + "}")
            answer = stack.prometheus.query(selector)
            assert answer["data"]["result"], f"{selector} (in {expr!r}) matches no series"


def test_alert_rules_load_evaluate_and_use_exported_names(stack: Stack) -> None:
    groups = stack.prometheus.api("rules")["data"]["groups"]
    assert sorted(g["name"] for g in groups) == ["frontfilter", "frontfilter-recording"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == rule_count() > 10
    exported = set(defined_names()) | {"up"}
    recorded = {rule["name"] for rule in rules if rule["type"] == "recording"}
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        answer = stack.prometheus.query(rule["query"])
        assert answer["status"] == "success", f"{rule['name']}: {answer.get('error')}"
        unknown = metric_names(rule["query"]) - exported - recorded
        assert not unknown, f"{rule['name']} uses {sorted(unknown)}"
    for name in recorded:
        assert stack.prometheus.query(name)["data"]["result"], f"{name} recorded nothing"


def test_alerts_see_the_dead_backend(stack: Stack) -> None:
    """The failover past a dead backend is what the forward-failure and backend-down alerts are
    for: they are pending (their `for:` has minutes to run), for that backend only."""
    alerts = stack.prometheus.api("alerts")["data"]["alerts"]
    pending = {(a["labels"]["alertname"], a["labels"].get("backend")) for a in alerts}
    assert ("FrontfilterForwardFailures", stack.dead_backend) in pending
    assert ("FrontfilterBackendDown", stack.dead_backend) in pending
    assert all(a["state"] == "pending" for a in alerts)
    assert not any(a["labels"].get("backend") == stack.sink_backend for a in alerts)


def test_the_shares_read_zero_not_nan_once_mail_stops(stack: Stack) -> None:
    """Rejected share and TLS share divide one rate by another: with no mail in the window
    both are 0, and a plain ratio is NaN (Grafana shows "NaN"). Runs last: it waits for the
    window after the module's mail to go quiet."""
    window = 20 + 5                      # $__rate_interval, and a scrape or two
    quiet_from = time.monotonic()
    eventually(lambda: time.monotonic() - quiet_from > window, timeout=window + 10)
    plain = stack.prometheus.value('sum(rate(frontfilter_messages_total{verdict="rejected"}[20s]))'
                                   ' / sum(rate(frontfilter_messages_total[20s]))')
    assert plain is not None and math.isnan(plain)          # the case the panels must survive
    shares = {q.where: q.promql for q in dashboard_queries()
              if q.where.startswith(("panel 'Rejected share'", "panel 'TLS share of inbound sessions'"))}
    assert len(shares) == 2
    for where, promql in shares.items():
        assert stack.prometheus.value(promql) == 0, where
