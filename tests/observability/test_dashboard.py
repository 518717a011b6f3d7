"""grafana/frontfilter.json without Grafana: valid against Grafana 11.6's own schema, the panels
the issue asks for, a Prometheus data-source variable and an instance variable, and only metric
names, labels and label values that frontfilter exports. (test_prometheus.py runs every query.)"""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from frontfilter import metrics
from tests.observability.promql import (ALERT_RULES, SCHEMAS, dashboard, dashboard_queries,
                                        exported_names, metric_names, our_names, panels, selectors)

# What the issue asks the dashboard to show, and the panel that shows it.
REQUIRED = {
    "messages per second by verdict": "Messages per second by verdict",
    "rejects by rule": "Rejects by rule",
    "stripped attachments by type": "Stripped attachments by type (time range)",
    "monitor-mode hits": "Monitor-mode hits (time range)",
    "forward latency (p50/p99)": "Forward latency by backend",
    "failures by backend": "Forward failures by backend",
    "spool depth": "Spool depth",
    "oldest message age": "Oldest spooled message",
    "connections and refusals": "Connections by result",
    "TLS share": "TLS share of inbound sessions",
    "AUTH failures": "AUTH failures",
    "rule reload status": "Last rule reload",
    "build info": "Build info",
    "quarantine held": "Quarantine held",
    "quarantine size": "Quarantine size",
    "quarantine age": "Oldest quarantined message",
    "quarantine releases and expiries": "Quarantine releases and expiries (time range)",
    "DKIM/DMARC outcomes and ARC seals": "DKIM, ARC and DMARC",
}
LABELS_EVERY_SERIES_HAS = {"job", "instance"}     # added by Prometheus at scrape time


def declared() -> dict[str, set[str]]:
    """Every series name metrics.py declares, with its label names (as /metrics shows them)."""
    names = exported_names(generate_latest(metrics.REGISTRY).decode())   # process_* included
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            family = collector.describe()[0]
            suffixes = {"counter": ["_total"], "histogram": ["", "_bucket", "_sum", "_count"]}.get(
                family.type, [""])
            for suffix in suffixes:
                labels = set(collector._labelnames) | ({"le"} if suffix == "_bucket" else set())
                names.setdefault(family.name + suffix, set()).update(labels)
    return names


def test_dashboard_is_valid_for_grafana() -> None:
    if not SCHEMAS.is_dir():
        pytest.skip(f"{SCHEMAS} is absent (the Grafana schemas live in ../shared beside the checkout)")
    jsonschema = pytest.importorskip("jsonschema")
    board = dashboard()
    schema = json.loads((SCHEMAS / "dashboard.v11.6.jsonschema.json").read_text())
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(board)]
    assert not errors, "\n".join(errors)
    query_schema = json.loads((SCHEMAS / "prometheus.dataquery.v11.6.jsonschema.json").read_text())
    validator = jsonschema.Draft7Validator(query_schema)
    for panel in panels(board):
        for target in panel.get("targets", []):
            problems = [e.message for e in validator.iter_errors(target)]
            assert not problems, f"{panel['title']} {target['refId']}: {problems}"


def test_dashboard_has_the_panels_and_variables_administrators_need() -> None:
    board = dashboard()
    titles = {panel["title"] for panel in panels(board)}
    missing = {need: title for need, title in REQUIRED.items() if title not in titles}
    assert not missing
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query" and "instance)" in instance["query"]
    assert instance["includeAll"] and instance["multi"]
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what it shows"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"], f"{panel['title']}: not filtered by instance"


def test_panels_do_not_overlap() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]] + [p["id"] for r in board["panels"] for p in r.get("panels", [])]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_uses_only_exported_names_labels_and_values() -> None:
    names = declared()
    for query in dashboard_queries():
        used = metric_names(query.expr)
        assert used, f"{query.where}: no metric found in {query.expr!r}"
        unknown = used - set(names)
        assert not unknown, f"{query.where}: {sorted(unknown)} not exported"
        check_matchers(query.where, query.expr, names)


def test_alert_rules_use_only_exported_names_labels_and_values() -> None:
    """A static pass over the rule file (test_prometheus.py loads it into Prometheus)."""
    text = ALERT_RULES.read_text()
    recorded = {line.split("record:", 1)[1].strip() for line in text.splitlines() if "record:" in line}
    names = declared()
    used = our_names(text) - recorded
    assert not used - set(names), sorted(used - set(names))
    check_matchers("alert rules", text, names)


def check_matchers(where: str, expr: str, names: dict[str, set[str]]) -> None:
    """Each `label="value"` names a label of that metric, and a value of its closed set."""
    for name, matchers in selectors(expr):
        if name not in names:
            continue             # up, recorded series
        family = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        closed = metrics.LABEL_VALUES.get(name) or metrics.LABEL_VALUES.get(family) or {}
        for label, op, value in matchers:
            assert label in names[name] | LABELS_EVERY_SERIES_HAS, f"{where}: {name} has no label {label!r}"
            if label in closed and op in ("=", "=~") and "$" not in value:
                alternatives = value.split("|") if op == "=~" else [value]
                if all(a.replace("_", "").isalnum() for a in alternatives):
                    bad = [a for a in alternatives if a not in closed[label]]
                    assert not bad, f"{where}: {name}{{{label}}} never takes {bad}"


@pytest.mark.parametrize("expr", [
    'rate(frontfilter_messages_total{verdict="rejectd"}[5m])',          # a misspelt value
    'rate(frontfilter_messages_total{verdikt="rejected"}[5m])',         # a misspelt label
    'frontfilter_rule_matches_total{mode=~"enforce|monitr"}',
])
def test_the_matcher_check_catches_typos(expr: str) -> None:
    with pytest.raises(AssertionError):
        check_matchers("test", expr, declared())
