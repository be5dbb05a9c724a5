#!/usr/bin/env python3
"""Writes the Grafana dashboards under charts/llmesh/dashboards/.

    python3 charts/dashboards.py        # regenerate after changing a panel

One description per panel, one layout, one datasource and set of template
variables for all four dashboards, so they cannot drift apart. The JSON is
committed (Grafana users import it by hand; the chart ships it as
ConfigMaps); charts/tests checks that it matches this file, validates it
against Grafana's dashboard types, and runs every query against a real
Prometheus scraping real llmesh processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "llmesh" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Sidecar series filtered by the template variables. The workload's
# namespace is Prometheus' own `namespace` target label (the PodMonitor adds
# it); `workload_name` comes from the sidecar (the pod's owner).
POD = 'namespace=~"$namespace", workload_name=~"$workload"'
ROUTE = POD + ', route=~"$route"'
TEAM = ROUTE + ', team=~"$team"'
RATE = "[$__rate_interval]"


@dataclass
class Panel:
    title: str
    description: str
    # (PromQL, legend) pairs.
    queries: list[tuple[str, str]]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    extra: dict = field(default_factory=dict)


def per_hour(expr: str) -> str:
    return f"{expr} * 3600"


def quantiles(metric: str, by: str, selector: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}{RATE})))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def variables() -> list[dict]:
    def query_variable(name: str, label: str, query: str) -> dict:
        definition = f"label_values({query}, {label})"
        return {
            "type": "query",
            "name": name,
            "label": name.capitalize(),
            "datasource": DATASOURCE,
            "query": {"qryType": 1, "query": definition, "refId": f"PrometheusVariableQueryEditor-{name}"},
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Prometheus",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
        },
        query_variable("namespace", "namespace", "llmesh_requests_total"),
        query_variable("workload", "workload_name", 'llmesh_requests_total{namespace=~"$namespace"}'),
        query_variable("route", "route", 'llmesh_requests_total{namespace=~"$namespace", workload_name=~"$workload"}'),
        query_variable("team", "team", 'llmesh_requests_total{namespace=~"$namespace", workload_name=~"$workload"}'),
    ]


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict:
    laid_out = []
    x = y = 0
    for number, panel in enumerate(panels, start=1):
        height = 5 if panel.kind == "stat" else 8
        if x + panel.width > 24:
            x, y = 0, y + 8
        grafana_panel = {
            "id": number,
            "type": panel.kind,
            "title": panel.title,
            "description": panel.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": height, "w": panel.width, "x": x, "y": y},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                for i, (expr, legend) in enumerate(panel.queries)
            ],
            "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
            **panel.extra,
        }
        laid_out.append(grafana_panel)
        x += panel.width
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["llmesh"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "timezone": "browser",
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "links": [
            {"title": "llmesh", "type": "dashboards", "tags": ["llmesh"], "asDropdown": True, "includeVars": True,
             "keepTime": True}
        ],
        "panels": laid_out,
    }


COST = dashboard(
    "llmesh-cost",
    "llmesh / Cost and tokens",
    "What LLM calls cost, by team, feature, virtual key, route, provider and model, and what the cache saved.",
    [
        Panel("Spend in range by team", "USD over the dashboard's time range.",
              [(f"sum by (team) (increase(llmesh_cost_usd_total{{{TEAM}}}[$__range]))", "{{team}}")],
              unit="currencyUSD", kind="stat", width=8),
        Panel("Cache savings in range", "USD the cache's hits would have cost, over the time range.",
              [(f"sum(increase(llmesh_cache_saved_usd_total{{{ROUTE}}}[$__range]))", "saved")],
              unit="currencyUSD", kind="stat", width=8),
        Panel("Cache hit ratio", "Hits (exact and semantic) per request on caching routes.",
              [(f'sum(rate(llmesh_cache_requests_total{{{ROUTE}, result=~"hit|semantic-hit"}}{RATE}))'
                f" / sum(rate(llmesh_cache_requests_total{{{ROUTE}}}{RATE}))", "hit ratio")],
              unit="percentunit", kind="stat", width=8),
        Panel("Cost per hour by team", "USD per hour at the current rate.",
              [(per_hour(f"sum by (team) (rate(llmesh_cost_usd_total{{{TEAM}}}{RATE}))"), "{{team}}")],
              unit="currencyUSD"),
        Panel("Cost per hour by feature", "USD per hour, by the virtual key's feature label.",
              [(per_hour(f"sum by (team, feature) (rate(llmesh_cost_usd_total{{{TEAM}}}{RATE}))"),
                "{{team}} / {{feature}}")],
              unit="currencyUSD"),
        Panel("Cost per hour by virtual key", "USD per hour by VirtualKey name (never the key).",
              [(per_hour(f"sum by (virtual_key) (rate(llmesh_cost_usd_total{{{TEAM}}}{RATE}))"),
                "{{virtual_key}}")],
              unit="currencyUSD"),
        Panel("Cost per hour by route", "USD per hour by the model alias apps ask for.",
              [(per_hour(f"sum by (route) (rate(llmesh_cost_usd_total{{{TEAM}}}{RATE}))"), "{{route}}")],
              unit="currencyUSD"),
        Panel("Cost per hour by provider and model", "USD per hour by upstream provider kind and model.",
              [(per_hour(f"sum by (provider, model) (rate(llmesh_cost_usd_total{{{TEAM}}}{RATE}))"),
                "{{provider}} {{model}}")],
              unit="currencyUSD"),
        Panel("Tokens per minute by team", "Input and output tokens as providers reported them.",
              [(f"sum by (team, gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{{{TEAM}}}{RATE})) * 60",
                "{{team}} {{gen_ai_token_type}}")]),
        Panel("Tokens per minute by provider and model", "Input and output tokens by upstream.",
              [(f"sum by (gen_ai_provider_name, gen_ai_request_model, gen_ai_token_type) "
                f"(rate(gen_ai_client_token_usage_sum{{{TEAM}}}{RATE})) * 60",
                "{{gen_ai_provider_name}} {{gen_ai_request_model}} {{gen_ai_token_type}}")]),
        Panel("Cache savings per hour by route", "USD per hour the cache's hits would have cost.",
              [(per_hour(f"sum by (route) (rate(llmesh_cache_saved_usd_total{{{ROUTE}}}{RATE}))"), "{{route}}")],
              unit="currencyUSD"),
        Panel("Tokens saved per minute by route", "Tokens the cache's hits did not spend.",
              [(f"sum by (route, gen_ai_token_type) (rate(llmesh_cache_saved_tokens_total{{{ROUTE}}}{RATE})) * 60",
                "{{route}} {{gen_ai_token_type}}")]),
    ],
)

RELIABILITY = dashboard(
    "llmesh-reliability",
    "llmesh / Reliability",
    "Requests, errors, upstream failures, retries, fallbacks, breakers, latency and time to first token.",
    [
        Panel("Requests per second by route and status", "Answers by HTTP status, refusals included.",
              [(f"sum by (route, status) (rate(llmesh_requests_total{{{TEAM}}}{RATE}))", "{{route}} {{status}}")],
              unit="reqps"),
        Panel("Error ratio by route", "Answers that were not 2xx, per answer.",
              [(f'sum by (route) (rate(llmesh_requests_total{{{TEAM}, status!~"2.."}}{RATE}))'
                f" / sum by (route) (rate(llmesh_requests_total{{{TEAM}}}{RATE}))", "{{route}}")],
              unit="percentunit"),
        Panel("Upstream errors by provider and class", "Failed upstream attempts (retried or not).",
              [(f"sum by (provider, class) (rate(llmesh_upstream_errors_total{{{POD}}}{RATE}))",
                "{{provider}} {{class}}")],
              unit="reqps"),
        Panel("Retries per second", "Attempts retried on the same target.",
              [(f"sum by (route, provider) (rate(llmesh_retries_total{{{ROUTE}}}{RATE}))", "{{route}} {{provider}}")],
              unit="reqps"),
        Panel("Fallbacks by step", "Requests that reached fallback step N (1 = the first fallbacks[] entry).",
              [(f"sum by (route, step) (rate(llmesh_fallbacks_total{{{ROUTE}}}{RATE}))", "{{route}} step {{step}}")],
              unit="reqps"),
        Panel("Circuit breakers", "Worst state per target across pods: 0 closed, 1 half-open, 2 open.",
              [(f"max by (provider, model) (llmesh_circuit_state{{{POD}}})", "{{provider}} {{model}}")],
              extra={"options": {"legend": {"displayMode": "table", "placement": "right", "showLegend": True}}}),
        Panel("Request duration by route", "From arrival to the last byte.",
              quantiles("gen_ai_server_request_duration", "route", ROUTE), unit="s"),
        Panel("Time to first token by route", "Streaming requests: from arrival to the first chunk.",
              quantiles("gen_ai_server_time_to_first_token", "route", ROUTE), unit="s"),
        Panel("Request duration by provider and model", "p95 per upstream.",
              [(f"histogram_quantile(0.95, sum by (le, gen_ai_provider_name, gen_ai_request_model) "
                f"(rate(gen_ai_server_request_duration_bucket{{{ROUTE}}}{RATE})))",
                "{{gen_ai_provider_name}} {{gen_ai_request_model}}")],
              unit="s"),
        Panel("Failed requests by error type", "Requests that ended in a failure class (streams included).",
              [(f'sum by (route, error_type) (rate(gen_ai_server_request_duration_count{{{ROUTE}, error_type!=""}}{RATE}))',
                "{{route}} {{error_type}}")],
              unit="reqps"),
    ],
)

BUDGETS = dashboard(
    "llmesh-budgets",
    "llmesh / Budgets",
    "Spend against each budget's limit, burn rate, projected exhaustion, and requests refused by limits.",
    [
        Panel("Spend against limit", "USD spent this period (all pods) and the limit.",
              [(f"sum by (budget) (llmesh_budget_spent_usd{{{POD}}})", "{{budget}} spent"),
               (f"max by (budget) (llmesh_budget_limit_usd{{{POD}}})", "{{budget}} limit")],
              unit="currencyUSD"),
        Panel("Budget used", "Spend per limit.",
              [(f"sum by (budget) (llmesh_budget_spent_usd{{{POD}}}) / max by (budget) (llmesh_budget_limit_usd{{{POD}}})",
                "{{budget}}")],
              unit="percentunit", kind="stat"),
        Panel("Burn rate", "USD per hour over the last hour.",
              [(f"sum by (budget) (deriv(llmesh_budget_spent_usd{{{POD}}}[1h])) * 3600", "{{budget}}")],
              unit="currencyUSD"),
        Panel("Projected exhaustion", "Time until the budget runs out at the last hour's rate "
              "(compare with the period's end).",
              [(f"(max by (budget) (llmesh_budget_limit_usd{{{POD}}}) - sum by (budget) (llmesh_budget_spent_usd{{{POD}}}))"
                f" / sum by (budget) (clamp_min(deriv(llmesh_budget_spent_usd{{{POD}}}[1h]), 1e-12))",
                "{{budget}} runs out in"),
               (f"max by (budget) (llmesh_budget_period_end_seconds{{{POD}}}) - time()", "{{budget}} period ends in")],
              unit="s"),
        Panel("Budget exhausted", "Requests that found their budget exhausted, by action.",
              [(f"sum by (budget, action) (rate(llmesh_budget_exceeded_total{{{POD}}}{RATE}))",
                "{{budget}} {{action}}")],
              unit="reqps"),
        Panel("Thresholds crossed", "Budget thresholds crossed in the time range.",
              [(f"sum by (budget, threshold) (increase(llmesh_budget_threshold_crossed_total{{{POD}}}[$__range]))",
                "{{budget}} {{threshold}}%")],
              kind="stat"),
        Panel("Rate-limit rejections", "Requests refused by a virtual key's requests or tokens per minute.",
              [(f"sum by (virtual_key, limit) (rate(llmesh_rate_limited_total{{{POD}}}{RATE}))",
                "{{virtual_key}} {{limit}}")],
              unit="reqps"),
        Panel("Token ceiling rejections", "Requests refused by a budget's per-request or per-session ceiling.",
              [(f"sum by (budget, ceiling) (rate(llmesh_token_ceiling_rejections_total{{{POD}}}{RATE}))",
                "{{budget}} {{ceiling}}")],
              unit="reqps"),
    ],
)

OPERATOR = dashboard(
    "llmesh-operator",
    "llmesh / Operator and injection",
    "Reconciles, leadership, the webhook's admissions and latency, missed pods, and configuration versions in force.",
    [
        Panel("Leader", "1 for the replica holding the Lease; exactly one should.",
              [("sum(llmesh_operator_leader)", "leaders")], kind="stat", width=6),
        Panel("Pods missing the sidecar", "Running pods that asked for the sidecar and do not have it.",
              [("max(llmesh_operator_pods_missing_sidecar)", "missing")], kind="stat", width=6),
        Panel("Pods with an older sidecar", "Injected pods whose sidecar template or image is older than the operator's.",
              [("max(llmesh_operator_pods_stale_sidecar)", "stale")], kind="stat", width=6),
        Panel("Sidecars out of sync", "Sidecars on an older configuration than the operator's (sync channel).",
              [("sum(llmesh_sync_stale_sidecars)", "out of sync")], kind="stat", width=6),
        Panel("Reconciles by result", "Namespace reconciles per second.",
              [(f"sum by (result) (rate(llmesh_operator_reconciles_total{RATE}))", "{{result}}")], unit="ops"),
        Panel("Reconcile errors by reason", "Failed reconciles per second.",
              [(f"sum by (reason) (rate(llmesh_operator_reconcile_errors_total{RATE}))", "{{reason}}")], unit="ops"),
        Panel("Reconcile duration", "Time to reconcile one namespace.",
              [(f"histogram_quantile({q}, sum by (le) (rate(llmesh_operator_reconcile_duration_seconds_bucket{RATE})))",
                f"p{int(q * 100)}") for q in (0.5, 0.99)],
              unit="s"),
        Panel("Resources by kind", "llmesh resources, Ready or not.",
              [("sum by (kind, ready) (llmesh_operator_resources)", "{{kind}} ready={{ready}}"),
               ("max(llmesh_operator_queue_depth)", "namespaces waiting")]),
        Panel("Admissions by result", "Pod admission reviews: injected, or why not.",
              [(f"sum by (result) (rate(llmesh_operator_admissions_total{RATE}))", "{{result}}")], unit="reqps"),
        Panel("Webhook latency", "Time to answer one admission review.",
              [(f"histogram_quantile({q}, sum by (le) (rate(llmesh_operator_admission_duration_seconds_bucket{RATE})))",
                f"p{int(q * 100)}") for q in (0.5, 0.99)],
              unit="s"),
        Panel("Missed pods and restarts", "Pods found without the sidecar, and workload restarts made for them.",
              [("sum(increase(llmesh_operator_missed_pods_total[$__range]))", "missed"),
               ("sum(increase(llmesh_operator_missed_pod_restarts_total[$__range]))", "restarts"),
               ("sum(increase(llmesh_operator_webhook_certificate_errors_total[$__range]))", "certificate errors")],
              kind="stat"),
        Panel("Configuration versions in force", "Sidecars per configuration version.",
              [(f"count by (namespace, version) (llmesh_config_info{{{POD}}})", "{{namespace}} {{version}}")]),
        Panel("Configuration loads", "Sidecar configuration loads by result (rejected: the last good one kept serving).",
              [(f"sum by (result) (increase(llmesh_config_reloads_total{{{POD}}}[$__range]))", "{{result}}")],
              kind="stat"),
    ],
)

DASHBOARDS = {"cost": COST, "reliability": RELIABILITY, "budgets": BUDGETS, "operator": OPERATOR}


def rendered() -> dict[str, str]:
    """File name -> JSON text, as committed."""
    return {f"llmesh-{name}.json": json.dumps(board, indent=2) + "\n" for name, board in DASHBOARDS.items()}


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (OUT / name).write_text(text)
        print(OUT / name)
