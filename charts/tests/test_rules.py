"""The chart's alert rules, as rendered, through `promtool`: they load
(`check rules`) and each alert fires on the synthetic series of its
condition and stays quiet otherwise (`test rules`, alerts_test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import MODES, find, render

HERE = Path(__file__).resolve().parent


def rendered_rules() -> dict:
    return find(render(MODES["monitoring-on"]), "PrometheusRule")["spec"]


def alert_names(rules: dict) -> set[str]:
    return {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (scripts/test.sh installs Debian's prometheus)")
    folder = tmp_path_factory.mktemp("rules")
    (folder / "alerts.yaml").write_text(yaml.safe_dump(rendered_rules(), sort_keys=False))
    shutil.copy(HERE / "alerts_test.yaml", folder / "alerts_test.yaml")
    return folder


def promtool(folder: Path, *args: str) -> str:
    done = subprocess.run(["promtool", *args], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_checks_the_rendered_rules(rules_dir):
    output = promtool(rules_dir, "check", "rules", "alerts.yaml")
    assert f"SUCCESS: {len(alert_names(rendered_rules()))} rules found" in output, output


def test_promtool_unit_tests_every_alert(rules_dir):
    promtool(rules_dir, "test", "rules", "alerts_test.yaml")
    tested = {
        case["alertname"]
        for test in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert tested == alert_names(rendered_rules()), "every alert has a firing test"


def test_thresholds_come_from_values():
    spec = find(
        render({"monitoring": {"skipApiCheck": True, "prometheusRule": {"providerErrorRatio": 0.2, "circuitOpenMinutes": 9}}}),
        "PrometheusRule",
    )["spec"]
    rules = {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"]}
    assert rules["LLMeshProviderErrorRatio"]["expr"].rstrip().endswith("> 0.2")
    assert rules["LLMeshCircuitOpen"]["for"] == "9m"
