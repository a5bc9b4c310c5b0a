//! The event-bus contract: every [`EventBus`] adapter (in-process, RabbitMQ) must pass it, seen
//! through the receivers its consumer side hands to the worker loops.

use std::time::Duration;

use tokio::sync::mpsc::Receiver;

use crate::domain::{CharacterName, MessageId, Pair, UserId};
use crate::ports::{Delivery, EventBus, MessageEvent};

async fn next<T>(rx: &mut Receiver<Delivery<T>>, what: &str) -> Delivery<T> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 10 s"))
        .unwrap_or_else(|| panic!("{what} channel closed"))
}

/// Publishes events and batch jobs and checks they arrive intact, in order per pair, and can be
/// acknowledged.
pub async fn run_all(
    bus: &dyn EventBus,
    events: &mut Receiver<Delivery<MessageEvent>>,
    jobs: &mut Receiver<Delivery<Pair>>,
) {
    bus.ping().await.expect("ping");
    let pair = Pair::parse("bus_contract_user", "meher").unwrap();
    let sent: Vec<MessageEvent> = (0..20)
        .map(|i| MessageEvent {
            user_id: UserId::parse("bus_contract_user").unwrap(),
            character_name: CharacterName::parse("meher").unwrap(),
            message_id: (i % 5 != 4).then(|| MessageId::parse(format!("m{i:03}")).unwrap()),
        })
        .collect();
    for e in &sent {
        bus.publish_event(e).await.expect("publish event");
    }
    for (i, want) in sent.iter().enumerate() {
        let d = next(events, "event").await;
        assert_eq!(
            &d.payload, want,
            "event {i}: intact and in order for one pair"
        );
        d.settle.ack().await.expect("ack event");
    }
    bus.publish_batch_job(&pair).await.expect("publish job");
    let job = next(jobs, "batch job").await;
    assert_eq!(job.payload, pair);
    job.settle.ack().await.expect("ack job");
}
