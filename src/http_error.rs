//! The one HTTP error type of relayd's listeners, with its explicit status mapping.
//!
//! Every error answer is JSON: `{"error": "<code>", "message": "<detail>"}`. Client
//! errors are logged once at `warn` with their reason; internal and storage errors are
//! logged once at `error` with their cause and answered with a generic message, so no
//! internal detail (or secret) leaks to the caller.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

/// Seconds a provider should wait before retrying when storage is unavailable.
pub const RETRY_AFTER_SECONDS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no source named {0:?} is configured")]
    UnknownSource(String),
    #[error("no such route")]
    NotFound,
    #[error("{0}")]
    NotFoundDetail(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// A provider handshake with the wrong token.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    InvalidSignature(String),
    /// As [`ApiError::InvalidSignature`], answered `401` for a provider that requires it
    /// (Discord tests the endpoint with forged requests and expects a 401).
    #[error("{0}")]
    SignatureUnauthorized(String),
    #[error("{0}")]
    InvalidPayload(String),
    #[error("body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// Too many request bodies are held in memory right now; the caller should retry.
    #[error("too many request bodies in flight; retry later")]
    Busy,
    #[error("{0}")]
    BadRequest(String),
    /// The database (or another dependency) cannot take the request now; the caller
    /// should retry. The cause is logged, not answered.
    #[error("storage unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// A search that PostgreSQL stopped at its statement timeout: too broad to answer
    /// now; the message says how to narrow it.
    #[error("{0}")]
    SearchTooBroad(String),
    #[error("{0} event streams are open already; try again later")]
    TooManyStreams(usize),
}

impl ApiError {
    /// The stable machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownSource(_) => "unknown_source",
            Self::NotFound | Self::NotFoundDetail(_) => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Conflict(_) => "conflict",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidSignature(_) | Self::SignatureUnauthorized(_) => "invalid_signature",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::BodyTimeout(_) => "request_timeout",
            Self::Busy => "busy",
            Self::BadRequest(_) => "bad_request",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
            Self::SearchTooBroad(_) => "search_too_broad",
            Self::TooManyStreams(_) => "too_many_streams",
        }
    }
}

/// A failed query: the database cannot take the request now (the cause is logged).
impl From<diesel::result::Error> for ApiError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Unavailable(anyhow::Error::new(error).context("database query"))
    }
}

/// No pooled connection in time: as a failed query.
impl From<crate::db::PoolError> for ApiError {
    fn from(error: crate::db::PoolError) -> Self {
        Self::Unavailable(anyhow::Error::new(error).context("getting a database connection"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::UnknownSource(_) | Self::NotFound | Self::NotFoundDetail(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized | Self::SignatureUnauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidSignature(_) | Self::InvalidPayload(_) | Self::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Busy | Self::Unavailable(_) | Self::SearchTooBroad(_) | Self::TooManyStreams(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Unavailable(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "storage unavailable")
            }
            Self::Internal(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "internal error")
            }
            other => tracing::warn!(error = other.code(), reason = %other, "request refused"),
        }
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, Self::Unauthorized) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if matches!(
            self,
            Self::PayloadTooLarge { .. } | Self::BodyTimeout(_) | Self::Busy
        ) {
            // The rest of the body is not read: close rather than drain it.
            response.force_close();
        }
        if matches!(self, Self::Unavailable(_) | Self::Busy | Self::TooManyStreams(_)) {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS)));
        }
        response.json(json!({ "error": self.code(), "message": self.to_string() }))
    }
}
