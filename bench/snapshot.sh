#!/bin/bash
# Maintenance.Snapshot of a ~1 GiB database under a light put load, tern or etcd 3.4: loads
# 16,000 64 KiB values, measures put latency (200/s) alone and while `etcdctl snapshot save`
# runs, and the snapshot's MB/s. Run once per server and compare (docs/backup.md has figures).
# usage: bench/snapshot.sh tern|etcd   (build first: cargo build --release -p tern -p tern-bench;
# TERN_BENCH=path overrides the load generator)
set -u
server=$1
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${TERN_BENCH:-$root/target/release/tern-bench}
work=${TMPDIR:-/tmp}/tern-snapshot-bench-$server
rm -rf "$work"; mkdir -p "$work"
if [ "$server" = tern ]; then bin=$root/target/release/tern; cp=47379; pp=47380; else bin=etcd; cp=48379; pp=48380; fi
"$bin" --name b --data-dir "$work/data" \
  --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
  --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
  --initial-cluster "b=http://127.0.0.1:$pp" --quota-backend-bytes=8589934592 > "$work/server.log" 2>&1 &
pid=$!
until etcdctl --endpoints="127.0.0.1:$cp" get probe >/dev/null 2>&1; do sleep 0.2; done
"$bench" --endpoints "127.0.0.1:$cp" --conns 4 --clients 16 put --total 16000 --val-size 65536 \
  --key-space-size 16000 --sequential-keys > "$work/load.txt" 2>&1
latency() {
  "$bench" --endpoints "127.0.0.1:$cp" --conns 2 --clients 8 put --total 3000 --rate 200 \
    --val-size 256 --key-space-size 1000 > "$1" 2>&1
}
summary() { grep -E 'Average|99%|99.9%|Slowest' "$1" | tr -s ' \t' ' ' | tr '\n' ' '; }
latency "$work/base.txt"
echo "$server put latency alone: $(summary "$work/base.txt")"
latency "$work/during.txt" &
lat=$!
sleep 0.5
start=$(date +%s.%N)
etcdctl --endpoints="127.0.0.1:$cp" snapshot save "$work/snap.db" > /dev/null 2>&1
end=$(date +%s.%N)
size=$(stat -c %s "$work/snap.db")
echo "$server snapshot: $size bytes in $(echo "$end - $start" | bc) s = $(echo "$size / ($end - $start) / 1000000" | bc) MB/s"
wait "$lat"
echo "$server put latency during the snapshot: $(summary "$work/during.txt")"
kill "$pid"; wait "$pid"
rm -rf "$work"
