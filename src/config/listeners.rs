//! The listeners: `[ingest]` (the public webhook endpoint and its limits) and `[ops]`
//! (health, metrics, admin), with their defaults and their checks.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Error, Secret};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Public listener for `POST /webhooks/{source}`.
    pub listen: SocketAddr,
    /// Bodies larger than this are refused with 413 before anything is verified.
    pub max_body_bytes: usize,
    /// A request whose body has not fully arrived this long after its head is answered
    /// 408 and closed.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A connection that has not sent a whole request head this long after it opened
    /// (or after its previous request) is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Bytes of request bodies held in memory across all requests at once; a request
    /// that would go beyond is answered 503 + `Retry-After` (before its body is read
    /// when it declares its length).
    pub max_buffered_bytes: usize,
    /// Open connections at most; further ones wait in the listen queue.
    pub max_connections: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3000)),
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(5),
            max_buffered_bytes: 64 * 1024 * 1024,
            max_connections: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Health, readiness, metrics and admin; keep it off the public network.
    pub listen: SocketAddr,
    /// Bearer token for `/admin`; the admin API is disabled while unset.
    pub admin_token: Option<Secret>,
    /// `/healthz` fails (and an orchestrator restarts the process) once a role has made
    /// no progress, or a broker connection has been down, for longer than this. Shorter
    /// outages are ridden out in the process.
    #[serde(with = "humantime_serde")]
    pub liveness_stall: Duration,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_token: None,
            liveness_stall: Duration::from_secs(120),
        }
    }
}

impl IngestConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.body_timeout.is_zero() {
            return Err(invalid("ingest.body_timeout", "must be longer than 0s"));
        }
        if self.header_timeout.is_zero() {
            return Err(invalid("ingest.header_timeout", "must be longer than 0s"));
        }
        if self.max_buffered_bytes < self.max_body_bytes {
            return Err(invalid(
                "ingest.max_buffered_bytes",
                "must be at least ingest.max_body_bytes (one largest body must fit)",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("ingest.max_connections", "must be at least 1"));
        }
        if self.max_body_bytes == 0 {
            return Err(invalid("ingest.max_body_bytes", "must be at least 1"));
        }
        Ok(())
    }
}

impl OpsConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.liveness_stall.is_zero() {
            return Err(invalid("ops.liveness_stall", "must be longer than 0s"));
        }
        if let Some(token) = &self.admin_token {
            if token.expose().len() < 16 {
                return Err(invalid("ops.admin_token", "must be at least 16 characters"));
            }
        }
        Ok(())
    }
}
