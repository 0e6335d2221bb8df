//! relayd's own processes as the fault: SIGKILL of each role — all roles in one process,
//! and each of three role-split processes — restarted at the same addresses, and a
//! worker SIGSTOPped beyond its lease while a second worker runs. The load and the
//! probes of the other processes go on throughout; the other processes must stay live
//! and ready, and every accepted event must reach the sink with nothing left
//! undelivered in the outbox.

use std::time::{Duration, Instant};

use crate::harness::{assert_probes, report, settle, statuses, Load, Probe, RATE};
use crate::services::Services;
use crate::support::child::{config_file, free_address, Process};
use crate::support::sink::{Behaviour, Sink};
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

/// The worker holding an open circuit's probe is SIGKILLed while the probe is out: a
/// second worker, running all along, takes the probe once the holder's time has run out
/// (its lease: the 10 s timeout + 1 s) and closes the circuit in its own process; every
/// accepted event is delivered and nothing is left undelivered. (The report's
/// duplicates are the sends answered 500 before the kill: the sink records every
/// request.)
#[tokio::test(flavor = "multi_thread")]
async fn the_probe_holder_sigkilled_mid_probe_is_replaced_by_the_other_worker() {
    use crate::support::sink::Answer;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;
    let _services = Services::exclusive().await;
    let db = TestDb::create().await;
    let broker = TestBroker::new(&["sink"]);
    // 0: every request fails fast; 1: it hangs (the probe); 2: healthy.
    let phase = Arc::new(AtomicU8::new(0));
    let answers = phase.clone();
    let sink = Sink::start(Behaviour::planned(move |_, _| {
        match answers.load(Ordering::SeqCst) {
            0 => Answer::Whole {
                status: 500,
                body: b"down".to_vec(),
            },
            1 => Answer::Stream {
                status: 200,
                chunk: b"z".to_vec(),
                every: Duration::from_secs(1),
                count: None,
            },
            _ => Answer::ok(),
        }
    }))
    .await;
    let config = {
        let file = config_file(&db, &broker, &sink);
        let text = std::fs::read_to_string(&file.0).unwrap();
        crate::support::temp_file(&text.replace("timeout = \"2s\"", "timeout = \"10s\""))
    };
    let ingest = free_address();
    let start = |roles: &str| {
        let ops = free_address();
        let env = [
            ("RELAYD__INGEST__LISTEN", ingest.as_str()),
            ("RELAYD__OPS__LISTEN", &ops),
        ];
        Process::start_with(&config, roles, &env)
    };
    let front = start("ingest,relay");
    let mut holder = start("worker");
    front.wait_ready().await;
    holder.wait_ready().await;
    let load = Load::start(format!("http://{ingest}/webhooks/stripe"), "probe holder killed");
    let state = async |states: &[&str], within: Duration| {
        let list = states
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(",");
        db.wait_count(
            &format!("SELECT count(*) FROM destination_states WHERE state IN ({list})"),
            1,
            within,
        )
        .await;
    };
    state(&["open", "half_open"], Duration::from_secs(20)).await;
    phase.store(1, Ordering::SeqCst);
    // The next probe goes (200 ms after opening, at most 1 s) and hangs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    state(&["half_open"], Duration::from_secs(5)).await;
    let other = start("worker");
    other.wait_ready().await;
    holder.kill9();
    let killed = Instant::now();
    phase.store(2, Ordering::SeqCst);
    state(&["closed"], Duration::from_secs(30)).await;
    let closed_after = killed.elapsed();
    let answers = load.stop().await;
    let outcome = settle(&sink, &answers, killed, Duration::from_secs(60)).await;
    report(
        "probe holder SIGKILLed mid-probe, second worker",
        &outcome,
        &statuses(&answers),
    );
    eprintln!("circuit closed {closed_after:?} after the probe holder was killed");
    assert!(closed_after < Duration::from_secs(20), "{closed_after:?}");
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status <> 'delivered'",
        0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(other.terminate().code(), Some(0));
    assert_eq!(front.terminate().code(), Some(0));
    sink.stop().await;
}
