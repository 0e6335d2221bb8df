//! Consuming one destination queue on a dedicated thread.
//!
//! The thread owns a connection, a channel with a bounded prefetch, and an amiquip
//! consumer (which is not `Send`, hence the thread). Deliveries cross to async code as
//! [`IncomingMessage`]s carrying an [`Acker`]; acks, nacks and rejects travel back to
//! the thread, which applies them to the broker. Manual acks only: a message is
//! acknowledged after its outcome is recorded, never before. When the connection is
//! lost the thread reconnects with backoff; unacknowledged messages of the old
//! connection are redelivered by the broker, so their stale ackers are ignored.
//! [`Consumer::stop`] cancels consumption and lets in-flight messages be settled
//! within a grace period before the connection closes.
//!
//! Acks are sent with `multiple` where they can be: the acks of a run of tags below the
//! lowest still unsettled one go as one `basic.ack`, and an ack that cannot join such a
//! run (a slower message below it) is sent alone after [`ACK_DELAY`]. Requeues and
//! rejects go at once, one each. A tag is acknowledged exactly once either way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amiquip::{AmqpValue, ConsumerMessage, ConsumerOptions, Delivery};
use crossbeam_channel::{select, Receiver, Sender};
use tokio::sync::mpsc;

use super::session::{self, SessionError};
use super::{Health, Topology};
use crate::config::BrokerConfig;

/// The longest an ack waits for the messages below it to be settled, so that one
/// `basic.ack` with `multiple` covers them all.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// A message taken from a destination queue, not yet settled.
#[derive(Debug)]
pub struct IncomingMessage {
    /// `message_id` as published (the delivery id), if any.
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    /// Text headers (`x-relayd-*`).
    pub headers: HashMap<String, String>,
    /// Integer headers (`x-relayd-attempt`).
    pub int_headers: HashMap<String, i64>,
    pub redelivered: bool,
    pub body: Vec<u8>,
    pub acker: Acker,
}

/// How a message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    /// Put back on the queue for another try later.
    Requeue,
    /// Refuse without requeue: the queue dead-letters it.
    Reject,
}

/// Settles one message; dropping it unsettled leaves the message unacknowledged until
/// the connection closes (then the broker redelivers it).
#[derive(Debug)]
pub struct Acker {
    generation: u64,
    tag: u64,
    commands: Sender<Command>,
}

impl Acker {
    pub fn ack(self) {
        self.settle(Settle::Ack);
    }

    pub fn requeue(self) {
        self.settle(Settle::Requeue);
    }

    pub fn reject(self) {
        self.settle(Settle::Reject);
    }

    fn settle(self, how: Settle) {
        let _ = self.commands.send(Command::Settle {
            generation: self.generation,
            tag: self.tag,
            how,
        });
    }
}

enum Command {
    Settle { generation: u64, tag: u64, how: Settle },
    Intake(Option<u16>),
    Stop { grace: Duration },
}

/// The async side of a consumer thread.
pub struct Consumer {
    messages: mpsc::UnboundedReceiver<IncomingMessage>,
    commands: Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Consumer {
    /// Starts consuming `destination`'s queue with at most `prefetch` unacknowledged
    /// messages. Connects in the background and reports in `health`.
    pub fn start(
        config: &BrokerConfig,
        topology: Topology,
        destination: &str,
        prefetch: u16,
        health: Arc<Health>,
    ) -> std::io::Result<Self> {
        // Unbounded on purpose: the broker never has more than `prefetch` messages
        // unacknowledged, so this never holds more, and the thread must never block on
        // it (it also applies the acks that free the slots).
        let (to_async, messages) = mpsc::unbounded_channel();
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let component = format!("consumer:{destination}");
        health.disconnected(&component);
        let thread = ConsumerThread {
            nodes: session::Nodes::new(config),
            queue: topology.queue(destination),
            topology,
            prefetch: Some(prefetch),
            health,
            component,
            to_async,
            commands: commands.clone(),
            command_rx,
            generation: 0,
        };
        let handle = std::thread::Builder::new()
            .name(format!("relayd-consumer-{destination}"))
            .spawn(move || thread.run())?;
        Ok(Self {
            messages,
            commands,
            thread: Some(handle),
        })
    }

    /// Changes how many unacknowledged messages the broker hands this consumer (now,
    /// and on every reconnect); `None` holds it: it takes no message until given a
    /// prefetch again, and messages already taken can still be settled.
    pub fn set_intake(&self, prefetch: Option<u16>) {
        let _ = self.commands.send(Command::Intake(prefetch.map(|p| p.max(1))));
    }

    /// The next message, or `None` once the consumer has stopped.
    pub async fn recv(&mut self) -> Option<IncomingMessage> {
        self.messages.recv().await
    }

    /// Stops taking new messages; settlements keep working for `grace`, then the
    /// connection closes and anything unsettled is redelivered by the broker. Waits for
    /// the thread on a blocking thread.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.commands.send(Command::Stop { grace });
        self.messages.close();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

struct ConsumerThread {
    /// Where to connect next.
    nodes: session::Nodes,
    topology: Topology,
    queue: String,
    /// The prefetch to consume with; `None`: held, not consuming.
    prefetch: Option<u16>,
    health: Arc<Health>,
    component: String,
    to_async: mpsc::UnboundedSender<IncomingMessage>,
    commands: Sender<Command>,
    command_rx: Receiver<Command>,
    /// Incremented per connection: tags of an older connection are meaningless.
    generation: u64,
}

/// Why a connection's consume loop ended.
enum Ended {
    Lost(String),
    Stopped,
}

impl ConsumerThread {
    fn run(mut self) {
        let mut reconnect = session::Reconnect::new();
        'connections: loop {
            match self.consume_once(&mut reconnect) {
                Ok(Ended::Stopped) => break,
                Ok(Ended::Lost(reason)) => {
                    tracing::warn!(queue = %self.queue, %reason, "consumer lost its broker connection; reconnecting");
                    reconnect.lost();
                    self.nodes.lost();
                }
                Err(e) => {
                    self.nodes.lost();
                    let delay = reconnect.failed();
                    tracing::warn!(queue = %self.queue, error = %e, retry_in = ?delay, "consumer cannot connect to the broker");
                }
            }
            self.health.disconnected(&self.component);
            // Wait until the next try is due, but stop at once if asked to. Settlements
            // of the lost connection's messages are stale: the broker redelivers them.
            while !reconnect.due() {
                match self.command_rx.recv_timeout(reconnect.wait()) {
                    Ok(Command::Stop { .. }) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        break 'connections
                    }
                    Ok(Command::Intake(prefetch)) => self.prefetch = prefetch,
                    Ok(Command::Settle { .. }) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                }
            }
        }
        self.health.disconnected(&self.component);
    }

    /// One connection's life: connect, consume until lost or stopped, close.
    fn consume_once(&mut self, reconnect: &mut session::Reconnect) -> Result<Ended, SessionError> {
        let (mut connection, node) = self.nodes.connect()?;
        let amqp = |source| SessionError::Amqp {
            at: node.clone(),
            source: Box::new(source),
        };
        let channel = connection.open_channel(None).map_err(amqp)?;
        self.topology.declare(&mut connection, &channel).map_err(amqp)?;
        self.generation += 1;
        reconnect.connected();
        self.health.connected(&self.component, &node);
        tracing::info!(queue = %self.queue, prefetch = ?self.prefetch, %node, "connected");

        // Prefetch bounds this consumer's unacknowledged messages (a message stays
        // unacked until its outcome is recorded): it follows the worker's limit for the
        // destination, and `None` (held) consumes nothing. RabbitMQ applies a new
        // prefetch only to consumers started after it, so a change cancels the consumer
        // and, once the broker confirms, starts another (or none) on the same channel;
        // delivery tags stay valid across, and settlements go through the channel.
        let mut consumer: Option<(amiquip::Consumer, u16)> = None;
        let mut cancelling = false;
        let mut unsettled: BTreeMap<u64, Delivery> = BTreeMap::new();
        let mut acks = PendingAcks::default();
        let mut stop_deadline: Option<Instant> = None;
        let never = crossbeam_channel::never();
        let ended = loop {
            if let Err(e) = acks.send_due(&channel, unsettled.keys().next().copied(), Instant::now()) {
                break Ended::Lost(e.to_string());
            }
            if let Some(deadline) = stop_deadline {
                if unsettled.is_empty() || Instant::now() >= deadline {
                    break Ended::Stopped;
                }
            }
            // Bring the consumer in line with the wanted prefetch.
            let wanted = self.prefetch.filter(|_| stop_deadline.is_none());
            if !cancelling {
                match (&consumer, wanted) {
                    (Some((_, current)), Some(wanted)) if *current == wanted => {}
                    (Some((started, _)), _) => {
                        cancelling = true;
                        if let Err(e) = started.cancel() {
                            break Ended::Lost(e.to_string());
                        }
                    }
                    (None, Some(wanted)) => {
                        let started = channel.qos(0, wanted, false).and_then(|()| {
                            channel.basic_consume(self.queue.clone(), ConsumerOptions::default())
                        });
                        match started {
                            Ok(started) => consumer = Some((started, wanted)),
                            Err(e) => break Ended::Lost(e.to_string()),
                        }
                        tracing::debug!(queue = %self.queue, prefetch = wanted, "consuming");
                    }
                    (None, None) => {}
                }
            }
            let wait = stop_deadline
                .map_or(Duration::from_secs(1), |d| {
                    d.saturating_duration_since(Instant::now())
                })
                .min(
                    acks.next_due()
                        .map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now())),
                );
            let messages = consumer.as_ref().map_or(&never, |(c, _)| c.receiver());
            select! {
                recv(messages) -> message => match message {
                    Ok(ConsumerMessage::Delivery(mut delivery)) => {
                        let incoming = self.incoming(&mut delivery);
                        unsettled.insert(delivery.delivery_tag(), delivery);
                        if self.to_async.send(incoming).is_err() {
                            // The worker stopped listening: leave the rest to redelivery.
                            break Ended::Stopped;
                        }
                    }
                    Ok(ConsumerMessage::ClientCancelled) => {
                        consumer = None;
                        cancelling = false;
                    }
                    Ok(other) => break Ended::Lost(format!("{other:?}")),
                    Err(_) => break Ended::Lost("consumer channel closed".into()),
                },
                recv(self.command_rx) -> command => match command {
                    Ok(Command::Settle { generation, tag, how }) => {
                        if generation != self.generation {
                            continue;
                        }
                        if let Some(delivery) = unsettled.remove(&tag) {
                            let result = match how {
                                Settle::Ack => {
                                    acks.push(tag, delivery, Instant::now());
                                    Ok(())
                                }
                                Settle::Requeue => delivery.nack(&channel, true),
                                Settle::Reject => delivery.reject(&channel, false),
                            };
                            if let Err(e) = result {
                                break Ended::Lost(e.to_string());
                            }
                        }
                    }
                    Ok(Command::Intake(prefetch)) => self.prefetch = prefetch,
                    Ok(Command::Stop { grace }) => {
                        stop_deadline = Some(Instant::now() + grace);
                    }
                    Err(_) => break Ended::Stopped,
                },
                default(wait) => {}
            }
        };
        if matches!(ended, Ended::Stopped) {
            // Whatever was acked goes before the close (a message left unsettled is
            // redelivered; one below it keeps the rest from `multiple`).
            let floor = unsettled.keys().next().copied();
            let _ = acks.send_due(&channel, floor, Instant::now() + ACK_DELAY);
        }
        drop(consumer);
        // Closing joins amiquip's I/O thread: this is the consumer's own thread.
        let _ = channel.close();
        let _ = connection.close();
        Ok(ended)
    }

    fn incoming(&self, delivery: &mut Delivery) -> IncomingMessage {
        let mut text = HashMap::new();
        let mut ints = HashMap::new();
        if let Some(table) = delivery.properties.headers() {
            for (name, value) in table {
                match value {
                    AmqpValue::LongString(s) => {
                        text.insert(name.clone(), s.clone());
                    }
                    AmqpValue::LongInt(i) => {
                        ints.insert(name.clone(), i64::from(*i));
                    }
                    AmqpValue::LongLongInt(i) => {
                        ints.insert(name.clone(), *i);
                    }
                    _ => {}
                }
            }
        }
        IncomingMessage {
            message_id: delivery.properties.message_id().clone(),
            content_type: delivery.properties.content_type().clone(),
            headers: text,
            int_headers: ints,
            redelivered: delivery.redelivered,
            body: std::mem::take(&mut delivery.body),
            acker: Acker {
                generation: self.generation,
                tag: delivery.delivery_tag(),
                commands: self.commands.clone(),
            },
        }
    }
}

/// Acks settled by the worker and not yet sent to the broker, by delivery tag, each
/// with when it was settled (`D`: amiquip's `Delivery`; a plain value in tests).
struct PendingAcks<D = Delivery> {
    pending: BTreeMap<u64, (D, Instant)>,
}

impl<D> Default for PendingAcks<D> {
    fn default() -> Self {
        Self {
            pending: BTreeMap::new(),
        }
    }
}

impl<D> PendingAcks<D> {
    fn push(&mut self, tag: u64, delivery: D, at: Instant) {
        self.pending.insert(tag, (delivery, at));
    }

    /// When the oldest pending ack must go alone.
    fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|(_, at)| *at + ACK_DELAY).min()
    }

    /// What may go now: the highest pending ack below `lowest_unsettled` (below
    /// nothing when all is settled), to send with `multiple` since every tag below it
    /// is settled, the others it covers forgotten; then each ack that has waited
    /// [`ACK_DELAY`] by `now`, to send alone.
    fn take_due(&mut self, lowest_unsettled: Option<u64>, now: Instant) -> (Option<D>, Vec<D>) {
        let covered = match lowest_unsettled {
            Some(floor) => {
                let above = self.pending.split_off(&floor);
                std::mem::replace(&mut self.pending, above)
            }
            None => std::mem::take(&mut self.pending),
        };
        let multiple = covered.into_values().next_back().map(|(highest, _)| highest);
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| *at + ACK_DELAY <= now)
            .map(|(tag, _)| *tag)
            .collect();
        let alone = due
            .into_iter()
            .filter_map(|tag| self.pending.remove(&tag).map(|(d, _)| d))
            .collect();
        (multiple, alone)
    }
}

impl PendingAcks {
    /// Sends what [`PendingAcks::take_due`] lets go.
    fn send_due(
        &mut self,
        channel: &amiquip::Channel,
        lowest_unsettled: Option<u64>,
        now: Instant,
    ) -> amiquip::Result<()> {
        let (multiple, alone) = self.take_due(lowest_unsettled, now);
        if let Some(highest) = multiple {
            highest.ack_multiple(channel)?;
        }
        for delivery in alone {
            delivery.ack(channel)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_below_the_lowest_unsettled_tag_goes_as_one_ack_and_a_late_one_alone() {
        let start = Instant::now();
        let mut acks = PendingAcks::<u64>::default();
        for tag in [1, 2, 3, 5] {
            acks.push(tag, tag, start);
        }
        // Tag 4 is still being delivered: 1–3 go as one ack on 3; 5 waits for it.
        assert_eq!(acks.take_due(Some(4), start), (Some(3), vec![]));
        assert_eq!(acks.next_due(), Some(start + ACK_DELAY));
        // 4 is slow: 5 goes alone once it has waited ACK_DELAY, and only once.
        assert_eq!(acks.take_due(Some(4), start + ACK_DELAY), (None, vec![5]));
        assert_eq!(acks.take_due(Some(4), start + ACK_DELAY), (None, vec![]));
        // Everything settled: what is pending goes as one ack on the highest.
        acks.push(4, 4, start + ACK_DELAY);
        acks.push(6, 6, start + ACK_DELAY);
        assert_eq!(acks.take_due(None, start + ACK_DELAY), (Some(6), vec![]));
        assert_eq!(acks.next_due(), None);
    }
}
