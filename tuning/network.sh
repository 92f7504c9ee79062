#!/usr/bin/env bash
# tuning/network.sh: puts tern's peer traffic, then its client traffic, ahead of bulk
# traffic on the interface(s) that carry raft, as etcd's tuning guide does with tc.
#
# Two qdisc layouts, both classifying with u32 filters on tern's ports (IPv4 and IPv6):
# - prio (default, etcd's): a 3-band strict-priority qdisc at the root; band 1 peer
#   traffic (--listen-peer-urls ports, either direction), band 2 client replies
#   (--listen-client-urls ports as source), band 3 everything else (the priomap sends
#   all unclassified traffic there). Works on any link speed; needs the kernel's sch_prio.
# - htb (--qdisc htb --rate RATE): an HTB shaper at RATE (the link speed, or an upstream
#   limit) with three classes at HTB priorities 0/1/2 for the same three kinds of traffic.
#   Bulk keeps a 10% guarantee, so it is never starved. For kernels without sch_prio and
#   for links whose real bottleneck is a known rate below the NIC's.
# Plus the listen-queue sysctls (somaxconn, tcp_max_syn_backlog at least tern's backlog of
# 1024) and, only when asked for, busy polling.
#
# --apply refuses an interface whose root qdisc was configured by someone (a non-zero
# handle): --undo could not put it back. A kernel default root qdisc (handle 0:) is
# restored by deleting ours.
set -euo pipefail
SCRIPT=network.sh
STATE_NAME=network
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

# tern's listen(2) backlog (src/server/network.rs LISTEN_BACKLOG); the kernel caps it at
# net.core.somaxconn.
TERN_LISTEN_BACKLOG=1024

QDISC=prio
RATE=""
LEAF=""
BUSY_POLL_US=""
PEER_URLS=""
declare -a INTERFACES=()

usage() {
    cat <<EOF
Usage: tuning/network.sh MODE [--pid PID | --listen-peer-urls URLS --listen-client-urls URLS]
                         [--interface IFACE]... [options]

Prioritises tern's peer traffic, then client traffic, over bulk traffic with tc.

Modes:
${MODE_ARGS_HELP//NAME/network}

Which tern (defaults are tern's: peer http://localhost:2380, client http://localhost:2379):
  --pid PID                   read the URLs and --initial-cluster from a running tern
  --listen-peer-urls URLS     tern's --listen-peer-urls (their ports are peer traffic)
  --listen-client-urls URLS   tern's --listen-client-urls (their ports are client traffic)
  --initial-cluster NAMES=URLS and --name NAME: the other members, to find the interface
  --peer-urls URLS            the other members' peer URLs, when not in --initial-cluster

Options:
  --interface IFACE   the interface to shape (repeatable). Default: the interface(s) the
                      routes to the other members use; without members, the one owning
                      the peer listen address (or the default route's for 0.0.0.0)
  --qdisc prio|htb    prio (default, etcd's strict priority bands) or htb (a shaper with
                      priority classes; needs --rate or a NIC that reports its speed)
  --rate RATE         link rate for --qdisc htb, as tc writes it: 10gbit, 940mbit, ...
  --leaf fq_codel|fq  attach this qdisc to each band/class instead of the default FIFO:
                      fq_codel keeps the bulk band's standing queue short, fq paces flows
  --busy-poll USEC    also set net.core.busy_poll and busy_read to USEC (burns CPU on the
                      cores that poll; helps only NICs with busy-poll support and spare cores)

Environment: TERN_TUNING_ROOT prefixes /sys and /proc (used by the tests).
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    --help | -h)
        usage
        exit 0
        ;;
    --dry-run) set_mode dry-run ;;
    --apply) set_mode apply ;;
    --undo) set_mode undo ;;
    check | --check) set_mode check ;;
    --state-file) STATE_FILE=${2:?--state-file needs a path} && shift ;;
    --pid) TERN_PID=${2:?--pid needs a PID} && shift ;;
    --listen-peer-urls) LISTEN_PEER_URLS=${2:?--listen-peer-urls needs URLs} && shift ;;
    --listen-client-urls) LISTEN_CLIENT_URLS=${2:?--listen-client-urls needs URLs} && shift ;;
    --initial-cluster) INITIAL_CLUSTER=${2:?--initial-cluster needs a value} && shift ;;
    --name) TERN_NAME=${2:?--name needs a value} && shift ;;
    --peer-urls) PEER_URLS=${2:?--peer-urls needs URLs} && shift ;;
    --interface) INTERFACES+=("${2:?--interface needs a name}") && shift ;;
    --qdisc) QDISC=${2:?--qdisc needs prio or htb} && shift ;;
    --rate) RATE=${2:?--rate needs a rate} && shift ;;
    --leaf) LEAF=${2:?--leaf needs fq_codel or fq} && shift ;;
    --busy-poll) BUSY_POLL_US=${2:?--busy-poll needs microseconds} && shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
case "$QDISC" in prio | htb) ;; *) die "--qdisc is prio or htb, not '$QDISC'" ;; esac
case "$LEAF" in "" | fq_codel | fq) ;; *) die "--leaf is fq_codel or fq, not '$LEAF'" ;; esac
[[ -z $BUSY_POLL_US || $BUSY_POLL_US =~ ^[0-9]+$ ]] || die "--busy-poll takes microseconds"
finish_setup

undo_entry() {
    case "$1" in
    qdisc) run tc qdisc del dev "$2" root || note "warning: could not delete the root qdisc of $2 (is the interface gone?)" ;;
    *) undo_common_entry "$@" ;;
    esac
}

if [ "$MODE" = undo ]; then
    do_undo
    exit 0
fi

[ -z "$TERN_PID" ] || read_tern_config "$TERN_PID"
LISTEN_PEER_URLS=${LISTEN_PEER_URLS:-http://localhost:2380}
LISTEN_CLIENT_URLS=${LISTEN_CLIENT_URLS:-http://localhost:2379}
mapfile -t PEER_PORTS < <(url_ports "$LISTEN_PEER_URLS")
mapfile -t CLIENT_PORTS < <(url_ports "$LISTEN_CLIENT_URLS")

# ---------------------------------------------------------------- which interface

url_host() {
    local host=${1#*://}
    host=${host%%/*}
    host=${host%:*}
    host=${host#[}
    host=${host%]}
    echo "$host"
}

resolve_host() {
    case "$1" in
    localhost) echo 127.0.0.1 ;;
    *[!0-9.]* | "")
        if [[ $1 == *:* ]]; then echo "$1"; else getent ahosts "$1" | awk 'NR == 1 { print $1 }'; fi
        ;;
    *) echo "$1" ;;
    esac
}

route_dev() { ip -o route get "$1" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p' | head -n1; }

find_interfaces() {
    local url addr dev
    local -a urls=() devs=()
    if [ -n "$PEER_URLS" ]; then
        IFS=, read -r -a urls <<<"$PEER_URLS"
    elif [ -n "$INITIAL_CLUSTER" ]; then
        local member
        local -a members
        IFS=, read -r -a members <<<"$INITIAL_CLUSTER"
        for member in "${members[@]}"; do
            [ "${member%%=*}" = "${TERN_NAME:-default}" ] || urls+=("${member#*=}")
        done
    fi
    for url in "${urls[@]}"; do
        addr=$(resolve_host "$(url_host "$url")")
        [ -n "$addr" ] || die "cannot resolve the peer URL $url"
        dev=$(route_dev "$addr")
        [ -n "$dev" ] || die "no route to the peer $url"
        devs+=("$dev")
    done
    if [ "${#devs[@]}" -eq 0 ]; then
        local -a listen
        IFS=, read -r -a listen <<<"$LISTEN_PEER_URLS"
        for url in "${listen[@]}"; do
            addr=$(resolve_host "$(url_host "$url")")
            case "$addr" in
            0.0.0.0 | :: | "") dev=$(ip -o route show default | sed -n 's/.* dev \([^ ]*\).*/\1/p' | head -n1) ;;
            *) dev=$(ip -o addr show to "$addr" | awk 'NR == 1 { sub(/@.*/, "", $2); print $2 }') ;;
            esac
            [ -n "$dev" ] || die "cannot find the interface of the peer URL $url; name it with --interface"
            devs+=("$dev")
        done
    fi
    # Members on this host route through lo; the interface to the others is the one to shape.
    local -a unique
    mapfile -t unique < <(printf '%s\n' "${devs[@]}" | sort -u)
    if [ "${#unique[@]}" -gt 1 ]; then
        mapfile -t unique < <(printf '%s\n' "${unique[@]}" | grep -vx lo)
    fi
    printf '%s\n' "${unique[@]}"
}

if [ "${#INTERFACES[@]}" -eq 0 ]; then
    mapfile -t INTERFACES < <(find_interfaces)
    [ "${#INTERFACES[@]}" -gt 0 ] || exit 2
fi

# ---------------------------------------------------------------- rates

# Bits per second of a tc rate ("940mbit", "10gbit", "500kbit", "1000000bit" or digits).
rate_bits() {
    [[ $1 =~ ^([0-9]+)(bit|kbit|mbit|gbit)?$ ]] || die "rate '$1' is not NUMBER[bit|kbit|mbit|gbit]"
    local n=${BASH_REMATCH[1]}
    case "${BASH_REMATCH[2]}" in
    kbit) n=$((n * 1000)) ;;
    mbit) n=$((n * 1000000)) ;;
    gbit) n=$((n * 1000000000)) ;;
    esac
    echo "$n"
}

link_rate() { # link_rate IFACE: --rate, else the NIC's reported speed
    local speed
    if [ -n "$RATE" ]; then
        rate_bits "$RATE"
        return
    fi
    speed=$(cat "$SYS/class/net/$1/speed" 2>/dev/null || echo -1)
    [ "$speed" -gt 0 ] 2>/dev/null || die "$1 reports no link speed; give --rate for --qdisc htb"
    echo $((speed * 1000000))
}

# ---------------------------------------------------------------- the qdisc tree

PRIO_PRIOMAP=(2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2)

# u32 match "VALUE/MASK at OFFSET" that tc filter show prints for a port match.
port_match() { # port_match sport|dport PORT FAMILY
    local offset=20
    [ "$3" = ipv6 ] && offset=40
    if [ "$1" = sport ]; then
        printf '%04x0000/ffff0000 at %d' "$2" "$offset"
    else
        printf '0000%04x/0000ffff at %d' "$2" "$offset"
    fi
}

# Every filter as "FLOWID PROTOCOL DIRECTION PORT", in the order they are added.
wanted_filters() {
    local peer_class=$1 client_class=$2 port family
    for family in ip ipv6; do
        for port in "${PEER_PORTS[@]}"; do
            echo "$peer_class $family sport $port"
            echo "$peer_class $family dport $port"
        done
    done
    for family in ip ipv6; do
        for port in "${CLIENT_PORTS[@]}"; do
            echo "$client_class $family sport $port"
        done
    done
}

classes() { # "PEER_CLASS CLIENT_CLASS BULK_CLASS" of the layout
    if [ "$QDISC" = prio ]; then echo "1:1 1:2 1:3"; else echo "1:10 1:20 1:30"; fi
}

add_filters() {
    local iface=$1 flowid family direction port pref match
    local peer_class client_class
    read -r peer_class client_class _ <<<"$(classes)"
    while read -r flowid family direction port; do
        # Filters of one preference must share a protocol: peer ip 1, peer ipv6 2,
        # client ip 3, client ipv6 4.
        if [ "$flowid" = "$peer_class" ]; then pref=1; else pref=3; fi
        [ "$family" = ip ] || pref=$((pref + 1))
        match=ip
        [ "$family" = ip ] || match=ip6
        run tc filter add dev "$iface" parent 1: protocol "$family" prio "$pref" u32 \
            match "$match" "$direction" "$port" 0xffff flowid "$flowid"
    done < <(wanted_filters "$peer_class" "$client_class")
}

add_leaves() {
    local iface=$1 class n=1
    [ -n "$LEAF" ] || return 0
    for class in $(classes); do
        run tc qdisc add dev "$iface" parent "$class" handle "$((n * 10)):" "$LEAF"
        n=$((n + 1))
    done
}

add_tree() {
    local iface=$1
    if [ "$QDISC" = prio ]; then
        run tc qdisc add dev "$iface" root handle 1: prio bands 3 priomap "${PRIO_PRIOMAP[@]}" ||
            die "cannot add a prio qdisc on $iface (a kernel without sch_prio?); --qdisc htb --rate RATE needs only sch_htb"
        [ "$MODE" = apply ] && state_record qdisc "$iface"
    else
        local total kbit
        total=$(link_rate "$iface")
        kbit=$((total / 1000))
        run tc qdisc add dev "$iface" root handle 1: htb default 30
        [ "$MODE" = apply ] && state_record qdisc "$iface"
        run tc class add dev "$iface" parent 1: classid 1:1 htb rate "${kbit}kbit" ceil "${kbit}kbit" quantum 60000
        # Guarantees (HTB serves classes below their rate first, by priority, then lends
        # the rest by priority): peer 50%, client 40%, bulk 10%.
        run tc class add dev "$iface" parent 1:1 classid 1:10 htb rate "$((kbit * 5 / 10))kbit" ceil "${kbit}kbit" prio 0 quantum 60000
        run tc class add dev "$iface" parent 1:1 classid 1:20 htb rate "$((kbit * 4 / 10))kbit" ceil "${kbit}kbit" prio 1 quantum 60000
        run tc class add dev "$iface" parent 1:1 classid 1:30 htb rate "$((kbit / 10))kbit" ceil "${kbit}kbit" prio 2 quantum 60000
    fi
    add_leaves "$iface"
    add_filters "$iface"
}

# "KIND HANDLE" of the root qdisc.
root_qdisc() { tc qdisc show dev "$1" root | awk 'NR == 1 { print $2, $3 }'; }

# The filters on parent 1: as "FLOWID MATCH", one per line.
current_filters() {
    tc filter show dev "$1" parent 1: | awk '
        /flowid / { for (i = 1; i < NF; i++) if ($i == "flowid" || $i == "*flowid") flowid = $(i + 1) }
        $1 == "match" { print flowid, $2, $3, $4 }'
}

check_interface() {
    local iface=$1 kind handle want_kind
    read -r kind handle <<<"$(root_qdisc "$iface")"
    want_kind=$QDISC
    compare "$iface root qdisc" "$kind $handle" "$want_kind 1:"
    [ "$kind $handle" = "$want_kind 1:" ] || return 0
    local current peer_class client_class flowid family direction port missing=0
    current=$(current_filters "$iface")
    read -r peer_class client_class _ <<<"$(classes)"
    while read -r flowid family direction port; do
        grep -qxF "$flowid $(port_match "$direction" "$port" "$family")" <<<"$current" || missing=$((missing + 1))
    done < <(wanted_filters "$peer_class" "$client_class")
    if [ "$missing" -eq 0 ]; then
        report ok "$iface filters" "peer ports ${PEER_PORTS[*]} -> $peer_class, client ports ${CLIENT_PORTS[*]} -> $client_class" "the same"
    else
        report DIFF "$iface filters" "$missing of tern's port filters missing" "peer ports ${PEER_PORTS[*]} -> $peer_class, client ports ${CLIENT_PORTS[*]} -> $client_class"
    fi
}

tune_interface() {
    local iface=$1 kind handle
    [ -d "$SYS/class/net/$iface" ] || die "no interface $iface"
    if [ "$MODE" = check ]; then
        check_interface "$iface"
        return
    fi
    read -r kind handle <<<"$(root_qdisc "$iface")"
    if [ "$handle" != 0: ]; then
        die "$iface already has a configured root qdisc ($kind $handle): remove it first (tc qdisc del dev $iface root), or --undo if this script added it"
    fi
    add_tree "$iface"
}

# ---------------------------------------------------------------- sysctls

tune_sysctl_at_least() { # NAME MINIMUM: raise a sysctl to MINIMUM if below
    local path=$PROC/sys/${1//.//} current
    current=$(read_setting "$path") || {
        note "no sysctl $1 here; skipped"
        return 0
    }
    if [ "$MODE" = check ]; then
        if [ "$current" -ge "$2" ]; then report ok "$1" "$current" "at least $2"; else report DIFF "$1" "$current" "at least $2"; fi
    elif [ "$current" -lt "$2" ]; then
        set_file "$path" "$2"
    fi
}

tune_busy_poll() {
    local name path current
    for name in net.core.busy_poll net.core.busy_read; do
        path=$PROC/sys/${name//.//}
        current=$(read_setting "$path") || continue
        if [ -z "$BUSY_POLL_US" ]; then
            [ "$MODE" != check ] || report info "$name" "$current" "0 unless --busy-poll USEC"
        elif [ "$MODE" = check ]; then
            compare "$name" "$current" "$BUSY_POLL_US"
        elif [ "$current" != "$BUSY_POLL_US" ]; then
            set_file "$path" "$BUSY_POLL_US"
        fi
    done
}

for iface in "${INTERFACES[@]}"; do
    tune_interface "$iface"
done
tune_sysctl_at_least net.core.somaxconn "$TERN_LISTEN_BACKLOG"
tune_sysctl_at_least net.ipv4.tcp_max_syn_backlog "$TERN_LISTEN_BACKLOG"
tune_busy_poll
[ "$MODE" != check ] || finish_check
