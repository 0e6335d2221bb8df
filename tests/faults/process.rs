//! relayd's own processes as the fault: SIGKILL of each role — all roles in one process,
//! and each of three role-split processes — restarted at the same addresses, and a
//! worker SIGSTOPped beyond its lease while a second worker runs. The load and the
//! probes of the other processes go on throughout; the other processes must stay live
//! and ready, and every accepted event must reach the sink with nothing left
//! undelivered in the outbox.

use std::time::{Duration, Instant};

use crate::child::{config_file, free_address, Process};
use crate::harness::{assert_probes, report, settle, statuses, Load, Probe, RATE};
use crate::services::Services;
use crate::sink::{Behaviour, Sink};
use crate::support::{TestBroker, TestDb};

/// Runs one relayd child process per entry of `layout` (its `--role` list; exactly one
/// runs ingest) under [`RATE`] events/s, applies `fault` to the process at `victim`,
/// and checks the outcome.
async fn processes_under_load(
    name: &str,
    layout: &[&str],
    victim: usize,
    fault: impl AsyncFnOnce(&mut Process),
) {
    let db = TestDb::create().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let config = config_file(&db, &broker, &sink);
    let ingest = free_address();
    let mut processes: Vec<Process> = Vec::new();
    for roles in layout {
        let ops = free_address();
        let env = [
            ("RELAYD__INGEST__LISTEN", ingest.as_str()),
            ("RELAYD__OPS__LISTEN", &ops),
        ];
        processes.push(Process::start_with(&config, roles, &env));
    }
    for process in &processes {
        process.wait_ready().await;
    }
    let probes: Vec<Probe> = processes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, p)| {
            let ops = p.ops.clone();
            Probe::start(move |path| format!("http://{ops}{path}"))
        })
        .collect();
    let load = Load::start(format!("http://{ingest}/webhooks/stripe"), name);
    load.wait_accepted(2 * RATE as usize, Duration::from_secs(20))
        .await;

    let fault_start = Instant::now();
    fault(&mut processes[victim]).await;
    let fault_end = Instant::now();
    processes[victim].wait_ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answers = load.stop().await;
    let outcome = settle(&sink, &answers, fault_end, Duration::from_secs(60)).await;
    report(name, &outcome, &statuses(&answers));
    for probe in probes {
        // The others stay live and ready while one process is gone or frozen (the
        // children run with the default `ops.liveness_stall` of 2 m).
        let readings = probe.stop().await;
        assert_probes(&readings, fault_start, fault_end, None, Duration::from_secs(120));
    }
    // Whatever the lost process held is finished by the others: no row is left
    // delivering, queued or retrying once every event arrived.
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status <> 'delivered'",
        0,
        Duration::from_secs(30),
    )
    .await;
    for process in processes {
        let roles = process.roles.clone();
        assert_eq!(process.terminate().code(), Some(0), "--role {roles} exits 0");
    }
    sink.stop().await;
}

/// SIGKILL, a moment without the process (the load meets a closed port where it
/// listened), then the same roles started again.
async fn sigkill(process: &mut Process) {
    process.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    process.restart();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_an_all_roles_process_loses_nothing_accepted() {
    let _services = Services::exclusive().await;
    processes_under_load("relayd --role all SIGKILLed, restarted", &["all"], 0, sigkill).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_split_worker_loses_nothing_accepted() {
    let _services = Services::exclusive().await;
    let layout = ["ingest", "relay", "worker"];
    processes_under_load("split: worker SIGKILLed, restarted", &layout, 2, sigkill).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_split_relay_loses_nothing_accepted() {
    let _services = Services::exclusive().await;
    let layout = ["ingest", "relay", "worker"];
    processes_under_load("split: relay SIGKILLed, restarted", &layout, 1, sigkill).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_split_ingest_loses_nothing_accepted() {
    let _services = Services::exclusive().await;
    let layout = ["ingest", "relay", "worker"];
    processes_under_load("split: ingest SIGKILLed, restarted", &layout, 0, sigkill).await;
}

/// A worker frozen (SIGSTOP) for longer than its claims' lease (2 s timeout + 1 s
/// margin) and its broker heartbeat allow: the broker hands its unacked messages to the
/// other worker, the relay re-publishes its expired claims, and when it thaws (SIGCONT)
/// its late outcomes are fenced off and it reconnects by itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_beyond_its_lease_is_covered_by_the_other_and_recovers() {
    let _services = Services::exclusive().await;
    let layout = ["ingest,relay", "worker", "worker"];
    processes_under_load(
        "worker SIGSTOPped 8 s (lease 3 s), a second worker running",
        &layout,
        1,
        async |worker| {
            worker.signal("STOP");
            tokio::time::sleep(Duration::from_secs(8)).await;
            worker.signal("CONT");
        },
    )
    .await;
}
