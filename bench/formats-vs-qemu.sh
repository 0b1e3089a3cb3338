#!/usr/bin/env bash
# diskimport against `qemu-img convert` (as CDI runs it: -t none, to a file made
# durable) on the formats qemu-img converts natively besides qcow2: a
# streamOptimized VMDK, a dynamic VHDX, a dynamic VHD and a dynamic VDI, all made
# once from the same raw disk (the bench corpus's dense.raw by default). Runs
# round-robin in one go with ../shared/bench/rr_bench.py, so every ratio is
# diskimport/qemu-img within the same round (< 1 = diskimport faster), then prints
# the peak RSS of every row and checks that both outputs are identical.
#
# usage: bench/formats-vs-qemu.sh [RAW]
#   RAW     the source disk (default: $CORPUS/dense.raw, CORPUS as in
#           ../shared/bench/make_corpus.sh)
# env: FORMATS (default "vmdk-stream vhdx vhd vdi"), RUNS (default 3),
#      WORK (where images and outputs go; default ${TMPDIR:-/var/tmp}/diskimport-formats-bench),
#      DISKIMPORT_BIN (default target/release/diskimport)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
corpus=${CORPUS:-${TMPDIR:-/var/tmp}/diskimport-bench-corpus}
raw=${1:-$corpus/dense.raw}
runs=${RUNS:-3}
formats=${FORMATS:-"vmdk-stream vhdx vhd vdi"}
work=${WORK:-${TMPDIR:-/var/tmp}/diskimport-formats-bench}
bin=${DISKIMPORT_BIN:-$here/target/release/diskimport}
rr=$here/../shared/bench/rr_bench.py
[[ -f $raw ]] || { echo "no source disk $raw (run ../shared/bench/make_corpus.sh or pass RAW)" >&2; exit 1; }
[[ -x $bin ]] || { echo "no binary $bin (cargo build --release)" >&2; exit 1; }
[[ -f $rr ]] || { echo "needs $rr" >&2; exit 1; }
mkdir -p "$work"
name=$(basename "${raw%.raw}")
out=$work/out.raw
trap 'rm -f "$out"' EXIT

image_of() { # FORMAT -> path, made once
    local f=$1 path
    case $f in
        vmdk-stream) path=$work/$name.stream.vmdk; opts=(-O vmdk -o subformat=streamOptimized) ;;
        vhdx) path=$work/$name.vhdx; opts=(-O vhdx) ;;
        vhd) path=$work/$name.vhd; opts=(-O vpc) ;;
        vdi) path=$work/$name.vdi; opts=(-O vdi) ;;
        *) echo "unknown format $f" >&2; exit 1 ;;
    esac
    if [[ ! -s $path ]]; then
        echo "making $path (once)" >&2
        qemu-img convert -f raw "${opts[@]}" "$raw" "$path.tmp" && mv "$path.tmp" "$path"
    fi
    echo "$path"
}
qemu_format() { case $1 in vmdk-stream) echo vmdk ;; vhd) echo vpc ;; *) echo "$1" ;; esac; }

spec=$work/formats.spec
: >"$spec"
row() { printf '%s\t%s\t-\t%s\t%s\t%s\t%s\n' "$1" "$2" "$out" "$3" "$4" "${5:--}" >>"$spec"; }
for f in $formats; do
    img=$(image_of "$f")
    vsize=$(qemu-img info --output=json -f "$(qemu_format "$f")" "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    insize=$(stat -c %s "$img")
    anchor="qemu-img -t none $f -> file"
    row "$anchor" "qemu-img convert -t none -f $(qemu_format "$f") -O raw $img $out && sync $out" "$vsize" "$insize"
    row "diskimport $f -> file" "$bin convert --quiet $img $out" "$vsize" "$insize" "$anchor"
done

# Identical outputs, checked once per format before the timed rounds.
for f in $formats; do
    img=$(image_of "$f")
    qemu-img convert -f "$(qemu_format "$f")" -O raw "$img" "$work/ref.raw"
    "$bin" convert --quiet "$img" "$out"
    if cmp -s "$work/ref.raw" "$out"; then echo "$f: identical to qemu-img" >&2
    else echo "$f: OUTPUT DIFFERS from qemu-img" >&2; exit 1; fi
    rm -f "$work/ref.raw" "$out"
done

python3 "$rr" --spec "$spec" --runs "$runs" --out "$work/formats" --title "formats vs qemu-img ($name, $(nproc) cores)"
python3 - "$work/formats.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
rows = data["rows"] if isinstance(data, dict) and "rows" in data else data
print("\n| name | peak RSS MiB (max over rounds) |\n|---|---:|")
for r in rows:
    print(f"| {r['name']} | {max(r['rss'])/1024:.1f} |")
PY
