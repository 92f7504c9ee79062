#!/usr/bin/env bash
# Builds and runs tern's cargo-fuzz targets (docs/fuzzing.md): every target in fuzz/ and
# storage/fuzz/, or the ones named as arguments (`page_decoder`, `http2_frame`, ...).
#
# Each crate is built once (`cargo +nightly fuzz build --debug-assertions`, so arithmetic
# overflow and debug_assert! are crashes too); then each target's binary runs for
# TERN_FUZZ_SECONDS (default 20) and one line per target gives its executions, corpus
# entries, CPU seconds and result. A crash, timeout or out-of-memory exits non-zero after
# the remaining targets ran, naming the input libFuzzer saved.
#
# Environment:
#   TERN_FUZZ_SECONDS   seconds per target (default 20)
#   TERN_FUZZ_CORPUS    directory for corpora and artifacts, <crate>-<target>/ and
#                       artifacts/<crate>-<target>/ under it (default: each crate's
#                       git-ignored corpus/ and artifacts/)
#   TERN_FUZZ_LEDGER    if set, a Markdown table each run appends a row to
#   TERN_FUZZ_PID_FILE  if set, each fuzzer's PID is appended to it (for SIGSTOP/SIGCONT)
#   TERN_FUZZ_NO_BUILD  if set, use the binaries already built
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${TERN_FUZZ_SECONDS:-20}
triple=$(rustc -vV | sed -n 's/^host: //p')
# A run stops at the first failing input; a case slower than this is a hang.
per_input_timeout=10
# Large enough for a Txn nested past etcd's 128 levels and for multi-page B+tree images.
max_len=200000

crates=(fuzz storage/fuzz)
status=0

for crate in "${crates[@]}"; do
    mapfile -t all < <(cd "$crate" && cargo +nightly fuzz list)
    targets=()
    for target in "${all[@]}"; do
        if (($# == 0)) || [[ " $* " == *" $target "* ]]; then
            targets+=("$target")
        fi
    done
    ((${#targets[@]})) || continue
    if [[ -z ${TERN_FUZZ_NO_BUILD:-} ]]; then
        echo "fuzz: building $crate" >&2
        (cd "$crate" && cargo +nightly fuzz build --debug-assertions 2>&1 | grep -E '^(error|warning: unused)' >&2) || true
    fi
    name=${crate//\//-}
    for target in "${targets[@]}"; do
        binary="$crate/target/$triple/release/$target"
        if [[ ! -x $binary ]]; then
            echo "fuzz: $crate/$target: not built ($binary missing)" >&2
            status=1
            continue
        fi
        if [[ -n ${TERN_FUZZ_CORPUS:-} ]]; then
            corpus="$TERN_FUZZ_CORPUS/$name-$target"
            artifacts="$TERN_FUZZ_CORPUS/artifacts/$name-$target"
        else
            corpus="$crate/corpus/$target"
            artifacts="$crate/artifacts/$target"
        fi
        mkdir -p "$corpus" "$artifacts"
        log=$(mktemp)
        started=$(date -u +%FT%TZ)
        # CPU seconds of the fuzzer (user + system): the growth of this shell's reaped
        # children's times (`times`, second line) across the wait.
        times >"$log.before"
        set +e
        "$binary" -max_total_time="$seconds" -timeout="$per_input_timeout" \
            -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$artifacts/" \
            "$corpus" >"$log" 2>&1 &
        pid=$!
        [[ -z ${TERN_FUZZ_PID_FILE:-} ]] || echo "$pid" >>"$TERN_FUZZ_PID_FILE"
        wait "$pid"
        rc=$?
        set -e
        times >"$log.after"
        cpu=$(cat "$log.before" "$log.after" | awk 'NR % 2 == 0 {
            n = 0
            for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); n += t[1] * 60 + t[2] }
            total[NR] = n
        } END { printf "%.0f", total[4] - total[2] }')
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        entries=$(find "$corpus" -type f | wc -l)
        saved=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        # libFuzzer's per-input timeout counts wall time, so a run paused with SIGSTOP (see
        # docs/fuzzing.md) reports one when resumed: replay the input to tell.
        if ((rc != 0)) && [[ $saved == */timeout-* ]] &&
            timeout $((4 * per_input_timeout)) "$binary" -timeout="$per_input_timeout" "$saved" >/dev/null 2>&1; then
            rc=0
            rm -f "$saved"
            saved=""
            note=" (a timeout that did not recur on replay: the run was paused)"
        else
            note=""
        fi
        if ((rc == 0)); then
            result="ok$note"
            crashes=0
        else
            result="FAILED (rc $rc): ${saved:-no input saved}"
            crashes=1
            status=1
        fi
        printf 'fuzz: %-28s %4ss %6s cpu-s %10s execs %6s corpus  %s\n' \
            "$crate/$target" "$seconds" "$cpu" "${execs:-?}" "$entries" "$result" >&2
        if ((rc != 0)); then
            grep -E '^(==[0-9]+==|SUMMARY|thread .* panicked|    [0-9]+: )' "$log" | head -20 >&2 || true
        fi
        if [[ -n ${TERN_FUZZ_LEDGER:-} ]]; then
            printf '| %s | %s/%s | %s | %s | %s | %s |\n' "$started" "$crate" "$target" \
                "$cpu" "${execs:-?}" "$entries" "$crashes${saved:+ ($saved)}" >>"$TERN_FUZZ_LEDGER"
        fi
        rm -f "$log" "$log.before" "$log.after"
    done
done
exit "$status"
