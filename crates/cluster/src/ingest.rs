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

/// A durable pull consumer of one stream.
pub struct Ingest<T> {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    _record: PhantomData<fn() -> T>,
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
                    // Long enough for a batch's group-committed fsync on a slow disk.
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| nats("opening a durable consumer")(&e))?;
        Ok(Self {
            consumer,
            _record: PhantomData,
        })
    }

    /// Up to `max` messages, waiting at most `wait` for the first ones.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery<T>>, ClusterError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| nats("fetching a batch")(&e))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let msg = m.map_err(|e| nats("fetching a batch")(&e))?;
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            let record = serde_json::from_slice::<T>(&msg.payload)
                .map_err(|e| e.to_string())
                .and_then(|r| r.check().map(|()| r).map_err(|e| e.to_string()));
            out.push(Delivery { record, delivered, msg });
        }
        Ok(out)
    }
}
