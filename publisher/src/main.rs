//! `recall-publisher`: the HTTP API in front of RabbitMQ.

fn main() -> std::process::ExitCode {
    eprintln!(
        "recall-publisher: the RabbitMQ transport is not available in this version; \
         run `recall-worker standalone`, which serves the same HTTP API"
    );
    std::process::ExitCode::from(2)
}
