//! Confirmed, batched publishing on a dedicated thread.
//!
//! The thread owns one connection and one channel in confirm mode. A batch is published
//! in full and then its confirms are awaited together (one-at-a-time confirms cap at a
//! few hundred messages per second; a batch in flight reaches thousands). Messages are
//! `mandatory`, so one that no queue accepts comes back as a return and counts as
//! failed rather than silently confirmed. After any connection-level failure, a
//! confirm timeout or a return, the session is closed and reopened with backoff, which
//! also redeclares the topology; after a nack only the channel is replaced. At
//! [`Pace::OneByOne`] each message's confirm is awaited before the next is sent, so a
//! message that breaks the session is known exactly: those before it are confirmed,
//! those after it were never sent. The thread stops when the [`Publisher`] is dropped.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amiquip::{AmqpProperties, AmqpValue, Channel, Confirm, Connection, FieldTable, Publish, Return};
use tokio::sync::oneshot;

use super::session::{self, SessionError};
use super::{headers, Error, Health, OutgoingMessage, Topology};
use crate::config::BrokerConfig;

/// The `Health` component name of publishers.
const COMPONENT: &str = "publisher";

/// While idle, the thread checks its connection this often, so `/readyz` reflects a
/// broker that went away even when nothing is being published.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(2);

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// How a batch is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// All messages, then all confirms: thousands per second.
    Batch,
    /// Each message's confirm before the next message; stops at the first failure and
    /// answers the rest [`Error::NotConnected`] (not sent).
    OneByOne,
}

enum Command {
    Publish {
        messages: Vec<OutgoingMessage>,
        pace: Pace,
        reply: oneshot::Sender<Vec<Result<(), Error>>>,
    },
    ReadyCounts {
        destinations: Vec<String>,
        reply: oneshot::Sender<Result<HashMap<String, u32>, Error>>,
    },
    Redeclare(Topology),
}

/// The async handle of a publisher thread. Cheap to clone; the thread stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Publisher {
    commands: mpsc::Sender<Command>,
}

impl Publisher {
    /// Starts the publisher thread. It connects in the background; until then every
    /// publish fails with [`Error::NotConnected`].
    pub fn start(config: &BrokerConfig, topology: Topology, health: Arc<Health>) -> std::io::Result<Self> {
        let (commands, receiver) = mpsc::channel();
        health.disconnected(COMPONENT);
        let worker = PublisherThread {
            nodes: session::Nodes::new(config),
            config: config.clone(),
            topology,
            health,
            session: None,
            reconnect: session::Reconnect::new(),
        };
        std::thread::Builder::new()
            .name("relayd-publisher".into())
            .spawn(move || worker.run(receiver))?;
        Ok(Self { commands })
    }

    /// Publishes every message and waits for the broker's confirms. The result at
    /// index `i` says whether message `i` is safely in its queue. A message no AMQP
    /// message can carry is not sent at all ([`Error::Unpublishable`]).
    pub async fn publish_batch(&self, messages: Vec<OutgoingMessage>, pace: Pace) -> Vec<Result<(), Error>> {
        let refused: Vec<Option<String>> = messages.iter().map(OutgoingMessage::unpublishable).collect();
        if refused.iter().all(Option::is_none) {
            return self.publish_sendable(messages, pace).await;
        }
        let sendable: Vec<OutgoingMessage> = messages
            .into_iter()
            .zip(&refused)
            .filter(|(_, refused)| refused.is_none())
            .map(|(m, _)| m)
            .collect();
        let mut sent = self.publish_sendable(sendable, pace).await.into_iter();
        refused
            .into_iter()
            .map(|refused| match refused {
                Some(reason) => Err(Error::Unpublishable(reason)),
                None => sent.next().unwrap_or(Err(Error::NotConnected)),
            })
            .collect()
    }

    async fn publish_sendable(&self, messages: Vec<OutgoingMessage>, pace: Pace) -> Vec<Result<(), Error>> {
        if messages.is_empty() {
            return Vec::new();
        }
        let count = messages.len();
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Publish {
                messages,
                pace,
                reply,
            })
            .is_err()
        {
            return vec![Err(Error::NotConnected); count];
        }
        answer
            .await
            .unwrap_or_else(|_| vec![Err(Error::NotConnected); count])
    }

    /// Declares `topology` (a reload added destinations) now on a fresh channel, and on
    /// every reconnect from now on. Failing, the session is reopened as after any
    /// failure; until a destination's queue exists its messages are returned, so their
    /// rows stay pending and are published again.
    pub fn redeclare(&self, topology: Topology) {
        let _ = self.commands.send(Command::Redeclare(topology));
    }

    /// The number of ready (not yet delivered) messages in each destination's queue,
    /// from a passive declare.
    pub async fn ready_counts(&self, destinations: Vec<String>) -> Result<HashMap<String, u32>, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::ReadyCounts { destinations, reply })
            .map_err(|_| Error::NotConnected)?;
        answer.await.map_err(|_| Error::NotConnected)?
    }
}

/// An open connection with its confirm-mode channel.
struct Session {
    // Field order matters: the channel must drop before its connection.
    channel: Channel,
    confirms: crossbeam_channel::Receiver<Confirm>,
    returns: crossbeam_channel::Receiver<Return>,
    /// The delivery tag the next publish will get (tags start at 1 in confirm mode).
    next_tag: u64,
    connection: Connection,
}

impl Session {
    /// Opens a session on the next node that answers; returns it with that node.
    fn open(nodes: &mut session::Nodes, topology: &Topology) -> Result<(Self, String), SessionError> {
        let (mut connection, node) = nodes.connect()?;
        let (channel, confirms, returns) = confirm_channel(&mut connection, topology).map_err(|source| {
            nodes.lost();
            SessionError::Amqp {
                at: node.clone(),
                source: Box::new(source),
            }
        })?;
        Ok((
            Self {
                channel,
                confirms,
                returns,
                next_tag: 1,
                connection,
            },
            node,
        ))
    }

    /// Replaces the channel with a fresh one on the same connection. RabbitMQ remembers
    /// a queue's refusal (`reject-publish`) per channel and goes on nacking on that
    /// channel for tens of seconds after the queue has room again; a new channel asks
    /// the queue afresh.
    fn reopen_channel(&mut self, topology: &Topology) -> amiquip::Result<()> {
        let (channel, confirms, returns) = confirm_channel(&mut self.connection, topology)?;
        let old = std::mem::replace(&mut self.channel, channel);
        let _ = old.close();
        self.confirms = confirms;
        self.returns = returns;
        self.next_tag = 1;
        Ok(())
    }

    fn close(self) {
        // Closing joins amiquip's I/O thread; this runs on the publisher thread.
        let Session {
            channel, connection, ..
        } = self;
        let _ = channel.close();
        let _ = connection.close();
    }
}

/// Opens a channel in confirm mode with returns listened for, and declares the
/// topology on it.
fn confirm_channel(
    connection: &mut Connection,
    topology: &Topology,
) -> Result<
    (
        Channel,
        crossbeam_channel::Receiver<Confirm>,
        crossbeam_channel::Receiver<Return>,
    ),
    amiquip::Error,
> {
    let channel = connection.open_channel(None)?;
    topology.declare(connection, &channel)?;
    // amiquip requires listening before confirm mode is enabled.
    let confirms = channel.listen_for_publisher_confirms()?;
    let returns = channel.listen_for_returns()?;
    channel.enable_publisher_confirms()?;
    Ok((channel, confirms, returns))
}

struct PublisherThread {
    config: BrokerConfig,
    /// Where to connect next.
    nodes: session::Nodes,
    topology: Topology,
    health: Arc<Health>,
    session: Option<Session>,
    /// When to try connecting next; told of every connect, failure and loss.
    reconnect: session::Reconnect,
}

impl PublisherThread {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            if self.session.is_none() && self.reconnect.due() {
                match Session::open(&mut self.nodes, &self.topology) {
                    Ok((session, node)) => {
                        tracing::info!(exchange = %self.topology.exchange(), %node, "publisher connected to the broker");
                        self.session = Some(session);
                        self.health.connected(COMPONENT, &node);
                        self.reconnect.connected();
                    }
                    Err(e) => {
                        let delay = self.reconnect.failed();
                        tracing::warn!(error = %e, retry_in = ?delay, "publisher cannot connect to the broker");
                    }
                }
            }
            // Connected: wake up now and then to check the connection. Not connected:
            // wake up when the next try is due (a command may come first; it is answered
            // at once, and the try follows when due).
            let wait = if self.session.is_some() {
                LIVENESS_INTERVAL
            } else {
                self.reconnect.wait()
            };
            match commands.recv_timeout(wait) {
                Ok(Command::Publish {
                    messages,
                    pace,
                    reply,
                }) => {
                    let results = match pace {
                        Pace::Batch => self.publish(&messages),
                        Pace::OneByOne => self.publish_one_by_one(&messages),
                    };
                    let _ = reply.send(results);
                }
                Ok(Command::ReadyCounts { destinations, reply }) => {
                    let _ = reply.send(self.ready_counts(&destinations));
                }
                Ok(Command::Redeclare(topology)) => {
                    self.topology = topology;
                    if let Some(session) = &mut self.session {
                        if let Err(e) = session.reopen_channel(&self.topology) {
                            self.drop_session(&e.to_string());
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.check_liveness(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Some(session) = self.session.take() {
            session.close();
        }
        self.health.disconnected(COMPONENT);
    }

    fn drop_session(&mut self, reason: &str) {
        if let Some(session) = self.session.take() {
            tracing::warn!(reason, "publisher lost its broker session; reconnecting");
            self.health.disconnected(COMPONENT);
            session.close();
            self.reconnect.lost();
            self.nodes.lost();
        }
    }

    fn check_liveness(&mut self) {
        let Some(session) = &self.session else { return };
        if let Err(e) = session.channel.exchange_declare_passive(self.topology.exchange()) {
            self.drop_session(&e.to_string());
        }
    }

    fn ready_counts(&mut self, destinations: &[String]) -> Result<HashMap<String, u32>, Error> {
        let Some(session) = &self.session else {
            return Err(Error::NotConnected);
        };
        let mut counts = HashMap::new();
        for destination in destinations {
            match session
                .channel
                .queue_declare_passive(self.topology.queue(destination))
            {
                Ok(queue) => {
                    counts.insert(destination.clone(), queue.declared_message_count().unwrap_or(0));
                }
                Err(e) => {
                    // A failed passive declare closes the channel: start over.
                    let message = e.to_string();
                    self.drop_session(&message);
                    return Err(Error::Broker(message));
                }
            }
        }
        Ok(counts)
    }

    fn publish(&mut self, messages: &[OutgoingMessage]) -> Vec<Result<(), Error>> {
        self.publish_within(messages, self.config.confirm_timeout)
    }

    fn publish_within(
        &mut self,
        messages: &[OutgoingMessage],
        confirm_timeout: Duration,
    ) -> Vec<Result<(), Error>> {
        let Some(session) = self.session.as_mut() else {
            return vec![Err(Error::NotConnected); messages.len()];
        };
        let outcome = publish_confirmed(session, &self.topology, messages, confirm_timeout);
        if let Some(reason) = outcome.reset_reason {
            self.drop_session(&reason);
        } else if outcome.nacked {
            if let Err(e) = session.reopen_channel(&self.topology) {
                self.drop_session(&e.to_string());
            }
        }
        outcome.results
    }

    /// Publishes each message alone, stopping at the first that is not confirmed. All of
    /// it takes at most the confirm timeout; messages it leaves no time for are not sent.
    fn publish_one_by_one(&mut self, messages: &[OutgoingMessage]) -> Vec<Result<(), Error>> {
        let deadline = Instant::now() + self.config.confirm_timeout;
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut result = self.publish_within(std::slice::from_ref(message), left);
            let failed = result.iter().any(Result::is_err);
            results.append(&mut result);
            if failed {
                break;
            }
        }
        results.resize(messages.len(), Err(Error::NotConnected));
        results
    }
}

struct BatchOutcome {
    results: Vec<Result<(), Error>>,
    /// Set when the session can no longer be trusted (its tags or its connection).
    reset_reason: Option<String>,
    /// Some message was nacked (a queue refused it): the channel is replaced.
    nacked: bool,
}

/// Publishes `messages` and waits for every confirm (or the timeout).
fn publish_confirmed(
    session: &mut Session,
    topology: &Topology,
    messages: &[OutgoingMessage],
    confirm_timeout: Duration,
) -> BatchOutcome {
    let first_tag = session.next_tag;
    let exchange = topology.exchange();
    for message in messages {
        let publish = Publish {
            body: &message.body,
            routing_key: message.destination.clone(),
            // Returned, not silently dropped, when no queue is bound for the destination.
            mandatory: true,
            immediate: false,
            properties: properties(message),
        };
        if let Err(e) = session.channel.basic_publish(exchange.clone(), publish) {
            // Messages published before this one may still reach their queue, but
            // without their confirms nothing here is known to be safe: fail them all
            // (a re-publication is a duplicate the worker's claim drops).
            let error = Error::ConnectionLost(e.to_string());
            return BatchOutcome {
                results: vec![Err(error); messages.len()],
                reset_reason: Some(e.to_string()),
                nacked: false,
            };
        }
        session.next_tag += 1;
    }

    let last_tag = session.next_tag - 1;
    let mut results: Vec<Option<Result<(), Error>>> = vec![None; messages.len()];
    let index = |tag: u64| -> Option<usize> {
        (first_tag..=last_tag)
            .contains(&tag)
            .then(|| (tag - first_tag) as usize)
    };
    let mut undecided = messages.len();
    let deadline = Instant::now() + confirm_timeout;
    let mut reset_reason = None;
    let mut nacked = false;
    while undecided > 0 {
        match session.confirms.recv_deadline(deadline) {
            Ok(confirm) => {
                let (payload, outcome) = match confirm {
                    Confirm::Ack(p) => (p, Ok(())),
                    Confirm::Nack(p) => {
                        nacked = true;
                        (p, Err(Error::Nacked))
                    }
                };
                let covered = if payload.multiple {
                    first_tag..=payload.delivery_tag
                } else {
                    payload.delivery_tag..=payload.delivery_tag
                };
                for tag in covered {
                    if let Some(i) = index(tag) {
                        if results[i].is_none() {
                            results[i] = Some(outcome.clone());
                            undecided -= 1;
                        }
                    }
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                reset_reason = Some(format!("no confirm within {confirm_timeout:?}"));
                for result in results.iter_mut().filter(|r| r.is_none()) {
                    *result = Some(Err(Error::ConfirmTimeout(confirm_timeout)));
                }
                break;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                // The channel's next call answers at once with why it closed (e.g. the
                // broker's "501 FRAME_ERROR"), which the confirm stream does not carry.
                let why = match session.channel.exchange_declare_passive(exchange.clone()) {
                    Err(e) => format!("closed while awaiting confirms: {e}"),
                    Ok(_) => "closed while awaiting confirms".to_string(),
                };
                reset_reason = Some(format!("the connection {why}"));
                for result in results.iter_mut().filter(|r| r.is_none()) {
                    *result = Some(Err(Error::ConnectionLost(why.clone())));
                }
                break;
            }
        }
    }

    // A return precedes the ack of the same message on the wire, and amiquip hands it
    // over before the ack, so every return for this batch is already here.
    let by_id: HashMap<String, usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.delivery_id.to_string(), i))
        .collect();
    while let Ok(returned) = session.returns.try_recv() {
        let id = returned.properties.message_id().clone().unwrap_or_default();
        if let Some(&i) = by_id.get(&id) {
            results[i] = Some(Err(Error::Unroutable(messages[i].destination.clone())));
        }
        // The queue may have been deleted: redeclare the topology on a fresh session.
        reset_reason.get_or_insert_with(|| format!("message returned: {}", returned.reply_text));
    }

    BatchOutcome {
        results: results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::NotConnected)))
            .collect(),
        reset_reason,
        nacked,
    }
}

fn properties(message: &OutgoingMessage) -> AmqpProperties {
    let mut table = FieldTable::new();
    let text = |value: &str| AmqpValue::LongString(value.to_string());
    table.insert(headers::EVENT_UUID.into(), text(&message.event_uuid.to_string()));
    table.insert(headers::EVENT_ID.into(), text(&message.event_id));
    table.insert(headers::SOURCE.into(), text(&message.source));
    table.insert(headers::EVENT_TYPE.into(), text(&message.event_type));
    table.insert(headers::DESTINATION.into(), text(&message.destination));
    table.insert(headers::ATTEMPT.into(), AmqpValue::LongInt(message.attempt));
    if let Some(traceparent) = &message.traceparent {
        table.insert(headers::TRACEPARENT.into(), text(traceparent));
    }
    AmqpProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(message.content_type.clone())
        .with_message_id(message.delivery_id.to_string())
        .with_headers(table)
}
