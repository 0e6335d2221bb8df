//! Reading request bodies within bounds: at most `ingest.max_body_bytes` each, within
//! `ingest.body_timeout`, and at most `ingest.max_buffered_bytes` held across every
//! large request at once, so that slow or hostile senders cost bounded time and memory
//! and normal requests are still answered. Nothing is allocated for a declared length.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::IngestConfig;
use crate::http_error::ApiError;

/// A body in memory, with its share of the buffer budget (given back when dropped).
pub struct Body {
    pub bytes: web::Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Bodies up to this size are not counted against the budget: a normal webhook is
/// always read, however many large bodies are held. Their total is bounded by
/// `ingest.max_connections` × this (64 MiB with the defaults).
const SMALL_BODY: usize = 64 * 1024;

/// The budget one body holds: once it is larger than [`SMALL_BODY`], all of it.
#[derive(Default)]
struct Held {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Held {
    /// Holds budget for a body of `len` bytes.
    fn grow(&mut self, reader: &BodyReader, len: usize) -> Result<(), ApiError> {
        if len <= self.bytes {
            return Ok(());
        }
        let more = reader.reserve(len - self.bytes)?;
        match &mut self.permit {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        self.bytes = len;
        Ok(())
    }
}

pub struct BodyReader {
    limit: usize,
    timeout: Duration,
    /// One permit per byte that may be buffered.
    budget: Arc<Semaphore>,
}

impl BodyReader {
    pub fn new(config: &IngestConfig) -> Self {
        Self {
            limit: config.max_body_bytes,
            timeout: config.body_timeout,
            budget: Arc::new(Semaphore::new(
                config.max_buffered_bytes.min(Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Reads the whole body of `request`.
    pub async fn read(&self, request: &HttpRequest, payload: web::Payload) -> Result<Body, ApiError> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.limit) {
            return Err(ApiError::PayloadTooLarge { limit: self.limit });
        }
        let mut held = Held::default();
        // A declared large body is reserved whole before a byte is read: refused at once
        // when the budget cannot hold it.
        if let Some(len) = declared.filter(|len| *len > SMALL_BODY) {
            held.grow(self, len)?;
        }
        let read = tokio::time::timeout(self.timeout, self.collect(payload, &mut held)).await;
        let bytes = read.map_err(|_| ApiError::BodyTimeout(self.timeout))??;
        Ok(Body {
            bytes,
            _budget: held.permit,
        })
    }

    async fn collect(&self, mut payload: web::Payload, held: &mut Held) -> Result<web::Bytes, ApiError> {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
            let len = body.len() + chunk.len();
            if len > self.limit {
                return Err(ApiError::PayloadTooLarge { limit: self.limit });
            }
            if len > SMALL_BODY {
                held.grow(self, len)?;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let bytes = u32::try_from(bytes).map_err(|_| ApiError::PayloadTooLarge { limit: self.limit })?;
        self.budget
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| ApiError::Busy)
    }
}
