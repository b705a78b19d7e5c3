#!/usr/bin/env bash
# Build real ext4 snapshot image pairs (base + changed target) with e2fsprogs.
#
# Usage: testdata/make-ext4-pairs.sh OUTDIR
#
# Writes exactly six files into OUTDIR (created if missing):
#   small-base.img  small-target.img   32 MiB; target changed with debugfs
#   grown-base.img  grown-target.img   24 MiB base; target grown to 40 MiB
#                                      with resize2fs, then changed
#   churn-base.img  churn-target.img   48 MiB; ~40% of files removed and
#                                      many large random files written
# Images are regenerated on every run and are never committed (*.img is
# git-ignored). See testdata/README.md.
#
# Prints one line per pair on stdout:
#   NAME base=BYTES target=BYTES differing_64k_blocks=N/TOTAL
# N counts 64 KiB blocks whose bytes differ; the shorter image compares as if
# zero-extended, TOTAL is the number of 64 KiB blocks of the longer image.
# Exits non-zero if a tool is missing, any mkfs/debugfs/resize2fs step
# reports an error, e2fsck -fn is not clean, or a target equals its base.
set -euo pipefail

prog=${0##*/}
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

[[ $# -eq 1 && -n $1 ]] || { printf 'usage: %s OUTDIR\n' "$prog" >&2; exit 2; }
outdir=$1

# e2fsprogs lives in /usr/sbin, which is often not on a non-root PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
for tool in mkfs.ext4 debugfs resize2fs e2fsck python3 truncate cp; do
    # (bash's command -v may return a non-executable match; require -x)
    tool_path=$(command -v "$tool" 2>/dev/null) && [[ -x $tool_path ]] \
        || die "required tool '$tool' not found (searched PATH plus /usr/local/sbin:/usr/sbin:/sbin; mkfs.ext4, debugfs, resize2fs and e2fsck come from e2fsprogs)"
done
# Resolve the real interpreter once (version-manager shims cost ~0.2s a call).
PYTHON=$(python3 -c 'import sys; assert sys.version_info >= (3, 6); print(sys.executable)' 2>/dev/null) \
    && [[ -x $PYTHON ]] || die "python3 >= 3.6 is required"

# Reproducibility: fixed clock for libext2fs (mkfs/debugfs/resize2fs honour
# it), fixed umask, C locale.
export E2FSPROGS_FAKE_TIME=1700000000
export LC_ALL=C
umask 022
FIXED_TIME=$E2FSPROGS_FAKE_TIME

mkdir -p -- "$outdir"
names=(small-base small-target grown-base grown-target churn-base churn-target)
for n in "${names[@]}"; do rm -f -- "$outdir/$n.img"; done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/make-ext4-pairs.XXXXXX")
trap 'rm -rf -- "$scratch"' EXIT
scratch=$(cd "$scratch" && pwd -P)  # absolute: debugfs runs from other dirs
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Seeded content generator (python3, stdlib only).
#   gen.py tree DIR SEED NDIRS NTEXT NRAND RAND_MIN RAND_MAX ZERO_BYTES NLINKS
#   gen.py plan SRC IMGPREFIX PAYLOAD CMDFILE SEED NNEW NEW_MIN NEW_MAX
#               NOVERWRITE REMOVE_FRAC NREMOVE_MIN NEWDIR
#   gen.py fixup SRC CMDFILE TIME        (debugfs cmds pinning times/owner)
#   gen.py diff BASE TARGET              (count differing 64 KiB blocks)
# ---------------------------------------------------------------------------
cat >"$scratch/gen.py" <<'PY'
import os, random, sys

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo "
         "lima mike november oscar papa quebec romeo sierra tango uniform "
         "victor whiskey xray yankee zulu block extent inode journal bitmap "
         "superblock snapshot diff chunk sector").split()

def rand_bytes(rng, n):
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""

def text(rng, n):
    out, size = [], 0
    while size < n:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n].encode()

def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)

def tree(root, seed, ndirs, ntext, nrand, rmin, rmax, zero_bytes, nlinks):
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    dirs = [""]
    for i in range(ndirs):
        parent = rng.choice(dirs) if len(dirs) > 1 and rng.random() < 0.6 else ""
        d = os.path.join(parent, "dir%02d" % i) if parent else "dir%02d" % i
        if d.count("/") < 4:
            dirs.append(d)
        os.makedirs(os.path.join(root, d), exist_ok=True)
    files = []
    for i in range(ntext):
        rel = os.path.join(rng.choice(dirs), "note%03d.txt" % i)
        write(os.path.join(root, rel), text(rng, rng.randint(40, 12000)))
        files.append(rel)
    for i in range(nrand):
        rel = os.path.join(rng.choice(dirs), "blob%02d.bin" % i)
        write(os.path.join(root, rel), rand_bytes(rng, rng.randint(rmin, rmax)))
        files.append(rel)
    write(os.path.join(root, "zeros.bin"), bytes(zero_bytes))
    write(os.path.join(root, "empty"), b"")
    for i in range(nlinks):
        tgt = rng.choice(files)
        link = os.path.join(rng.choice(dirs), "link%02d" % i)
        rel = os.path.relpath(tgt, os.path.dirname(link) or ".")
        os.symlink(rel, os.path.join(root, link))
    # one slow (block-stored, > 60 byte) symlink and one dangling symlink
    os.symlink("/" + "/".join(["long-symlink-target-component"] * 4),
               os.path.join(root, "longlink"))
    os.symlink("does/not/exist", os.path.join(root, "dangling"))

def regular_files(src):
    out = []
    for dp, dns, fns in os.walk(src):
        dns.sort()
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append("/" + os.path.relpath(p, src))
    return sorted(out)

def plan(src, payload, cmdfile, seed, nnew, nmin, nmax, nover, rfrac, rmin_n, newdir):
    rng = random.Random(seed)
    os.makedirs(payload, exist_ok=True)
    files = regular_files(src)
    rng.shuffle(files)
    nrem = max(rmin_n, int(round(len(files) * rfrac)))
    overwrite, remove = files[:nover], files[nover:nover + nrem]
    cmds, k = [], 0
    def payload_file(data):
        nonlocal k
        name = "p%04d" % k  # relative: debugfs runs inside the payload dir
        k += 1
        with open(os.path.join(payload, name), "wb") as f:
            f.write(data)
        return name
    for p in sorted(remove):
        cmds.append("rm %s" % p)
    for p in sorted(overwrite):
        n = os.path.getsize(os.path.join(src, p.lstrip("/")))
        data = (text(rng, max(n, 64) + rng.randint(0, 3000)) if p.endswith(".txt")
                else rand_bytes(rng, max(n, 4096)))
        cmds.append("rm %s" % p)
        cmds.append("write %s %s" % (payload_file(data), p))
    cmds.append("mkdir /%s" % newdir)
    cmds.append("mkdir /%s/nested" % newdir)
    for i in range(nnew):
        where = ("/%s" % newdir, "/%s/nested" % newdir, "")[i % 3]
        data = rand_bytes(rng, rng.randint(nmin, nmax))
        cmds.append("write %s %s/new%02d.bin" % (payload_file(data), where, i))
    cmds.append("write %s /%s/readme.txt" % (payload_file(text(rng, 2000)), newdir))
    with open(cmdfile, "w") as f:
        f.write("\n".join(cmds) + "\n")

def fixup(src, cmdfile, t):
    # mkfs.ext4 -d copies ctime (not settable on the host) and uid/gid from
    # the source tree; pin them so images do not depend on when/who ran us.
    paths = ["/"]
    for dp, dns, fns in os.walk(src):
        dns.sort()
        for n in sorted(dns + fns):
            paths.append("/" + os.path.relpath(os.path.join(dp, n), src))
    with open(cmdfile, "w") as f:
        for p in paths:
            for field, val in (("uid", 0), ("gid", 0), ("atime", t),
                               ("mtime", t), ("ctime", t), ("crtime", t)):
                f.write("set_inode_field %s %s %s\n" % (p, field, val))

def diff(a, b, bs=64 * 1024):
    sa, sb = os.path.getsize(a), os.path.getsize(b)
    n = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(bs), fb.read(bs)
            if not x and not y:
                break
            # a shorter image compares as if zero-extended
            if x.ljust(bs, b"\0") != y.ljust(bs, b"\0"):
                n += 1
    total = (max(sa, sb) + bs - 1) // bs
    print("%d %d %d %d" % (sa, sb, n, total))

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "tree":
    tree(args[0], int(args[1]), *map(int, args[2:]))
elif cmd == "plan":
    plan(args[0], args[1], args[2], int(args[3]), int(args[4]), int(args[5]),
         int(args[6]), int(args[7]), float(args[8]), int(args[9]), args[10])
elif cmd == "fixup":
    fixup(args[0], args[1], int(args[2]))
elif cmd == "diff":
    diff(args[0], args[1])
else:
    sys.exit("unknown command " + cmd)
PY
gen() { "$PYTHON" "$scratch/gen.py" "$@"; }

# Run a debugfs command file read-write against IMG and fail on any error.
# debugfs exits 0 even when commands fail; it reports failures on stderr,
# where the only expected line is its version banner.
run_debugfs() { # IMG CMDFILE [DIR: where native source files live]
    local img=$1 cmds=$2 dir=${3:-$scratch} out err
    out=$scratch/debugfs.out err=$scratch/debugfs.err
    if ! (cd "$dir" && debugfs -w -f "$cmds" "$img") >"$out" 2>"$err"; then
        cat "$err" >&2; die "debugfs failed on $img"
    fi
    if grep -v -E '^debugfs [0-9.]+[^ ]* \(.*\)$' "$err" | grep -q .; then
        grep -v -E '^debugfs [0-9.]+[^ ]* \(.*\)$' "$err" | head -20 >&2
        die "debugfs reported errors on ${img##*/} (commands: $cmds)"
    fi
    # stdout should hold only echoed commands and "Allocated inode: N".
    if grep -v -E '^(debugfs: .*|Allocated inode: [0-9]+|)$' "$out" | grep -q .; then
        grep -v -E '^(debugfs: .*|Allocated inode: [0-9]+|)$' "$out" | head -20 >&2
        die "unexpected debugfs output on ${img##*/}"
    fi
}

fsck_clean() { # IMG
    if ! e2fsck -fn "$1" >"$scratch/fsck.out" 2>&1; then
        cat "$scratch/fsck.out" >&2
        die "e2fsck -fn reports problems in ${1##*/}"
    fi
}

# make_base NAME SIZE SEED TREE-ARGS...  -> $scratch/NAME-base.img, src in $scratch/NAME-src
make_base() {
    local name=$1 size=$2 seed=$3; shift 3
    local src=$scratch/$name-src img=$scratch/$name-base.img
    gen tree "$src" "$seed" "$@"
    truncate -s "$size" "$img"
    # Fixed UUID and directory hash seed, derived from the seed number.
    local uuid hs
    uuid=$(printf 'e47e4000-0000-4000-8000-%012x' "$seed")
    hs=$(printf '5eed0000-0000-4000-8000-%012x' "$seed")
    mkfs.ext4 -q -F -b 4096 -L "$name" -U "$uuid" \
        -E "hash_seed=$hs,root_owner=0:0,nodiscard" -d "$src" "$img" \
        >"$scratch/mkfs.out" 2>&1 || { cat "$scratch/mkfs.out" >&2; die "mkfs.ext4 failed for $name"; }
    gen fixup "$src" "$scratch/$name-fixup.cmds" "$FIXED_TIME"
    run_debugfs "$img" "$scratch/$name-fixup.cmds"
}

# change_target NAME SEED PLAN-ARGS...  (applies a seeded debugfs change plan)
change_target() {
    local name=$1 seed=$2; shift 2
    gen plan "$scratch/$name-src" "$scratch/$name-payload" "$scratch/$name.cmds" "$seed" "$@"
    run_debugfs "$scratch/$name-target.img" "$scratch/$name.cmds" "$scratch/$name-payload"
}

report() { # NAME
    local name=$1 b=$scratch/$1-base.img t=$scratch/$1-target.img counts sa sb n total
    fsck_clean "$b"
    fsck_clean "$t"
    counts=$(gen diff "$b" "$t")
    read -r sa sb n total <<<"$counts"
    (( n > 0 )) || die "$name: target is identical to base"
    printf '%-6s base=%d target=%d differing_64k_blocks=%d/%d\n' "$name" "$sa" "$sb" "$n" "$total"
}

start_ms=$(( $(date +%s%N) / 1000000 ))

# 1. small: 32 MiB, files added / overwritten / removed, directory created.
#    tree: dirs text rand rand_min rand_max zero_bytes links
make_base small 32M 1 24 300 8 102400 2097152 1048576 6
cp --sparse=always "$scratch/small-base.img" "$scratch/small-target.img"
#    plan: new new_min new_max overwrite remove_frac remove_min newdir
change_target small 101 8 4096 524288 10 0 15 added
report small

# 2. grown: 24 MiB base, target grown to 40 MiB with resize2fs, then changed.
make_base grown 24M 2 12 150 5 102400 1572864 1048576 4
cp --sparse=always "$scratch/grown-base.img" "$scratch/grown-target.img"
truncate -s 40M "$scratch/grown-target.img"
if ! resize2fs "$scratch/grown-target.img" 40M >"$scratch/resize.out" 2>&1; then
    if grep -q "e2fsck -f" "$scratch/resize.out"; then
        e2fsck -fy "$scratch/grown-target.img" >"$scratch/fsck.out" 2>&1 \
            || { cat "$scratch/fsck.out" >&2; die "e2fsck -fy failed before resize"; }
        resize2fs "$scratch/grown-target.img" 40M >"$scratch/resize.out" 2>&1 \
            || { cat "$scratch/resize.out" >&2; die "resize2fs failed"; }
    else
        cat "$scratch/resize.out" >&2; die "resize2fs failed"
    fi
fi
change_target grown 202 3 262144 6291456 0 0 1 grown
report grown

# 3. churn: 48 MiB, ~40% of files removed, many new large random files.
make_base churn 48M 3 30 400 12 102400 2097152 1048576 8
cp --sparse=always "$scratch/churn-base.img" "$scratch/churn-target.img"
change_target churn 303 24 262144 1048576 6 0.4 0 churn
report churn

for n in "${names[@]}"; do mv -- "$scratch/$n.img" "$outdir/$n.img"; done
ms=$(( $(date +%s%N) / 1000000 - start_ms ))
printf 'wrote 6 images to %s in %d.%03ds\n' "$outdir" $((ms / 1000)) $((ms % 1000))
