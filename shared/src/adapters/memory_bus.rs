//! The embedded event bus: bounded tokio channels inside one process.
//!
//! Delivery is in memory, so an event is only as durable as the process; that is fine for the
//! embedded mode because the message store is the truth: the sweep re-discovers any pair whose
//! events were lost in a crash. The production bus (RabbitMQ) is durable.

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::domain::Pair;
use crate::error::{PortError, PortResult};
use crate::ports::{Delivery, EventBus, MessageEvent};

/// The sending side, handed to the HTTP API.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    events: mpsc::Sender<Delivery<MessageEvent>>,
    jobs: mpsc::Sender<Delivery<Pair>>,
}

/// The receiving side, handed to the worker loops.
#[derive(Debug)]
pub struct BusReceivers {
    /// Message events, for the counter.
    pub events: mpsc::Receiver<Delivery<MessageEvent>>,
    /// Batch jobs, for the batch runners.
    pub jobs: mpsc::Receiver<Delivery<Pair>>,
}

/// A bus whose channels hold at most `capacity` items each (senders wait when full).
pub fn in_process_bus(capacity: usize) -> (InProcessBus, BusReceivers) {
    let (etx, erx) = mpsc::channel(capacity);
    let (jtx, jrx) = mpsc::channel(capacity);
    (
        InProcessBus {
            events: etx,
            jobs: jtx,
        },
        BusReceivers {
            events: erx,
            jobs: jrx,
        },
    )
}

fn closed() -> PortError {
    PortError::unavailable("bus", "the worker loops have stopped")
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish_event(&self, event: &MessageEvent) -> PortResult<()> {
        self.events
            .send(Delivery::unsettled(event.clone()))
            .await
            .map_err(|_| closed())
    }

    async fn publish_batch_job(&self, pair: &Pair) -> PortResult<()> {
        self.jobs
            .send(Delivery::unsettled(pair.clone()))
            .await
            .map_err(|_| closed())
    }

    async fn ping(&self) -> PortResult<()> {
        if self.events.is_closed() || self.jobs.is_closed() {
            Err(closed())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CharacterName, UserId};

    #[tokio::test]
    async fn passes_the_bus_contract() {
        let (bus, mut rx) = in_process_bus(64);
        crate::testkit::bus::run_all(&bus, &mut rx.events, &mut rx.jobs).await;
    }

    #[tokio::test]
    async fn delivers_in_order_and_reports_closure() {
        let (bus, mut rx) = in_process_bus(4);
        let ev = |i: usize| MessageEvent {
            user_id: UserId::parse("u1").unwrap(),
            character_name: CharacterName::parse("meher").unwrap(),
            message_id: Some(crate::domain::MessageId::parse(format!("m{i}")).unwrap()),
        };
        for i in 0..3 {
            bus.publish_event(&ev(i)).await.unwrap();
        }
        for i in 0..3 {
            assert_eq!(rx.events.recv().await.unwrap().payload, ev(i));
        }
        bus.ping().await.unwrap();
        drop(rx);
        assert!(bus.publish_event(&ev(9)).await.unwrap_err().is_retryable());
        assert!(bus.ping().await.is_err());
    }
}
