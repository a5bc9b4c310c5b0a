//! `recall-worker`: turns batches of chat messages into memories.
//!
//! Without a subcommand it is the production worker, consuming RabbitMQ; `recall-worker
//! standalone` runs the whole pipeline in one process on embedded stores.

use clap::{Parser, Subcommand};
use recall_shared::config::{LogArgs, StandaloneArgs, WorkerArgs, init_logging};
use recall_shared::node::{Node, cancel_on_signal};
use tokio_util::sync::CancellationToken;

/// recall worker.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    worker: WorkerArgs,
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
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match cli.command {
        Some(Command::Standalone(args)) => {
            let deps = args.stores.open().await?;
            let engine = args.batch.engine(None).map_err(anyhow::Error::msg)?;
            let node = Node::standalone(deps, engine, args.batch.workers(), args.api_key);
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            node.run(listener, shutdown).await
        }
        None => {
            let args = cli.worker;
            let deps = args.stores.open().await?;
            let engine = args
                .batch
                .engine(args.worker_id.clone())
                .map_err(anyhow::Error::msg)?;
            let workers = args.batch.workers();
            let settings = args.amqp.settings(workers.concurrency, workers.grace);
            let (node, consumers) = Node::amqp_worker(
                deps,
                engine,
                workers,
                settings,
                args.api_key,
                shutdown.clone(),
            )
            .await?;
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            node.run(listener, shutdown).await?;
            consumers.stopped().await;
            Ok(())
        }
    }
}
