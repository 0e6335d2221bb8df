//! relayd's integration tests, one binary: real PostgreSQL (a fresh database per test),
//! relayd started in-process on `127.0.0.1:0` or as the real binary.

#[path = "../support/mod.rs"]
#[expect(dead_code, reason = "shared with the faults binary: each binary uses a part")]
mod support;

mod batches;
mod browser;
mod cli;
mod dedup;
mod deploy;
mod filters;
mod flow;
mod hostile;
mod ingest;
mod migrations;
mod notices;
mod ops;
mod ordering;
mod process;
mod prometheus;
mod providers;
mod relay;
mod reload;
mod replays;
mod retention;
mod search;
mod statements;
mod stream;
mod tls;
mod traces;
mod worker;
