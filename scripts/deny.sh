#!/usr/bin/env bash
# Dependency policy (deny.toml): licenses, bans and sources of the whole dependency tree, and the
# RustSec advisories where their database can be fetched. Installs cargo-deny when it is missing
# (about 5 minutes on 2 cores). `.ci/run` calls it.
#
# The advisory database is cloned from GitHub; where GitHub cannot be reached (this project's
# machines and CI), the advisories check is skipped with a notice (see deny.toml for the manual
# review) and the other three still run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version >/dev/null 2>&1; then
  echo "deny: installing cargo-deny"
  env -u CARGO_TARGET_DIR cargo install cargo-deny --locked --version 0.20.2
fi
checks=(licenses bans sources)
if timeout 20 git ls-remote --quiet https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  checks+=(advisories)
else
  echo "deny: advisories skipped: the RustSec database (GitHub) cannot be reached from here"
fi
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
status=0
cargo deny --locked check --hide-inclusion-graph "${checks[@]}" >"$out" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
  cat "$out"
else
  echo "deny: $(grep -c '^warning\[duplicate\]' "$out" || true) crates in more than one version (warnings, see deny.toml)"
  tail -n 1 "$out"
fi
exit "$status"
