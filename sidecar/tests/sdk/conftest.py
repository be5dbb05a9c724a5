"""Runs the real sidecar and mock upstreams for the OpenAI SDK tests.

One session starts `mock-upstream` (every provider mock on one port) and
`llmesh-sidecar` in standalone mode, with manifests generated from the
`PROVIDERS` table: one ProviderSecret, Secret and set of LLMRoutes per
provider. Tests are parametrized over that table, so a new provider is one
entry there.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import anthropic
import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[3]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
BINARIES = TARGET_DIR / "debug"

# Long enough for a debug build on a busy 2-core machine, short enough that a
# hang in the sidecar fails the test instead of the whole run.
CLIENT_TIMEOUT_SECONDS = 30
# The first-token limit of the routes fault tests use: a hanging upstream
# must turn into a 504 after this, not after the client gives up.
STRICT_FIRST_TOKEN = "1s"
STARTUP_SECONDS = 30
# The sidecar's body limit in this session: small, so the 413 test need not
# send the 20 MiB default.
MAX_BODY_BYTES = 256 * 1024


def expect_bearer(secret: str, path_prefix: str) -> Callable[[dict, str], None]:
    """Checks an OpenAI-style upstream call: `{prefix}/{operation}` and a bearer key."""

    def check(call: dict, operation: str) -> None:
        assert call["path"] == f"{path_prefix}/{operation}", call["path"]
        assert call["headers"].get("authorization") == f"Bearer {secret}"

    return check


def expect_azure(secret: str, deployments: dict[str, str], api_version: str) -> Callable[[dict, str], None]:
    """Checks an Azure call: deployment path, `api-version`, `api-key` header."""

    def check(call: dict, operation: str) -> None:
        deployment = deployments.get(call["body"]["model"], call["body"]["model"])
        expected = f"/openai/deployments/{deployment}/{operation}?api-version={api_version}"
        assert call["path"] == expected, call["path"]
        assert call["headers"].get("api-key") == secret
        assert "authorization" not in call["headers"], "Azure takes the key as api-key only"

    return check


# The test credentials and region mock-upstream's Bedrock mock verifies
# SigV4 signatures against (test-support/src/bedrock.rs).
BEDROCK_REGION = "eu-central-1"
BEDROCK_CREDENTIALS = {
    "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
    "secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
}


@dataclass(frozen=True)
class Provider:
    """One provider under test: its ProviderSecret, credential, models and mock."""

    kind: str
    """`spec.provider`; also the ProviderSecret's name and the `x-llmesh-provider` value."""
    spec: Callable[[str], dict]
    """The ProviderSecret spec (without `provider` and `secretRef`), given the mock-upstream URL."""
    secret: dict[str, str]
    """The Secret's `stringData` (default key names); empty for no credential."""
    model: str
    """The upstream chat model its routes target."""
    embedding_model: str | None
    """The upstream embeddings model, or None if the provider has no embeddings."""
    mock: str | None = None
    """Its name under mock-upstream's `/_mock/{name}/`; None for the in-process `mock` provider."""
    expect_call: Callable[[dict, str], None] | None = None
    """Asserts provider-specific details of a recorded upstream call (path, credential)."""
    known_bugs: dict[str, str] = field(default_factory=dict)
    """Test function name -> the open bug that fails it; the test is a strict xfail until fixed."""
    sends_retry_after: bool = True
    """Whether the provider's 429 names a wait (Bedrock's throttling does not)."""
    openai_wire: bool = True
    """Whether the upstream speaks OpenAI's format, so recorded bodies can be compared with the request."""

    @property
    def inspectable(self) -> bool:
        """Whether tests can compare the recorded upstream body with the app's request."""
        return self.mock is not None and self.openai_wire


_AZURE_DEPLOYMENTS = {"gpt-4o": "prod-gpt-4o"}

PROVIDERS: dict[str, Provider] = {
    p.kind: p
    for p in [
        Provider(
            kind="openai",
            spec=lambda mock: {"baseUrl": f"{mock}/openai/v1"},
            secret={"apiKey": "sk-test-openai"},
            model="gpt-4o-mini",
            embedding_model="text-embedding-3-small",
            mock="openai",
            expect_call=expect_bearer("sk-test-openai", "/v1"),
        ),
        Provider(
            kind="azure-openai",
            spec=lambda mock: {
                "baseUrl": f"{mock}/azure",
                "azure": {"apiVersion": "2024-10-21", "deployments": _AZURE_DEPLOYMENTS},
            },
            secret={"apiKey": "azure-test-key"},
            model="gpt-4o",
            embedding_model="text-embedding-3-large",
            mock="azure",
            expect_call=expect_azure("azure-test-key", _AZURE_DEPLOYMENTS, "2024-10-21"),
        ),
        # A vLLM-style server: OpenAI's paths under its own base URL. It shares
        # mock-upstream's OpenAI mock (tests run one at a time).
        Provider(
            kind="openai-compatible",
            spec=lambda mock: {"baseUrl": f"{mock}/openai/v1"},
            secret={"apiKey": "compatible-test-key"},
            model="meta-llama/Llama-3.1-8B-Instruct",
            embedding_model="BAAI/bge-small-en-v1.5",
            mock="openai",
            expect_call=expect_bearer("compatible-test-key", "/v1"),
        ),
        # Other wire formats: the adapters translate; Rust tests check the translation.
        Provider(
            kind="anthropic",
            spec=lambda mock: {"baseUrl": f"{mock}/anthropic"},
            secret={"apiKey": "sk-ant-test"},
            model="claude-sonnet-4-5",
            embedding_model=None,
            mock="anthropic",
            openai_wire=False,
        ),
        Provider(
            kind="gemini",
            spec=lambda mock: {"baseUrl": f"{mock}/gemini"},
            secret={"apiKey": "gemini-test-key"},
            model="gemini-2.5-flash",
            embedding_model="text-embedding-004",
            mock="gemini",
            openai_wire=False,
        ),
        Provider(
            kind="bedrock",
            spec=lambda mock: {"baseUrl": f"{mock}/bedrock", "region": BEDROCK_REGION},
            secret=BEDROCK_CREDENTIALS,
            model="us.amazon.nova-lite-v1:0",
            embedding_model="amazon.titan-embed-text-v2:0",
            mock="bedrock",
            openai_wire=False,
            sends_retry_after=False,
        ),
        Provider(
            kind="mock",
            spec=lambda mock: {"mock": {}},
            secret={},
            model="mock-large",
            embedding_model="mock-embedding",
        ),
    ]
}


@dataclass(frozen=True)
class Fault:
    """One upstream failure, as mock-upstream scripts it and as the in-process mock is configured."""

    script: Any
    """A mock-upstream behavior (`POST /_mock/{provider}/script`)."""
    mock_setting: dict
    """The same failure as a `spec.mock.faults` entry of a `mock` ProviderSecret."""


FAULTS: dict[str, Fault] = {
    "server-error": Fault({"status": 500}, {"kind": "status", "status": 500}),
    "rate-limit": Fault({"rate-limit": 2}, {"kind": "rate-limit", "retryAfterSeconds": 2}),
    "hang": Fault("hang", {"kind": "hang"}),
    "cut-stream": Fault({"cut-stream": 2}, {"kind": "truncate", "afterChunks": 2}),
}


def route_alias(provider: Provider) -> str:
    """The everyday route of a provider."""
    return f"{provider.kind}-route"


def embeddings_alias(provider: Provider) -> str:
    """The embeddings route of a provider."""
    return f"{provider.kind}-embed-route"


def strict_alias(provider: Provider) -> str:
    """The route with a short first-token limit, where scripted faults are tested."""
    return f"{provider.kind}-strict-route"


def fault_alias(provider: Provider, fault: str) -> str:
    """The route a fault test calls. Scripted mocks fail on demand behind the
    strict route; the in-process mock needs one ProviderSecret per fault."""
    if provider.mock is None:
        return f"{provider.kind}-{fault}-route"
    return strict_alias(provider)


def _document(api_version: str, kind: str, name: str, **body: Any) -> dict:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **body}


def _provider_secret(name: str, spec: dict) -> dict:
    return _document("llmesh.io/v1alpha1", "ProviderSecret", name, spec=spec)


def _route(alias: str, provider_name: str, model: str, timeouts: dict | None = None) -> dict:
    spec: dict[str, Any] = {"targets": [{"provider": provider_name, "model": model}]}
    if timeouts:
        spec["timeouts"] = timeouts
        # Fault routes fail on purpose, many times in a row: their failures
        # must not open the breaker the everyday route shares.
        spec["circuitBreaker"] = {"enabled": False}
    return _document("llmesh.io/v1alpha1", "LLMRoute", alias, spec=spec)


# The caching route: OpenAI's mock behind an exact cache, so tests can
# count which requests reached the upstream.
CACHED_ALIAS = "openai-cached-route"
# The semantic route: the in-process mock answers and embeds.
SEMANTIC_ALIAS = "mock-semantic-route"
# Anthropic first, OpenAI when Anthropic fails: a fallback across wire formats.
CROSS_FAMILY_ALIAS = "anthropic-then-openai-route"
# Guardrails in front of OpenAI's mock (which echoes the prompt, so what it
# received and what it answers can be inspected): emails redacted and
# injections blocked in prompts, cards redacted in answers, behind a cache
# and with content logging, so neither may hold the unredacted text.
GUARDED_ALIAS = "openai-guarded-route"
# Moderation by OpenAI's mock `/v1/moderations`, failing open or closed.
MODERATED_ALIASES = {"open": "openai-moderated-open-route", "closed": "openai-moderated-closed-route"}
MODERATION_TIMEOUT = "500ms"


def manifests(mock_url: str) -> list[dict]:
    """Every resource the sidecar serves in this session."""
    strict = {"firstToken": STRICT_FIRST_TOKEN}
    cached_spec = {
        "targets": [{"provider": "openai", "model": PROVIDERS["openai"].model}],
        "cache": {"mode": "exact", "ttl": "10m"},
    }
    semantic_spec = {
        "targets": [{"provider": "mock", "model": PROVIDERS["mock"].model}],
        "cache": {
            "mode": "semantic",
            "similarityThreshold": 0.9,
            "embeddings": {"provider": "mock", "model": PROVIDERS["mock"].embedding_model},
        },
    }
    cross_family_spec = {
        "targets": [{"provider": "anthropic", "model": PROVIDERS["anthropic"].model}],
        "fallbacks": [
            {
                "target": {"provider": "openai", "model": PROVIDERS["openai"].model},
                "on": ["server-error", "rate-limit"],
            }
        ],
        "retries": {"attempts": 1},
        "circuitBreaker": {"enabled": False},
    }
    openai_target = [{"provider": "openai", "model": PROVIDERS["openai"].model}]
    guarded_spec = {
        "targets": openai_target,
        "cache": {"mode": "exact", "ttl": "10m"},
        "logContent": True,
        "guardrails": [
            {"name": "pii", "phase": "request", "action": "redact", "detect": ["email"]},
            {"name": "injection", "phase": "request", "action": "block", "detect": ["promptInjection"], "roles": ["user"]},
            {"name": "cards", "phase": "response", "action": "redact", "detect": ["creditCard"]},
        ],
    }
    documents: list[dict] = [
        _document("llmesh.io/v1alpha1", "LLMRoute", GUARDED_ALIAS, spec=guarded_spec),
        *(
            _document("llmesh.io/v1alpha1", "LLMRoute", alias, spec={
                "targets": openai_target,
                "guardrails": [{
                    "name": "moderation", "phase": "request", "action": "block",
                    "moderation": {
                        "url": f"{mock_url}/openai/v1/moderations", "provider": "openai",
                        "timeout": MODERATION_TIMEOUT, "failureMode": mode,
                    },
                }],
            })
            for mode, alias in MODERATED_ALIASES.items()
        ),
        _document("llmesh.io/v1alpha1", "LLMRoute", CACHED_ALIAS, spec=cached_spec),
        _document("llmesh.io/v1alpha1", "LLMRoute", CROSS_FAMILY_ALIAS, spec=cross_family_spec),
        _document("llmesh.io/v1alpha1", "LLMRoute", SEMANTIC_ALIAS, spec=semantic_spec),
    ]
    for provider in PROVIDERS.values():
        spec = {"provider": provider.kind, **provider.spec(mock_url)}
        if provider.secret:
            secret_name = f"{provider.kind}-credentials"
            spec["secretRef"] = {"name": secret_name}
            documents.append(_document("v1", "Secret", secret_name, stringData=provider.secret))
        documents.append(_provider_secret(provider.kind, spec))
        documents.append(_route(route_alias(provider), provider.kind, provider.model))
        if provider.embedding_model:
            documents.append(_route(embeddings_alias(provider), provider.kind, provider.embedding_model))
        if provider.mock is not None:
            documents.append(_route(strict_alias(provider), provider.kind, provider.model, strict))
            continue
        for fault_name, fault in FAULTS.items():
            faulty_name = f"{provider.kind}-{fault_name}"
            mock_settings = {**spec.get("mock", {}), "faults": [fault.mock_setting]}
            documents.append(_provider_secret(faulty_name, {**spec, "mock": mock_settings}))
            documents.append(_route(fault_alias(provider, fault_name), faulty_name, provider.model, strict))
    return documents


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    """A started binary whose output goes to a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def log_text(self, since: int = 0) -> str:
        with self.log.open("rb") as handle:
            handle.seek(since)
            return handle.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def start(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Process:
    binary = BINARIES / name
    if not binary.exists():
        pytest.exit(
            f"{binary} is missing: run `cargo build -p llmesh-sidecar -p llmesh-test-support --bins` first",
            returncode=2,
        )
    log = log_dir / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(
        [str(binary), *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    handle.close()
    return Process(name, popen, log)


def wait_until_ready(process: Process, url: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            pytest.exit(f"{process.name} exited with {process.popen.returncode}:\n{process.log_text()}", returncode=2)
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    pytest.exit(f"{process.name} not ready at {url} after {STARTUP_SECONDS}s:\n{process.log_text()}", returncode=2)


@dataclass
class Sidecar:
    """A started sidecar and the URLs of its two ports."""

    process: Process
    url: str
    admin_url: str


def start_sidecar(work: Path, documents: list[dict], env: dict[str, str] | None = None) -> Sidecar:
    """Writes `documents` as the manifests folder under `work`, starts a
    sidecar serving them on free ports and returns it once ready."""
    manifests_dir = work / "manifests"
    manifests_dir.mkdir()
    # JSON is YAML: one document per `---`, no YAML library needed.
    (manifests_dir / "llmesh.yaml").write_text("".join(f"---\n{json.dumps(d)}\n" for d in documents))
    api_addr, admin_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = start(
        "llmesh-sidecar",
        ["--manifests", str(manifests_dir), "--listen", api_addr, "--admin-listen", admin_addr],
        work,
        env,
    )
    try:
        wait_until_ready(process, f"http://{admin_addr}/readyz")
    except BaseException:
        process.stop()
        raise
    return Sidecar(process, f"http://{api_addr}", f"http://{admin_addr}")


@dataclass
class Gateway:
    """The running sidecar and mock upstreams."""

    url: str
    admin_url: str
    mock_url: str
    aliases: list[str]
    sidecar: Process
    mock: Process
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def script(self, provider: Provider, behaviors: list) -> None:
        """Queues mock-upstream behaviors for the provider's next calls."""
        response = self._http.post(f"{self.mock_url}/_mock/{provider.mock}/script", json=behaviors)
        response.raise_for_status()

    def calls(self, provider: Provider) -> list[dict]:
        """Every call the provider's mock has received, oldest first."""
        response = self._http.get(f"{self.mock_url}/_mock/{provider.mock}/calls")
        response.raise_for_status()
        return response.json()["calls"]

    def close(self) -> None:
        self._http.close()

    def inject(self, provider: Provider, fault: str) -> str:
        """Makes the provider's next call fail with `fault`; returns the route to call."""
        if provider.mock is not None:
            self.script(provider, [FAULTS[fault].script])
        return fault_alias(provider, fault)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("llmesh")
    mock_addr = f"127.0.0.1:{free_port()}"
    mock = start("mock-upstream", ["--listen", mock_addr], work)
    processes = [mock]
    try:
        mock_url = f"http://{mock_addr}"
        wait_until_ready(mock, f"{mock_url}/_mock/openai/calls")

        documents = manifests(mock_url)
        sidecar = start_sidecar(work, documents, {"LLMESH_MAX_BODY_BYTES": str(MAX_BODY_BYTES)})
        processes.append(sidecar.process)
        aliases = [d["metadata"]["name"] for d in documents if d["kind"] == "LLMRoute"]
        running = Gateway(sidecar.url, sidecar.admin_url, mock_url, aliases, sidecar.process, mock)
        yield running
        running.close()
    finally:
        for process in reversed(processes):
            process.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the tests a provider's `known_bugs` names as strict xfails."""
    for item in items:
        kind = getattr(item, "callspec", None) and item.callspec.params.get("provider")
        reason = PROVIDERS[kind].known_bugs.get(item.originalname) if kind else None
        if reason:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture(params=list(PROVIDERS), ids=list(PROVIDERS))
def provider(request: pytest.FixtureRequest) -> Provider:
    return PROVIDERS[request.param]


@pytest.fixture
def scripted(provider: Provider) -> Provider:
    """A provider behind mock-upstream, whose calls can be inspected."""
    if not provider.inspectable:
        pytest.skip(f"{provider.kind}: no OpenAI-shaped upstream calls to inspect")
    return provider


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )


@pytest.fixture
def claude(gateway: Gateway) -> anthropic.Anthropic:
    """The official Anthropic SDK, pointed at the sidecar as ANTHROPIC_BASE_URL would."""
    return anthropic.Anthropic(
        base_url=gateway.url, api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )


@pytest.fixture
def async_client(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Attaches what the sidecar logged during a failed test to its report."""
    gateway = getattr(item, "funcargs", {}).get("gateway")
    if gateway is None:
        return (yield)
    offset = gateway.sidecar.log_size()
    try:
        return (yield)
    except BaseException:
        item.add_report_section("call", "sidecar log", gateway.sidecar.log_text(since=offset))
        raise
