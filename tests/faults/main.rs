//! Fault tests: faults injected into a *running* relayd — the machine's own RabbitMQ and
//! PostgreSQL stopped, killed and restarted, connections closed by the broker or cut by
//! a proxy, relayd's own processes killed or frozen — each under steady load, with every accepted event checked at a receiving
//! sink. Restarting relayd is never counted as recovery.
//!
//! This binary restarts the machine's services, so it is its own test binary (cargo runs
//! test binaries one after another, never beside `it`), every test holds
//! [`services::Services`], and the services are restored when each test ends, also on
//! failure. `cargo test --test faults -- --nocapture` prints the fault report.

#[path = "../support/mod.rs"]
#[expect(dead_code, reason = "shared with the it binary: each binary uses a part")]
mod support;

mod broker;
mod cluster;
mod database;
mod harness;
mod ordering;
mod process;
mod proxy;
mod services;
