#!/usr/bin/env bash
# tuning/measure-network.sh: the measured example in tuning/README.md. Put latency of a
# single-member tern while bulk TCP traffic shares its egress link, with and without
# tuning/network.sh applied.
#
# Setup: two network namespaces joined by a veth pair; tern in one (pinned with taskset to
# --pin-server), tern-bench and the bulk receiver in the other, the bulk sender next to
# tern (both pinned to --pin-bench). tern's egress link is emulated as an HTB shaper at
# --rate with one FIFO class, which is what a NIC at line rate is; the tuned run replaces
# it with network.sh --qdisc htb at the same rate (the kernel here has no sch_prio). GSO
# is capped at one MTU so the shaper sees wire-sized packets, as a NIC queue does.
#
# Conditions, run in this order each round: idle link, bulk load, bulk load + network.sh.
# Prints a markdown table of medians over --rounds.
#
# Usage: tuning/measure-network.sh [--rate 100mbit] [--flows 8] [--total 3000]
#        [--clients 1] [--rounds 3] [--pin-server 1] [--pin-bench 0]
#        [--tern target/release/tern] [--bench target/release/tern-bench]
# Needs root (namespaces, tc); builds nothing.
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
RATE=100mbit
FLOWS=8
TOTAL=3000
CLIENTS=1
ROUNDS=3
PIN_SERVER=1
PIN_BENCH=0
TERN=$ROOT_DIR/target/release/tern
BENCH=$ROOT_DIR/target/release/tern-bench
while [ $# -gt 0 ]; do
    case "$1" in
    --rate) RATE=$2 ;;
    --flows) FLOWS=$2 ;;
    --total) TOTAL=$2 ;;
    --clients) CLIENTS=$2 ;;
    --rounds) ROUNDS=$2 ;;
    --pin-server) PIN_SERVER=$2 ;;
    --pin-bench) PIN_BENCH=$2 ;;
    --tern) TERN=$2 ;;
    --bench) BENCH=$2 ;;
    -h | --help)
        sed -n '2,20p' "$0"
        exit 0
        ;;
    *)
        echo "measure-network: unknown argument $1" >&2
        exit 2
        ;;
    esac
    shift 2
done
[ "$(id -u)" -eq 0 ] || {
    echo "measure-network: needs root (network namespaces and tc)" >&2
    exit 2
}

SRV=tern-measure-srv-$$
CLI=tern-measure-cli-$$
SRV_IP=10.231.0.1
CLI_IP=10.231.0.2
CLIENT_PORT=2379
PEER_PORT=2380
BULK_PORT=5001
WORK=$(mktemp -d /tmp/tern-measure.XXXXXX)
export TERN_TUNING_STATE_DIR=$WORK/state
TERN_PID=""
SINK_PID=""
BULK_PIDS=()

cleanup() {
    stop_bulk
    [ -z "$SINK_PID" ] || kill "$SINK_PID" 2>/dev/null || true
    if [ -n "$TERN_PID" ]; then
        kill "$TERN_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$TERN_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$TERN_PID" 2>/dev/null; then
            echo "measure-network: tern did not exit 10 s after SIGTERM; killing it" >&2
            kill -9 "$TERN_PID" 2>/dev/null || true
        fi
        wait "$TERN_PID" 2>/dev/null || true
    fi
    ip netns del "$SRV" 2>/dev/null || true
    ip netns del "$CLI" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

in_srv() { ip netns exec "$SRV" "$@"; }
in_cli() { ip netns exec "$CLI" "$@"; }

ip netns add "$SRV"
ip netns add "$CLI"
ip -n "$SRV" link add vs type veth peer name vc netns "$CLI"
ip -n "$SRV" addr add "$SRV_IP/24" dev vs
ip -n "$CLI" addr add "$CLI_IP/24" dev vc
for dev in vs lo; do ip -n "$SRV" link set "$dev" up; done
for dev in vc lo; do ip -n "$CLI" link set "$dev" up; done
ip -n "$SRV" link set vs gso_max_size 1500

fifo_link() { # the untuned link: one HTB class at RATE with the default FIFO
    in_srv tc qdisc replace dev vs root handle 1: htb default 1
    in_srv tc class add dev vs parent 1: classid 1:1 htb rate "$RATE" ceil "$RATE" quantum 60000
}
clear_link() { in_srv tc qdisc del dev vs root 2>/dev/null || true; }

# Bulk load: FLOWS TCP streams from tern's namespace to the client's, as fast as TCP goes.
SINK='
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", PORT)); s.listen(64)
def drain(c):
    while c.recv(1 << 20): pass
while True:
    c, _ = s.accept(); threading.Thread(target=drain, args=(c,), daemon=True).start()
'
SOURCE='
import socket, sys, threading
def blast():
    c = socket.create_connection((sys.argv[1], PORT)); buf = b"x" * (1 << 16)
    while True: c.sendall(buf)
for _ in range(int(sys.argv[2])): threading.Thread(target=blast, daemon=True).start()
threading.Event().wait()
'
start_bulk() {
    # Started with ip netns exec directly, not through in_srv: a backgrounded function is a
    # subshell, and $! would name it instead of the process to stop.
    ip netns exec "$SRV" taskset -c "$PIN_BENCH" python3 -c "${SOURCE//PORT/$BULK_PORT}" "$CLI_IP" "$FLOWS" &
    BULK_PIDS+=($!)
    sleep 2 # let the flows reach steady state (cwnd grown, queue full)
}
stop_bulk() {
    local pid
    for pid in "${BULK_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    BULK_PIDS=()
}

ip netns exec "$CLI" taskset -c "$PIN_BENCH" python3 -c "${SINK//PORT/$BULK_PORT}" &
SINK_PID=$!
ip netns exec "$SRV" taskset -c "$PIN_SERVER" "$TERN" --cores 1 --name m1 --data-dir "$WORK/data" \
    --listen-client-urls "http://$SRV_IP:$CLIENT_PORT" --advertise-client-urls "http://$SRV_IP:$CLIENT_PORT" \
    --listen-peer-urls "http://$SRV_IP:$PEER_PORT" --initial-advertise-peer-urls "http://$SRV_IP:$PEER_PORT" \
    --initial-cluster "m1=http://$SRV_IP:$PEER_PORT" >"$WORK/tern.log" 2>&1 &
TERN_PID=$!
for _ in $(seq 100); do
    grep -q "ready to serve client requests" "$WORK/tern.log" && break
    sleep 0.1
done
grep -q "ready to serve client requests" "$WORK/tern.log" || {
    cat "$WORK/tern.log" >&2
    exit 1
}

# bench LABEL: one put run; appends "LABEL p50_ms p99_ms req_per_s" to the results.
bench() {
    in_cli taskset -c "$PIN_BENCH" "$BENCH" --endpoints "$SRV_IP:$CLIENT_PORT" --conns "$CLIENTS" \
        --clients "$CLIENTS" --output json put --total "$TOTAL" --key-size 8 --val-size 256 \
        --key-space-size 100000 >"$WORK/out.json"
    python3 - "$1" "$WORK/out.json" >>"$WORK/results" <<'EOF'
import json, sys
r = json.load(open(sys.argv[2]))["reports"][0]
p = r["percentiles_s"]
assert r["errors_total"] == 0, r["errors"]
print(sys.argv[1], p["p50"] * 1e3, p["p99"] * 1e3, r["requests_per_s"])
EOF
}

for round in $(seq "$ROUNDS"); do
    echo "measure-network: round $round of $ROUNDS" >&2
    fifo_link
    bench idle
    start_bulk
    bench bulk
    stop_bulk
    clear_link
    in_srv "$ROOT_DIR/tuning/network.sh" --apply --qdisc htb --rate "$RATE" --interface vs \
        --listen-peer-urls "http://$SRV_IP:$PEER_PORT" --listen-client-urls "http://$SRV_IP:$CLIENT_PORT" >/dev/null
    start_bulk
    bench bulk+network.sh
    stop_bulk
    in_srv "$ROOT_DIR/tuning/network.sh" --undo >/dev/null
done

python3 - "$WORK/results" "$RATE" "$FLOWS" "$CLIENTS" "$TOTAL" "$ROUNDS" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
rate, flows, clients, total, rounds = sys.argv[2:]
print(f"link {rate}, {flows} bulk TCP flows, {clients} client(s), {total} puts per run, median of {rounds} rounds\n")
print("| condition | put p50 | put p99 | puts/s | p99 of each round |")
print("|---|---|---|---|---|")
for label in ["idle", "bulk", "bulk+network.sh"]:
    mine = [r for r in rows if r[0] == label]
    p50 = statistics.median(float(r[1]) for r in mine)
    p99 = statistics.median(float(r[2]) for r in mine)
    rps = statistics.median(float(r[3]) for r in mine)
    each = ", ".join(f"{float(r[2]):.1f}" for r in mine)
    name = {"idle": "no bulk load (FIFO link)", "bulk": "bulk load, FIFO link", "bulk+network.sh": "bulk load, network.sh --qdisc htb"}[label]
    print(f"| {name} | {p50:.2f} ms | {p99:.2f} ms | {rps:.0f} | {each} |")
EOF
