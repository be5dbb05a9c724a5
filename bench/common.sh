# Shared by bench/run.sh and bench/rates.sh (sourced, not run): CPU placement,
# scheduling classes, installing the tools, the release build, starting
# servers, waiting until they answer, and stopping them. Expects $repo and
# $bench.

# CPU placement: the load generator, the stream probe and the mock upstream
# share one core; the proxy under test (nginx or the sidecar) has the other to
# itself, so both hops get the same machine.
if [[ $(nproc) -ge 2 ]]; then
    load_cpu=${BENCH_LOAD_CPU:-0} server_cpu=${BENCH_SERVER_CPU:-1}
else
    load_cpu=${BENCH_LOAD_CPU:-0} server_cpu=${BENCH_SERVER_CPU:-0}
    echo "warning: one CPU only; load generator and proxy share it" >&2
fi

# Scheduling: other tenants of a shared machine (builds, fuzzers) otherwise
# put their time slices, milliseconds long, into every tail. `fifo` runs the
# latency and streaming phases under SCHED_FIFO, the throughput phase at nice
# -20 (a saturated real-time core would starve the machine); `nice` runs all
# at nice -20; `none` changes nothing. Needs root (or CAP_SYS_NICE).
default_sched=none
if [[ $(id -u) -eq 0 ]] && chrt -f 1 true 2>/dev/null; then default_sched=fifo; fi
sched=${BENCH_SCHED:-$default_sched}
case "$sched" in fifo | nice | none) ;; *) echo "BENCH_SCHED must be fifo, nice or none" >&2; exit 2 ;; esac

log() { printf '\n== %s\n' "$*" >&2; }

# --- Install what is missing --------------------------------------------------

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

install_tools() {
    local packages=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || packages+=(nginx-light)
    command -v python3 >/dev/null || packages+=(python3)
    command -v curl >/dev/null || packages+=(curl)
    command -v taskset >/dev/null || packages+=(util-linux)
    # Packet timestamps for the in-proxy phase; capturing needs root.
    [[ $(id -u) -ne 0 ]] || command -v tcpdump >/dev/null || packages+=(tcpdump)
    if [[ ${#packages[@]} -gt 0 ]]; then
        log "installing ${packages[*]}"
        as_root apt-get update
        as_root apt-get install -y --no-install-recommends "${packages[@]}"
    fi
    if ! command -v oha >/dev/null; then
        log "installing oha (slow: it is built from source)"
        cargo install oha --locked
    fi
}

export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin"
[[ ${BENCH_SKIP_INSTALL:-0} == 1 ]] || install_tools

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries"
    (cd "$repo" && cargo build --release -p llmesh-sidecar -p llmesh-test-support)
fi
target_dir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
sidecar_bin="$target_dir/release/llmesh-sidecar"
mock_bin="$target_dir/release/mock-upstream"
floor_bin="$target_dir/release/hyper-floor"

work=$(mktemp -d "${TMPDIR:-/tmp}/llmesh-bench.XXXXXX")
pids=()

cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        # Bounded: a server that ignores TERM for 5 s is killed.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until a server answers the request BODY at URL with a chat
# completion; if it never does (or its process PID ends), prints its log
# ($work/NAME.log) and fails.
wait_answering() {
    local name=$1 url=$2 pid=$3 body=$4 answer
    for _ in $(seq 100); do
        answer=$(curl -fsS --max-time 1 -H 'content-type: application/json' -d "$body" "$url" 2>/dev/null) &&
            grep -q '"chat.completion"' <<<"$answer" && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$name does not answer the benchmark request at $url; its log:" >&2
    cat "$work/$name.log" >&2 || true
    return 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The command prefix that puts a process into the scheduling class of a
# latency phase ("latency") or a throughput phase ("throughput").
sched_prefix() {
    case "$sched:$1" in
        fifo:latency) echo "chrt -f 10" ;;
        fifo:throughput | nice:*) echo "nice -n -20" ;;
        none:*) echo "" ;;
    esac
}

# Moves every thread of the running servers into a phase's class.
sched_servers() {
    [[ $sched == none ]] && return 0
    local pid
    for pid in $(server_pids); do
        if [[ $sched:$1 == fifo:latency ]]; then
            chrt -a -f -p 10 "$pid" >/dev/null
        else
            chrt -a -o -p 0 "$pid" >/dev/null
            renice -n -20 -p $(ls "/proc/$pid/task") >/dev/null
        fi
    done
}

# Every started server and its children (nginx's worker).
server_pids() {
    local pid
    for pid in "${pids[@]}"; do echo "$pid"; pgrep -P "$pid" || true; done
}

# Runs a command on a CPU in the scheduling class of a phase.
pinned() {
    local cpu=$1 phase=$2
    shift 2
    # shellcheck disable=SC2046 # the prefix is words by design
    $(sched_prefix "$phase") taskset -c "$cpu" "$@"
}

# Starts a server pinned to a CPU; its PID goes to $started.
start_pinned() {
    local cpu=$1 logfile=$2
    shift 2
    # shellcheck disable=SC2046 # a simple command, so that $! is the server itself
    $(sched_prefix latency) taskset -c "$cpu" "$@" >"$logfile" 2>&1 &
    started=$!
    pids+=("$started")
}

vm_kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }
# User and system time of a process and its children (nginx's worker), in
# clock ticks: "USER SYSTEM".
cpu_times() {
    local user=0 system=0 pid u s
    for pid in "$1" $(pgrep -P "$1" || true); do
        read -r u s < <(awk '{ print $14, $15 }' "/proc/$pid/stat")
        user=$((user + u)) system=$((system + s))
    done
    echo "$user $system"
}
# Both together.
cpu_ticks() {
    local user system
    read -r user system < <(cpu_times "$1")
    echo $((user + system))
}
