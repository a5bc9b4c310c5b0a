#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test of the workspace. Starts
# RabbitMQ and the Firestore emulator if they are down (the tests use both for real, and the
# emulator is stopped again if this script started it) and fetches the embedding model first.
# Needs ../shared/data beside the repository (or RECALL_TEST_DATA) for the data-driven tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export RECALL_MODEL_DIR="${RECALL_MODEL_DIR:-$PWD/models/all-MiniLM-L6-v2}"
export RECALL_SERVICES_DIR="${RECALL_SERVICES_DIR:-$(mktemp -d)}"
trap 'scripts/services.sh stop' EXIT
eval "$(scripts/services.sh)"
# The Firestore tests fail instead of skipping when the emulator is expected.
export RECALL_REQUIRE_FIRESTORE=1
scripts/fetch-model.sh "$RECALL_MODEL_DIR"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fault suite (tests/faults.rs) runs the real binaries: build them first, as the tests do.
cargo build --workspace --bins --locked
cargo test --workspace --locked
