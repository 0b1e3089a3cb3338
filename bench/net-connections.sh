#!/usr/bin/env bash
# Parallel ranged downloads: nginx on 127.0.0.1 serves a raw image with a
# per-connection rate limit (`limit_rate`, default 100m bytes/s); the script
# times `curl -o FILE`, `diskimport convert --connections 1`,
# `--connections 4` and `diskimport convert` without the option (which tries
# 4 and keeps them if faster) of it (round-robin, BENCH_RUNS rounds), prints wall time,
# CPU seconds and peak RSS (from /usr/bin/time -v) per run, then a summary:
# the median time of each mode, the ratios of `--connections 4` to
# `--connections 1` and to curl (the goal: >= 3x), the same for the default,
# the largest peak RSS of
# each mode (the goal: < 64 MiB), and whether every output was identical to
# the image.
#
# usage: bench/net-connections.sh [WORKDIR] [SIZE]
#   WORKDIR  where the image and the targets go (default: a new temp directory)
#   SIZE     image size in MiB (default 2048; or env SIZE)
# env: RATE or BENCH_RATE (nginx limit_rate per connection, default 100m; on
#      a machine that cannot convert 4x the rate, take a smaller one such as
#      RATE=50m, or the ratio measures the CPU), BENCH_RUNS (default 3),
#      DISKIMPORT_BIN (a built binary; default: build target/release/diskimport)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
servers="$here/../shared/servers"
work=${1:-$(mktemp -d)}
size_mib=${2:-${SIZE:-2048}}
rate=${RATE:-${BENCH_RATE:-100m}}
runs=${BENCH_RUNS:-3}
bin=${DISKIMPORT_BIN:-$here/target/release/diskimport}
[ -n "${DISKIMPORT_BIN:-}" ] || (cd "$here" && cargo build --release --quiet)
mkdir -p "$work/www"

img="$work/www/disk.raw"
if [ ! -s "$img" ] || [ "$(stat -c %s "$img")" != $((size_mib << 20)) ]; then
  echo "making a ${size_mib} MiB image with data in every MiB (once; kept in $work)" >&2
  python3 - "$img" "$size_mib" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
with open(path, "wb") as f:
    for i in range(mib):
        f.write(i.to_bytes(8, "little") + block[8:])
PY
fi

# nginx's /slow/ location: limit_rate (per connection) after the first 64 KiB.
SLOW_RATE=$rate FOREGROUND=1 "$servers/nginx_start.sh" "$work/nginx" "$work/www" > "$work/nginx.log" 2>&1 &
nginx_pid=$!
trap 'kill "$nginx_pid" 2>/dev/null; wait "$nginx_pid" 2>/dev/null' EXIT
for _ in $(seq 100); do [ -s "$work/nginx/env" ] && break; sleep 0.1; done
. "$work/nginx/env"
url="http://127.0.0.1:$HTTP_PORT/slow/disk.raw"
for _ in $(seq 100); do curl -sf -o /dev/null -r 0-0 "$url" && break; sleep 0.1; done

results="$work/results.txt"
: > "$results"
measure() { # NAME CMD...: prints NAME wall cpu rss, and appends "NAME wall rss_kib" to $results
  local name=$1; shift
  /usr/bin/time -v -o "$work/time.txt" "$@" > /dev/null 2> "$work/err.txt" || {
    echo "$name failed: $(head -c 300 "$work/err.txt")" >&2; return 1; }
  awk -v n="$name" -v out="$results" -F': ' '
    /Elapsed \(wall clock\)/ { split($2, t, ":"); wall = (length(t) == 3) ? t[1]*3600 + t[2]*60 + t[3] : t[1]*60 + t[2] }
    /User time/ { u = $2 } /System time/ { s = $2 } /Maximum resident/ { rss = $2 }
    END { printf "%-14s %8.2f s wall %7.2f s cpu %7.1f MiB peak RSS\n", n, wall, u + s, rss / 1024
          printf "%s %f %d\n", n, wall, rss >> out }' "$work/time.txt"
}

identical=yes
echo "image: ${size_mib} MiB raw, nginx limit_rate $rate per connection, $runs rounds"
for round in $(seq "$runs"); do
  echo "-- round $round"
  rm -f "$work/out-curl.raw"
  measure curl curl -sf -o "$work/out-curl.raw" "$url"
  cmp -s "$img" "$work/out-curl.raw" || { echo "curl: output differs from the image" >&2; identical=no; }
  rm -f "$work/out-curl.raw"
  for n in 1 4 auto; do
    rm -f "$work/out-$n.raw"
    asked=(--connections "$n")
    [ "$n" != auto ] || asked=()
    measure "connections=$n" "$bin" convert --quiet "${asked[@]}" "$url" "$work/out-$n.raw"
    cmp -s "$img" "$work/out-$n.raw" || { echo "connections=$n: output differs from the image" >&2; identical=no; }
    rm -f "$work/out-$n.raw"
  done
done

echo "-- summary (median wall time of $runs rounds, largest peak RSS)"
awk -v identical="$identical" '
  { wall[$1] = wall[$1] " " $2; if ($3 > rss[$1]) rss[$1] = $3 }
  function median(list,   n, v, i, j, t) {
    n = split(list, v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  END {
    split("curl connections=1 connections=4 connections=auto", modes, " ")
    for (m = 1; m <= 4; m++) {
      name = modes[m]; med[name] = median(wall[name])
      printf "%-14s %8.2f s  peak RSS %6.1f MiB\n", name, med[name], rss[name] / 1024
    }
    c4 = med["connections=4"]
    printf "speed-up of --connections 4: %.2fx over --connections 1, %.2fx over curl (goal >= 3x)\n",
      med["connections=1"] / c4, med["curl"] / c4
    ca = med["connections=auto"]
    printf "speed-up of the default (no --connections): %.2fx over --connections 1, %.2fx over curl\n",
      med["connections=1"] / ca, med["curl"] / ca
    printf "peak RSS with --connections 4: %.1f MiB (goal < 64 MiB)\n", rss["connections=4"] / 1024
    printf "outputs identical to the image: %s\n", identical
  }' "$results"
[ "$identical" = yes ]
