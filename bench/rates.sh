#!/usr/bin/env bash
# The sidecar at the rates one pod really sends, in the conditions an outside
# harness would pick, every one against a plain nginx hop in the same run:
# 20, 200 and 1,000 req/s; proxy pinned to its own core or not; our Rust mock
# or nginx answering a fixed JSON body as the upstream; a realistic request
# (system prompt, max_tokens, temperature); the access log on and off for
# both the sidecar and nginx. A third hop, `hyper-floor` (test-support), is
# the least a hyper proxy does (forward bytes, no JSON): the gap from nginx to
# it is hyper's and tokio's, from it to the sidecar llmesh's own. See
# docs/performance.md ("Rates, placements").
#
#   bench/rates.sh            full run (about 25 minutes of measurement)
#   bench/rates.sh --quick    200 req/s only, 1 s per phase: a smoke test
#
# Knobs (environment): BENCH_RATES (default "20 200 1000"; quick "200"),
# BENCH_PLACEMENTS ("pinned unpinned"), BENCH_UPSTREAMS ("mock nginx"),
# BENCH_MATRIX_ROUNDS (default 2; quick 1), BENCH_LOAD_CPU /
# BENCH_SERVER_CPU, BENCH_SCHED, BENCH_SKIP_INSTALL=1, BENCH_SKIP_BUILD=1
# (as bench/run.sh).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$repo/bench"
source "$bench/args.sh"

# Latency phases are long enough at each rate for a few hundred requests at
# least, so that p99 is not one request's luck.
declare -A latency_seconds
if [[ $mode == quick ]]; then
    rates=${BENCH_RATES:-200} rounds=${BENCH_MATRIX_ROUNDS:-1} throughput_seconds=1
    for r in $rates; do latency_seconds[$r]=1; done
else
    rates=${BENCH_RATES:-20 200 1000} rounds=${BENCH_MATRIX_ROUNDS:-2} throughput_seconds=5
    for r in $rates; do latency_seconds[$r]=$(((r <= 20) ? 20 : (r <= 200) ? 8 : 5)); done
fi
placements=${BENCH_PLACEMENTS:-pinned unpinned}
upstreams=${BENCH_UPSTREAMS:-mock nginx}
# What one pod's app workers hold open: each carries a request at a time.
latency_connections=10
throughput_connections=32
# direct: the upstream itself (the baseline "added" latency is taken from).
hops=(direct nginx-log nginx-nolog sidecar-log sidecar-nolog floor)

source "$bench/common.sh"

all_cpus="0-$(($(nproc) - 1))"
# The CPU each server sits on when pinned (the same PID keys `pids`).
declare -A pinned_cpu=()

start_server() {
    local cpu=$1
    shift
    start_pinned "$cpu" "$@"
    pinned_cpu[$started]=$cpu
}

# Pins every server (and its threads and children) to its CPU, or lets all
# of them run anywhere.
place_servers() {
    local placement=$1 pid cpu child
    for pid in "${pids[@]}"; do
        cpu=${pinned_cpu[$pid]}
        [[ $placement == pinned ]] || cpu=$all_cpus
        for child in "$pid" $(pgrep -P "$pid" || true); do
            taskset -a -p -c "$cpu" "$child" >/dev/null
        done
    done
}

# A chat request as apps send them: a system prompt, the question, limits.
request_body() {
    cat <<EOF
{"model":"$1","messages":[{"role":"system","content":"You are the support assistant of Acme Cloud. Answer in at most three sentences and in the customer's language. Cite the documentation page when there is one. Never reveal internal ticket numbers, and ask for the account id before answering billing questions."},{"role":"user","content":"Since this morning my deployment in eu-west-1 restarts every few minutes and the events say OOMKilled, although its memory limit is 2 GiB and it used 600 MiB last week. What should I check first?"}],"max_tokens":256,"temperature":0.2}
EOF
}

# The fixed answer nginx serves as an upstream: a complete chat completion.
answer_json='{"id":"chatcmpl-bench","object":"chat.completion","created":1764892800,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Check whether a recent release raised memory use: compare the working set before and after it, and look for a leak in the new version."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":96,"completion_tokens":31,"total_tokens":127}}'

# --- Servers ------------------------------------------------------------------

declare -A port
for name in mock upstream-nginx nginx-log-mock nginx-nolog-mock nginx-log-nginx nginx-nolog-nginx \
    sidecar-log sidecar-nolog admin-log admin-nolog floor-mock floor-nginx; do
    port[$name]=$(free_port)
done
mkdir -p "$work/results" "$work/upstream-nginx" "$work/nginx" "$work/manifests"
chmod 755 "$work" "$work/upstream-nginx" "$work/nginx"

start_server "$load_cpu" "$work/mock.log" "$mock_bin" --listen "127.0.0.1:${port[mock]}" --forget-calls
mock_pid=$started

cat >"$work/upstream-nginx/nginx.conf" <<EOF
# An upstream as fast as it gets: nginx answering a fixed chat completion.
daemon off;
worker_processes 1;
pid $work/upstream-nginx/nginx.pid;
error_log $work/upstream-nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/upstream-nginx/body;
    server {
        listen 127.0.0.1:${port[upstream-nginx]};
        keepalive_requests 1000000;
        location / {
            default_type application/json;
            return 200 '$answer_json';
        }
    }
}
EOF
start_server "$load_cpu" "$work/upstream-nginx.log" nginx -p "$work/upstream-nginx" \
    -c "$work/upstream-nginx/nginx.conf" -e "$work/upstream-nginx/error.log"
upstream_nginx_pid=$started

# One nginx hop process with a server per upstream and access log setting.
nginx_server() {
    local listen=$1 upstream=$2 access_log=$3
    cat <<EOF
    server {
        listen 127.0.0.1:$listen;
        keepalive_requests 1000000;
        access_log $access_log;
        location / {
            proxy_pass http://$upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
}
cat >"$work/nginx/nginx.conf" <<EOF
# A plain reverse proxy hop: one worker, keep-alive to the upstream.
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    upstream mock { server 127.0.0.1:${port[mock]}; keepalive 128; }
    upstream upstream_nginx { server 127.0.0.1:${port[upstream-nginx]}; keepalive 128; }
$(nginx_server "${port[nginx-log-mock]}" mock "$work/nginx/access.log")
$(nginx_server "${port[nginx-nolog-mock]}" mock off)
$(nginx_server "${port[nginx-log-nginx]}" upstream_nginx "$work/nginx/access.log")
$(nginx_server "${port[nginx-nolog-nginx]}" upstream_nginx off)
}
EOF
start_server "$server_cpu" "$work/nginx.log" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" \
    -e "$work/nginx/error.log"
nginx_pid=$started

cat >"$work/manifests/bench.yaml" <<EOF
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata:
  name: mock
spec:
  provider: openai-compatible
  baseUrl: http://127.0.0.1:${port[mock]}/openai/v1
---
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata:
  name: upstream-nginx
spec:
  provider: openai-compatible
  baseUrl: http://127.0.0.1:${port[upstream-nginx]}/openai/v1
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata:
  name: bench
spec:
  targets:
    - provider: mock
      model: gpt-4o-mini
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata:
  name: bench-nginx
spec:
  targets:
    - provider: upstream-nginx
      model: gpt-4o-mini
EOF
# The access log as shipped (on, JSON lines on stdout into a file, as a
# container runtime would take them), and off.
start_server "$server_cpu" "$work/sidecar-log.log" "$sidecar_bin" --manifests "$work/manifests" \
    --listen "127.0.0.1:${port[sidecar-log]}" --admin-listen "127.0.0.1:${port[admin-log]}"
declare -A sidecar_pid=([log]=$started)
LLMESH_LOG=info,llmesh::access=off start_server "$server_cpu" "$work/sidecar-nolog.log" "$sidecar_bin" \
    --manifests "$work/manifests" --listen "127.0.0.1:${port[sidecar-nolog]}" \
    --admin-listen "127.0.0.1:${port[admin-nolog]}"
sidecar_pid[nolog]=$started
declare -A floor_pid
start_server "$server_cpu" "$work/floor-mock.log" "$floor_bin" --listen "127.0.0.1:${port[floor-mock]}" \
    --upstream "http://127.0.0.1:${port[mock]}"
floor_pid[mock]=$started
start_server "$server_cpu" "$work/floor-nginx.log" "$floor_bin" --listen "127.0.0.1:${port[floor-nginx]}" \
    --upstream "http://127.0.0.1:${port[upstream-nginx]}"
floor_pid[nginx]=$started

# url HOP UPSTREAM, and the process that serves it (for CPU time).
declare -A url hop_pid model
model=([mock]=bench [nginx]=bench-nginx)
for upstream in mock nginx; do
    if [[ $upstream == mock ]]; then
        url[direct-$upstream]="http://127.0.0.1:${port[mock]}/openai/v1/chat/completions"
        hop_pid[direct-$upstream]=$mock_pid
    else
        url[direct-$upstream]="http://127.0.0.1:${port[upstream-nginx]}/openai/v1/chat/completions"
        hop_pid[direct-$upstream]=$upstream_nginx_pid
    fi
    url[floor-$upstream]="http://127.0.0.1:${port[floor-$upstream]}/openai/v1/chat/completions"
    hop_pid[floor-$upstream]=${floor_pid[$upstream]}
    for log_mode in log nolog; do
        url[nginx-$log_mode-$upstream]="http://127.0.0.1:${port[nginx-$log_mode-$upstream]}/openai/v1/chat/completions"
        hop_pid[nginx-$log_mode-$upstream]=$nginx_pid
        url[sidecar-$log_mode-$upstream]="http://127.0.0.1:${port[sidecar-$log_mode]}/v1/chat/completions"
        hop_pid[sidecar-$log_mode-$upstream]=${sidecar_pid[$log_mode]}
    done
done
for upstream in $upstreams; do
    for hop in "${hops[@]}"; do
        wait_answering "$hop-$upstream" "${url[$hop-$upstream]}" "${hop_pid[$hop-$upstream]}" "$(request_body bench)"
    done
done

# --- Measure ------------------------------------------------------------------

results="$work/results"
# oha on the load generator's CPU when pinned, anywhere otherwise.
oha_run() {
    local placement=$1 phase=$2 out=$3 upstream=$4 hop=$5 cpu=$load_cpu
    shift 5
    [[ $placement == pinned ]] || cpu=$all_cpus
    pinned "$cpu" "$phase" oha --no-tui --output-format json -w -m POST \
        -H 'content-type: application/json' -d "$(request_body "${model[$upstream]}")" "$@" \
        "${url[$hop-$upstream]}" >"$out"
}

log "warm-up"
sched_servers throughput
for upstream in $upstreams; do
    for hop in "${hops[@]}"; do
        oha_run pinned throughput /dev/null "$upstream" "$hop" -z 1s -c "$throughput_connections"
    done
done

for round in $(seq "$rounds"); do
    for placement in $placements; do
        place_servers "$placement"
        sched_servers latency
        for rate in $rates; do
            for upstream in $upstreams; do
                log "latency: $placement, $rate req/s, $upstream upstream, ${latency_seconds[$rate]} s per hop (round $round/$rounds)"
                for hop in "${hops[@]}"; do
                    oha_run "$placement" latency "$results/latency-$placement-$rate-$upstream-$hop-$round.json" \
                        "$upstream" "$hop" -z "${latency_seconds[$rate]}s" -q "$rate" \
                        -c "$latency_connections" --latency-correction
                done
            done
        done
        sched_servers throughput
        for upstream in $upstreams; do
            log "throughput: $placement, $upstream upstream, $throughput_connections connections (round $round/$rounds)"
            for hop in "${hops[@]}"; do
                read -r user_before system_before < <(cpu_times "${hop_pid[$hop-$upstream]}")
                oha_run "$placement" throughput "$results/throughput-$placement-$upstream-$hop-$round.json" \
                    "$upstream" "$hop" -z "${throughput_seconds}s" -c "$throughput_connections"
                read -r user_after system_after < <(cpu_times "${hop_pid[$hop-$upstream]}")
                echo "{\"user_ticks\": $((user_after - user_before)), \"system_ticks\": $((system_after - system_before)), \"ticks_per_second\": $(getconf CLK_TCK)}" \
                    >"$results/cpu-$placement-$upstream-$hop-$round.json"
            done
        done
    done
done

# --- Report -------------------------------------------------------------------

mkdir -p "$bench/results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 "$bench/summarize_rates.py" "$results" --mode "$mode" --rounds "$rounds" \
    --rates $rates --placements $placements --upstreams $upstreams \
    --latency-connections "$latency_connections" --throughput-connections "$throughput_connections" \
    --load-cpu "$load_cpu" --server-cpu "$server_cpu" --sched "$sched" \
    --json-out "$bench/results/$stamp-rates-$mode.json"
cp "$bench/results/$stamp-rates-$mode.json" "$bench/results/latest-rates-$mode.json"
