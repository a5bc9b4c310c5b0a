#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a bounded time: `scripts/fuzz.sh [seconds]`
# (default 60 s per target; `FUZZ_TARGETS="a b"` picks targets). Exits non-zero when a target
# crashes, fails one of its assertions, or hangs; the input is left in fuzz/artifacts/<target>/
# (replay: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a <target> <file>`).
#
# The targets do no I/O: no network, no files but the corpus. The toolchain is stable, and
# cargo-fuzz passes nightly-only rustc flags (-Zsanitizer=address, -Cpasses=sancov-module, ...):
# RUSTC_BOOTSTRAP=1 lets stable rustc accept them (stable's rust-std ships the AddressSanitizer
# runtime, so ASan works). Built optimised with debug assertions (-O -a), so integer overflow
# panics too. The first build compiles recall-shared and its dependencies instrumented, in
# fuzz/target (about 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
targets="${FUZZ_TARGETS:-event_decode llm_output offline_extractor}"
export RUSTC_BOOTSTRAP=1
# Its own target folder: instrumented builds share nothing with the workspace's.
export CARGO_TARGET_DIR="$PWD/fuzz/target"
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked --version 0.13.2
fi

# More seeds for the offline extractor from the shared test conversations, when they are there
# (generated, not committed: fuzz/.gitignore keeps only seed-* files).
data="${RECALL_TEST_DATA:-../shared/data}"
if compgen -G "$data/*__*.jsonl" >/dev/null; then
  python3 fuzz/seeds/offline_extractor.py fuzz/corpus/offline_extractor gen-data "$data"/*__*.jsonl
fi

cargo fuzz build -O --debug-assertions 2>&1 | tail -n 2

failed=()
for target in $targets; do
  log="fuzz/target/$target.log"
  mkdir -p fuzz/target "fuzz/corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  # -timeout: an input that takes more than 10 s is a hang; -rss_limit_mb: 2 GiB is a leak.
  # A batch costs the offline extractor ~100 ms here, so its inputs stay short (more runs).
  extra=()
  if [ "$target" = offline_extractor ]; then extra=(-max_len=1024); fi
  if cargo fuzz run -O --debug-assertions "$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      "${extra[@]}" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$target")
    grep -E -m 5 "panicked|Assertion|ERROR|SUMMARY|Test unit written" "$log" || tail -n 20 "$log"
  fi
  runs=$(grep -m 1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
  echo "fuzz: $target $status: $runs executions in ${seconds}s, corpus $corpus inputs"
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: all targets ok"
