#!/usr/bin/env bash
# The main job on a bundled example: make a real ext4 image pair, export
# the changes between them, rebuild the newer image from the older one plus
# the export, and check the result byte for byte.
#
# Usage: testdata/example.sh [WORKDIR]   (default: ./example)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=${1:-example}
mkdir -p "$work"
bin="${CARGO_TARGET_DIR:-$here/../target}/release/snapdelta"

echo "building snapdelta (release; the first build takes a few minutes)..."
cargo build --release --quiet --manifest-path "$here/../Cargo.toml"
"$here/make-ext4-pairs.sh" "$work" > /dev/null

cd "$work"
rm -f small.sdx small.raw small.raw.map rebuilt.img rebuilt-raw.img \
    small-base.sdm small-target.sdm from-manifest.sdx rebuilt-manifest.img
set -x
"$bin" diff --base small-base.img small-target.img | tail -n 1
"$bin" export --base small-base.img small-target.img -o small.sdx --compress zstd
"$bin" info small.sdx | head -n 9
"$bin" apply --base small-base.img small.sdx -o rebuilt.img
cmp rebuilt.img small-target.img
"$bin" export --base small-base.img small-target.img -o small.raw --output-type raw-sparse
"$bin" apply --base small-base.img small.raw -o rebuilt-raw.img
cmp rebuilt-raw.img small-target.img
# The same export from the base's block manifest, without the base image.
"$bin" manifest small-base.img -o small-base.sdm --block-size 4K
"$bin" export --base-manifest small-base.sdm small-target.img -o from-manifest.sdx \
    --compress zstd --manifest-out small-target.sdm
cmp from-manifest.sdx small.sdx
"$bin" apply --base small-base.img --base-manifest small-base.sdm from-manifest.sdx -o rebuilt-manifest.img
cmp rebuilt-manifest.img small-target.img
{ set +x; } 2>/dev/null
echo "example: every rebuilt image equals small-target.img, and the export from the manifest equals the one from the base"
