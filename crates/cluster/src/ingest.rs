//! Durable consumption: batches of records, each acknowledged by its consumer only after the
//! consumer has made it durable on its side.
//!
//! A record that does not parse, or fails its type's checks, is delivered too (as an `Err` with
//! the reason), so the consumer counts it and terminates it — never a silent skip, never an
//! endless redelivery.
use crate::{nats, ClusterError};
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use nudge_records::Record;
use std::marker::PhantomData;
use std::time::Duration;

/// One delivered message: the record (or why it is not one) and its acknowledgement.
pub struct Delivery<T> {
    /// The record, or why the message is not a valid `T`.
    pub record: Result<T, String>,
    /// How many times JetStream has delivered this message (1 the first time).
    pub delivered: i64,
    msg: jetstream::Message,
}

impl<T> Delivery<T> {
    /// Done with it: JetStream will not deliver it again.
    pub async fn ack(&self) -> Result<(), ClusterError> {
        self.msg.ack().await.map_err(|e| nats("ack")(&e))
    }

    /// Never deliver it again, without processing (a malformed record, counted by the caller).
    pub async fn term(&self) -> Result<(), ClusterError> {
        self.msg.ack_with(AckKind::Term).await.map_err(|e| nats("term")(&e))
    }

    /// Could not keep it now: deliver it again after `delay`.
    pub async fn retry_after(&self, delay: Duration) -> Result<(), ClusterError> {
        self.msg
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| nats("nak")(&e))
    }
}

/// A durable pull consumer of one stream, pulling continuously (so a record arrives within
/// milliseconds of its publication) and handing out what has arrived as batches (so the
/// consumer's writes group-commit).
pub struct Ingest<T> {
    messages: pull::Stream,
    _record: PhantomData<fn() -> T>,
}

fn delivery<T: Record>(
    m: Result<jetstream::Message, async_nats::error::Error<jetstream::consumer::pull::MessagesErrorKind>>,
) -> Result<Delivery<T>, ClusterError> {
    let msg = m.map_err(|e| nats("pulling")(&e))?;
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let record = serde_json::from_slice::<T>(&msg.payload)
        .map_err(|e| e.to_string())
        .and_then(|r| r.check().map(|()| r).map_err(|e| e.to_string()));
    Ok(Delivery { record, delivered, msg })
}

impl<T: Record> Ingest<T> {
    pub(crate) async fn open(js: &jetstream::Context, stream: &str, durable: &str) -> Result<Self, ClusterError> {
        let s = js.get_stream(stream).await.map_err(|e| nats("opening a stream")(&e))?;
        let consumer = s
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_string()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    // Long enough for a batch's group-committed fsync; what a crashed consumer
                    // held comes back this soon.
                    ack_wait: Duration::from_secs(5),
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| nats("opening a durable consumer")(&e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(1_000)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| nats("pulling")(&e))?;
        Ok(Self {
            messages,
            _record: PhantomData,
        })
    }

    /// What has arrived, up to `max` messages; waits at most `wait` for the first one (an
    /// empty batch means nothing came). An error means the pull broke: open a new `Ingest`.
    pub async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery<T>>, ClusterError> {
        let mut out = Vec::new();
        let first = match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_) => return Ok(out),
            Ok(None) => return Err(nats("pulling")(&"the consumer's stream ended")),
            Ok(Some(m)) => m,
        };
        out.push(delivery(first)?);
        while out.len() < max {
            match futures::FutureExt::now_or_never(self.messages.next()) {
                Some(Some(m)) => out.push(delivery(m)?),
                Some(None) | None => break,
            }
        }
        Ok(out)
    }
}
