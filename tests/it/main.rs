//! relayd's integration tests, one binary: real PostgreSQL (a fresh database per test),
//! relayd started in-process on `127.0.0.1:0` or as the real binary.

mod batches;
mod browser;
// Shared with the `faults` binary, which kills, stops and restarts children.
#[allow(dead_code)]
mod child;
mod cli;
mod deploy;
mod flow;
mod hostile;
mod ingest;
mod migrations;
mod notices;
// Shared with the `faults` binary (the cluster); this one uses a part.
#[allow(dead_code)]
mod nodes;
mod ops;
mod ordering;
mod process;
mod prometheus;
mod providers;
mod relay;
mod reload;
mod replays;
mod retention;
mod sink;
mod statements;
mod support;
mod tls;
mod traces;
mod worker;
