//! Embedded migrations: reversible, idempotent, serialized, and able to create the
//! database they need.

use std::process::Command;

use crate::support::{self, TestDb};

const TABLES: &str = "SELECT count(*) FROM information_schema.tables \
     WHERE table_schema = 'public' AND table_name IN ('events', 'deliveries', 'delivery_attempts')";

#[tokio::test(flavor = "multi_thread")]
async fn migrations_go_up_down_and_up_again() {
    let db = TestDb::create().await;
    let applied = relayd::db::migrate::run_pending(&db.url).await.unwrap();
    assert!(!applied.is_empty());
    assert_eq!(db.count(TABLES).await, 3);

    let reverted = relayd::db::migrate::revert_all(&db.url).await.unwrap();
    assert_eq!(reverted, applied.len());
    assert_eq!(
        db.count(TABLES).await,
        0,
        "down.sql removes everything up.sql made"
    );

    let again = relayd::db::migrate::run_pending(&db.url).await.unwrap();
    assert_eq!(again, applied);
    assert_eq!(db.count(TABLES).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrations_are_serialized_by_the_advisory_lock() {
    let db = TestDb::create().await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { relayd::db::migrate::run_pending(&url).await })
        })
        .collect();
    let mut applied_by = 0;
    for run in runs {
        let applied = run.await.unwrap().expect("every replica's migration succeeds");
        if !applied.is_empty() {
            applied_by += 1;
        }
    }
    assert_eq!(
        applied_by, 1,
        "exactly one replica applies, the others find nothing pending"
    );
    assert_eq!(db.count(TABLES).await, 3);
}

fn migrate_with_binary(url: &str) -> std::process::Output {
    // An explicit, empty config file: the test must not depend on config/relayd.toml.
    let config = support::temp_file("");
    Command::new(support::relayd_binary())
        .arg("migrate")
        .arg("--config")
        .arg(&config.0)
        .env("RELAYD__DATABASE__URL", url)
        .output()
        .expect("run relayd migrate")
}

#[tokio::test(flavor = "multi_thread")]
async fn relayd_migrate_creates_a_missing_database_and_a_second_run_is_a_no_op() {
    let db = TestDb::unique();
    let first = migrate_with_binary(&db.url);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let log = String::from_utf8_lossy(&first.stderr);
    assert!(log.contains("created the database"), "{log}");
    assert!(log.contains("applied migrations"), "{log}");
    assert_eq!(db.count(TABLES).await, 3);

    let second = migrate_with_binary(&db.url);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(log.contains("up to date"), "{log}");
    assert!(!log.contains("applied migrations"), "{log}");
}
