#!/usr/bin/env bash
# The side-by-side benchmark of ../shared/bench/vs_anchors.sh under the CPU limit
# of CDI's importer pod (`limits: cpu: 750m`): a cgroup v1 `cpu` directory with
# cpu.cfs_period_us=100000 and cpu.cfs_quota_us=75000, this script moved into it
# first, so diskimport and every anchor run inside the same quota. The directory
# is removed at the end (after this script has left it).
#
# usage: DISKIMPORT_BIN=target/release/diskimport bench/vs-anchors-quota.sh
#   the environment of vs_anchors.sh applies (RUNS, IMAGES, ROWS, CORPUS);
#   RESULTS defaults to a directory of its own, QUOTA_US to 75000 (750m).
# Needs root and a cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
: "${DISKIMPORT_BIN:?set DISKIMPORT_BIN}"
cpu=/sys/fs/cgroup/cpu
[ -w "$cpu/cgroup.procs" ] || { echo "no writable cgroup v1 cpu hierarchy at $cpu" >&2; exit 2; }
group="$cpu/diskimport-bench-$$"
mkdir "$group"
leave() {
  echo $$ > "$cpu/cgroup.procs" 2>/dev/null || true
  rmdir "$group" 2>/dev/null || true
}
trap leave EXIT
echo 100000 > "$group/cpu.cfs_period_us"
echo "${QUOTA_US:-75000}" > "$group/cpu.cfs_quota_us"
echo $$ > "$group/cgroup.procs"
echo "running inside $(basename "$group"): quota $(cat "$group/cpu.cfs_quota_us") us per $(cat "$group/cpu.cfs_period_us") us" >&2
export RESULTS=${RESULTS:-${TMPDIR:-/var/tmp}/diskimport-bench-results-quota}
status=0
"$here/../shared/bench/vs_anchors.sh" || status=$?
echo "throttled periods: $(awk '/nr_throttled/ {print $2}' "$group/cpu.stat") of $(awk '/nr_periods/ {print $2}' "$group/cpu.stat")" >&2
exit $status
