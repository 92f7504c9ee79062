# shellcheck shell=bash
# shellcheck disable=SC2034 # the globals below are the scripts' shared state, used by them
# Shared by the tuning scripts (disk.sh, network.sh, cpu.sh, memory.sh); sourced, never run.
#
# Invariants every script keeps through these helpers:
# - --dry-run and --apply print the same command lines, in the same order; --dry-run runs
#   none of them, --apply runs exactly those. A setting already at its recommended value
#   prints nothing, so a second --apply is a no-op.
# - Before --apply changes a setting it appends the old value to the state file; --undo
#   replays that file backwards and deletes it. --apply refuses while a state file exists,
#   so the recorded values are always the ones from before the first change.
# - Every path under /sys and /proc goes through $SYS and $PROC, which TERN_TUNING_ROOT
#   prefixes, so the tests run the scripts against a faked machine.
# - check prints one line per setting ("ok", "DIFF" or "info") and exits 1 if any is DIFF.

set -euo pipefail

ROOT=${TERN_TUNING_ROOT:-}
SYS="$ROOT/sys"
PROC="$ROOT/proc"
STATE_DIR=${TERN_TUNING_STATE_DIR:-/run/tern-tuning}

MODE=""
STATE_FILE=""
TERN_PID=""
DATA_DIR=""
WAL_DIR=""
LISTEN_PEER_URLS=""
LISTEN_CLIENT_URLS=""
INITIAL_CLUSTER=""
TERN_NAME=""
CORES=""
CHECK_DIFFS=0

die() {
    echo "$SCRIPT: $*" >&2
    exit 2
}
note() { echo "$SCRIPT: $*" >&2; }

# One word as the shell would need it: bare when it is plain, else in single quotes.
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./:,=+@%-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

# Prints a command line, quoted for the shell, and runs it under --apply and --undo.
run() {
    local line="" word
    for word in "$@"; do line+="$(quote "$word") "; done
    echo "${line% }"
    changing || return 0
    "$@"
}

changing() { [ "$MODE" = apply ] || [ "$MODE" = undo ]; }

# Reads a sysfs/procfs setting. Files that list choices with the active one in brackets
# ("none [mq-deadline] kyber") yield the bracketed word.
read_setting() {
    local value
    value=$(cat "$1" 2>/dev/null) || return 1
    case "$value" in
    *\[*\]*)
        value=${value#*[}
        value=${value%%]*}
        ;;
    esac
    echo "$value"
}

# set_file PATH VALUE: records PATH's current value, prints and (under --apply) performs the
# write. Returns non-zero, with a warning, when the kernel rejects the value.
set_file() {
    local path=$1 value=$2 old
    old=$(read_setting "$path") || die "cannot read $path"
    echo "echo $(quote "$value") > $(quote "$path")"
    changing || return 0
    if ! printf '%s\n' "$value" 2>/dev/null >"$path"; then
        note "warning: the kernel refused $value for $path; left at $old"
        return 1
    fi
    state_record write "$path" "$old" "$value"
}

# state_record KIND FIELD...: one tab-separated line per change, in the order made.
state_record() {
    local IFS=$'\t'
    mkdir -p "$(dirname "$STATE_FILE")"
    echo "$*" >>"$STATE_FILE"
}

# report STATUS WHAT CURRENT RECOMMENDED: one line of check output.
report() {
    local status=$1 what=$2 current=$3 recommended=$4
    [ "$status" = DIFF ] && CHECK_DIFFS=$((CHECK_DIFFS + 1))
    printf '%-4s %s: %s (recommended: %s)\n' "$status" "$what" "$current" "$recommended"
}

# compare WHAT CURRENT RECOMMENDED: ok when equal, DIFF otherwise.
compare() {
    if [ "$2" = "$3" ]; then report ok "$@"; else report DIFF "$@"; fi
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "--$MODE changes kernel settings and needs root; run it with sudo (--dry-run shows what it would do)"
}

# Undo: replays the state file newest first. Each script handles its own kinds in
# undo_entry and falls back to this for the shared ones.
undo_common_entry() {
    local kind=$1
    shift
    case "$kind" in
    write)
        local path=$1 old=$2 set=$3 now
        now=$(read_setting "$path" 2>/dev/null || echo "?")
        if [ "$now" != "$set" ]; then
            note "warning: $path is $now, not the $set --apply wrote; leaving it"
            return 0
        fi
        set_file "$path" "$old" || true
        ;;
    *) die "unknown entry '$kind' in $STATE_FILE" ;;
    esac
}

do_undo() {
    if [ ! -f "$STATE_FILE" ]; then
        note "nothing to undo: no state file $STATE_FILE"
        return 0
    fi
    local entries line
    entries=$(tac "$STATE_FILE")
    # Undo's own writes must not append to the file being replayed.
    local replayed=$STATE_FILE
    STATE_FILE=/dev/null
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        local -a fields
        IFS=$'\t' read -r -a fields <<<"$line"
        undo_entry "${fields[@]}"
    done <<<"$entries"
    rm -f "$replayed"
}

# ---------------------------------------------------------------- tern's configuration

# Parses the flags of tern's command line (Go's forms: -f v, -f=v, --f v, --f=v) and its
# ETCD_*/TERN_* environment, read from /proc/PID, into the variables above. Flags given to
# the script itself win.
read_tern_config() {
    local pid=$1 arg name value i
    [ -r "$PROC/$pid/cmdline" ] || die "no process $pid (cannot read $PROC/$pid/cmdline)"
    local -a argv=() env=()
    mapfile -d '' -t argv <"$PROC/$pid/cmdline"
    mapfile -d '' -t env <"$PROC/$pid/environ" 2>/dev/null || true
    local -A flags=()
    for arg in "${env[@]}"; do
        case "$arg" in
        ETCD_* | TERN_*)
            name=${arg%%=*}
            name=${name#*_}
            name=${name,,}
            flags[${name//_/-}]=${arg#*=}
            ;;
        esac
    done
    i=1
    while [ "$i" -lt "${#argv[@]}" ]; do
        arg=${argv[$i]}
        i=$((i + 1))
        case "$arg" in
        -*) ;;
        *) continue ;;
        esac
        arg=${arg#-}
        arg=${arg#-}
        if [[ $arg == *=* ]]; then
            flags[${arg%%=*}]=${arg#*=}
        elif [ "$i" -lt "${#argv[@]}" ] && [[ ${argv[$i]} != -* ]]; then
            flags[$arg]=${argv[$i]}
            i=$((i + 1))
        else
            flags[$arg]=true
        fi
    done
    if [ -n "${flags[config-file]:-}" ]; then
        # etcd's YAML file replaces flags and environment; its keys are the flag names.
        local file=${flags[config-file]} key
        [[ $file == /* ]] || file="$(cwd_of "$pid")/$file"
        flags=()
        while IFS= read -r line; do
            [[ $line =~ ^([a-z-]+):[[:space:]]*(.*)$ ]] || continue
            key=${BASH_REMATCH[1]}
            value=${BASH_REMATCH[2]}
            value=${value#[\'\"]}
            value=${value%[\'\"]}
            flags[$key]=$value
        done <"$ROOT$file"
    fi
    TERN_NAME=${TERN_NAME:-${flags[name]:-default}}
    DATA_DIR=${DATA_DIR:-${flags[data-dir]:-$TERN_NAME.etcd}}
    if [[ $DATA_DIR != /* ]]; then
        DATA_DIR="$(cwd_of "$pid")/$DATA_DIR"
    fi
    WAL_DIR=${WAL_DIR:-${flags[wal-dir]:-}}
    LISTEN_PEER_URLS=${LISTEN_PEER_URLS:-${flags[listen-peer-urls]:-}}
    LISTEN_CLIENT_URLS=${LISTEN_CLIENT_URLS:-${flags[listen-client-urls]:-}}
    INITIAL_CLUSTER=${INITIAL_CLUSTER:-${flags[initial-cluster]:-}}
    CORES=${CORES:-${flags[cores]:-}}
}

# The working directory of PID as tern sees it (the faked root's link is relative to it).
cwd_of() {
    local link
    link=$(readlink "$PROC/$1/cwd") || die "cannot read $PROC/$1/cwd"
    echo "$link"
}

# Ports of a comma-separated URL list (http://host:port,...), one per line, deduplicated.
url_ports() {
    local url
    local -a urls
    IFS=, read -r -a urls <<<"$1"
    for url in "${urls[@]}"; do
        url=${url#*://}
        url=${url%%/*}
        [[ $url =~ :([0-9]+)$ ]] || die "URL without a port: $url"
        echo "${BASH_REMATCH[1]}"
    done | sort -un
}

# ---------------------------------------------------------------- CPU lists

# Expands "0-3,8,10-11" to one CPU per line.
expand_cpu_list() {
    local part
    local -a parts
    IFS=, read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        [ -n "$part" ] || continue
        if [[ $part == *-* ]]; then
            seq "${part%-*}" "${part#*-}"
        else
            echo "$part"
        fi
    done
}

# Joins CPU numbers (one per line on stdin) into the kernel's list form "0-3,8".
join_cpu_list() {
    awk 'BEGIN { first = -2; last = -2 }
         function flush() { if (first < 0) return; out = out (out == "" ? "" : ",") (first == last ? first : first "-" last) }
         { if ($1 == last + 1) { last = $1; next } flush(); first = $1; last = $1 }
         END { flush(); print out }'
}

# Hex CPU mask in the kernel's form: 32-bit groups, most significant first, comma separated.
cpu_mask() {
    local -a cpus
    mapfile -t cpus
    local max=0 cpu group groups=""
    for cpu in "${cpus[@]}"; do [ "$cpu" -gt "$max" ] && max=$cpu; done
    for ((group = max / 32; group >= 0; group--)); do
        local bits=0
        for cpu in "${cpus[@]}"; do
            [ $((cpu / 32)) -eq "$group" ] && bits=$((bits | (1 << (cpu % 32))))
        done
        groups+=$(printf '%08x' "$bits")
        [ "$group" -gt 0 ] && groups+=,
    done
    echo "$groups"
}

# A mask with its commas and leading zero digits removed, for comparing kernel output.
normalize_mask() {
    local mask=${1//,/}
    mask=${mask#"${mask%%[!0]*}"}
    echo "${mask:-0}"
}

# ---------------------------------------------------------------- argument handling

# parse_common ARG...: handles the mode and the options every script shares; prints the
# arguments it did not consume, NUL-separated, for the script's own parser.
MODE_ARGS_HELP="  --dry-run      print every command that --apply would run; change nothing
  --apply        make the changes (root only); the old values go to the state file
  --undo         restore what --apply changed, from the state file (root only)
  check          compare the current settings with the recommended ones; exit 1 if any differ
  --state-file F where --apply records old values (default: $STATE_DIR/NAME.state)
  --help         this text"

set_mode() {
    [ -z "$MODE" ] || die "choose one of --dry-run, --apply, --undo, check"
    MODE=$1
}

finish_setup() {
    [ -n "$MODE" ] || die "choose one of --dry-run, --apply, --undo, check (see --help)"
    STATE_FILE=${STATE_FILE:-$STATE_DIR/$STATE_NAME.state}
    case "$MODE" in
    apply)
        require_root
        [ ! -e "$STATE_FILE" ] || die "already applied: $STATE_FILE exists; run --undo first"
        ;;
    undo) require_root ;;
    esac
}

finish_check() {
    if [ "$CHECK_DIFFS" -gt 0 ]; then
        echo "$CHECK_DIFFS setting(s) differ from the recommendation"
        exit 1
    fi
    echo "all settings as recommended"
}
