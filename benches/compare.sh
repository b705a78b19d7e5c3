#!/usr/bin/env bash
# Runs snapdelta beside its peers and the read limit on the same image
# pairs, with a warm page cache, and prints one table.
#
# Usage: benches/compare.sh [WORKDIR]     (default: /tmp/snapdelta-bench)
#        PAIRS="dense-10 ext4" RUNS=5 benches/compare.sh   (a subset, more runs)
#        ROWS=manifest benches/compare.sh   (only the read limit and the manifest rows)
#
# Pairs (made once, reused on later runs; about 14 GiB on disk):
#   dense-1, dense-10, dense-50   2 GiB random base, target with 1 %, 10 %
#                                 or 50 % of its 64 KiB blocks changed
#   ext4                          2 GiB ext4 made by mkfs.ext4 -d, target
#                                 changed with debugfs
#   sparse-8g                     8 GiB virtual, 200 MiB stored, 20 MiB changed
#   sparse-64g                    64 GiB virtual, 100 MiB stored, 10 MiB changed
#
# Rows, per pair: the read limit (cat of both images), the stored-data read
# limit on sparse pairs, b3sum of both images, qemu-img making the same
# qcow2 overlay (create over the target, then a content-comparing rebase
# onto the base), snapdelta's diff and each output type, and the write
# limit of the qcow2 overlay (dd of as many bytes, synced). Each command
# runs once to warm up and then RUNS times (default 3); the table shows
# the median wall time with its CPU time and peak resident memory, and
# the ratios of the wall time to the read limit and to qemu-img.
#
# Manifest rows, per pair: b3sum of the target alone (b3sum-target), then
# at 64 KiB (the manifest's default) and 4 KiB blocks: writing the
# target's manifest, manifest-based detection (diff --base-manifest, the
# base's manifest made once beforehand), and an export from the manifest
# that also writes the target's; x_b3t is the wall time over b3sum-target.
#
# Needs: a release build (cargo build --release), qemu-img, e2fsprogs,
# python3, GNU time (/usr/bin/time); b3sum if present.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/snapdelta-bench}
runs=${RUNS:-3}
pairs=${PAIRS:-dense-1 dense-10 dense-50 ext4 sparse-8g sparse-64g}
bin="$here/target/release/snapdelta"
export PATH="$PATH:/usr/sbin:/sbin"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
for tool in qemu-img mkfs.ext4 debugfs python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
mkdir -p "$work"
cd "$work"

# ---------------------------------------------------------------- pairs
change_blocks() { # FILE PERCENT SEED: rewrite bytes in PERCENT % of the 64 KiB blocks
    python3 - "$@" <<'PY'
import os, random, sys
path, percent, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
size = os.path.getsize(path)
blocks = size // 65536
fd = os.open(path, os.O_RDWR)
for b in rng.sample(range(blocks), int(blocks * percent / 100)):
    os.pwrite(fd, rng.randbytes(512), b * 65536 + rng.randrange(0, 65536 - 512))
os.close(fd)
PY
}

sparse_pair() { # NAME SIZE STORED_MIB CHANGED_MIB
    python3 - "$@" <<'PY'
import os, random, sys
name, size, stored, changed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(7)
mib = 1 << 20
slots = rng.sample(range(size // mib), stored)
with open(name + "-base.img", "wb") as f:
    f.truncate(size)
    for s in slots:
        f.seek(s * mib); f.write(rng.randbytes(mib))
os.system("cp --sparse=always %s-base.img %s-target.img" % (name, name))
with open(name + "-target.img", "r+b") as f:
    for s in rng.sample(slots, changed):
        f.seek(s * mib); f.write(rng.randbytes(mib))
PY
}

make_pairs() {
    if [ ! -e dense-base.img ]; then
        echo "making dense pairs..." >&2
        head -c 2G /dev/urandom > dense-base.img.tmp && mv dense-base.img.tmp dense-base.img
    fi
    for p in 1 10 50; do
        if [ ! -e "dense-$p-target.img" ]; then
            cp dense-base.img "dense-$p-target.img.tmp"
            change_blocks "dense-$p-target.img.tmp" "$p" "$p"
            mv "dense-$p-target.img.tmp" "dense-$p-target.img"
        fi
        ln -sf dense-base.img "dense-$p-base.img"
    done
    if [ ! -e ext4-target.img ]; then
        echo "making the ext4 pair..." >&2
        rm -rf ext4-src ext4-new && mkdir -p ext4-src ext4-new
        python3 - <<'PY'
import os, random
rng = random.Random(3)
for i in range(560):
    d = "ext4-src/d%02d" % (i % 20)
    os.makedirs(d, exist_ok=True)
    with open("%s/f%03d.bin" % (d, i), "wb") as f:
        f.write(rng.randbytes(rng.randrange(1, 4) << 20))
for i in range(40):
    with open("ext4-new/n%02d.bin" % i, "wb") as f:
        f.write(rng.randbytes(2 << 20))
PY
        mkfs.ext4 -q -F -b 4096 -d ext4-src ext4-base.img 2G
        cp ext4-base.img ext4-target.img
        {
            for i in $(seq 0 3 120); do echo "rm /d$(printf %02d $((i % 20)))/f$(printf %03d "$i").bin"; done
            for i in $(seq 0 39); do echo "write ext4-new/n$(printf %02d "$i").bin /n$(printf %02d "$i").bin"; done
        } > ext4-cmds
        debugfs -w -f ext4-cmds ext4-target.img > /dev/null 2>&1
        rm -rf ext4-src ext4-new ext4-cmds
    fi
    [ -e sparse-8g-target.img ] || sparse_pair sparse-8g $((8 << 30)) 200 20
    [ -e sparse-64g-target.img ] || sparse_pair sparse-64g $((64 << 30)) 100 10
}

# ---------------------------------------------------------------- timing
# measure LABEL CMD...: prints "LABEL wall cpu rss_kib" for the median run.
measure() {
    local label=$1; shift
    local f; f=$(mktemp)
    "$@" > /dev/null 2>&1 || { echo "$label FAILED: $*" >&2; rm -f "$f"; return 0; }
    for _ in $(seq "$runs"); do
        rm -f out.*
        /usr/bin/time -f "%e %U %S %M" -a -o "$f" "$@" > /dev/null 2>&1
    done
    sort -n "$f" | awk -v l="$label" '{w[NR]=$1; c[NR]=$2+$3; m[NR]=$4} END {i=int((NR+1)/2); printf "%s %.2f %.2f %d\n", l, w[i], c[i], m[i]}'
    rm -f "$f" out.*
}

# The bytes a sparse-aware reader must read: only the stored ranges.
read_stored='import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); pos = 0; size = os.fstat(fd).st_size
    while pos < size:
        try: start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError: break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        os.lseek(fd, start, os.SEEK_SET)
        left = end - start
        while left > 0:
            left -= len(os.read(fd, min(left, 1 << 20)))
        pos = end
    os.close(fd)'

make_pairs
echo "# $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(qemu-img --version | head -1)"
printf '%-11s %-30s %8s %8s %9s %8s %8s %8s\n' pair command wall_s cpu_s rss_mib x_read qemu/x x_b3t
for pair in $pairs; do
    base="$(readlink -f "$pair-base.img")"; target="$pair-target.img"
    cat "$base" "$target" > /dev/null  # warm the page cache
    rows=()
    rows+=("$(measure "read-limit(cat)" sh -c "cat '$base' '$target' > /dev/null")")
    if [ "${ROWS:-all}" = all ]; then
    case $pair in sparse-*) rows+=("$(measure "read-stored-data" python3 -c "$read_stored" "$base" "$target")") ;; esac
    command -v b3sum > /dev/null && rows+=("$(measure "b3sum" b3sum "$base" "$target")")
    rows+=("$(measure "qemu-img-rebase(qcow2)" sh -c "rm -f out.qemu.qcow2 &&
        qemu-img create -q -f qcow2 -b '$(readlink -f "$target")' -F raw out.qemu.qcow2 &&
        qemu-img rebase -b '$base' -F raw out.qemu.qcow2")")
    rows+=("$(measure "snapdelta-diff" "$bin" diff --base "$base" "$target")")
    for t in metadata-and-data metadata-only raw-sparse rbd-diff qcow2; do
        rows+=("$(measure "snapdelta-$t" "$bin" export --base "$base" "$target" -o "out.$t" --output-type "$t")")
    done
    rows+=("$(measure "snapdelta-qcow2-no-digest" "$bin" export --base "$base" "$target" -o out.q --output-type qcow2 --no-digest)")
    # The write limit of that overlay: copying as many bytes from the
    # page cache to a new file on the same disk, synced.
    "$bin" export --base "$base" "$target" -o out.size.qcow2 --output-type qcow2 > /dev/null
    bytes=$(stat -c %s out.size.qcow2); rm -f out.size.qcow2
    rows+=("$(measure "write-limit(qcow2-bytes)" dd if="$target" of=out.w bs=8M count="$bytes" iflag=count_bytes conv=fsync status=none)")
    fi
    command -v b3sum > /dev/null && rows+=("$(measure "b3sum-target" b3sum "$target")")
    for bs in 64K 4K; do
        [ -e "$pair-base.$bs.sdm" ] || "$bin" manifest "$base" -o "$pair-base.$bs.sdm" --block-size "$bs" > /dev/null
        rows+=("$(measure "snapdelta-manifest-$bs" "$bin" manifest "$target" -o out.sdm --block-size "$bs")")
        rows+=("$(measure "snapdelta-diff-manifest-$bs" "$bin" diff --base-manifest "$pair-base.$bs.sdm" "$target")")
        rows+=("$(measure "snapdelta-export-manifest-$bs" "$bin" export --base-manifest "$pair-base.$bs.sdm" "$target" -o out.sdx --manifest-out out.sdm)")
    done
    read_wall=$(printf '%s\n' "${rows[@]}" | awk '$1 ~ /^read-limit/ {print $2}')
    qemu_wall=$(printf '%s\n' "${rows[@]}" | awk '$1 ~ /^qemu-img/ {print $2}')
    b3t_wall=$(printf '%s\n' "${rows[@]}" | awk '$1 == "b3sum-target" {print $2}')
    printf '%s\n' "${rows[@]}" | awk -v p="$pair" -v r="$read_wall" -v q="$qemu_wall" -v b="$b3t_wall" '
        NF == 4 { x = (r > 0) ? $2 / r : 0; s = ($2 > 0 && q > 0) ? q / $2 : 0; t = (b > 0) ? $2 / b : 0
                  qs = (q > 0) ? sprintf("%8.2f", s) : sprintf("%8s", "-"); ts = (b > 0) ? sprintf("%8.2f", t) : sprintf("%8s", "-")
                  printf "%-11s %-30s %8.2f %8.2f %9.1f %8.2f %s %s\n", p, $1, $2, $3, $4 / 1024, x, qs, ts }'
done
