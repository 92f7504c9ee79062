#!/usr/bin/env bash
# tuning/disk.sh: I/O priority and block-device queue settings for tern's data dir.
#
# What it sets (see tuning/README.md for why each matters):
# - the I/O priority of every thread of a running tern (ionice best-effort level 0, or
#   real-time with --realtime), so a competing writer's requests queue behind the WAL's;
# - on each block device under --data-dir and --wal-dir (partitions resolve to their disk,
#   device-mapper and md devices to the disks beneath them): the I/O scheduler (none for
#   NVMe, mq-deadline for other disks), read_ahead_kb (16 on solid-state disks: the B+tree
#   is read through mmap in small random pages) and, when asked, nr_requests.
# It warns, and changes nothing, for a data dir on a network or memory filesystem and for a
# device whose write cache the kernel has been told is write-through while the device
# reports write-back (flushes are then skipped and an acknowledged write can be lost).
set -euo pipefail
SCRIPT=disk.sh
STATE_NAME=disk
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

IONICE_CLASS=2
NR_REQUESTS=""
READ_AHEAD_KB=""
SCHEDULER=""

usage() {
    cat <<EOF
Usage: tuning/disk.sh MODE (--pid PID | --data-dir DIR) [options]

Gives a running tern the best I/O priority and tunes the queue of the block device(s)
that hold its data dir and WAL.

Modes:
${MODE_ARGS_HELP//NAME/disk}

Which tern:
  --pid PID          a running tern: its threads get the I/O priority, and --data-dir,
                     --wal-dir are read from its command line and ETCD_* environment
  --data-dir DIR     tern's --data-dir (the WAL is in DIR/member/wal)
  --wal-dir DIR      tern's --wal-dir, if set (tern accepts it but keeps the WAL in the
                     data dir for now; its device is tuned as well)

Options:
  --realtime         ionice class 1 (real-time) level 0 instead of best-effort level 0;
                     a real-time tern can starve every other process's disk I/O
  --scheduler NAME   I/O scheduler to set instead of the recommended one
  --read-ahead-kb N  read_ahead_kb to set instead of 16 (solid-state disks)
  --nr-requests N    also set the queue's nr_requests (default: leave it)

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
    --data-dir) DATA_DIR=${2:?--data-dir needs a path} && shift ;;
    --wal-dir) WAL_DIR=${2:?--wal-dir needs a path} && shift ;;
    --realtime) IONICE_CLASS=1 ;;
    --scheduler) SCHEDULER=${2:?--scheduler needs a name} && shift ;;
    --read-ahead-kb) READ_AHEAD_KB=${2:?--read-ahead-kb needs a number} && shift ;;
    --nr-requests) NR_REQUESTS=${2:?--nr-requests needs a number} && shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
finish_setup

undo_entry() {
    case "$1" in
    ionice)
        local tid=$2 class=$3 level=$4
        if [ ! -d "$PROC/$tid" ]; then
            note "thread $tid has exited; nothing to restore"
        elif [ "$class" = 0 ]; then
            run ionice -c0 -p "$tid"
        else
            run ionice -c"$class" -n"$level" -p "$tid"
        fi
        ;;
    *) undo_common_entry "$@" ;;
    esac
}

if [ "$MODE" = undo ]; then
    do_undo
    exit 0
fi

[ -z "$TERN_PID" ] || read_tern_config "$TERN_PID"
[ -n "$DATA_DIR" ] || die "name tern with --pid PID or --data-dir DIR"

# ---------------------------------------------------------------- I/O priority

# "best-effort: prio 0" / "realtime: prio 4" / "none: prio 0" / "idle" -> "CLASS LEVEL".
ionice_of() {
    local out
    out=$(ionice -p "$1" 2>/dev/null) || return 1
    case "$out" in
    none*) echo "0 ${out##* }" ;;
    realtime*) echo "1 ${out##* }" ;;
    best-effort*) echo "2 ${out##* }" ;;
    idle*) echo "3 0" ;;
    *) return 1 ;;
    esac
}

ionice_names=(none realtime best-effort idle)

tune_ionice() {
    if [ -z "$TERN_PID" ]; then
        note "no --pid: I/O priority is per process; set IOSchedulingClass= and IOSchedulingPriority= in tern's unit (tuning/README.md)"
        return
    fi
    local tid current
    local -a change=()
    for tid in "$PROC/$TERN_PID"/task/*; do
        tid=${tid##*/}
        current=$(ionice_of "$tid") || {
            note "thread $tid: cannot read its I/O priority; skipped"
            continue
        }
        if [ "$MODE" = check ]; then
            compare "ionice of thread $tid" "${ionice_names[${current% *}]} level ${current#* }" "${ionice_names[$IONICE_CLASS]} level 0"
        elif [ "$current" != "$IONICE_CLASS 0" ]; then
            change+=("$tid")
            [ "$MODE" = apply ] && state_record ionice "$tid" "${current% *}" "${current#* }"
        fi
    done
    if [ "${#change[@]}" -gt 0 ]; then
        run ionice -c"$IONICE_CLASS" -n0 -p "${change[@]}"
    fi
}

# ---------------------------------------------------------------- devices

# tern's own mount table when it is named by PID (it may run in another mount namespace,
# a container), else this process's.
mountinfo_file() {
    if [ -n "$TERN_PID" ] && [ -r "$PROC/$TERN_PID/mountinfo" ]; then
        echo "$PROC/$TERN_PID/mountinfo"
    else
        echo "$PROC/self/mountinfo"
    fi
}

# mount_of PATH: "MAJ:MIN FSTYPE SOURCE MOUNTPOINT" of the mount holding PATH (longest
# mount-point prefix in mountinfo; the last mount of a point wins, as in the kernel).
mount_of() {
    awk -v path="$1" '
        {
            for (i = 7; $i != "-"; i++) {}
            point = $5; gsub(/\\040/, " ", point)
            if (path == point || point == "/" || index(path, point "/") == 1) {
                if (length(point) >= best_len) { best_len = length(point); best = $3 " " $(i + 1) " " $(i + 2) " " point }
            }
        }
        END { if (best == "") exit 1; print best }' "$(mountinfo_file)"
}

# devices_of SYSFS_DEVICE_DIR: "ROLE DIR" lines for the devices under a filesystem. The
# top device ("top": a partition's disk, or the dm/md device itself) owns the readahead the
# page cache uses; the whole disks at the bottom ("leaf": the slaves of a dm/md device,
# recursively) own the I/O scheduler and request queue. A plain disk is both ("both").
devices_of() {
    local dev=$1
    [ -f "$dev/partition" ] && dev=$(dirname "$dev")
    if [ -d "$dev/slaves" ] && [ -n "$(ls "$dev/slaves")" ]; then
        echo "top $dev"
        leaf_disks_of "$dev"
    else
        echo "both $dev"
    fi
}

leaf_disks_of() {
    local dev=$1 slave
    [ -f "$dev/partition" ] && dev=$(dirname "$dev")
    if [ -d "$dev/slaves" ] && [ -n "$(ls "$dev/slaves")" ]; then
        for slave in "$dev"/slaves/*; do
            leaf_disks_of "$(cd "$slave" && pwd -P)"
        done
    else
        echo "leaf $dev"
    fi
}

network_fs() {
    case "$1" in
    nfs | nfs4 | cifs | smb3 | smbfs | ceph | glusterfs | 9p | afs | fuse.sshfs | fuse.glusterfs | fuse.cephfs | lustre | gpfs | ocfs2 | gfs2) return 0 ;;
    *) return 1 ;;
    esac
}

# recommended_scheduler DISK_DIR: none for NVMe, mq-deadline otherwise, if offered.
recommended_scheduler() {
    local disk=$1 name want available
    name=$(basename "$disk")
    if [ -n "$SCHEDULER" ]; then
        want=$SCHEDULER
    elif [[ $name == nvme* ]]; then
        want=none
    else
        want=mq-deadline
    fi
    available=$(cat "$disk/queue/scheduler")
    if [[ " ${available//[\[\]]/} " == *" $want "* ]]; then
        echo "$want"
    fi
}

# write_cache_warnings DISK_DIR: what the cache settings mean for durability.
write_cache_warnings() {
    local disk=$1 name cache fua scsi_cache
    name=$(basename "$disk")
    cache=$(cat "$disk/queue/write_cache" 2>/dev/null) || return 0
    fua=$(cat "$disk/queue/fua" 2>/dev/null || echo 0)
    scsi_cache=$(cat "$disk"/device/scsi_disk/*/cache_type 2>/dev/null | head -n1 || true)
    if [ "$cache" = "write through" ] && [[ $scsi_cache == "write back"* ]]; then
        [ "$MODE" != check ] || report DIFF "$name write cache" "kernel: write through, device: $scsi_cache" "write back (the device's own setting)"
        note "WARNING: $name reports a volatile write-back cache but the kernel treats it as write-through ($disk/queue/write_cache): fdatasync sends no flush, so an acknowledged write can be lost on power failure; echo 'write back' > $disk/queue/write_cache unless the cache is battery- or capacitor-backed"
        return 0
    fi
    if [ "$cache" = "write back" ] && [ "$fua" = 0 ]; then
        note "$name: write-back cache without FUA: every WAL fdatasync becomes a full cache flush; a device with power-loss protection (or one that supports FUA) has lower fsync latency"
    fi
    if [ "$cache" = "write through" ] && [[ $name == vd* || $name == xvd* ]]; then
        note "$name: a virtual disk reporting write-through: durability depends on the hypervisor's cache mode (it must not be 'unsafe')"
    fi
}

tune_device_dir() {
    local label=$1 dir=$2 mount majmin fstype source point dev disk
    [ -n "$ROOT" ] || dir=$(realpath -m "$dir")
    mount=$(mount_of "$dir") || die "cannot find the mount holding $dir"
    read -r majmin fstype source point <<<"$mount"
    if network_fs "$fstype"; then
        note "WARNING: $label $dir is on a network filesystem ($fstype at $point): every fsync waits for the network and the server; tern (like etcd) wants a local disk"
        echo "fs ${label// /-} $fstype"
        return
    fi
    case "$fstype" in
    tmpfs | ramfs)
        note "WARNING: $label $dir is on $fstype: nothing survives a reboot"
        echo "fs ${label// /-} $fstype"
        return
        ;;
    esac
    if [ -e "$SYS/dev/block/$majmin" ]; then
        dev=$(cd "$SYS/dev/block/$majmin" && pwd -P)
    elif [[ $source == /dev/* ]] && [ -e "$SYS/class/block/${source#/dev/}" ]; then
        dev=$(cd "$SYS/class/block/${source#/dev/}" && pwd -P)
    else
        note "$label $dir is on $fstype ($source), which has no block device to tune"
        return
    fi
    devices_of "$dev"
}

tune_disk() {
    local role=$1 disk=$2
    [ "$role" = top ] || tune_queue "$disk"
    [ "$role" = leaf ] || tune_read_ahead "$disk"
}

tune_queue() {
    local disk=$1 name queue want current
    name=$(basename "$disk")
    queue=$disk/queue
    write_cache_warnings "$disk"
    want=$(recommended_scheduler "$disk")
    current=$(read_setting "$queue/scheduler")
    if [ -z "$want" ]; then
        note "$name: scheduler ${SCHEDULER:-none/mq-deadline} not offered by this kernel ($(cat "$queue/scheduler")); left at $current"
    elif [ "$MODE" = check ]; then
        compare "$name scheduler" "$current" "$want"
    elif [ "$current" != "$want" ]; then
        set_file "$queue/scheduler" "$want" || true
    fi
    if [ "$want" = none ] && [ -n "$TERN_PID" ] && [ "$MODE" != check ]; then
        note "$name: the 'none' scheduler ignores I/O priorities, so ionice changes nothing on this device (it does under mq-deadline and bfq); NVMe's own deep queues keep the WAL's writes from waiting long"
    fi

    current=$(read_setting "$queue/nr_requests")
    if [ -z "$NR_REQUESTS" ]; then
        [ "$MODE" != check ] || report info "$name nr_requests" "$current" "leave it; --nr-requests N to set"
    elif [ "$MODE" = check ]; then
        compare "$name nr_requests" "$current" "$NR_REQUESTS"
    elif [ "$current" != "$NR_REQUESTS" ]; then
        set_file "$queue/nr_requests" "$NR_REQUESTS" || true
    fi
}

tune_read_ahead() {
    local disk=$1 name queue current rotational want_ra
    name=$(basename "$disk")
    queue=$disk/queue
    rotational=$(cat "$queue/rotational" 2>/dev/null || echo 1)
    want_ra=$READ_AHEAD_KB
    [ -n "$want_ra" ] || [ "$rotational" = 1 ] || want_ra=16
    if [ -n "$want_ra" ]; then
        current=$(read_setting "$queue/read_ahead_kb")
        if [ "$MODE" = check ]; then
            compare "$name read_ahead_kb" "$current" "$want_ra"
        elif [ "$current" != "$want_ra" ]; then
            set_file "$queue/read_ahead_kb" "$want_ra" || true
        fi
    fi
}

tune_ionice
disks=$(
    tune_device_dir "data dir" "$DATA_DIR"
    if [ -n "$WAL_DIR" ]; then
        note "tern accepts --wal-dir but keeps its WAL in $DATA_DIR/member/wal for now; tuning the --wal-dir device as well"
        tune_device_dir "wal dir" "$WAL_DIR"
    fi
)
while read -r role disk fstype; do
    case "$role" in
    "") ;;
    fs) [ "$MODE" != check ] || report DIFF "$disk filesystem" "$fstype" "a local disk filesystem" ;;
    *) tune_disk "$role" "$disk" ;;
    esac
done < <(sort -u <<<"$disks")
[ "$MODE" != check ] || finish_check
