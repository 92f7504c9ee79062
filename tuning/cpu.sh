#!/usr/bin/env bash
# tuning/cpu.sh: keeps tern's executor cores fast and free of interrupts.
#
# tern pins one executor per core on the first --cores CPUs of its affinity mask
# (src/runtime/placement.rs); those are "executor CPUs" here, the other online CPUs are
# "housekeeping CPUs". What it sets:
# - the cpufreq governor of each executor CPU to performance (where cpufreq exists);
# - cpuidle: disables, on executor CPUs, the idle states whose exit latency exceeds
#   --max-idle-latency-us (default 20 us), so a core woken by a packet resumes quickly;
# - the affinity of the NICs' interrupts, and their RPS masks, to the housekeeping CPUs;
#   XPS so that each CPU transmits on a queue of its own (round-robin over tx queues);
# and prints a suggested CPU layout (taskset list and --cores) from the sysfs topology:
# one physical core for interrupts and the OS, one SMT thread of every other core for tern.
set -euo pipefail
SCRIPT=cpu.sh
STATE_NAME=cpu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

CPUS=""
IDLE_LATENCY_MAX_US=20
declare -a INTERFACES=()

usage() {
    cat <<EOF
Usage: tuning/cpu.sh MODE [--pid PID | --cores N [--cpus LIST]] [--interface IFACE]... [options]

Sets the CPU governor and idle states of tern's cores and moves NIC interrupts off them.

Modes:
${MODE_ARGS_HELP//NAME/cpu}

Which cores:
  --pid PID        a running tern: its affinity mask and --cores give the executor CPUs
  --cores N        tern's --cores (0 or absent: every CPU it may run on)
  --cpus LIST      the CPUs tern may run on (its taskset/CPUAffinity list; default: all
                   online CPUs)

Options:
  --interface IFACE        NIC whose interrupts, RPS and XPS to set (repeatable; default:
                           every interface backed by a device)
  --max-idle-latency-us N  disable idle states with a longer exit latency on executor
                           CPUs (default 20)

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
    --cores) CORES=${2:?--cores needs a number} && shift ;;
    --cpus) CPUS=${2:?--cpus needs a CPU list} && shift ;;
    --interface) INTERFACES+=("${2:?--interface needs a name}") && shift ;;
    --max-idle-latency-us) IDLE_LATENCY_MAX_US=${2:?--max-idle-latency-us needs a number} && shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[[ $IDLE_LATENCY_MAX_US =~ ^[0-9]+$ ]] || die "--max-idle-latency-us takes a number"
finish_setup

undo_entry() { undo_common_entry "$@"; }

if [ "$MODE" = undo ]; then
    do_undo
    exit 0
fi

CPU_SYS=$SYS/devices/system/cpu
mapfile -t ONLINE < <(expand_cpu_list "$(cat "$CPU_SYS/online")")

if [ -n "$TERN_PID" ]; then
    read_tern_config "$TERN_PID"
    [ -n "$CPUS" ] || CPUS=$(awk '$1 == "Cpus_allowed_list:" { print $2 }' "$PROC/$TERN_PID/status")
fi
[ -n "$CPUS" ] || CPUS=$(cat "$CPU_SYS/online")
mapfile -t ALLOWED < <(expand_cpu_list "$CPUS")
[[ ${CORES:-0} =~ ^[0-9]+$ ]] || die "--cores takes a number"
used=${CORES:-0}
[ "$used" -gt 0 ] && [ "$used" -le "${#ALLOWED[@]}" ] || used=${#ALLOWED[@]}
EXECUTORS=("${ALLOWED[@]:0:$used}")
# Interrupts go to CPUs that share no physical core with an executor when there are any:
# an interrupt on an executor's SMT sibling still takes that core's execution units.
core_key() { echo "$(cat "$CPU_SYS/cpu$1/topology/physical_package_id"):$(cat "$CPU_SYS/cpu$1/topology/core_id")"; }
declare -A EXECUTOR_CORES=()
for cpu in "${EXECUTORS[@]}"; do EXECUTOR_CORES[$(core_key "$cpu")]=1; done
HOUSEKEEPING=()
for cpu in "${ONLINE[@]}"; do
    [ -n "${EXECUTOR_CORES[$(core_key "$cpu")]:-}" ] || HOUSEKEEPING+=("$cpu")
done
if [ "${#HOUSEKEEPING[@]}" -eq 0 ]; then
    mapfile -t HOUSEKEEPING < <(printf '%s\n' "${ONLINE[@]}" | grep -vxF -f <(printf '%s\n' "${EXECUTORS[@]}") || true)
fi
EXECUTOR_LIST=$(printf '%s\n' "${EXECUTORS[@]}" | join_cpu_list)
HOUSEKEEPING_LIST=$(printf '%s\n' "${HOUSEKEEPING[@]}" | join_cpu_list)

# ---------------------------------------------------------------- governor and idle states

tune_governor() {
    local cpu dir want current missing=0
    for cpu in "${EXECUTORS[@]}"; do
        dir=$CPU_SYS/cpu$cpu/cpufreq
        if [ ! -f "$dir/scaling_governor" ]; then
            missing=$((missing + 1))
            continue
        fi
        want=performance
        if ! grep -qw performance "$dir/scaling_available_governors" 2>/dev/null; then
            note "cpu$cpu: no performance governor offered ($(cat "$dir/scaling_available_governors" 2>/dev/null)); left alone"
            continue
        fi
        current=$(read_setting "$dir/scaling_governor")
        if [ "$MODE" = check ]; then
            compare "cpu$cpu governor" "$current" "$want"
        elif [ "$current" != "$want" ]; then
            set_file "$dir/scaling_governor" "$want" || true
        fi
    done
    [ "$missing" -eq 0 ] || note "no cpufreq on $missing executor CPU(s): the frequency is fixed by the firmware or the hypervisor"
}

tune_idle_states() {
    local cpu state name latency current seen=0
    for cpu in "${EXECUTORS[@]}"; do
        for state in "$CPU_SYS/cpu$cpu"/cpuidle/state*; do
            [ -f "$state/latency" ] || continue
            seen=1
            name=$(cat "$state/name")
            latency=$(cat "$state/latency")
            [ "$latency" -gt "$IDLE_LATENCY_MAX_US" ] || continue
            current=$(read_setting "$state/disable")
            if [ "$MODE" = check ]; then
                compare "cpu$cpu idle state $name (exit latency ${latency} us) disabled" "$current" 1
            elif [ "$current" != 1 ]; then
                set_file "$state/disable" 1 || true
            fi
        done
    done
    [ "$seen" -eq 1 ] || note "no cpuidle states exposed: idle-state limits are up to the firmware or hypervisor"
}

# ---------------------------------------------------------------- interrupts

default_interfaces() {
    local dev
    for dev in "$SYS"/class/net/*; do
        [ -e "$dev/device" ] && basename "$dev"
    done
}

# The IRQs of a NIC: its PCI device's MSI vectors, else the /proc/interrupts lines named
# after the interface or its device (virtio2-input.0), config vectors excluded.
nic_irqs() {
    local iface=$1 device irq
    device=$SYS/class/net/$iface/device
    if [ -d "$device/msi_irqs" ] && [ -n "$(ls "$device/msi_irqs")" ]; then
        for irq in "$device"/msi_irqs/*; do basename "$irq"; done | sort -n
        return
    fi
    local devname
    devname=$(basename "$(readlink -f "$device")")
    awk -v a="$iface" -v b="$devname" '
        $1 ~ /^[0-9]+:$/ {
            name = $NF
            if (name ~ /-config$/) next
            if (name == a || index(name, a "-") == 1 || index(name, b "-") == 1) { sub(":", "", $1); print $1 }
        }' "$PROC/interrupts"
}

irqbalance_running() {
    local comm
    for comm in "$PROC"/[0-9]*/comm; do
        [ "$(cat "$comm" 2>/dev/null)" = irqbalance ] && return 0
    done
    return 1
}

tune_irqs() {
    local iface=$1 irq path current
    for irq in $(nic_irqs "$iface"); do
        path=$PROC/irq/$irq/smp_affinity_list
        [ -f "$path" ] || continue
        current=$(read_setting "$path")
        if [ "$MODE" = check ]; then
            compare "$iface irq $irq affinity" "$current" "$HOUSEKEEPING_LIST"
        elif [ "$current" != "$HOUSEKEEPING_LIST" ]; then
            # Managed interrupts (the kernel spreads them itself) refuse the write.
            set_file "$path" "$HOUSEKEEPING_LIST" || true
        fi
    done
}

tune_rps_xps() {
    local iface=$1 queue current want n_tx q cpu i
    local rps_mask
    rps_mask=$(printf '%s\n' "${HOUSEKEEPING[@]}" | cpu_mask)
    for queue in "$SYS/class/net/$iface"/queues/rx-*; do
        [ -f "$queue/rps_cpus" ] || continue
        current=$(read_setting "$queue/rps_cpus")
        if [ "$MODE" = check ]; then
            if [ "$(normalize_mask "$current")" = "$(normalize_mask "$rps_mask")" ]; then
                report ok "$iface $(basename "$queue") rps_cpus" "$current" "$rps_mask"
            else
                report DIFF "$iface $(basename "$queue") rps_cpus" "$current" "$rps_mask"
            fi
        elif [ "$(normalize_mask "$current")" != "$(normalize_mask "$rps_mask")" ]; then
            set_file "$queue/rps_cpus" "$rps_mask" || true
        fi
    done
    local -a tx=()
    for queue in "$SYS/class/net/$iface"/queues/tx-*; do
        [ -f "$queue/xps_cpus" ] && tx+=("$queue")
    done
    n_tx=${#tx[@]}
    [ "$n_tx" -gt 1 ] || return 0
    for ((q = 0; q < n_tx; q++)); do
        queue=$SYS/class/net/$iface/queues/tx-$q
        want=$(
            i=0
            for cpu in "${ONLINE[@]}"; do
                [ $((i % n_tx)) -ne "$q" ] || echo "$cpu"
                i=$((i + 1))
            done | cpu_mask
        )
        current=$(read_setting "$queue/xps_cpus")
        if [ "$MODE" = check ]; then
            if [ "$(normalize_mask "$current")" = "$(normalize_mask "$want")" ]; then
                report ok "$iface tx-$q xps_cpus" "$current" "$want"
            else
                report DIFF "$iface tx-$q xps_cpus" "$current" "$want"
            fi
        elif [ "$(normalize_mask "$current")" != "$(normalize_mask "$want")" ]; then
            set_file "$queue/xps_cpus" "$want" || true
        fi
    done
}

# ---------------------------------------------------------------- suggested layout

# Prints the layout as comment lines (stdout stays a runnable script in --dry-run).
suggest_layout() {
    local cpu key siblings
    local -A core_of=() seen=()
    local -a cores=()
    for cpu in "${ONLINE[@]}"; do
        key="$(cat "$CPU_SYS/cpu$cpu/topology/physical_package_id"):$(cat "$CPU_SYS/cpu$cpu/topology/core_id")"
        core_of[$cpu]=$key
        if [ -z "${seen[$key]:-}" ]; then
            seen[$key]=$cpu
            cores+=("$key")
        fi
    done
    local threads=$((${#ONLINE[@]} / ${#cores[@]}))
    local -a housekeeping=() tern=()
    if [ "${#ONLINE[@]}" -eq 1 ]; then
        tern=("${ONLINE[0]}")
    elif [ "${#cores[@]}" -eq 1 ]; then
        housekeeping=("${ONLINE[0]}")
        tern=("${ONLINE[@]:1}")
    else
        for cpu in "${ONLINE[@]}"; do
            if [ "${core_of[$cpu]}" = "${cores[0]}" ]; then
                housekeeping+=("$cpu")
            elif [ "${seen[${core_of[$cpu]}]}" = "$cpu" ]; then
                tern+=("$cpu")
            fi
        done
    fi
    local tern_list hk_list
    tern_list=$(printf '%s\n' "${tern[@]}" | join_cpu_list)
    hk_list=$(printf '%s\n' "${housekeeping[@]}" | join_cpu_list)
    siblings=$((${#ONLINE[@]} - ${#tern[@]} - ${#housekeeping[@]}))
    local lines=()
    lines+=("suggested layout: ${#cores[@]} physical core(s), ${#ONLINE[@]} CPU(s), $threads thread(s) per core")
    if [ -n "$hk_list" ]; then
        lines+=("  interrupts and the OS on CPU $hk_list; tern on CPU $tern_list")
    else
        lines+=("  one CPU: tern, interrupts and the OS share it")
    fi
    [ "$siblings" -eq 0 ] || lines+=("  the $siblings SMT sibling(s) of tern's cores stay idle (or take housekeeping work): a busy sibling slows the executor beside it")
    lines+=("  taskset -c $tern_list tern --cores ${#tern[@]} ...   (systemd: CPUAffinity=${tern_list//,/ })")
    lines+=("  then: tuning/cpu.sh --apply --cpus $tern_list --cores ${#tern[@]}")
    local line
    for line in "${lines[@]}"; do
        if [ "$MODE" = check ]; then echo "info $line"; else echo "# $line"; fi
    done
    if [ "$MODE" = check ]; then
        report info "tern's executor CPUs" "$EXECUTOR_LIST" "$tern_list"
    fi
}

tune_governor
tune_idle_states
[ "${#INTERFACES[@]}" -gt 0 ] || mapfile -t INTERFACES < <(default_interfaces)
if [ "${#HOUSEKEEPING[@]}" -eq 0 ]; then
    note "tern's executors use every online CPU ($EXECUTOR_LIST): no CPU is left for interrupts; interrupt, RPS and XPS settings skipped (see the suggested layout)"
elif [ "${#INTERFACES[@]}" -gt 0 ]; then
    if irqbalance_running && [ "$MODE" != check ]; then
        note "warning: irqbalance is running and will move the interrupts back; stop it or set IRQBALANCE_BANNED_CPULIST=$EXECUTOR_LIST in /etc/default/irqbalance"
    fi
    for iface in "${INTERFACES[@]}"; do
        [ -d "$SYS/class/net/$iface" ] || die "no interface $iface"
        tune_irqs "$iface"
        tune_rps_xps "$iface"
    done
fi
suggest_layout
[ "$MODE" != check ] || finish_check
