//! Helpers for tests against the local RabbitMQ broker, through `rabbitmqctl`.

use std::process::Command;

/// Runs `rabbitmqctl` with `args`; panics with its output on failure.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Closes every broker connection whose name contains `marker`, as a crash looks to the broker;
/// returns how many. Only the caller's connections: other tests share the broker.
pub fn close_connections(marker: &str) -> usize {
    let listing = rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    let pids: Vec<String> = listing
        .lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    for pid in &pids {
        rabbitmqctl(&["close_connection", pid, "recall test: dropped connection"]);
    }
    pids.len()
}

/// Messages in a queue, from the broker's own listing (0 if it does not exist).
pub fn queue_len(name: &str) -> u64 {
    rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages",
    ])
    .lines()
    .filter_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == name).then(|| it.next()?.parse().ok())?
    })
    .next()
    .unwrap_or(0)
}

/// Deletes every queue whose name starts with `prefix` (best effort).
pub fn delete_queues(prefix: &str) {
    let listing = rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name"]);
    for q in listing
        .lines()
        .map(str::trim)
        .filter(|q| q.starts_with(prefix))
    {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_queue", q])
            .output();
    }
}
