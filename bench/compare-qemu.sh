#!/usr/bin/env bash
# Side-by-side: `diskimport convert` against `qemu-img convert -O raw` on the same
# qcow2, built from a real filesystem. Prints wall time, CPU and peak memory of
# each (from /usr/bin/time -v) and the ratios, and checks the outputs match.
#
# usage: bench/compare-qemu.sh [WORKDIR] [SIZE]
#   WORKDIR  where the images go (default: a directory under ${TMPDIR:-/tmp})
#   SIZE     virtual size of the filesystem image (default 2G)
# env: BENCH_TREE  directory tree to copy into the filesystem (default: /usr/share
#      and /usr/bin and /usr/include, trimmed to fit), BENCH_RUNS (default 3),
#      BENCH_EXTRA  extra qcow2 options for the image, e.g. "-c" for compressed,
#      BENCH_FORMAT the image format (default qcow2; e.g. BENCH_FORMAT=vmdk
#      BENCH_EXTRA="-o subformat=streamOptimized").
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-${TMPDIR:-/tmp}/diskimport-bench}
size=${2:-2G}
runs=${BENCH_RUNS:-3}
mkdir -p "$work"
bin="$here/target/release/diskimport"
(cd "$here" && cargo build --release --quiet)

fs="$work/fs-$size.img"
format=${BENCH_FORMAT:-qcow2}
img="$work/fs-$size${BENCH_EXTRA:+-c}.$format"
if [ ! -s "$img" ]; then
  echo "building a $size ext4 image from a real tree (once; kept in $work)" >&2
  tree=${BENCH_TREE:-}
  if [ -z "$tree" ]; then
    tree="$work/tree"
    rm -rf "$tree"; mkdir -p "$tree"
    for d in /usr/share /usr/bin /usr/include /usr/libexec; do
      [ -d "$d" ] && cp -a "$d" "$tree/" 2>/dev/null || true
    done
  fi
  rm -f "$fs"
  truncate -s "$size" "$fs"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -d "$tree" "$fs"
  qemu-img convert -O "$format" ${BENCH_EXTRA:-} "$fs" "$img"
  rm -f "$fs"
fi
echo "image: $(qemu-img info "$img" | grep -E 'virtual size|disk size' | tr '\n' ' ')"

# Each run starts from the same state: outputs removed, dirty pages written,
# and (when we may) the page cache dropped, so both tools read the image cold.
drop_caches() {
  sync
  if [ -w /proc/sys/vm/drop_caches ] && [ "${BENCH_DROP_CACHES:-1}" = 1 ]; then
    echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  fi
}

measure() { # name outfile command...
  local name=$1 out=$2; shift 2
  rm -f "$out"; drop_caches
  /usr/bin/time -v "$@" 2> "$work/$name.time" >/dev/null
  local wall user sys rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {split($2,t,":"); if (length(t)==3) print t[1]*3600+t[2]*60+t[3]; else print t[1]*60+t[2]}' "$work/$name.time")
  user=$(awk -F': ' '/User time/ {print $2}' "$work/$name.time")
  sys=$(awk -F': ' '/System time/ {print $2}' "$work/$name.time")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/$name.time")
  echo "$name $wall $user $sys $rss"
}

printf '%-10s %8s %8s %8s %10s\n' tool wall_s user_s sys_s peak_MiB
declare -A best_wall best_rss
for run in $(seq "$runs"); do
  # qemu-img's default cache mode for convert never syncs; "-t writeback"
  # flushes at the end, as diskimport always does. Both are shown.
  for tool in qemu-img qemu-sync diskimport; do
    if [ "$tool" = qemu-img ]; then
      line=$(measure qemu-img "$work/out-qemu.raw" qemu-img convert -O raw "$img" "$work/out-qemu.raw")
    elif [ "$tool" = qemu-sync ]; then
      line=$(measure qemu-sync "$work/out-qemu.raw" qemu-img convert -t writeback -O raw "$img" "$work/out-qemu.raw")
    else
      line=$(measure diskimport "$work/out-di.raw" "$bin" convert --quiet "$img" "$work/out-di.raw")
    fi
    read -r n wall user sys rss <<<"$line"
    printf '%-10s %8.2f %8.2f %8.2f %10.1f\n' "$n" "$wall" "$user" "$sys" "$(echo "$rss/1024" | bc -l)"
    if [ -z "${best_wall[$n]:-}" ] || (( $(echo "$wall < ${best_wall[$n]}" | bc -l) )); then best_wall[$n]=$wall; fi
    if [ -z "${best_rss[$n]:-}" ] || (( rss > ${best_rss[$n]} )); then best_rss[$n]=$rss; fi
  done
done
cmp "$work/out-qemu.raw" "$work/out-di.raw" && echo "outputs identical"
echo "best wall: qemu-img ${best_wall[qemu-img]} s (no sync), qemu-img -t writeback ${best_wall[qemu-sync]} s, diskimport ${best_wall[diskimport]} s (synced)"
echo "speed ratio vs qemu-img without sync (qemu time / diskimport time): $(echo "${best_wall[qemu-img]} / ${best_wall[diskimport]}" | bc -l | cut -c1-5)"
echo "speed ratio vs qemu-img -t writeback (qemu time / diskimport time): $(echo "${best_wall[qemu-sync]} / ${best_wall[diskimport]}" | bc -l | cut -c1-5)"
echo "peak RSS: qemu-img $((best_rss[qemu-img]/1024)) MiB, diskimport $((best_rss[diskimport]/1024)) MiB"
rm -f "$work/out-qemu.raw" "$work/out-di.raw"
