//! The exchanges and queues relayd declares, every name under `broker.prefix`.
//!
//! | name | kind | purpose |
//! |---|---|---|
//! | `{prefix}.deliveries` | durable direct exchange | the relay publishes here, routing key = destination |
//! | `{prefix}.destination.{name}` | durable quorum (or classic) queue | one per destination, bound with its name |
//! | `{prefix}.dead-letter` | durable fanout exchange | where destination queues dead-letter rejected messages |
//! | `{prefix}.dead-letter` | durable queue of `broker.queue_type` with a TTL | what operators inspect; messages expire after `dead_letter_ttl` |
//!
//! Declarations are idempotent: every (re)connect declares everything again. The
//! dead-letter queue is declared on a channel of its own and a failure there is only
//! logged: it holds copies for inspection (the database keeps the `dead` row), and a
//! queue that cannot be declared — a classic one made by an older relayd, whose home
//! node is down in a cluster, or whose type differs — must not keep relayd off the
//! broker.

use amiquip::{
    AmqpValue, Channel, Connection, ExchangeDeclareOptions, ExchangeType, FieldTable, QueueDeclareOptions,
};

use crate::config::{BrokerConfig, QueueType};

/// The broker names of one relayd deployment (or one test).
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    queue_type: QueueType,
    dead_letter_ttl_ms: i64,
    destinations: Vec<String>,
}

impl Topology {
    pub fn new(config: &BrokerConfig, destinations: impl IntoIterator<Item = String>) -> Self {
        Self {
            prefix: config.prefix.clone(),
            queue_type: config.queue_type,
            dead_letter_ttl_ms: i64::try_from(config.dead_letter_ttl.as_millis()).unwrap_or(i64::MAX),
            destinations: destinations.into_iter().collect(),
        }
    }

    /// The exchange deliveries are published to.
    pub fn exchange(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }

    /// The exchange destination queues dead-letter to.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// The queue holding dead-lettered messages.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// The queue of one destination.
    pub fn queue(&self, destination: &str) -> String {
        format!("{}.destination.{destination}", self.prefix)
    }

    pub fn destinations(&self) -> &[String] {
        &self.destinations
    }

    /// Declares every exchange, queue and binding on `channel` (the dead-letter queue
    /// on a channel of its own from `connection`); safe to repeat.
    pub(super) fn declare(&self, connection: &mut Connection, channel: &Channel) -> amiquip::Result<()> {
        // Durable: the topology survives a broker restart, like the messages in it.
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let exchange = channel.exchange_declare(ExchangeType::Direct, self.exchange(), durable.clone())?;
        // Fanout: every dead letter lands in the one dead-letter queue whatever its
        // routing key (the destination name stays in the message's headers).
        channel.exchange_declare(ExchangeType::Fanout, self.dead_letter_exchange(), durable)?;
        if let Err(e) = self.declare_dead_letter_queue(connection) {
            tracing::warn!(queue = %self.dead_letter_queue(), error = %e, "cannot declare the dead-letter queue; dead letters are not kept in the broker meanwhile");
        }

        for destination in &self.destinations {
            let mut args = FieldTable::new();
            args.insert("x-queue-type".into(), self.queue_type_argument());
            // A worker rejects (requeue = false) a message whose delivery is dead or
            // unparseable; RabbitMQ then moves it to the dead-letter exchange.
            args.insert(
                "x-dead-letter-exchange".into(),
                AmqpValue::LongString(self.dead_letter_exchange()),
            );
            let queue = channel.queue_declare(
                self.queue(destination),
                QueueDeclareOptions {
                    durable: true,
                    arguments: args,
                    ..QueueDeclareOptions::default()
                },
            )?;
            queue.bind(&exchange, destination.clone(), FieldTable::new())?;
        }
        Ok(())
    }

    fn queue_type_argument(&self) -> AmqpValue {
        AmqpValue::LongString(
            match self.queue_type {
                // Quorum queues replicate and fsync before confirming: a confirmed
                // message survives a broker crash, which the outbox relies on, and a
                // cluster losing a node.
                QueueType::Quorum => "quorum",
                QueueType::Classic => "classic",
            }
            .into(),
        )
    }

    /// The dead-letter queue and its binding, on a channel closed afterwards (a failed
    /// declare closes its channel).
    fn declare_dead_letter_queue(&self, connection: &mut Connection) -> amiquip::Result<()> {
        let channel = connection.open_channel(None)?;
        let mut args = FieldTable::new();
        args.insert("x-queue-type".into(), self.queue_type_argument());
        // Dead letters are for inspection; the database keeps the authoritative `dead`
        // row (replayable), so the broker copy may expire.
        args.insert(
            "x-message-ttl".into(),
            AmqpValue::LongLongInt(self.dead_letter_ttl_ms),
        );
        let queue = channel.queue_declare(
            self.dead_letter_queue(),
            QueueDeclareOptions {
                durable: true,
                arguments: args,
                ..QueueDeclareOptions::default()
            },
        )?;
        let exchange = channel.exchange_declare_passive(self.dead_letter_exchange())?;
        queue.bind(&exchange, "", FieldTable::new())?;
        channel.close()
    }
}
