"""Every PromQL query the product ships, in one place, for static and live checks.

The Grafana dashboard (monitoring/grafana/dashboards/stream-detector.json) and the alert
rules (monitoring/alerts.yml) are the two consumers of the worker's metric names.
``all_queries()`` returns their expressions with Grafana's variables rendered, so they can
be sent to a real Prometheus as they are; ``metric_names()`` and ``vector_selectors()``
take an expression apart without a PromQL library.

It also generates k8s/base/prometheusrule.yaml from monitoring/alerts.yml:

    .venv/bin/python tests/deploy_queries.py prometheusrule > k8s/base/prometheusrule.yaml
    .venv/bin/python tests/deploy_queries.py list        # every query, rendered
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "monitoring" / "alerts.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "stream-detector.json"
PROMETHEUS_RULE = ROOT / "k8s" / "base" / "prometheusrule.yaml"


@dataclass(frozen=True)
class Query:
    source: str  # "alert" or "dashboard"
    name: str  # alert name, or "<panel title> [<refId>]"
    expr: str  # rendered PromQL (no Grafana variables left)
    raw: str  # as written in the file


# --------------------------------------------------------------------------------------
# Loading


def load_alert_groups(path: Path = ALERTS) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["groups"]


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    return [rule for group in load_alert_groups(path) for rule in group["rules"]]


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def render_grafana(
    expr: str,
    *,
    rate_interval: str = "1m",
    interval: str = "15s",
    instance: str = ".*",
    range_: str = "1h",
) -> str:
    """Replace Grafana's variables by values a plain Prometheus accepts.

    ``$__rate_interval`` must span at least two scrapes (>= 4x the 15 s scrape interval
    in Grafana's own rule); a live test with a fast scrape can pass a shorter one.
    """
    replacements = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": range_,
        "instance": instance,
    }

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in replacements:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return replacements[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


def alert_queries(path: Path = ALERTS) -> list[Query]:
    return [
        Query("alert", rule["alert"], rule["expr"].strip(), rule["expr"])
        for rule in alert_rules(path)
        if "alert" in rule
    ]


def dashboard_queries(path: Path = DASHBOARD, **render: str) -> list[Query]:
    out = []
    for panel in dashboard_panels(load_dashboard(path)):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr:
                name = f"{panel.get('title', '?')} [{target.get('refId', '?')}]"
                out.append(Query("dashboard", name, render_grafana(expr, **render), expr))
    return out


def all_queries(**render: str) -> list[Query]:
    """Every alert expression and every dashboard target, rendered."""
    return alert_queries() + dashboard_queries(**render)


# --------------------------------------------------------------------------------------
# Taking PromQL apart (enough of it for names and selectors)

_AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"offset", "bool", "and", "or", "unless", "atan2", "inf", "nan"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"(0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)[A-Za-z0-9_]*")
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*(["'`])([^"'`]*)\1""")


def _skip_quoted(s: str, i: int) -> int:
    quote = s[i]
    i += 1
    while i < len(s) and s[i] != quote:
        i += 2 if s[i] == "\\" and quote != "`" else 1
    return i + 1


def _skip_bracketed(s: str, i: int, open_: str, close: str) -> int:
    depth = 0
    while i < len(s):
        c = s[i]
        if c in "\"'`":
            i = _skip_quoted(s, i)
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {open_}{close} in {s!r}")


def _next_non_space(s: str, i: int) -> int:
    while i < len(s) and s[i].isspace():
        i += 1
    return i


def _word_at(s: str, i: int) -> str:
    m = _IDENT.match(s, i)
    return m.group(0) if m else ""


def vector_selectors(expr: str) -> list[str]:
    """Vector selectors in order, e.g. ``detector_model_reloads_total{result="refused"}``.

    Function, aggregation and keyword names, label lists (``by (...)``), strings, range and
    subquery brackets, numbers and durations are skipped.
    """
    s = expr
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c in "\"'`":
            i = _skip_quoted(s, i)
        elif c == "#":
            nl = s.find("\n", i)
            i = len(s) if nl < 0 else nl
        elif c == "[":
            i = _skip_bracketed(s, i, "[", "]")
        elif c == "{":  # selector without a metric name: {__name__="x", ...}
            end = _skip_bracketed(s, i, "{", "}")
            out.append(s[i:end])
            i = end
        elif c == "$":
            raise ValueError(f"render Grafana variables first: {expr!r}")
        elif c.isdigit() or (c == "." and i + 1 < len(s) and s[i + 1].isdigit()):
            m = _NUMBER.match(s, i)
            i = m.end() if m else i + 1
        elif m := _IDENT.match(s, i):
            word = m.group(0)
            j = _next_non_space(s, m.end())
            nxt = s[j] if j < len(s) else ""
            if word in _LABEL_LIST_KEYWORDS:
                i = _skip_bracketed(s, j, "(", ")") if nxt == "(" else m.end()
            elif word in _KEYWORDS or nxt == "(":
                i = m.end()
            elif word in _AGGREGATIONS and _word_at(s, j) in ("by", "without"):
                i = m.end()  # `sum by (x) (...)`
            elif nxt == "{":
                end = _skip_bracketed(s, j, "{", "}")
                out.append(word + s[j:end])
                i = end
            else:
                out.append(word)
                i = m.end()
        else:
            i += 1
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (from selectors and ``__name__`` matchers)."""
    names = set()
    for sel in vector_selectors(expr):
        if sel.startswith("{"):
            m = _NAME_MATCHER.search(sel)
            if m:
                names.add(m.group(2))
        else:
            names.add(sel.split("{", 1)[0])
    return names


# --------------------------------------------------------------------------------------
# PrometheusRule for the Prometheus Operator, generated from monitoring/alerts.yml

PROMETHEUS_RULE_HEADER = """\
# GENERATED from monitoring/alerts.yml -- do not edit by hand. Regenerate with
#   .venv/bin/python tests/deploy_queries.py prometheusrule > k8s/base/prometheusrule.yaml
# Your Prometheus must select it (ruleSelector); kube-prometheus-stack selects
# `release: <helm release>` by default: add that label in an overlay.
"""


def prometheus_rule_manifest(path: Path = ALERTS) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "stream-detector",
            "labels": {"app.kubernetes.io/name": "stream-detector", "role": "alert-rules"},
        },
        "spec": {"groups": load_alert_groups(path)},
    }


class _BlockDumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_representer)


def prometheus_rule_yaml(path: Path = ALERTS) -> str:
    body = yaml.dump(
        prometheus_rule_manifest(path),
        Dumper=_BlockDumper,
        sort_keys=False,
        width=1000,
        allow_unicode=True,
    )
    return PROMETHEUS_RULE_HEADER + body


def main(argv: list[str]) -> int:
    if argv[:1] == ["prometheusrule"]:
        sys.stdout.write(prometheus_rule_yaml())
        return 0
    if argv[:1] == ["list"]:
        for q in all_queries():
            print(f"# {q.source}: {q.name}\n{q.expr}\n")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
