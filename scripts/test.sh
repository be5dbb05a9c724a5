#!/usr/bin/env bash
# The project's one test command (README and CI): formatting, lints, the Rust
# tests, the OpenAI Python SDK end-to-end tests (with a real Prometheus
# scraping a sidecar), the Helm chart's tests, the container images (built
# and run with buildah), the dependency policy (cargo-deny) and a fuzz smoke
# run. Installs what it needs (redis-server, the Python venvs, Prometheus,
# buildah, cargo-deny, cargo-fuzz) at the versions pinned below and skips
# what is there.
#
#   LLMESH_FUZZ_SECONDS  seconds per fuzz target (default 20)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# CI builds each crate once: incremental caches would only cost disk (14 GB
# of a cold target with them on).
if [[ -n "${CI:-}" ]]; then
    export CARGO_INCREMENTAL=0
fi

FUZZ_SECONDS="${LLMESH_FUZZ_SECONDS:-20}"
VENV=.venv
SDK_TESTS=sidecar/tests/sdk
# The chart tests' venv: the Helm engine alone is ~250 MB, so it is kept
# apart from the SDK tests' and reinstalled only when its pins change.
CHART_VENV=.venv-chart
CHART_TESTS=charts/tests
# Counted, not written down: a step added in a branch cannot leave it stale.
TOTAL_STEPS=$(grep -c '^step "' "${BASH_SOURCE[0]}")
# Cargo tools, pinned: a new release can change what passes.
CARGO_DENY_VERSION=0.20.2
CARGO_FUZZ_VERSION=0.13.2
# The RustSec advisory database cargo-deny fetches (deny.toml's db-urls).
ADVISORY_DB=https://github.com/rustsec/advisory-db

step_number=0
step_started=$SECONDS
step_cpu_started=0
children_cpu=0
step_name=""
timings=()
started_marker=""
cpu_file="$(mktemp)"

# Sets children_cpu to the CPU seconds (user + system) used so far by this
# shell's finished children. Next to wall time it tells what a step costs on
# an idle machine. Not a $(...) function: a subshell has no children yet.
read_children_cpu() {
    times >"$cpu_file"
    children_cpu="$(awk 'NR == 2 {
        total = 0
        for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); total += t[1] * 60 + t[2] }
        printf "%d", total
    }' "$cpu_file")"
}

# Prints a header for the next step and notes how long the previous one took.
step() {
    finish_step
    step_number=$((step_number + 1))
    step_name="$1"
    step_started=$SECONDS
    read_children_cpu
    step_cpu_started=$children_cpu
    printf '\n==> [%d/%d] %s\n' "$step_number" "$TOTAL_STEPS" "$step_name"
}

finish_step() {
    if [[ -n "$step_name" ]]; then
        read_children_cpu
        timings+=("$(printf '%5ds wall %5ds cpu  %s' $((SECONDS - step_started)) \
            $((children_cpu - step_cpu_started)) "$step_name")")
    fi
}

summary() {
    local status=$?
    finish_step
    rm -f "$cpu_file" ${started_marker:+"$started_marker"}
    step_name=""
    printf '\n==> step times\n'
    printf '%s\n' "${timings[@]}"
    # A signal ends the script with status 0 from the trap's point of view:
    # only a run that reached the end is a pass.
    if [[ $status -eq 0 && $step_number -eq $TOTAL_STEPS && -n "$finished" ]]; then
        printf '==> all %d steps passed in %ds\n' "$TOTAL_STEPS" "$SECONDS"
    elif [[ $status -eq 0 ]]; then
        printf '==> INTERRUPTED in step "%s"\n' "${timings[-1]##*cpu  }"
        exit 1
    else
        printf '==> FAILED in step "%s" (exit %d)\n' "${timings[-1]##*cpu  }" "$status"
    fi
}
finished=""
trap summary EXIT
trap 'exit 143' TERM INT

# The names of the [[bin]] targets in fuzz/Cargo.toml, one per line.
fuzz_targets() {
    awk '
        /^\[\[bin\]\]/ { in_bin = 1; next }
        /^\[/          { in_bin = 0 }
        in_bin && /^[[:space:]]*name[[:space:]]*=/ {
            sub(/^[^"]*"/, ""); sub(/".*$/, ""); print
        }
    ' fuzz/Cargo.toml
}

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (deny warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo-deny ${CARGO_DENY_VERSION} (installed if missing)"
# A cold install builds it; then it is cached in ~/.cargo/bin. cargo-deny's
# own release profile is fat LTO with one codegen unit (12-13 minutes on 2
# cores); a policy check over our lock file needs none of that speed, so the
# install builds without LTO and with parallel codegen.
if [[ "$(cargo deny --version 2>/dev/null)" != "cargo-deny ${CARGO_DENY_VERSION}" ]]; then
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
        cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked
fi
cargo deny --version

step "cargo deny: advisories, licenses, duplicate versions, sources (deny.toml)"
# The advisory database is a git repository on GitHub: where GitHub cannot
# be reached the other checks still run, and the skip is said loudly.
if timeout 20 git ls-remote "$ADVISORY_DB" HEAD >/dev/null 2>&1; then
    cargo deny --log-level warn check advisories bans licenses sources
else
    echo "WARNING: $ADVISORY_DB cannot be reached: the advisories check is SKIPPED" >&2
    cargo deny --log-level warn check bans licenses sources
fi

step "redis-server for the shared-cache tests (installed if missing)"
# The tests start their own instances on free loopback ports; the packaged
# service is not used (and cannot start in these containers anyway).
if ! command -v redis-server >/dev/null 2>&1; then
    as_root=()
    if [[ $(id -u) -ne 0 ]]; then
        as_root=(sudo)
    fi
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends redis-server
fi
redis-server --version

step "cargo test --workspace"
cargo test --workspace

step "build the binaries the SDK, chart and image tests run"
cargo build -p llmesh-sidecar -p llmesh-operator -p llmesh-test-support --bins

step "short soak: 20 s of mixed traffic and reloads through one sidecar (bench/soak.py)"
# The 10-minute run is a benchmark (docs/performance.md); this one checks
# that memory, fds and sockets stay flat and every answer is as expected.
python3 bench/soak.py --seconds 20 --rate 40 --quiet 4 --binary target/debug/llmesh-sidecar

step "Python venv for the SDK tests"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
# Reinstall only when the pins change, so a warm run needs no network.
requirements_hash="$(sha256sum "$SDK_TESTS/requirements.txt" | cut -d' ' -f1)"
if [[ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$requirements_hash" ]]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$SDK_TESTS/requirements.txt"
    echo "$requirements_hash" >"$VENV/.requirements.sha256"
else
    echo "requirements unchanged; venv reused"
fi

step "Prometheus for the metrics test (installed if missing)"
# Debian's package; its service start is blocked in containers, so the test
# starts it by hand on loopback with a temporary config and data folder.
if command -v prometheus >/dev/null 2>&1; then
    prometheus --version 2>&1 | head -1
else
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo=sudo; fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends prometheus
fi

step "openssl for the TLS trace-collector test's certificates (installed if missing)"
if command -v openssl >/dev/null 2>&1; then
    openssl version
else
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo=sudo; fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends openssl
fi

step "OpenAI SDK end-to-end tests (pytest)"
pytest_status=0
"$VENV/bin/python" -m pytest "$SDK_TESTS" -q -ra -p no:cacheprovider || pytest_status=$?
if [[ $pytest_status -eq 5 ]]; then
    echo "pytest collected no tests: that is a failure here" >&2
fi
if [[ $pytest_status -ne 0 ]]; then
    exit "$pytest_status"
fi

step "Python venv for the chart tests (Helm engine, Kubernetes schemas, Grafana types)"
if [[ ! -x "$CHART_VENV/bin/python" ]]; then
    python3 -m venv "$CHART_VENV"
fi
# Its requirements include the SDK tests' pins: both files decide a reinstall.
chart_hash="$(cat "$CHART_TESTS/requirements.txt" "$SDK_TESTS/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$CHART_VENV/.requirements.sha256" 2>/dev/null)" != "$chart_hash" ]]; then
    "$CHART_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$CHART_TESTS/requirements.txt"
    echo "$chart_hash" >"$CHART_VENV/.requirements.sha256"
else
    echo "requirements unchanged; venv reused"
fi

step "Helm chart, alerts and dashboards (pytest)"
chart_status=0
"$CHART_VENV/bin/python" -m pytest "$CHART_TESTS" -q -ra -p no:cacheprovider || chart_status=$?
if [[ $chart_status -eq 5 ]]; then
    echo "pytest collected no tests: that is a failure here" >&2
fi
if [[ $chart_status -ne 0 ]]; then
    exit "$chart_status"
fi

step "buildah for the image test (installed if missing)"
if command -v buildah >/dev/null 2>&1; then
    buildah --version
else
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo=sudo; fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends buildah
fi

step "container images: build, inspect, run (scripts/test-images.sh)"
# buildah mounts and runs the images as root; cargo keeps the caller's toolchain.
if [[ $(id -u) -eq 0 ]]; then
    ./scripts/test-images.sh
else
    sudo --preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME ./scripts/test-images.sh
fi

step "cargo-fuzz ${CARGO_FUZZ_VERSION} (installed if missing)"
if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz ${CARGO_FUZZ_VERSION}" ]]; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
cargo fuzz --version

step "fuzz smoke (${FUZZ_SECONDS}s per target)"
mapfile -t targets < <(fuzz_targets)
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "no [[bin]] targets found in fuzz/Cargo.toml" >&2
    exit 1
fi
started_marker="$(mktemp)"
failed_targets=()
for target in "${targets[@]}"; do
    echo "--- fuzzing $target"
    cargo fuzz run -s none "$target" -- -max_total_time="$FUZZ_SECONDS" || failed_targets+=("$target")
done
new_artifacts="$(find fuzz/artifacts -type f -newer "$started_marker" 2>/dev/null || true)"
if [[ ${#failed_targets[@]} -gt 0 || -n "$new_artifacts" ]]; then
    echo "fuzzing failed: ${failed_targets[*]:-(no exit status, but artifacts were written)}" >&2
    if [[ -n "$new_artifacts" ]]; then
        echo "crash artifacts (reproduce with: cargo fuzz run -s none TARGET FILE):" >&2
        echo "$new_artifacts" >&2
    fi
    exit 1
fi
finished=yes
