//! The messages on the destination queues, typed at both ends: the relay builds an
//! [`OutgoingMessage`] (the publisher writes it as AMQP properties and [`headers`]), and
//! the worker reads the same fields back as an [`Envelope`] — or learns that a message
//! is [`Malformed`] (not one relayd published) and sets it aside.

use uuid::Uuid;

use super::IncomingMessage;

/// One delivery to publish: the raw payload plus what a worker needs to find its row.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// `message_id`: the delivery row's id.
    pub delivery_id: Uuid,
    /// The routing key, and the name of the destination queue's suffix.
    pub destination: String,
    /// The stored event's id (relayd's uuid).
    pub event_uuid: Uuid,
    /// The provider's event id.
    pub event_id: String,
    pub source: String,
    pub event_type: String,
    /// The number of the attempt this message will lead to (1 for the first).
    pub attempt: i32,
    pub content_type: String,
    pub body: Vec<u8>,
    /// The W3C trace context of this publish ([`headers::TRACEPARENT`]), when traced.
    pub traceparent: Option<String>,
}

/// The most bytes of properties and headers a message may carry: they travel in one
/// content-header frame, which must fit the broker's `frame_max` (128 KiB by default).
const MAX_PROPERTY_BYTES: usize = 64 * 1024;

impl OutgoingMessage {
    /// Why no AMQP message can carry this one, if so: a `content_type` is a short string
    /// (at most 255 bytes), and the properties must fit one frame.
    pub fn unpublishable(&self) -> Option<String> {
        if self.content_type.len() > 255 {
            return Some(format!(
                "content type of {} bytes (an AMQP short string holds 255)",
                self.content_type.len()
            ));
        }
        let properties = self.content_type.len()
            + self.event_id.len()
            + self.source.len()
            + self.event_type.len()
            + self.destination.len()
            + self.traceparent.as_ref().map_or(0, String::len)
            + 256;
        (properties > MAX_PROPERTY_BYTES).then(|| {
            format!("{properties} bytes of message properties (at most {MAX_PROPERTY_BYTES} fit a frame)")
        })
    }
}

/// Header names carried by published messages (all but [`headers::TRACEPARENT`] by
/// every one).
pub mod headers {
    pub const EVENT_UUID: &str = "x-relayd-event";
    pub const EVENT_ID: &str = "x-relayd-event-id";
    pub const SOURCE: &str = "x-relayd-source";
    pub const EVENT_TYPE: &str = "x-relayd-event-type";
    pub const DESTINATION: &str = "x-relayd-destination";
    pub const ATTEMPT: &str = "x-relayd-attempt";
    /// The publishing span's W3C trace context, which the worker's delivery continues.
    pub const TRACEPARENT: &str = crate::telemetry::context::TRACEPARENT;
}

/// What a delivery needs of a message taken from its queue: the fields the relay put in
/// its [`OutgoingMessage`], read back from its properties and [`headers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `message_id`: the delivery row's id.
    pub delivery_id: Uuid,
    /// The stored event's id (relayd's uuid), as text: the `webhook-id` it is sent with.
    pub event_uuid: String,
    /// The provider's event id (empty in a message published without it).
    pub event_id: String,
    pub source: String,
    pub event_type: String,
    pub content_type: String,
    /// The publish's trace context, passed on as it is when this process does not trace.
    pub traceparent: Option<String>,
}

/// Why a message is not one relayd published (it is dead-lettered, never delivered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("no message_id")]
    NoMessageId,
    #[error("message_id is not a delivery id")]
    NotADeliveryId,
    #[error("missing header {0}")]
    MissingHeader(&'static str),
}

impl Envelope {
    /// Reads `message`'s envelope.
    pub fn of(message: &IncomingMessage) -> Result<Self, Malformed> {
        let delivery_id = message
            .message_id
            .as_deref()
            .ok_or(Malformed::NoMessageId)?
            .parse::<Uuid>()
            .map_err(|_| Malformed::NotADeliveryId)?;
        let header = |name: &'static str| {
            message
                .headers
                .get(name)
                .cloned()
                .ok_or(Malformed::MissingHeader(name))
        };
        Ok(Self {
            delivery_id,
            event_uuid: header(headers::EVENT_UUID)?,
            event_id: message
                .headers
                .get(headers::EVENT_ID)
                .cloned()
                .unwrap_or_default(),
            source: header(headers::SOURCE)?,
            event_type: header(headers::EVENT_TYPE)?,
            content_type: message
                .content_type
                .clone()
                .unwrap_or_else(|| "application/json".into()),
            traceparent: message.headers.get(headers::TRACEPARENT).cloned(),
        })
    }
}
