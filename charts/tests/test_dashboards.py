"""The Grafana dashboards: generated from charts/dashboards.py, valid for
Grafana's dashboard types (grafana-foundation-sdk), every panel on the
templated Prometheus datasource, and shipped as sidecar ConfigMaps."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel

from conftest import CHART, REPO, render

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
TEMPLATED = {"type": "prometheus", "uid": "${datasource}"}

register_default_plugins()


def load(path) -> dict:
    return json.loads(path.read_text())


def dropped(original, round_tripped, path: str = "") -> list[str]:
    """Where `original` has something the SDK's types did not keep: a key
    Grafana's schema does not know, or a value it changed."""
    if isinstance(original, dict):
        if not isinstance(round_tripped, dict):
            return [path]
        return [
            problem
            for key, value in original.items()
            for problem in (
                dropped(value, round_tripped[key], f"{path}/{key}") if key in round_tripped else [f"{path}/{key}"]
            )
        ]
    if isinstance(original, list):
        if not isinstance(round_tripped, list) or len(original) != len(round_tripped):
            return [path]
        return [p for i, (a, b) in enumerate(zip(original, round_tripped)) for p in dropped(a, b, f"{path}[{i}]")]
    return [] if original == round_tripped else [f"{path}: {original!r} became {round_tripped!r}"]


def test_the_committed_json_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("dashboards", REPO / "charts" / "dashboards.py")
    generator = importlib.util.module_from_spec(spec)
    sys.modules["dashboards"] = generator
    spec.loader.exec_module(generator)
    assert {p.name: p.read_text() for p in DASHBOARDS} == generator.rendered(), "run python3 charts/dashboards.py"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_matches_grafanas_schema(path):
    original = load(path)
    model = Dashboard.from_json(original)
    round_tripped = json.loads(json.dumps(model, cls=JSONEncoder))
    assert dropped(original, round_tripped) == []
    assert model.panels, "panels"
    for panel in model.panels:
        assert isinstance(panel, Panel)
        assert panel.targets, panel.title
        for target in panel.targets:
            assert isinstance(target, prometheus.Dataquery), (panel.title, type(target))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_uses_the_templated_prometheus(path):
    board = load(path)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "workload", "route", "team"} <= variables.keys()
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == TEMPLATED, variable["name"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"] == TEMPLATED, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == TEMPLATED, panel["title"]


def test_the_chart_ships_each_dashboard_as_a_labelled_configmap():
    values = {"grafana": {"dashboards": {"label": "my_dashboards", "labelValue": "yes", "namespace": "monitoring"}}}
    maps = [o for o in render(values) if o["kind"] == "ConfigMap"]
    assert {name for m in maps for name in m["data"]} == {p.name for p in DASHBOARDS}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["my_dashboards"] == "yes"
        assert config_map["metadata"]["namespace"] == "monitoring"
        [(name, text)] = config_map["data"].items()
        assert json.loads(text) == load(CHART / "dashboards" / name)
