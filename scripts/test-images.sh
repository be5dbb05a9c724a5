#!/usr/bin/env bash
# Builds both images with scripts/build-images.sh (buildah) and checks them
# the way a cluster uses them:
# - sizes against the targets (sidecar 20 MB, operator 40 MB, uncompressed);
# - config: numeric non-root user, entrypoint, OCI labels;
# - contents: exactly the expected files, none the non-root user can write,
#   no private key, token or build-machine path;
# - the sidecar image, run as its own user with all capabilities dropped and
#   the quickstart manifests mounted read-only, answers chat requests on
#   loopback: from the built-in mock, and from a provider reached by host
#   name, once through /etc/hosts and once through a DNS server named in
#   /etc/resolv.conf with a cluster's search path; its root filesystem is
#   left unchanged;
# - the operator image's entrypoint answers --version and --help.
# Needs root (buildah mount and run; the DNS server listens on port 53) and
# the debug test-support binaries (cargo build -p llmesh-test-support --bins).
#
#   LLMESH_IMAGE_PROFILE  cargo profile of the binaries (default dist)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

sidecar_limit=$((20 * 1000 * 1000))
operator_limit=$((40 * 1000 * 1000))
export LLMESH_IMAGE_REGISTRY=localhost/llmesh-test LLMESH_IMAGE_TAG=test LLMESH_IMAGE_BUILDER=buildah
storage="${LLMESH_BUILDAH_STORAGE_DRIVER:-vfs}"
sidecar_image="$LLMESH_IMAGE_REGISTRY/llmesh-sidecar:test"
operator_image="$LLMESH_IMAGE_REGISTRY/llmesh-operator:test"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)"
mock_upstream="target/debug/mock-upstream"
mock_dns="target/debug/mock-dns"

if [[ $(id -u) -ne 0 ]]; then
    echo "needs root: buildah mounts and runs the images, and the DNS server binds port 53" >&2
    exit 1
fi
for binary in "$mock_upstream" "$mock_dns"; do
    if [[ ! -x "$binary" ]]; then
        echo "$binary is missing: cargo build -p llmesh-test-support --bins" >&2
        exit 1
    fi
done

work="$(mktemp -d)"
containers=()
pids=()
cleanup() {
    local pid container
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for container in "${containers[@]}"; do
        buildah --storage-driver "$storage" rm "$container" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

bah() { buildah --storage-driver "$storage" "$@"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Waits up to 10 s until COMMAND succeeds (a process started in the background is up).
wait_until() {
    local i
    for i in $(seq 1 100); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

./scripts/build-images.sh

echo "--- sizes (uncompressed layers) and config"
# Image JSON: the manifest's layer sizes and the OCI config.
inspect() { bah inspect --type image "$1"; }
check_image() {
    local image="$1" limit="$2" entrypoint="$3"
    inspect "$image" | python3 -c '
import json, sys
image, limit, entrypoint, version = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = json.load(sys.stdin)
size = sum(layer["size"] for layer in json.loads(data["Manifest"])["layers"])
config = data["OCIv1"]["config"]
user, entry, cmd = config.get("User"), config.get("Entrypoint"), config.get("Cmd")
print(f"{image}: {size / 1e6:.1f} MB (limit {limit / 1e6:.0f} MB), user {user}, entrypoint {entry}")
problems = []
if size > limit:
    problems.append(f"{size} bytes is over the {limit} byte target")
if user != "65532:65532":
    problems.append(f"user {user!r}: want the numeric 65532:65532 (runAsNonRoot checks it)")
if entry != [entrypoint]:
    problems.append(f"entrypoint {entry!r}: want [{entrypoint!r}]")
if cmd:
    problems.append(f"a Cmd {cmd!r}: the webhook passes no arguments and expects none")
labels = config.get("Labels") or {}
for key, want in [
    ("org.opencontainers.image.version", version),
    ("org.opencontainers.image.licenses", "Apache-2.0"),
    ("org.opencontainers.image.source", "https://github.com/llmesh/llmesh"),
]:
    if labels.get(key) != want:
        problems.append(f"label {key} = {labels.get(key)!r}, want {want!r}")
if len(labels.get("org.opencontainers.image.revision", "")) != 40:
    problems.append("label org.opencontainers.image.revision is not a commit")
if problems:
    sys.exit(f"FAIL: {image}: " + "; ".join(problems))
' "$image" "$limit" "$entrypoint" "$version"
}
check_image "$sidecar_image" "$sidecar_limit" /usr/bin/llmesh-sidecar
check_image "$operator_image" "$operator_limit" /usr/bin/llmesh-operator

echo "--- contents"
# The patterns of things that must not ship: private keys, provider and
# cloud tokens, and paths of the machine that built them.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
leaks=(-e '-----BEGIN [A-Z ]*PRIVATE KEY-----[[:space:]]*[A-Za-z0-9+/]{32}' -e 'AKIA[0-9A-Z]{16}'
    -e 'sk-[A-Za-z0-9_-]{32}' -e 'gh[pous]_[A-Za-z0-9]{36}' -e "$root" -e "$cargo_home" -e '/root/'
    -e '/work/' -e '/home/')
check_contents() {
    local image="$1" binary="$2" container mount
    container="$(bah from --pull-never "$image")"
    containers+=("$container")
    mount="$(bah mount "$container")"
    local expected actual
    expected="$(printf '%s\n' /etc /etc/group /etc/nsswitch.conf /etc/passwd /etc/ssl /etc/ssl/certs \
        /etc/ssl/certs/ca-certificates.crt /usr /usr/bin "/usr/bin/$binary")"
    actual="$(cd "$mount" && find . -mindepth 1 | sed 's|^\.||' | sort)"
    if [[ "$actual" != "$expected" ]]; then
        fail "$image holds other files than expected:"$'\n'"$(diff <(echo "$expected") <(echo "$actual"))"
    fi
    local writable
    writable="$(cd "$mount" && find . -mindepth 1 \( -perm -o+w -o -user 65532 -o -group 65532 \) -print)"
    [[ -z "$writable" ]] || fail "$image: the non-root user can write $writable"
    if grep -rlaE "${leaks[@]}" "$mount" >/dev/null; then
        fail "$image holds a secret or build path: $(grep -raoE "${leaks[@]}" "$mount" | sort -u | head -5)"
    fi
    echo "$image: $(echo "$actual" | wc -l) files, none writable by uid 65532, no secret or build path"
    bah umount "$container" >/dev/null
}
check_contents "$sidecar_image" llmesh-sidecar
check_contents "$operator_image" llmesh-operator

echo "--- the operator image's entrypoint"
operator="$(bah from --pull-never "$operator_image")"
containers+=("$operator")
operator_version="$(bah run --isolation chroot --network host --cap-drop ALL "$operator" -- /usr/bin/llmesh-operator --version)"
[[ "$operator_version" == "llmesh-operator $version" ]] || fail "operator --version said: $operator_version"
bah run --isolation chroot --network host --cap-drop ALL "$operator" -- /usr/bin/llmesh-operator --help \
    | grep -q -- '--sidecar-image' || fail "operator --help does not list its flags"
echo "$operator_version; --help lists the flags"

echo "--- the sidecar image serves requests"
# A provider reached by host name, as real ones are: mock-upstream's OpenAI
# mock behind api.llmesh.test.
upstream_port="$(free_port)"
"$mock_upstream" --listen "127.0.0.1:$upstream_port" >"$work/upstream.log" 2>&1 &
pids+=($!)
# An address of its own on loopback: port 53 on 127.0.0.1 may be a local resolver's.
dns_addr=127.0.0.153
"$mock_dns" --listen "$dns_addr:53" --record api.llmesh.test=127.0.0.1 >"$work/dns.log" 2>&1 &
pids+=($!)
wait_until curl -fsS "http://127.0.0.1:$upstream_port/_mock/openai/calls" ||
    fail "mock-upstream did not start: $(cat "$work/upstream.log")"
wait_until grep -q listening "$work/dns.log" || fail "mock-dns did not start: $(cat "$work/dns.log")"

mkdir -p "$work/manifests" "$work/state"
cp examples/quickstart/*.yaml "$work/manifests/"
cat >"$work/manifests/openai.yaml" <<EOF
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata:
  name: openai
spec:
  provider: openai
  baseUrl: http://api.llmesh.test:$upstream_port/openai/v1
  secretRef:
    name: openai-key
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata:
  name: gpt
spec:
  targets:
    - provider: openai
      model: gpt-4o-mini
EOF
# The provider key, as a Secret manifest (standalone mode reads it from there).
secret_value="sk-image-test-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$work/manifests/openai-key.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: openai-key
stringData:
  apiKey: $secret_value
EOF
chmod -R a+rX "$work/manifests"
# The state volume is the sidecar's (an emptyDir is writable by the pod's user).
chown 65532:65532 "$work/state"
printf '127.0.0.1 localhost\n127.0.0.1 api.llmesh.test\n' >"$work/hosts"
printf 'nameserver %s\nsearch team-a.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n' \
    "$dns_addr" >"$work/resolv.conf"
# /etc/hosts without the provider's name, so only DNS can find it.
printf '127.0.0.1 localhost\n' >"$work/hosts-no-provider"

sidecar="$(bah from --pull-never "$sidecar_image")"
containers+=("$sidecar")
mount="$(bah mount "$sidecar")"

# Runs the sidecar image as the webhook configures it (its env names, the
# mounts read-only except the state volume) with HOSTS as /etc/hosts and
# RESOLV as /etc/resolv.conf, sends one chat request for ROUTE and checks
# the answer; then stops it with SIGTERM.
serve_one() {
    local label="$1" hosts="$2" resolv="$3" route="$4" api_port admin_port pid
    api_port="$(free_port)"
    admin_port="$(free_port)"
    # With volumes, buildah puts the host's /etc/resolv.conf into the
    # container whatever -v says: so RESOLV becomes the host's, in a mount
    # namespace of buildah's own.
    unshare --mount --propagation private sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$resolv" \
        buildah --storage-driver "$storage" run --isolation chroot --network host --cap-drop ALL --no-hosts \
        -v "$hosts:/etc/hosts:ro" -v "$work/manifests:/etc/llmesh/manifests:ro" \
        -v "$work/state:/var/lib/llmesh" \
        --env "LLMESH_LISTEN_ADDR=127.0.0.1:$api_port" --env "LLMESH_ADMIN_ADDR=127.0.0.1:$admin_port" \
        --env LLMESH_MANIFESTS=/etc/llmesh/manifests \
        --env LLMESH_STATE_FILE=/var/lib/llmesh/state.json \
        "$sidecar" -- /usr/bin/llmesh-sidecar >"$work/sidecar-$label.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    if ! wait_until curl -fsS "http://127.0.0.1:$admin_port/readyz"; then
        cat "$work/sidecar-$label.log" >&2
        fail "$label: the sidecar was not ready within 10 s"
    fi
    local answer
    answer="$(curl -sS -D "$work/headers-$label" "http://127.0.0.1:$api_port/v1/chat/completions" \
        -H 'content-type: application/json' \
        -d "{\"model\": \"$route\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello from the image\"}]}")"
    if ! echo "$answer" | python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["choices"][0]["message"]["content"] else 1)' 2>/dev/null; then
        cat "$work/sidecar-$label.log" >&2
        fail "$label: no answer from route $route: $answer"
    fi
    echo "$label: route $route answered ($(grep -i '^x-llmesh-provider' "$work/headers-$label" | tr -d '\r'))"
    # buildah does not pass signals on: SIGTERM goes to the sidecar itself,
    # found by its listening port, as the kubelet's runtime would send it.
    local sidecar_pid
    sidecar_pid="$(ss -Hltnp "sport = :$api_port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)"
    [[ -n "$sidecar_pid" ]] || fail "$label: no process listens on $api_port"
    kill -TERM "$sidecar_pid"
    wait "$pid" || fail "$label: the sidecar did not exit cleanly on SIGTERM: $(tail -5 "$work/sidecar-$label.log")"
}
serve_one mock "$work/hosts" "$work/resolv.conf" smart
# buildah has made its mount points (/proc, /etc/llmesh/manifests, …) by now;
# the sidecar cannot write there (nothing is writable by 65532, above), and
# the runs below show it does not try through some other path either.
# (/run is buildah's own, touched on every run.)
snapshot() { (cd "$mount" && find . -path ./run -prune -o -printf '%p %s %T@ %m\n' | sort); }
before="$(snapshot)"
serve_one hosts-file "$work/hosts" "$work/resolv.conf" gpt
grep -q 'api.llmesh.test' "$work/dns.log" && fail "the hosts file should have answered, not DNS: $(cat "$work/dns.log")"
serve_one dns "$work/hosts-no-provider" "$work/resolv.conf" gpt
grep -q '^query 1 api.llmesh.test$' "$work/dns.log" || fail "DNS was not asked for the provider: $(cat "$work/dns.log")"
grep -q '^query 1 api.llmesh.test.team-a.svc.cluster.local$' "$work/dns.log" ||
    fail "the search path was not tried first (ndots:5): $(cat "$work/dns.log")"

# The key reached the provider, and no file or log.
calls="$(curl -fsS "http://127.0.0.1:$upstream_port/_mock/openai/calls")"
echo "$calls" | python3 -c '
import json, sys
calls, key, host = json.load(sys.stdin)["calls"], sys.argv[1], sys.argv[2]
seen = [(c["headers"].get("authorization"), c["headers"].get("host")) for c in calls]
if seen != [(f"Bearer {key}", host)] * 2:
    sys.exit(f"FAIL: want two calls to {host} with the mounted key, got {len(seen)}: {[h for _, h in seen]}")
' "$secret_value" "api.llmesh.test:$upstream_port"
after="$(snapshot)"
[[ "$before" == "$after" ]] || fail "the sidecar changed its root filesystem:"$'\n'"$(diff <(echo "$before") <(echo "$after"))"
if grep -rlaF "$secret_value" "$mount" "$work/state" "$work"/*.log >/dev/null; then
    fail "the provider key was written somewhere: $(grep -rlaF "$secret_value" "$mount" "$work/state" "$work"/*.log)"
fi
echo "root filesystem unchanged; the key appears in no file or log"
