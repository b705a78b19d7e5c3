#!/usr/bin/env bash
# Seeds fuzz/corpus/TARGET/ with real exports made by the snapdelta binary
# (and qcow2 overlays made by qemu-img, when it is installed), so that the
# fuzzers start from inputs that pass the decoders' first checks.
#
#   fuzz/seed.sh [SNAPDELTA]    (default: target/release/snapdelta)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/snapdelta}
corpus=$here/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# The base of the apply_export target (checks::apply_base) and targets
# that differ from it in a few blocks, grow, shrink or zero.
python3 - <<'PY'
base = bytearray((i // 4096 * 7 + 1) & 0xFF for i in range(192 * 1024))
base[8192:12288] = bytes(4096)
open("base.img", "wb").write(base)
def variant(name, edits, size=len(base)):
    t = bytearray(base[:size]) + bytearray(max(0, size - len(base)))
    for at, n, b in edits:
        t[at:at + n] = bytes([b]) * n
    open(name, "wb").write(t)
variant("t1.img", [(4096, 4096, 0x22), (65536, 8192, 0x33)])
variant("t2.img", [(0, 4096, 0), (100000, 5000, 0x44)])
variant("t3.img", [(200000, 3000, 0x55)], size=210000)
variant("t4.img", [(5000, 100, 0x66)], size=100001)
PY

mkdir -p "$corpus"/{extent_list_decode,rbd_diff_decode,qcow2_read,apply_export,encode_roundtrip,manifest_decode}
n=0
for t in t1 t2 t3 t4; do
  for args in "--output-type metadata-and-data" "--output-type metadata-and-data --compress zstd" \
              "--output-type metadata-only" "--output-type metadata-and-data --no-digest"; do
    n=$((n + 1))
    "$bin" export --base base.img "$t.img" $args --block-size 4K -o "e$n" --force >/dev/null
    cp "e$n" "$corpus/extent_list_decode/e$n"
    cp "e$n" "$corpus/apply_export/e$n"
  done
  for bs in 4K 64K; do
    "$bin" manifest "$t.img" --block-size $bs -o "$corpus/manifest_decode/m-$t-$bs" --force >/dev/null
  done
  "$bin" export --base base.img "$t.img" --output-type raw-sparse -o "r$t" --force >/dev/null
  cp "r$t.map" "$corpus/extent_list_decode/map-$t"
  "$bin" export --base base.img "$t.img" --output-type rbd-diff --from-snap a --to-snap b -o "d$t" --force >/dev/null
  cp "d$t" "$corpus/rbd_diff_decode/d$t"
  cp "d$t" "$corpus/apply_export/d$t"
  for c in "" "--compress zstd"; do
    n=$((n + 1))
    "$bin" export --base base.img "$t.img" --output-type qcow2 --block-size 4K $c -o "q$n" --force >/dev/null
    cp "q$n" "$corpus/qcow2_read/q$n"
    cp "q$n" "$corpus/apply_export/q$n"
  done
done
if command -v qemu-img >/dev/null; then
  qemu-img create -q -f qcow2 -o cluster_size=4096 -b t1.img -F raw qa
  qemu-img rebase -q -b base.img -F raw qa
  qemu-img convert -q -O qcow2 -c -o cluster_size=4096 t2.img qb
  qemu-img convert -q -O qcow2 -o compat=0.10,cluster_size=4096 t3.img qc
  for q in qa qb qc; do cp "$q" "$corpus/qcow2_read/$q"; cp "$q" "$corpus/apply_export/$q"; done
fi
# Round-trip seeds: a choice byte, then sizes, a seed and some writes.
for i in 0 1 2 3 4 5 134 135; do
  python3 -c "import sys,os; sys.stdout.buffer.write(bytes([$i]) + os.urandom(40))" \
    > "$corpus/encode_roundtrip/s$i"
done
echo "seeded $(find "$corpus" -type f | wc -l) inputs under $corpus"
