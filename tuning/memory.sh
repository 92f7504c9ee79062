#!/usr/bin/env bash
# tuning/memory.sh: memory settings that bear on tern's tail latency.
#
# What it sets:
# - transparent huge pages: enabled=madvise and defrag=madvise, so no page fault of tern's
#   (or a neighbour's) stalls in direct compaction to build a 2 MiB page; "never" is
#   accepted as just as good;
# - vm.swappiness=1 (anything at or below 10 passes check): the kernel drops page cache
#   before it swaps out a sleeping executor's stack or the B+tree's dirty pages.
# What it checks and explains, but cannot change for a running process: the locked-memory
# limit (RLIMIT_MEMLOCK) that glommio's io_uring rings and registered buffers need, which
# must be set before tern starts (ulimit -l, LimitMEMLOCK=, limits.conf).
set -euo pipefail
SCRIPT=memory.sh
STATE_NAME=memory
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

# tern registers io_memory per executor (src/server/launch.rs: 256 KiB per network
# executor, 2 MiB for the state executor) and checks (executors) x (the larger one)
# against RLIMIT_MEMLOCK, with glommio's floor of 512 KiB.
EXECUTOR_IO_MEMORY_KIB=2048
GLOMMIO_MEMLOCK_MIN_KIB=512
SWAPPINESS_WANTED=1
SWAPPINESS_MAX=10

usage() {
    cat <<EOF
Usage: tuning/memory.sh MODE [--pid PID | --cores N]

Transparent huge pages, vm.swappiness, and the memlock limit tern's io_uring executors need.

Modes:
${MODE_ARGS_HELP//NAME/memory}

Which tern:
  --pid PID   a running tern: its --cores and its locked-memory limit are checked
  --cores N   tern's --cores (default: every online CPU), for the memlock figure

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
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
finish_setup

undo_entry() { undo_common_entry "$@"; }

if [ "$MODE" = undo ]; then
    do_undo
    exit 0
fi

[ -z "$TERN_PID" ] || read_tern_config "$TERN_PID"

tune_thp() { # tune_thp FILE: madvise, or never, is fine; anything else becomes madvise
    local path=$SYS/kernel/mm/transparent_hugepage/$1 current
    current=$(read_setting "$path") || {
        note "no transparent huge pages in this kernel ($path); nothing to do"
        return 0
    }
    if [ "$MODE" = check ]; then
        case "$current" in
        madvise | never) report ok "transparent_hugepage/$1" "$current" "madvise or never" ;;
        *) report DIFF "transparent_hugepage/$1" "$current" "madvise or never" ;;
        esac
    elif [ "$current" != madvise ] && [ "$current" != never ]; then
        set_file "$path" madvise
    fi
}

tune_swappiness() {
    local path=$PROC/sys/vm/swappiness current
    current=$(read_setting "$path")
    if [ "$MODE" = check ]; then
        if [ "$current" -le "$SWAPPINESS_MAX" ]; then
            report ok vm.swappiness "$current" "at most $SWAPPINESS_MAX"
        else
            report DIFF vm.swappiness "$current" "at most $SWAPPINESS_MAX"
        fi
    elif [ "$current" -gt "$SWAPPINESS_MAX" ]; then
        set_file "$path" "$SWAPPINESS_WANTED"
    fi
}

# The soft "Max locked memory" of a process from /proc/PID/limits, in KiB or "unlimited".
memlock_kib() {
    awk '/^Max locked memory/ { if ($4 == "unlimited") print "unlimited"; else print int($4 / 1024) }' "$1"
}

check_memlock() {
    local cores=${CORES:-0} executors needed limit who limits
    if [ "$cores" -eq 0 ]; then
        cores=$(expand_cpu_list "$(cat "$SYS/devices/system/cpu/online")" | wc -l)
    fi
    executors=$((cores + 1)) # one network executor per core plus the state executor
    needed=$((executors * EXECUTOR_IO_MEMORY_KIB))
    [ "$needed" -ge "$GLOMMIO_MEMLOCK_MIN_KIB" ] || needed=$GLOMMIO_MEMLOCK_MIN_KIB
    if [ -n "$TERN_PID" ]; then
        limits=$PROC/$TERN_PID/limits
        who="tern (pid $TERN_PID)"
    else
        limits=$PROC/self/limits
        who="processes started from this shell"
    fi
    limit=$(memlock_kib "$limits")
    if [ "$MODE" = check ]; then
        if [ "$limit" = unlimited ]; then
            report ok "memlock limit of $who" unlimited "at least $needed KiB for $executors executors"
        elif [ "$limit" -ge "$needed" ]; then
            report ok "memlock limit of $who" "$limit KiB" "at least $needed KiB for $executors executors"
        else
            report DIFF "memlock limit of $who" "$limit KiB" "at least $needed KiB for $executors executors"
        fi
    elif [ "$limit" != unlimited ] && [ "$limit" -lt "$needed" ]; then
        note "memlock limit of $who is $limit KiB; tern's $executors executors need $needed KiB. It takes effect only at tern's start: 'ulimit -l $needed' before starting it, LimitMEMLOCK=${needed}K in its systemd unit, or '<user> - memlock $needed' in /etc/security/limits.conf"
    fi
}

tune_thp enabled
tune_thp defrag
tune_swappiness
check_memlock
[ "$MODE" != check ] || finish_check
