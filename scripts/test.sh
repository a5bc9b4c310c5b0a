#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test of the workspace. Starts
# RabbitMQ if it is down and fetches the embedding model first (the tests use both for real).
# Needs ../shared/data beside the repository (or RECALL_TEST_DATA) for the data-driven tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export RECALL_MODEL_DIR="${RECALL_MODEL_DIR:-$PWD/models/all-MiniLM-L6-v2}"
scripts/services.sh
scripts/fetch-model.sh "$RECALL_MODEL_DIR"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
