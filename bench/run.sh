#!/usr/bin/env bash
# Performance benchmark of the llmesh sidecar against a fast local mock
# upstream, with a plain nginx proxy hop measured in the same run as the
# baseline for "one proxy hop". See docs/performance.md for the method.
#
#   bench/run.sh            full run (about 5 minutes of measurement, then
#                           bench/rates.sh's matrix, about 25 more)
#   bench/run.sh --quick    ~2 s per phase, one round: a smoke test, run by hand
#
# Knobs (environment): BENCH_RATE (req/s of the latency phase, default 1000),
# BENCH_CONCURRENCY (connections of the throughput phase, default 64),
# BENCH_ROUNDS, BENCH_LOAD_CPU / BENCH_SERVER_CPU (CPU placement),
# BENCH_SCHED (fifo, nice or none; see below), BENCH_SKIP_INSTALL=1 (use
# what is on PATH, install nothing), BENCH_SKIP_BUILD=1 (use the release
# binaries as built), BENCH_MATRIX=0 (skip bench/rates.sh; its own knobs
# apply otherwise).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$repo/bench"
source "$bench/args.sh"

if [[ $mode == quick ]]; then
    latency_duration=2s throughput_duration=2s warmup_duration=1s rounds=${BENCH_ROUNDS:-1} stream_requests=100
    in_proxy_duration=2s
else
    latency_duration=15s throughput_duration=10s warmup_duration=3s rounds=${BENCH_ROUNDS:-3} stream_requests=1000
    in_proxy_duration=5s
fi
rate=${BENCH_RATE:-1000}
# A handful of connections: at a fixed rate each carries a request at a time,
# the way a few app workers share the sidecar.
latency_connections=8
pace_ms=5
throughput_connections=${BENCH_CONCURRENCY:-64}

source "$bench/common.sh"

body='{"model":"bench","messages":[{"role":"user","content":"Say hello"}]}'
resilient_body='{"model":"resilient","messages":[{"role":"user","content":"Say hello"}]}'
cached_body='{"model":"cached","messages":[{"role":"user","content":"Say hello"}]}'
# The three chat APIs against one Anthropic-style upstream: chat is translated
# to Messages, a Messages app's request goes as it came, Responses is
# translated both ways. Each pays the same upstream, so the ratios to the chat
# path in the same round are what the inbound format adds.
declare -A api_bodies=(
    [chat]='{"model":"claude","messages":[{"role":"user","content":"Say hello"}]}'
    [messages]='{"model":"claude","max_tokens":64,"messages":[{"role":"user","content":"Say hello"}]}'
    [responses]='{"model":"claude","input":"Say hello"}'
)
declare -A api_paths=([chat]=/v1/chat/completions [messages]=/v1/messages [responses]=/v1/responses)
apis=(chat messages responses)

mock_port=$(free_port)
nginx_port=$(free_port)
sidecar_port=$(free_port)
admin_port=$(free_port)
declare -A urls=(
    [direct]="http://127.0.0.1:$mock_port/openai/v1/chat/completions"
    [nginx]="http://127.0.0.1:$nginx_port/openai/v1/chat/completions"
    [sidecar]="http://127.0.0.1:$sidecar_port/v1/chat/completions"
)
targets=(direct nginx sidecar)

start_pinned "$load_cpu" "$work/mock.log" "$mock_bin" --listen "127.0.0.1:$mock_port" --forget-calls
mock_pid=$started
wait_answering mock "${urls[direct]}" "$mock_pid" "$body"

mkdir -p "$work/nginx" "$work/manifests"
cat >"$work/nginx/nginx.conf" <<EOF
# A plain reverse proxy hop: one worker, keep-alive to the upstream.
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    # One log line per request, like the sidecar's access log.
    access_log $work/nginx/access.log;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    upstream mock {
        server 127.0.0.1:$mock_port;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
# nginx's worker drops root privileges; let it into the work directory.
chmod 755 "$work" "$work/nginx"
start_pinned "$server_cpu" "$work/nginx.log" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" \
    -e "$work/nginx/error.log"
nginx_pid=$started
wait_answering nginx "${urls[nginx]}" "$nginx_pid" "$body"

cat >"$work/manifests/bench.yaml" <<EOF
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata:
  name: upstream
spec:
  provider: openai-compatible
  baseUrl: http://127.0.0.1:$mock_port/openai/v1
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata:
  name: bench
spec:
  targets:
    - provider: upstream
      model: gpt-4o-mini
---
# Paced in-process stream: shows whether chunks leave the sidecar as they come.
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata:
  name: paced
spec:
  provider: mock
  mock:
    timeToFirstToken: 1ms
    perToken: ${pace_ms}ms
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata:
  name: paced
spec:
  targets:
    - provider: paced
      model: mock-large
---
# A request that needs one retry and one fallback: both attempts at a target
# whose upstream answers 503, then the fallback to the working upstream. The
# breaker is off, or it would shed the failing target after a few requests.
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata:
  name: failing
spec:
  provider: openai-compatible
  baseUrl: http://127.0.0.1:$mock_port/unavailable/v1
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata:
  name: resilient
spec:
  targets:
    - provider: failing
      model: gpt-4o-mini
  retries:
    attempts: 2
    backoff: 1ms
    maxBackoff: 1ms
  fallbacks:
    - target:
        provider: upstream
        model: gpt-4o-mini
      on: [server-error]
  circuitBreaker:
    enabled: false
---
# Answers from the sidecar's own memory: after the first request every
# request is a cache hit, no upstream involved.
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata:
  name: cached
spec:
  targets:
    - provider: upstream
      model: gpt-4o-mini
  cache:
    mode: exact
    ttl: 1h
    scope: route
---
# An Anthropic-style upstream (mock-upstream's Messages API mock, which wants a key).
apiVersion: v1
kind: Secret
metadata:
  name: anthropic-key
stringData:
  apiKey: sk-ant-bench
---
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata:
  name: anthropic
spec:
  provider: anthropic
  baseUrl: http://127.0.0.1:$mock_port/anthropic
  secretRef:
    name: anthropic-key
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata:
  name: claude
spec:
  targets:
    - provider: anthropic
      model: claude-sonnet-4-5
EOF
start_pinned "$server_cpu" "$work/sidecar.log" "$sidecar_bin" --manifests "$work/manifests" \
    --listen "127.0.0.1:$sidecar_port" --admin-listen "127.0.0.1:$admin_port"
sidecar_pid=$started
wait_answering sidecar "${urls[sidecar]}" "$sidecar_pid" "$body"

results="$work/results"
mkdir -p "$results"
sleep 1
echo "{\"rss_kib\": $(vm_kib "$sidecar_pid" VmRSS)}" >"$results/idle-start.json"

# --- Measure ------------------------------------------------------------------

oha_run() {
    local phase=$1 out=$2 url=$3
    shift 3
    pinned "$load_cpu" "$phase" oha --no-tui --output-format json -w -m POST \
        -H 'content-type: application/json' -d "${request_body:-$body}" "$@" "$url" >"$out"
}

log "warm-up ($warmup_duration per target)"
sched_servers throughput
for target in "${targets[@]}"; do
    oha_run throughput /dev/null "${urls[$target]}" -z "$warmup_duration" -c "$throughput_connections"
done

sched_servers latency

for round in $(seq "$rounds"); do
    for target in "${targets[@]}"; do
        log "latency: $target at $rate req/s for $latency_duration (round $round/$rounds)"
        oha_run latency "$results/latency-$target-$round.json" "${urls[$target]}" \
            -z "$latency_duration" -q "$rate" -c "$latency_connections" --latency-correction
    done
    log "latency: sidecar, one retry and one fallback per request (round $round/$rounds)"
    request_body=$resilient_body oha_run latency "$results/latency-resilient-$round.json" "${urls[sidecar]}" \
        -z "$latency_duration" -q "$rate" -c "$latency_connections" --latency-correction
    log "latency: sidecar, cache hits (round $round/$rounds)"
    request_body=$cached_body oha_run latency "$results/latency-cached-$round.json" "${urls[sidecar]}" \
        -z "$latency_duration" -q "$rate" -c "$latency_connections" --latency-correction
    for api in "${apis[@]}"; do
        log "latency: sidecar, ${api_paths[$api]} to an Anthropic-style upstream (round $round/$rounds)"
        request_body=${api_bodies[$api]} oha_run latency "$results/latency-api-$api-$round.json" \
            "http://127.0.0.1:$sidecar_port${api_paths[$api]}" \
            -z "$latency_duration" -q "$rate" -c "$latency_connections" --latency-correction
    done
done

# Time inside each proxy, from packet timestamps on loopback (see
# bench/in_proxy.py): the way in plus the way out, without the load
# generator's own scheduling in it. Needs tcpdump and the right to capture.
declare -A proxy_ports=([nginx]=$nginx_port [sidecar]=$sidecar_port)
# A capture that starts and waits (killed by the timeout) means we may capture.
can_capture() {
    command -v tcpdump >/dev/null || return 1
    timeout 1 tcpdump -i lo -c 1 -w /dev/null 'tcp port 1' 2>/dev/null
    [[ $? == 124 ]]
}
if can_capture; then
    for round in $(seq "$rounds"); do
        for target in nginx sidecar; do
            log "in-proxy: $target, packets captured at $rate req/s for $in_proxy_duration (round $round/$rounds)"
            capture="$work/in-proxy-$target-$round.pcap"
            taskset -c "$load_cpu" tcpdump -i lo -s 160 -B 16384 -w "$capture" \
                "tcp port ${proxy_ports[$target]} or tcp port $mock_port" 2>/dev/null &
            capture_pid=$!
            sleep 1
            oha_run latency /dev/null "${urls[$target]}" -z "$in_proxy_duration" -q "$rate" \
                -c "$latency_connections" --latency-correction
            sleep 0.5
            kill -INT "$capture_pid"
            wait "$capture_pid" || true
            python3 "$bench/in_proxy.py" "$capture" --proxy-port "${proxy_ports[$target]}" \
                --upstream-port "$mock_port" >"$results/in-proxy-$target-$round.json"
            rm -f "$capture"
        done
    done
else
    log "in-proxy: skipped (tcpdump cannot capture on lo here; it needs root)"
fi

declare -A proxy_pids=([direct]=$mock_pid [nginx]=$nginx_pid [sidecar]=$sidecar_pid)
sched_servers throughput
for round in $(seq "$rounds"); do
    for target in "${targets[@]}"; do
        log "throughput: $target, $throughput_connections connections for $throughput_duration (round $round/$rounds)"
        before=$(cpu_ticks "${proxy_pids[$target]}")
        oha_run throughput "$results/throughput-$target-$round.json" "${urls[$target]}" \
            -z "$throughput_duration" -c "$throughput_connections"
        after=$(cpu_ticks "${proxy_pids[$target]}")
        echo "{\"cpu_ticks\": $((after - before)), \"ticks_per_second\": $(getconf CLK_TCK)}" \
            >"$results/cpu-$target-$round.json"
    done
    log "throughput: sidecar cache hits, $throughput_connections connections (round $round/$rounds)"
    before=$(cpu_ticks "$sidecar_pid")
    request_body=$cached_body oha_run throughput "$results/throughput-cached-$round.json" "${urls[sidecar]}" \
        -z "$throughput_duration" -c "$throughput_connections"
    after=$(cpu_ticks "$sidecar_pid")
    echo "{\"cpu_ticks\": $((after - before)), \"ticks_per_second\": $(getconf CLK_TCK)}" \
        >"$results/cpu-cached-$round.json"
done

log "streaming: time to first chunk, $stream_requests requests per target"
sched_servers latency
pinned "$load_cpu" latency python3 "$bench/stream_probe.py" --requests "$stream_requests" \
    --paced-model paced --pace-ms "$pace_ms" \
    --direct "${urls[direct]}" --sidecar "${urls[sidecar]}" >"$results/stream.json"

sleep 2
printf '{"rss_kib": %s, "hwm_kib": %s, "mock_rss_kib": %s}\n' "$(vm_kib "$sidecar_pid" VmRSS)" \
    "$(vm_kib "$sidecar_pid" VmHWM)" "$(vm_kib "$mock_pid" VmRSS)" >"$results/idle-end.json"

# --- Report -------------------------------------------------------------------

mkdir -p "$bench/results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 "$bench/summarize.py" "$results" \
    --mode "$mode" --rate "$rate" --rounds "$rounds" \
    --latency-duration "$latency_duration" --throughput-duration "$throughput_duration" \
    --latency-connections "$latency_connections" --throughput-connections "$throughput_connections" \
    --load-cpu "$load_cpu" --server-cpu "$server_cpu" --sched "$sched" \
    --json-out "$bench/results/$stamp-$mode.json"
cp "$bench/results/$stamp-$mode.json" "$bench/results/latest-$mode.json"

# The rates a pod really sends, both placements, nginx as the upstream, the
# access logs on and off: bench/rates.sh, with this run's servers stopped.
if [[ ${BENCH_MATRIX:-1} == 1 ]]; then
    cleanup
    pids=()
    log "rates, placements, upstreams and access logs (bench/rates.sh)"
    quick_flag=()
    [[ $mode == quick ]] && quick_flag=(--quick)
    BENCH_SKIP_INSTALL=1 BENCH_SKIP_BUILD=1 "$bench/rates.sh" "${quick_flag[@]}"
fi
