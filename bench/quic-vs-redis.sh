#!/usr/bin/env bash
# Lookups over QUIC (mykeyd) beside Redis serving the same keys, in one run on loopback:
# Redis GET with TLS and without at 1, 10 and 100 connections, Redis pipelined GET (-P 16),
# then quic-bench (mykey lookups and quinn's own floor at 1, 10 and 100 concurrent requests,
# one-stream latency, requests in turn on streams: the floor's and mykey's PIPELINE, on one
# connection and on 10 and 100 connections (compare Redis GET at -c 10 and -c 100), batched
# lookups). Installs redis-server (Debian) if missing, starts it on
# 127.0.0.1 with a throwaway TLS certificate, and stops it at the end.
#
# Usage: bench/quic-vs-redis.sh [IDS] [REQUESTS]   (defaults 100000 IDs, 200000 requests)
set -euo pipefail
cd "$(dirname "$0")/.."
ids=${1:-100000}
requests=${2:-200000}
plain_port=6390
tls_port=6391

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    echo "== installing redis-server (Debian package)"
    apt-get install -y redis-server >/dev/null
fi

work=$(mktemp -d)
redis_pid=""
cleanup() {
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== a throwaway TLS certificate for Redis"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=bench-ca" -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$work/redis.key" -out "$work/redis.csr" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > "$work/ext"
openssl x509 -req -in "$work/redis.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -CAcreateserial -days 1 -extfile "$work/ext" -out "$work/redis.crt" 2>/dev/null

echo "== redis-server on 127.0.0.1:$plain_port (plain) and :$tls_port (TLS)"
redis-server --bind 127.0.0.1 --port "$plain_port" --tls-port "$tls_port" \
    --tls-cert-file "$work/redis.crt" --tls-key-file "$work/redis.key" \
    --tls-ca-cert-file "$work/ca.crt" --tls-auth-clients no \
    --save '' --appendonly no --dir "$work" --logfile "$work/redis.log" &
redis_pid=$!
for _ in $(seq 1 50); do
    redis-cli -p "$plain_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done

echo "== loading $ids keys mykey:K<12 digits>X:BENCH-P (the IDs quic-bench serves)"
awk -v n="$ids" 'BEGIN {
    for (i = 0; i < n; i++) {
        k = sprintf("mykey:K%012dX:BENCH-P", i); v = sprintf("S%d", i);
        printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, length(v), v;
    }
}' | redis-cli -p "$plain_port" --pipe | tail -1

key="mykey:K__rand_int__X:BENCH-P"
echo "== Redis GET of those keys (redis-benchmark, $requests requests each)"
for c in 1 10 100; do
    printf "TLS    %3d connections: " "$c"
    redis-benchmark -h 127.0.0.1 -p "$tls_port" --tls --cacert "$work/ca.crt" --sni localhost \
        -c "$c" -n "$requests" -r "$ids" -q GET "$key" | tr '\r' '\n' | grep -v '^$' | tail -1
    printf "plain  %3d connections: " "$c"
    redis-benchmark -h 127.0.0.1 -p "$plain_port" -c "$c" -n "$requests" -r "$ids" -q GET "$key" \
        | tr '\r' '\n' | grep -v '^$' | tail -1
done
printf "plain pipelined -P 16, 10 connections: "
redis-benchmark -h 127.0.0.1 -p "$plain_port" -c 10 -P 16 -n $((requests * 5)) -r "$ids" -q GET "$key" \
    | tr '\r' '\n' | grep -v '^$' | tail -1
printf "TLS pipelined -P 16, 10 connections:   "
redis-benchmark -h 127.0.0.1 -p "$tls_port" --tls --cacert "$work/ca.crt" --sni localhost \
    -c 10 -P 16 -n $((requests * 5)) -r "$ids" -q GET "$key" | tr '\r' '\n' | grep -v '^$' | tail -1
kill "$redis_pid"
wait "$redis_pid" 2>/dev/null || true
redis_pid=""

echo "== mykeyd over QUIC (quic-bench), same keys, same machine"
cargo build --release --locked -p mykey-bench --bin quic-bench
target/release/quic-bench "$ids" 3
