#!/usr/bin/env bash
# What a connected terminal costs a node: one `mykeyd` (the sample store) and `mykey-load`
# connecting TERMINALS terminals at once (the morning open, at most 512 handshakes at a time),
# then holding them open, nearly idle, for HOLD seconds. The server's RSS and CPU time are
# sampled from /proc every 100 ms, so the report gives, per terminal: server RSS while all are
# connected (above the RSS before the first handshake), server CPU from the first handshake to
# the last, and the time to connect them all (from mykey-load's report; the client's handshakes
# share the same 2 cores).
#
# Usage: bench/terminals.sh [TERMINALS] [HOLD]   (defaults 13000 terminals, 10 s)
#        PERF_OUT=FILE also records a `perf` profile of the server for the whole run;
#        SERVER_WRAP="heaptrack -o FILE" runs the server under a heap profiler.
# Needs the release binaries (cargo build --release -p mykey-engine -p mykey-load).
set -euo pipefail
cd "$(dirname "$0")/.."
terminals=${1:-13000}
hold=${2:-10}
B=target/release

work=$(mktemp -d /tmp/mykey-terminals.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

$B/mykeyd init --dir "$work/n" --listen 127.0.0.1:0 --admin 127.0.0.1:0 2>/dev/null
# A small population of the load tester's own, so the few requests during the hold succeed.
$B/mykey-load population --ids 10000 --out "$work/pop" --anchors "$work/n/jpki-anchors" >/dev/null 2>&1
rm -rf "$work/n/store"
$B/mykeyd snapshot build --population "$work/pop/population.csv" \
    --providers "$work/pop/providers.txt" --out "$work/n/store" >/dev/null 2>&1
quic=127.0.0.1:$(free_port)
admin=127.0.0.1:$(free_port)
MYKEYD_SERVER_LISTEN=$quic MYKEYD_SERVER_ADMIN_LISTEN=$admin MYKEYD_LIMITS_RATE_PER_IDENTITY=0 \
    MYKEYD_LOG_LEVEL=warn ${SERVER_WRAP:-} $B/mykeyd serve --config "$work/n/mykeyd.toml" 2>"$work/server.log" &
server=$!
pids+=($server)
for _ in $(seq 600); do
    curl -sf "http://$admin/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://$admin/readyz" >/dev/null || { echo "mykeyd never became ready:"; cat "$work/server.log"; exit 1; }
clk=$(getconf CLK_TCK)
# time rss_kib cpu_ticks, every 100 ms
(
    while kill -0 "$server" 2>/dev/null; do
        rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$server/status" 2>/dev/null || echo 0)
        cpu=$(awk '{ print $14 + $15 }' "/proc/$server/stat" 2>/dev/null || echo 0)
        echo "$(date +%s.%N) $rss $cpu"
        sleep 0.1
    done
) >"$work/samples.txt" &
pids+=($!)
sleep 0.5
if [ -n "${PERF_OUT:-}" ]; then
    perf record -F 499 ${PERF_ARGS:--g} -o "$PERF_OUT" -p "$server" 2>/dev/null &
    pids+=($!)
fi
began=$(date +%s.%N)
$B/mykey-load run --dev "$work/n" --ids 10000 --rate 5 --duration "$hold" --terminals "$terminals" \
    --server "$quic" --json "$work/load.json" --no-progress >"$work/load.txt" 2>&1 \
    || { cat "$work/load.txt"; exit 1; }
sleep 0.3
python3 - "$work/samples.txt" "$work/load.json" "$began" "$terminals" "$clk" <<'EOF'
import json, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 3]
report = json.load(open(sys.argv[2]))
began, n, clk = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
connected_at = began + report["connect_secs"]
before = [r for r in rows if r[0] <= began]
base_rss, base_cpu = before[-1][1], before[-1][2]
# The samples after every terminal connected and before the first left.
held = [r for r in rows if r[0] >= connected_at]
peak_rss = max(r[1] for r in held) if held else 0
cpu_at_connected = min((r for r in rows if r[0] >= connected_at), key=lambda r: r[0])[2]
end_cpu = held[-1][2] if held else cpu_at_connected
print(f"terminals: {n}; connected in {report['connect_secs']:.2f} s (client and server on the same cores)")
print(f"server RSS: {base_rss / 1024:.1f} MiB before, {peak_rss / 1024:.1f} MiB with all connected: "
      f"{(peak_rss - base_rss) * 1024 / n / 1024:.1f} KiB per terminal")
print(f"server CPU for the handshakes: {(cpu_at_connected - base_cpu) / clk:.2f} s, "
      f"{(cpu_at_connected - base_cpu) / clk / n * 1e6:.0f} us per terminal")
print(f"server CPU while held ({held[-1][0] - connected_at:.1f} s, {report['achieved_rate']:.1f} requests/s): "
      f"{(end_cpu - cpu_at_connected) / clk:.2f} s" if held else "no samples while held")
print(f"requests ok {report['ok']}, failed {report['failed']}, errors {report['errors']}")
EOF
