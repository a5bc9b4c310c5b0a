//! `recall-worker`: turns batches of chat messages into memories.
//!
//! Without a subcommand it is the production worker, consuming RabbitMQ; `recall-worker
//! standalone` runs the whole pipeline in one process on embedded stores; `recall-worker
//! memories export|import` moves one user's memories in or out of the configured memory store as
//! JSON lines (see [`recall_shared::portability`]).

use clap::{Parser, Subcommand};
use recall_shared::config::{LogArgs, StandaloneArgs, StoreArgs, WorkerArgs, init_logging};
use recall_shared::domain::{CharacterName, UserId};
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
    /// Export or import memories as JSON lines (one memory with its vector per line), on the
    /// configured memory store (`RECALL_MEMORY_STORE`).
    #[command(subcommand)]
    Memories(MemoriesCommand),
    /// Replays conversations through the pipeline and scores the memories: fact coverage,
    /// recall@5, MRR, supersession, hygiene, and the search path alone.
    Eval(EvalArgs),
}

#[derive(Debug, clap::Args)]
struct EvalArgs {
    /// Folder of conversation files (`<user>__<character>.jsonl`) and `facts.jsonl`.
    #[arg(long)]
    data: std::path::PathBuf,
    /// Empty scratch folder for the stores (default: a temporary one, removed afterwards).
    #[arg(long = "data-dir")]
    scratch: Option<std::path::PathBuf>,
    /// Print the summary as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also list, on stderr, every supersession (right or not, with the memories that decided
    /// it) and every gold fact no memory states.
    #[arg(long)]
    verbose: bool,
    /// Folder of the all-MiniLM-L6-v2 files (default: `recall-data/models/all-MiniLM-L6-v2`,
    /// where scripts/demo.sh fetches them).
    #[arg(long, env = "RECALL_MODEL_DIR")]
    model_dir: Option<std::path::PathBuf>,
}

/// Runs `recall-worker eval`.
async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let (scratch, temporary) = match args.scratch {
        Some(dir) => {
            let empty = !dir.exists() || std::fs::read_dir(&dir)?.next().is_none();
            anyhow::ensure!(empty, "--data-dir {} must be empty", dir.display());
            (dir, false)
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos();
            let dir =
                std::env::temp_dir().join(format!("recall-eval-{}-{nanos}", std::process::id()));
            (dir, true)
        }
    };
    let model_dir = args
        .model_dir
        .unwrap_or_else(|| "recall-data/models/all-MiniLM-L6-v2".into());
    let deps = StoreArgs::in_dir(&scratch, model_dir).open().await?;
    let result = recall_shared::eval::run(deps, &args.data).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.summary())?);
    } else {
        print!("{}", report.table());
    }
    if args.verbose {
        eprint!("{}", report.details());
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
enum MemoriesCommand {
    /// Writes a user's memories to stdout: `memories export --user <id> [--character <c>] >
    /// file.jsonl`.
    Export {
        /// Whose memories.
        #[arg(long)]
        user: String,
        /// Only this character's (default: every character).
        #[arg(long)]
        character: Option<String>,
        /// The memory store.
        #[command(flatten)]
        stores: StoreArgs,
    },
    /// Reads memories from stdin (as `export` writes them) and upserts them by id:
    /// `memories import < file.jsonl`. Needs the same embedder (vector size) on both sides.
    Import {
        /// The memory store.
        #[command(flatten)]
        stores: StoreArgs,
    },
}

/// Runs `recall-worker memories ...`.
async fn memories(command: MemoriesCommand) -> anyhow::Result<()> {
    use recall_shared::portability::{export_jsonl, import_jsonl};
    match command {
        MemoriesCommand::Export {
            user,
            character,
            stores,
        } => {
            let user = UserId::parse(user).map_err(|e| anyhow::anyhow!("--user {e}"))?;
            let character = character
                .map(CharacterName::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--character {e}"))?;
            let store = stores.open_memories()?;
            let mut out = std::io::stdout().lock();
            let n = export_jsonl(store.as_ref(), &user, character.as_ref(), &mut out).await?;
            eprintln!("exported {n} memories of {user}");
        }
        MemoriesCommand::Import { stores } => {
            let store = stores.open_memories()?;
            let n = import_jsonl(store.as_ref(), std::io::stdin().lock()).await?;
            eprintln!("imported {n} memories");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let _failpoints = recall_shared::failpoints::setup();
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match cli.command {
        Some(Command::Standalone(args)) => {
            let deps = args.stores.open().await?;
            let engine = args.batch.engine(None).map_err(anyhow::Error::msg)?;
            let node = Node::standalone(deps, engine, args.batch.workers(), args.api_key)
                .with_rate_limit(args.rate_limit.limit());
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            node.run(listener, shutdown).await
        }
        Some(Command::Memories(command)) => memories(command).await,
        Some(Command::Eval(args)) => eval(args).await,
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
            let node = node.with_rate_limit(args.rate_limit.limit());
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            node.run(listener, shutdown).await?;
            consumers.stopped().await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_commands_parse() {
        let cli = Cli::try_parse_from([
            "recall-worker",
            "memories",
            "export",
            "--user",
            "u_1",
            "--character",
            "meher",
            "--memory-store",
            "qdrant",
            "--qdrant-url",
            "http://qdrant:6334",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Memories(MemoriesCommand::Export {
                user,
                character,
                stores,
            })) => {
                assert_eq!(user, "u_1");
                assert_eq!(character.as_deref(), Some("meher"));
                assert_eq!(stores.qdrant.qdrant_url, "http://qdrant:6334");
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["recall-worker", "memories", "import", "--data-dir", "d"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Memories(MemoriesCommand::Import { .. }))
        ));
        assert!(Cli::try_parse_from(["recall-worker", "memories", "export"]).is_err());
    }
}
