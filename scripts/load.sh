#!/usr/bin/env bash
# The load generator (benches/load.rs) on release builds of recall-publisher and recall-worker,
# RabbitMQ and the Firestore emulator on loopback (started here if down; the emulator is stopped
# again if this script started it). Settings: see benches/load.rs (LOAD_* variables).
set -euo pipefail
cd "$(dirname "$0")/.."
export RECALL_SERVICES_DIR="${RECALL_SERVICES_DIR:-$(mktemp -d)}"
trap 'scripts/services.sh stop' EXIT
eval "$(scripts/services.sh)"
# The bench finds the binaries beside itself (target/release); features as the tests build them.
cargo build --release --workspace --bins --locked
cargo bench --bench load --locked
