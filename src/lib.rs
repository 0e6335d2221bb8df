//! relayd: receives provider webhooks, verifies them, stores each event exactly once in
//! PostgreSQL (an outbox), relays it through RabbitMQ and delivers it, signed, to every
//! subscribed downstream service.
//!
//! Roles (`ingest`, `relay`, `worker`) sit on top, started by `daemon`; they meet only
//! through `context`, `wake`, `db`, `broker` and the other shared modules below them,
//! and never import each other or `daemon`.

pub mod broker;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod context;
pub mod daemon;
pub mod db;
pub mod filter;
pub mod http_error;
pub mod ingest;
pub mod listener;
pub mod liveness;
pub mod metrics;
pub mod notices;
pub mod ops;
pub mod relay;
pub mod reload;
pub mod replay;
pub mod retention;
pub mod retry;
pub mod search;
pub mod signing;
pub mod telemetry;
pub mod wake;
pub mod worker;
