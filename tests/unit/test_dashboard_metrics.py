"""The dashboard and the alert rules ask only for series the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from consumer.metrics import Metrics
from consumer.processes.front import GroupMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "itep-webhooks.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def exported_series() -> set[str]:
    """Every series name the service's registry can expose, children or not, and those the
    supervisor of ``run --processes N`` adds."""
    return {
        family.name + suffix
        for registry in (Metrics().registry, GroupMetrics().registry)
        for family in registry.collect()
        for suffix in SUFFIXES[family.type]
    }


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana's variables left in)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w$.])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function
        if match.group().lower() not in KEYWORDS:
            names.add(match.group())
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query" and isinstance(query, dict):
            # label_values(metric, label): the label is not a metric
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query["query"]))
    return exprs


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels, those folded in rows included."""
    return [p for panel in panels for p in (panel, *_panels(panel.get("panels", [])))]


def alert_expressions() -> dict[str, str]:
    """Alert name -> expression, read from alerts.yml (a block scalar or one line)."""
    found = {}
    for rule in re.split(r"^\s*- alert: ", ALERTS.read_text(), flags=re.MULTILINE)[1:]:
        name, _, body = rule.partition("\n")
        match = re.search(r"^( *)expr: *(.*)$", body, flags=re.MULTILINE)
        assert match, f"{name}: no expr"
        indent, value = match.groups()
        if value.strip() in {"|", ">", "|-", ">-"}:
            lines = body[match.end() + 1 :].splitlines()
            kept = []
            for line in lines:
                if line.strip() and len(line) - len(line.lstrip()) <= len(indent):
                    break
                kept.append(line)
            value = "\n".join(kept)
        found[name.strip()] = value
    return found


def test_the_name_finder_reads_selectors_not_functions_labels_or_keywords() -> None:
    expr = (
        'sum by (le, instance) (rate(a_bucket{result=~"retry|failed",x="y z"}[$__rate_interval]))'
        " / on (instance) group_left b_total > 0.5 and c offset 5m or up == bool 1"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "up"}


def test_the_service_exports_counter_and_histogram_series_under_their_full_names() -> None:
    series = exported_series()
    assert {"itep_webhook_outcomes_total", "itep_webhook_latency_seconds_bucket"} <= series
    assert {"itep_consumer_lag", "itep_consumer_commit_age_seconds", "itep_ready"} <= series


def test_every_alert_has_an_expression() -> None:
    assert set(alert_expressions()) == {
        "ItepLagGrowing",
        "ItepPartitionStalled",
        "ItepNotReady",
        "ItepTrackingCodeFailureRatioHigh",
        "ItepBreakerOpen",
        "ItepRetryOverdue",
        "ItepDeadDeliveries",
    }


@pytest.mark.parametrize(("name", "expr"), sorted(alert_expressions().items()))
def test_alerts_use_only_exported_metrics(name: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{name} selects no metric"
    assert names <= exported_series() | PROMETHEUS_SERIES


def test_dashboard_queries_use_only_exported_metrics() -> None:
    exprs = dashboard_expressions()
    assert len(exprs) > 15
    unknown = {n for e in exprs for n in metric_names(e)} - exported_series() - PROMETHEUS_SERIES
    assert unknown == set()


def test_the_dashboard_shows_what_the_on_call_needs() -> None:
    used = {n for e in dashboard_expressions() for n in metric_names(e)}
    assert {
        "itep_webhook_outcomes_total",
        "itep_webhook_latency_seconds_bucket",
        "itep_consumer_lag",
        "itep_consumer_commit_age_seconds",
        "itep_events_in_flight",
        "itep_partitions_paused",
        "itep_partitions_held",
        "itep_breaker_state",
        "itep_scheduled_deliveries",
        "itep_schedule_oldest_overdue_seconds",
    } <= used


def test_every_dashboard_query_reads_the_chosen_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "instance" in variables
    for panel in _panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert '$instance"' in target["expr"], f"{panel['title']} ignores $instance"
