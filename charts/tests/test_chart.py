"""charts/llmesh through the real Helm engine: lint, every install mode
rendered and validated against Kubernetes' schemas, bad values refused,
and the rendered objects checked against what the operator's code expects."""

from __future__ import annotations

import json
import subprocess

import helm_python
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, KUBE_VERSIONS, MODES, NAMESPACE, REPO, binary, chart_crds, find, render

# Kinds whose schemas are not Kubernetes' own (CRDs of other projects).
FOREIGN_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Issuer", "Certificate"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lint_is_clean_in_every_mode(mode, kube_version):
    report = helm_python.lint(str(CHART), MODES[mode], strict=True, kube_version=f"v{kube_version}")
    assert report["errors"] == [] and report["messages"] == [], report


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_is_valid_kubernetes(mode, kube_version):
    objects = render(MODES[mode])
    crds = [yaml.safe_load(text) for text in chart_crds().values()]
    for obj in [*objects, *crds]:
        if obj["kind"] in FOREIGN_KINDS:
            continue
        kubernetes_validate.validate(obj, kube_version, strict=True)


EXAMPLES = sorted((REPO / "examples" / "helm").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_values_install_cleanly(path):
    values = yaml.safe_load(path.read_text())
    report = helm_python.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSIONS[0]}")
    assert report["errors"] == [] and report["messages"] == [], report
    for obj in render(values):
        if obj["kind"] not in FOREIGN_KINDS:
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)


def test_the_production_example_does_what_it_says():
    values = yaml.safe_load((REPO / "examples" / "helm" / "production.yaml").read_text())
    values["monitoring"]["skipApiCheck"] = True  # as Helm sees a cluster with the Prometheus Operator
    objects = render(values)
    assert find(objects, "Deployment")["spec"]["replicas"] == 3
    assert find(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert find(objects, "Certificate")["spec"]["issuerRef"] == {"name": "cluster-ca", "kind": "ClusterIssuer"}
    for kind in ("PodMonitor", "ServiceMonitor", "PrometheusRule"):
        assert find(objects, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboards = [o for o in objects if o["kind"] == "ConfigMap"]
    assert dashboards and all(d["metadata"]["namespace"] == "monitoring" for d in dashboards)
    assert all(d["metadata"]["annotations"] == {"grafana_folder": "llmesh"} for d in dashboards)


def kinds(values: dict) -> set[str]:
    return {o["kind"] for o in render(values)}


def test_modes_render_what_they_select():
    default = render({})
    assert {"Deployment", "PodDisruptionBudget", "MutatingWebhookConfiguration", "ClusterRole", "Role"} <= {
        o["kind"] for o in default
    }
    # Helm offline knows no monitoring.coreos.com API: the check keeps them out.
    assert not kinds({}) & {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule"} <= kinds(MODES["monitoring-on"])
    assert not kinds(MODES["monitoring-off"]) & {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    assert len([o for o in default if o["kind"] == "ConfigMap"]) == 4
    assert not [o for o in render(MODES["monitoring-off"]) if o["kind"] == "ConfigMap"]

    deployment = find(default, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-leader-election" not in args
    assert deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]

    single = render(MODES["ha-off"])
    assert "PodDisruptionBudget" not in {o["kind"] for o in single}
    assert "--no-leader-election" in find(single, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_cert_manager_mode_hands_the_certificate_to_cert_manager():
    objects = render(MODES["cert-manager"])
    registration = find(objects, "MutatingWebhookConfiguration")
    assert registration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/llmesh-webhook"
    certificate = find(objects, "Certificate")
    assert certificate["spec"]["secretName"] == "llmesh-webhook-tls"
    assert certificate["spec"]["issuerRef"] == {"name": "llmesh-selfsigned", "kind": "Issuer"}
    assert find(objects, "Issuer")["spec"] == {"selfSigned": {}}
    args = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-certs=cert-manager" in args

    own = render(MODES["cert-manager-own-issuer"])
    assert "Issuer" not in {o["kind"] for o in own}
    assert find(own, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


def test_leader_election_off_with_two_replicas_is_refused():
    with pytest.raises(helm_python.errors.HelmError, match="leaderElection: false needs operator.replicas: 1"):
        render({"operator": {"replicas": 2, "leaderElection": False}})


def test_the_chart_crds_are_the_generated_ones():
    generated = {path.name: path.read_text() for path in sorted((REPO / "crds").glob("*.llmesh.io.yaml"))}
    assert generated, "crds/*.llmesh.io.yaml"
    assert chart_crds() == generated, "copy crds/*.llmesh.io.yaml into charts/llmesh/crds/"


BAD_VALUES = {
    "unknown top-level key": ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    "misspelled nested key": ({"operator": {"replica": 3}}, "additional properties 'replica' not allowed"),
    "replicas as a string": ({"operator": {"replicas": "two"}}, "replicas"),
    "negative replicas": ({"operator": {"replicas": -1}}, "minimum"),
    "unknown certificate source": ({"webhook": {"certificates": "vault"}}, "certificates"),
    "webhook timeout above the API server's 30 s": ({"webhook": {"timeoutSeconds": 45}}, "timeoutSeconds"),
    "leader election as a string": ({"operator": {"leaderElection": "yes"}}, "leaderElection"),
    "bad scrape interval": ({"monitoring": {"podMonitor": {"interval": "often"}}}, "interval"),
    "error ratio above 1": ({"monitoring": {"prometheusRule": {"providerErrorRatio": 5}}}, "providerErrorRatio"),
    "dashboard label not a string": ({"grafana": {"dashboards": {"label": 1}}}, "label"),
    "memory not a quantity": ({"operator": {"resources": {"limits": {"memory": "lots"}}}}, "memory"),
    "watched namespaces as a string": ({"operator": {"watchNamespaces": "team-a"}}, "watchNamespaces"),
    "watched namespace not a DNS label": ({"operator": {"watchNamespaces": ["Team_A"]}}, "watchNamespaces"),
    "trace protocol the sidecar cannot export": ({"sidecar": {"otelProtocol": "http/json"}}, "otelProtocol"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_values_schema_refuses_bad_values_with_a_clear_message(case):
    values, message = BAD_VALUES[case]
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.errors.HelmError) as refused:
        chart.validate_schema(values)
    assert message in str(refused.value), str(refused.value)
    # `helm install` and lint refuse the same file.
    report = helm_python.lint(str(CHART), values, strict=True)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report


def test_every_value_has_a_comment():
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        previous = lines[number - 1].strip()
        assert previous.startswith("#"), f"values.yaml:{number + 1} `{stripped}` has no comment above it"


# What the operator expects of its deployment, as its code states it.


def operator_contract(args: list[str]) -> dict:
    output = subprocess.run([binary("llmesh-operator"), *args, "--contract"], check=True, capture_output=True, text=True)
    return json.loads(output.stdout)


@pytest.mark.parametrize("mode", ["default", "cert-manager"])
def test_rendered_objects_agree_with_the_operator(mode):
    objects = render(MODES[mode])
    deployment = find(objects, "Deployment", "llmesh-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    contract = operator_contract(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == contract["adminPort"]
    assert ports["webhook"] == contract["webhook"]["port"]

    webhook = contract["webhook"]
    registration = find(objects, "MutatingWebhookConfiguration")
    assert registration["metadata"]["name"] == webhook["configuration"]
    [hook] = registration["webhooks"]
    assert hook["name"] == webhook["name"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None" and hook["admissionReviewVersions"] == ["v1"]
    assert hook["timeoutSeconds"] <= 5
    [rule] = hook["rules"]
    assert (rule["operations"], rule["resources"]) == (["CREATE"], ["pods"])
    service_ref = hook["clientConfig"]["service"]
    assert service_ref["path"] == webhook["path"]
    assert (service_ref["name"], service_ref["namespace"]) == (webhook["service"], NAMESPACE)
    service = find(objects, "Service", webhook["service"])
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == service_ref["port"] and service_port["targetPort"] == "webhook"
    excluded = next(
        e["values"] for e in hook["namespaceSelector"]["matchExpressions"] if e["key"] == "kubernetes.io/metadata.name"
    )
    assert {"kube-system", "kube-public", NAMESPACE} <= set(excluded)
    if mode == "cert-manager":
        assert find(objects, "Certificate")["spec"]["secretName"] == webhook["secret"]
        assert f"{webhook['service']}.{NAMESPACE}.svc" in find(objects, "Certificate")["spec"]["dnsNames"]

    # Every variable the chart sets is one the operator reads.
    env = {e["name"] for e in container["env"]}
    assert env <= set(contract["env"]), env - set(contract["env"])
    assert {"POD_NAME", "POD_NAMESPACE", "LLMESH_SIDECAR_IMAGE"} <= env

    selector = deployment["spec"]["selector"]["matchLabels"]
    for name in ("llmesh-webhook", "llmesh-operator-metrics"):
        assert find(objects, "Service", name)["spec"]["selector"] == selector
    # The sync Service reaches the leader only: the pod label the leader sets on itself.
    sync = contract["sync"]
    assert find(objects, "Service", sync["service"])["spec"]["selector"] == {**selector, sync["leaderLabel"]: "true"}
    if mode == "cert-manager":
        assert f"{sync['service']}.{NAMESPACE}.svc" in find(objects, "Certificate")["spec"]["dnsNames"]


def test_the_trace_collector_and_protocol_reach_the_operator_as_variables_it_reads():
    values = {"sidecar": {"otelEndpoint": "http://otel-collector.observability:4317", "otelProtocol": "grpc"}}
    deployment = find(render(values), "Deployment", "llmesh-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMESH_SIDECAR_OTEL_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["LLMESH_SIDECAR_OTEL_PROTOCOL"] == "grpc"
    assert {"LLMESH_SIDECAR_OTEL_ENDPOINT", "LLMESH_SIDECAR_OTEL_PROTOCOL"} <= set(operator_contract(container["args"])["env"])


def test_the_sync_service_is_the_one_the_design_names():
    objects = render({})
    sync = find(objects, "Service", "llmesh-sync")
    [port] = sync["spec"]["ports"]
    assert port["port"] == 9444 == operator_contract([])["sync"]["port"] and port["targetPort"] == "sync"
    container = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "sync", "containerPort": 9444} in container["ports"]


def granted(rules: list[dict]) -> set[tuple]:
    """(group, resource, verb, name or '*') for every right the rules give."""
    return {
        (group, resource, verb, name)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or ["*"]
    }


def needed(rules: list[dict], scopes: set[str]) -> set[tuple]:
    return granted(
        [
            {"apiGroups": [r["apiGroup"]], "resources": r["resources"], "verbs": r["verbs"], "resourceNames": r["resourceNames"]}
            for r in rules
            if r["scope"] in scopes
        ]
    )


def test_rbac_is_exactly_what_the_operator_calls_need():
    objects = render({})
    rules = operator_contract([])["rbac"]
    cluster_role = find(objects, "ClusterRole", "llmesh-operator")
    assert granted(cluster_role["rules"]) == needed(rules, {"cluster", "watched"})
    own = find(objects, "Role", "llmesh-operator")
    assert own["metadata"]["namespace"] == NAMESPACE
    assert granted(own["rules"]) == needed(rules, {"own"})
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = find(objects, binding_kind, "llmesh-operator")
        assert binding["roleRef"]["kind"] == role_kind
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llmesh-operator", "namespace": NAMESPACE}]
    assert find(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "llmesh-operator"


def test_a_namespace_limited_operator_has_rights_only_in_its_namespaces():
    watched = MODES["namespace-limited"]["operator"]["watchNamespaces"]
    objects = render(MODES["namespace-limited"])
    rules = operator_contract([])["rbac"]
    cluster_role = find(objects, "ClusterRole", "llmesh-operator")
    assert granted(cluster_role["rules"]) == needed(rules, {"cluster"})
    assert not any("secrets" in rule["resources"] for rule in cluster_role["rules"]), "no cluster-wide Secret rights"
    roles = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "llmesh-operator-watched"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    for role in roles:
        assert granted(role["rules"]) == needed(rules, {"watched"})
    bindings = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "llmesh-operator-watched"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)

    container = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMESH_WATCH_NAMESPACES"] == ",".join(watched)
    assert "LLMESH_WATCH_NAMESPACES" in operator_contract(container["args"])["env"]
    [hook] = find(objects, "MutatingWebhookConfiguration")["webhooks"]
    selected = [e for e in hook["namespaceSelector"]["matchExpressions"] if e["operator"] == "In"]
    assert selected == [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": watched}]
