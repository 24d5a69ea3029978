#!/usr/bin/env bash
# Counter traffic (mykey-load, default mix) against a three-node cluster on one PostgreSQL,
# beside the same traffic against one single node (its local log the system of record), in one
# run on loopback: the load population bulk-built and recorded as the cluster's genesis, copied
# to three nodes; terminals spread over the three (the writer first: registrations and pushes
# go to the first server, so they are measured without the forwarding hop); the head's seq (from PostgreSQL) and each follower's applied seq
# sampled every 100 ms during the run, so the report gives how far each follower trailed the
# committed head, in changes, p50 / p99 / max.
#
# Usage: bench/cluster-load.sh [IDS] [RATE] [DURATION] [TERMINALS]
#        (defaults 200000 IDs, 2000 requests/s, 30 s, 2000 terminals)
# Needs the release binaries (cargo build --release -p mykey-engine -p mykey-load) and
# PostgreSQL (Debian's postgresql); runs as root and starts PostgreSQL as the postgres user.
set -euo pipefail
cd "$(dirname "$0")/.."
ids=${1:-200000}
rate=${2:-2000}
duration=${3:-30}
terminals=${4:-2000}
B=target/release
pg_bin=$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")")

work=$(mktemp -d /tmp/mykey-cluster-load.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }

echo "== PostgreSQL (fsync on, synchronous_commit on, no standby)"
pg_port=$(free_port)
install -d -o postgres "$work/pg" "$work/pgsock"
runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg" --auth=trust -U mykey >/dev/null
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pgsock/pg.log" \
    -o "-p $pg_port -h 127.0.0.1 -k $work/pgsock" -w start >/dev/null
url="host=127.0.0.1 port=$pg_port user=mykey dbname=postgres"

echo "== the population: $ids IDs, bulk-built, recorded as the genesis"
$B/mykeyd init --dir "$work/a" --listen 127.0.0.1:0 --admin 127.0.0.1:0 2>/dev/null
$B/mykey-load population --ids "$ids" --out "$work/pop" --anchors "$work/a/jpki-anchors" >/dev/null
rm -rf "$work/a/store"
$B/mykeyd snapshot build --population "$work/pop/population.csv" \
    --providers "$work/pop/providers.txt" --out "$work/a/store" >/dev/null
$B/mykeyd cluster init --pg "$url" --genesis "$work/a/store" 2>/dev/null | tail -1
cp -a "$work/a" "$work/b"
cp -a "$work/a" "$work/c"
cp -a "$work/a" "$work/single"
rm -f "$work/single/store/CHAIN"

declare -A quic admin
start() { # name dir [cluster]
    local name=$1 dir=$2
    quic[$name]=127.0.0.1:$(free_port)
    admin[$name]=127.0.0.1:$(free_port)
    local env=(MYKEYD_SERVER_LISTEN="${quic[$name]}" MYKEYD_SERVER_ADMIN_LISTEN="${admin[$name]}"
        MYKEYD_LIMITS_RATE_PER_IDENTITY=0 MYKEYD_LOG_LEVEL=warn)
    if [ "${3:-}" = cluster ]; then
        env+=(MYKEYD_CLUSTER_NODE="$name" MYKEYD_CLUSTER_PG="$url"
            MYKEYD_CLUSTER_NODE_CERT="$dir/pki/terminals/node.pem"
            MYKEYD_CLUSTER_NODE_KEY="$dir/pki/terminals/node.key")
    fi
    env "${env[@]}" $B/mykeyd serve --config "$dir/mykeyd.toml" 2>"$work/$name.log" &
    pids+=($!)
    for _ in $(seq 600); do
        curl -sf "http://${admin[$name]}/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$name never became ready:"; cat "$work/$name.log"; exit 1
}

load() { # label servers json
    echo "== $1: mykey-load run --rate $rate --duration $duration --terminals $terminals"
    $B/mykey-load run --dev "$work/a" --ids "$ids" --rate "$rate" --duration "$duration" \
        --terminals "$terminals" --server "$2" --json "$3" --no-progress --schedule-seed "$4"
}

echo "== baseline: one single node (local log)"
start single "$work/single"
load "single node" "${quic[single]}" "$work/single.json" 1
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
pids=()

echo "== three cluster nodes"
for n in node-a node-b node-c; do start "$n" "$work/${n#node-}" cluster; done
writer=""
for _ in $(seq 300); do
    for n in node-a node-b node-c; do
        [ "$(metric "${admin[$n]}" mykey_cluster_role)" = 1 ] && writer=$n
    done
    [ -n "$writer" ] && break
    sleep 0.1
done
[ -n "$writer" ] || { echo "no writer elected"; exit 1; }
servers=${quic[$writer]}
for n in node-a node-b node-c; do [ "$n" = "$writer" ] || servers+=",${quic[$n]}"; done
echo "writer: $writer; servers: $servers"
# Sample every node's applied seq while the load runs.
(
    while :; do
        # The head from PostgreSQL (the writer's own gauge is refreshed every 200 ms), then
        # each follower's applied seq.
        line="$(date +%s.%N) $(runuser -u postgres -- psql -h 127.0.0.1 -p "$pg_port" -U mykey -d postgres -Atc 'SELECT seq FROM head')"
        for n in node-a node-b node-c; do
            [ "$n" = "$writer" ] || line+=" $(metric "${admin[$n]}" mykey_cluster_applied_seq)"
        done
        echo "$line"
        sleep 0.1
    done
) >"$work/seqs.txt" &
sampler=$!
load "three-node cluster" "$servers" "$work/cluster.json" 2
kill "$sampler" 2>/dev/null || true

echo "== follower lag during the cluster run (the committed head's seq minus the follower's, in changes)"
python3 - "$work/seqs.txt" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 4]
for f in (2, 3):
    lag = sorted(max(0, float(r[1]) - float(r[f])) for r in rows)
    if not lag:
        continue
    pick = lambda q: lag[min(len(lag) - 1, int(q * (len(lag) - 1)))]
    print(f"follower {f - 1}: {len(lag)} samples, lag p50 {pick(0.5):.0f}, p99 {pick(0.99):.0f}, max {lag[-1]:.0f} changes")
print(f"the head went from seq {rows[0][1]} to {rows[-1][1]}" if rows else "no samples")
EOF
echo "== side by side (p50 / p99 per operation, from the JSON reports)"
python3 - "$work/single.json" "$work/cluster.json" <<'EOF'
import json, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
a, b = runs[0]["ops"], runs[1]["ops"]
for name in sorted(set(a) | set(b)):
    def fmt(o):
        if not o:
            return "-"
        return f"n={o['count']} p50={o['p50_us']}us p99={o['p99_us']}us"
    print(f"{name:<14} single: {fmt(a.get(name)):<36} cluster: {fmt(b.get(name))}")
print("cluster, per server:")
for server, v in runs[1]["per_server"].items():
    print(f"  {server}: failed {v['failed']}; " + "; ".join(
        f"{op} n={o['count']} p50={o['p50_us']}us p99={o['p99_us']}us" for op, o in v["ops"].items()))
for r, label in zip(runs, ("single", "cluster")):
    print(f"{label}: achieved {r['achieved_rate']:.0f}/s of {r['scheduled_rate']:.0f}/s, error rate {r['error_rate']:.4f}, errors {r['errors']}, connected in {r['connect_secs']:.2f} s")
EOF
