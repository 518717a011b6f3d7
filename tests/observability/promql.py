"""What the dashboard and the alert rules ask Prometheus, and which metrics and labels they name.

Pure helpers for the observability tests: no Prometheus needed. The parsing is deliberately
narrow — it reads the PromQL this repository writes (every metric selector has braces, recorded
series have colons), and `test_dashboard` fails if an expression strays outside that shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "grafana" / "frontfilter.json"
ALERT_RULES = REPO / "deploy" / "prometheus" / "frontfilter-alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "frontfilter-alerts.test.yml"
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
SCHEMAS = REPO.parent / "shared" / "data" / "grafana-schema"

# What Grafana substitutes, as the tests stand in for it: all instances, windows that cover a
# test run scraped every second.
VARIABLES = {"${datasource}": "prometheus", "$job": ".+", "$instance": ".+",
             "$__rate_interval": "20s", "$__interval": "1s", "$__range": "5m"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_OURS = re.compile(r"\b(?:frontfilter|process)_[a-z0-9_]+\b|\bfrontfilter:[a-z0-9_:]+\b")


@dataclass(frozen=True)
class Query:
    where: str          # "panel 'Messages / s' A", "annotation 'Rule reloads'", ...
    expr: str           # as written, with Grafana variables
    instant: bool

    @property
    def promql(self) -> str:
        return substitute(self.expr)


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    return expr


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict | None = None) -> list[dict]:
    """Every panel, those inside collapsed rows included; rows themselves excluded."""
    result = []
    for panel in (board or dashboard())["panels"]:
        if panel["type"] == "row":
            result.extend(panel.get("panels", []))
        else:
            result.append(panel)
    return result


def dashboard_queries(board: dict | None = None) -> list[Query]:
    board = board or dashboard()
    queries = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            queries.append(Query(f"panel {panel['title']!r} {target['refId']}", target["expr"],
                                 bool(target.get("instant"))))
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            queries.append(Query(f"annotation {annotation['name']!r}", annotation["expr"], False))
    return queries


def metric_names(expr: str) -> set[str]:
    """Metric and recorded-series names an expression reads."""
    bare = _STRING.sub('""', expr)
    names = {m.group(1) for m in _SELECTOR.finditer(bare)}
    names |= set(_OURS.findall(bare))
    return {n for n in names if n not in ("by", "without", "on", "ignoring")}


def rule_count() -> int:
    """Alerting and recording rules in the shipped rule file."""
    return len(re.findall(r"^\s*- (?:alert|record):", ALERT_RULES.read_text(), re.MULTILINE))


def our_names(text: str) -> set[str]:
    """frontfilter_*, process_* and recorded frontfilter:* names anywhere in a text."""
    return set(_OURS.findall(text))


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Each `name{label op "value", ...}` in the expression, its matchers parsed."""
    found = []
    for match in _SELECTOR.finditer(expr):
        matchers = [(m.group(1), m.group(2), m.group(3)) for m in _MATCHER.finditer(match.group(2))]
        found.append((match.group(1), matchers))
    return found


def exported_names(exposition: str) -> dict[str, set[str]]:
    """Every series name a /metrics text declares (HELP/TYPE, with or without samples), mapped
    to the label names seen on its samples: counters as `_total`, histograms with their
    `_bucket`, `_sum` and `_count`."""
    from prometheus_client.parser import text_string_to_metric_families

    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        declared = {"counter": [family.name + "_total"],
                    "histogram": [family.name + s for s in ("", "_bucket", "_sum", "_count")]
                    }.get(family.type, [family.name])
        for name in declared:
            names.setdefault(name, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names
