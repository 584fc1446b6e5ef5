#!/usr/bin/env bash
# clientgone watch's cost and detection delay (BENCHMARKS.md, "clientgone watch").
#
#   sudo bash bench/watch.sh [ROUNDS] [SECONDS]      (defaults 4 rounds of 5 s)
#   sudo TLS=1 bash bench/watch.sh ...               nginx terminating TLS
#   sudo H2=1 bash bench/watch.sh ...                nginx serving h2c, h2load
#   sudo GRPC=1 bash bench/watch.sh ...              a Python grpcio server, h2load
#
# Throughput: nginx (Debian's, master_process off, one worker pinned to CPU 0)
# serving a small static file, wrk on CPU 1 (1 thread, 32 keep-alive
# connections). Rounds alternate: nginx alone, nginx with `clientgone watch
# --capture socket` attached to its port, then with `--capture syscall` (the
# agent pinned to CPU 0 too, so its cost lands on nginx's core). CPU per request is nginx's CPU (user + system: the BPF programs
# run in its system calls) plus the agent's, from /proc/PID/stat. With
# kernel.bpf_stats_enabled=1 the programs' own run time is read with bpftool.
#
# TLS=1: nginx serves the file over HTTPS (`listen ssl`, a P-256 certificate,
# TLS 1.3, keep-alive), and the agent reads the plaintext with its OpenSSL
# uprobes. wrk links the same libssl, and a uprobe fires in every process that
# maps the probed file: wrk is given its own copy of the library (another
# inode, not probed), so the client's own calls do not trap and the figures
# are the server's, as on a host whose clients are elsewhere.
#
# H2=1: nginx serves the file over HTTP/2 by prior knowledge (`listen …
# http2`), driven by h2load on CPU 1 (1 thread, 32 connections, 10 streams in
# flight on each): the agent follows every stream (CG_MORE captures, HPACK).
#
# GRPC=1: an unmodified Python grpcio server (bench/tools/grpc_server.py, all
# its threads on CPU 0) answers unary calls of clientgone.demo.v1.Demo/Wait,
# driven by h2load on CPU 1 (1 thread, 8 connections, 10 calls in flight on
# each; each call a gRPC request message, `te: trailers`); the agent follows
# every call with the demo's descriptor set (rpc_server_* per method). CPU per
# call is the server's (all threads) plus the agent's.
#
# Detection delay: a Python client sends GET /slow to Python's http.server
# (bench runs tests/watch/server.py), closes (FIN) mid-handler, and polls
# /metrics on a kept-alive connection until the break is counted; the scrape's
# own round trip is printed as the floor of what this method can see.
# Needs root, nginx, wrk, python3, bpftool, a release build of clientgone.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
secs=${2:-5}
modes=${MODES:-off socket syscall}   # MODES="off socket" to leave one out
bin=target/release/clientgone
[ -x "$bin" ] || cargo build --release -p clientgone-agent
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/www"
printf 'hello, small file\n' > "$dir/www/index.html"
port=18090
scheme=http listen="" tls_conf="" client_env=()
[ "${H2:-0}" = 1 ] && listen=http2
if [ "${TLS:-0}" = 1 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  scheme=https listen=ssl
  tls_conf="ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;"
  mkdir -p "$dir/lib"
  for l in libssl.so.3 libcrypto.so.3; do cp "$(ldconfig -p | awk -v l=$l '$1==l {print $NF; exit}')" "$dir/lib/"; done
  client_env=(env LD_LIBRARY_PATH="$dir/lib")
fi
cat > "$dir/nginx.conf" <<CONF
user root; master_process off; daemon off; worker_processes 1;
pid $dir/nginx.pid; error_log $dir/error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $dir/b; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f;
  uwsgi_temp_path $dir/u; scgi_temp_path $dir/s;
  server { listen 127.0.0.1:$port $listen; $tls_conf root $dir/www; } }
CONF
if [ "${GRPC:-0}" = 1 ]; then
  printf '\0\0\0\0\0' > "$dir/call"   # one empty gRPC message
  taskset -c 0 python3 bench/tools/grpc_server.py $port > "$dir/grpc.log" &
  nginx_pid=$!
  until grep -q listening "$dir/grpc.log" 2>/dev/null; do sleep 0.05; done
else
  taskset -c 0 nginx -c "$dir/nginx.conf" &
  nginx_pid=$!
  sleep 0.5
fi
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # clock ticks
tick=$(getconf CLK_TCK)
sysctl -qw kernel.bpf_stats_enabled=1
echo "| round | watch --capture | req/s | CPU µs/req (nginx) | CPU µs/req (agent) | CPU µs/req (both) |"
echo "|---|---|---|---|---|---|"
for r in $(seq 1 "$rounds"); do
  for mode in $modes; do
    agent_pid=""
    if [ $mode != off ]; then
      : > "$dir/watch.log"
      taskset -c 0 "$bin" watch --port $port --capture $mode --metrics-listen 127.0.0.1:19465 \
        --grpc-descriptor crates/clientgone-agent/src/demo/grpc/demo.bin 2>"$dir/watch.log" &
      agent_pid=$!
      until grep -q watching "$dir/watch.log"; do sleep 0.05; done
    fi
    n0=$(cpu_of $nginx_pid); a0=0; [ -n "$agent_pid" ] && a0=$(cpu_of $agent_pid)
    if [ "${GRPC:-0}" = 1 ]; then
      out=$(taskset -c 1 h2load -t1 -c8 -m10 -D "$secs" -d "$dir/call" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        http://127.0.0.1:$port/clientgone.demo.v1.Demo/Wait)
      n1=$(cpu_of $nginx_pid); a1=0; [ -n "$agent_pid" ] && a1=$(cpu_of $agent_pid)
      reqs=$(echo "$out" | awk '/^requests:/ {print $8}')
      rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    elif [ "${H2:-0}" = 1 ]; then
      out=$(taskset -c 1 h2load -t1 -c32 -m10 -D "$secs" $scheme://127.0.0.1:$port/index.html)
      n1=$(cpu_of $nginx_pid); a1=0; [ -n "$agent_pid" ] && a1=$(cpu_of $agent_pid)
      reqs=$(echo "$out" | awk '/^requests:/ {print $8}')
      rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    else
      out=$(taskset -c 1 "${client_env[@]}" wrk -t1 -c32 -d${secs}s $scheme://127.0.0.1:$port/index.html)
      n1=$(cpu_of $nginx_pid); a1=0; [ -n "$agent_pid" ] && a1=$(cpu_of $agent_pid)
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    fi
    if [ -n "$agent_pid" ]; then
      lost=$(curl -s 127.0.0.1:19465/metrics | awk '/^clientgone_watch_events_lost_total/ {print $2}')
      done_=$(curl -s 127.0.0.1:19465/metrics | awk '/^(http_server_request|rpc_server_call)_duration_seconds_count/ {s+=$2} END {print s+0}')
      [ -n "$agent_pid" ] && grep -h 'TLS' "$dir/watch.log" | head -1 >&2
      bpftool prog show 2>/dev/null | awk '/name cg_/ {n=$4} /run_time_ns/ {for(i=1;i<=NF;i++){if($i=="run_time_ns")t=$(i+1); if($i=="run_cnt")c=$(i+1)} if(n!="") printf "  %s: %d runs, %.0f ns/run\n", n, c, (c>0?t/c:0) > "/dev/stderr"; n=""}'
      kill $agent_pid; wait $agent_pid 2>/dev/null || true
      echo "  (watch: $done_ requests counted of $reqs, events lost: $lost)" >&2
    fi
    awk -v n="$((n1-n0))" -v a="$((a1-a0))" -v q="$reqs" -v t="$tick" -v r="$r" -v m="$mode" -v rps="$rps" \
      'BEGIN { printf "| %s | %s | %s | %.2f | %.2f | %.2f |\n", r, m, rps, n/t/q*1e6, a/t/q*1e6, (n+a)/t/q*1e6 }'
  done
done
sysctl -qw kernel.bpf_stats_enabled=0

# Detection delay.
python3 crates/clientgone-agent/tests/watch/server.py 18091 > /dev/null &
sleep 0.5
"$bin" watch --port 18091 --metrics-listen 127.0.0.1:19466 2>"$dir/watch2.log" &
until grep -q watching "$dir/watch2.log"; do sleep 0.05; done
python3 - <<'PY'
import http.client, socket, statistics, time
def count(c, name="http_server_client_disconnects_total"):
    c.request("GET", "/metrics"); body = c.getresponse().read().decode()
    return sum(float(l.split()[-1]) for l in body.splitlines() if l.startswith(name))
m = http.client.HTTPConnection("127.0.0.1", 19466)
floor = []
for _ in range(50):
    t = time.perf_counter(); count(m); floor.append(time.perf_counter() - t)
delays = []
for i in range(200):
    before = count(m)
    s = socket.create_connection(("127.0.0.1", 18091))
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: b\r\n\r\n")
    while count(m, "http_server_active_requests") < 1: pass   # its head was read
    t0 = time.perf_counter(); s.close()
    while count(m) == before: pass
    delays.append(time.perf_counter() - t0)
q = statistics.quantiles(delays, n=100)
print(f"detection delay FIN -> counter over {len(delays)} breaks: p50 {q[49]*1e3:.3f} ms, p99 {q[98]*1e3:.3f} ms, max {max(delays)*1e3:.3f} ms; one scrape's round trip p50 {statistics.median(floor)*1e3:.3f} ms")
PY
