//! `recall-worker`: turns batches of chat messages into memories.
//!
//! `recall-worker standalone` runs the whole pipeline in one process on embedded stores.

use clap::{Parser, Subcommand};
use recall_shared::config::{LogArgs, StandaloneArgs, init_logging};
use recall_shared::node::{Node, cancel_on_signal};
use tokio_util::sync::CancellationToken;

/// recall worker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// HTTP API + workers in one process, on SQLite, Qdrant Edge and a local embedding model.
    Standalone(StandaloneArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match cli.command {
        Some(Command::Standalone(args)) => {
            let deps = args.stores.open().await?;
            let engine = args.batch.engine(None).map_err(anyhow::Error::msg)?;
            let node = Node::standalone(deps, engine, args.batch.workers(), args.api_key);
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            node.run(listener, shutdown).await
        }
        None => anyhow::bail!(
            "the RabbitMQ worker is not available in this version; run `recall-worker standalone`"
        ),
    }
}
