//! `recall-publisher`: the HTTP API in front of RabbitMQ. Every accepted event is confirmed by
//! the broker before the caller gets its 202.

use clap::Parser;
use recall_shared::config::{PublisherArgs, init_logging};
use recall_shared::node::{Node, cancel_on_signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = PublisherArgs::parse();
    init_logging(&args.log);
    let _failpoints = recall_shared::failpoints::setup();
    let deps = args.stores.open().await?;
    let engine = args.batch.engine(None).map_err(anyhow::Error::msg)?;
    let settings = args
        .amqp
        .settings(args.batch.batch_concurrency, args.batch.workers().grace);
    let node = Node::amqp_publisher(deps, engine, settings, args.api_key)
        .await?
        .with_webhook_secret(args.webhook_secret)
        .with_rate_limit(args.rate_limit.limit());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    node.run(listener, shutdown).await
}
