//! The hot outbox statements: their plans stay right when the statistics are stale, and
//! each connection parses them once.
//!
//! The stale case is the one that hurt in the benchmark: the outbox was last analyzed
//! while every row was delivered, then a burst made thousands of rows due again before
//! autovacuum looked. The plans are read with EXPLAIN (no timing involved). The claim
//! and record checks fail with the earlier `OR` forms of those statements; the relay
//! check guards the ordered, limited walk that `claim_due` is written for.

use diesel::sql_types::{Array, BigInt, Bool, Double, Integer, Nullable, Text, Timestamptz, Uuid};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use relayd::db::deliveries::{self, CLAIM_DUE_SETUP, CLAIM_DUE_SQL, CLAIM_SQL, RECORD_OUTCOMES_SQL};

use crate::support::TestDb;

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

fn plan_text(lines: Vec<PlanLine>) -> String {
    lines.into_iter().map(|l| l.line).collect::<Vec<_>>().join("\n")
}

/// 20,000 deliveries analyzed while all `delivered`, then made due without ANALYZE:
/// half `queued`, half `pending`. Returns a few of their ids.
async fn outbox_with_stale_statistics(conn: &mut AsyncPgConnection) -> Vec<uuid::Uuid> {
    conn.batch_execute(
        "INSERT INTO events (id, source, event_id, event_type, payload, content_type) \
             SELECT gen_random_uuid(), 'stripe', 'evt_' || i, 'invoice.paid', '\\x7b7d', 'application/json' \
             FROM generate_series(1, 20000) i; \
         INSERT INTO deliveries (id, event_id, destination, status, attempts) \
             SELECT gen_random_uuid(), id, 'billing', 'delivered', 1 FROM events; \
         ANALYZE events; ANALYZE deliveries; \
         UPDATE deliveries SET status = CASE WHEN random() < 0.5 THEN 'queued' ELSE 'pending' END, \
                               next_attempt_at = now() - interval '1 minute';",
    )
    .await
    .unwrap();
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Uuid)]
        id: uuid::Uuid,
    }
    let ids: Vec<Id> = diesel::sql_query("SELECT id FROM deliveries ORDER BY random() LIMIT 16")
        .load(conn)
        .await
        .unwrap();
    ids.into_iter().map(|i| i.id).collect()
}

#[tokio::test]
async fn claims_and_records_find_their_rows_by_primary_key_whatever_the_statistics() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    let ids = outbox_with_stale_statistics(&mut conn).await;

    let claim = plan_text(
        diesel::sql_query(format!("EXPLAIN {CLAIM_SQL}"))
            .bind::<Double, _>(40.0)
            .bind::<Double, _>(40.0)
            .bind::<Array<Uuid>, _>(&ids)
            .load(&mut conn)
            .await
            .unwrap(),
    );
    assert!(claim.contains("deliveries_pkey"), "{claim}");
    assert!(!claim.contains("deliveries_due_idx"), "{claim}");

    let n = ids.len();
    let record = plan_text(
        diesel::sql_query(format!("EXPLAIN {RECORD_OUTCOMES_SQL}"))
            .bind::<Array<Uuid>, _>(&ids)
            .bind::<Array<Integer>, _>(vec![1; n])
            .bind::<Array<Timestamptz>, _>(vec![chrono::Utc::now(); n])
            .bind::<Array<Integer>, _>(vec![3; n])
            .bind::<Array<Nullable<Integer>>, _>(vec![Some(200); n])
            .bind::<Array<Nullable<Text>>, _>(vec![None::<String>; n])
            .bind::<Array<Nullable<Text>>, _>(vec![Some(String::new()); n])
            .bind::<Array<Bool>, _>(vec![false; n])
            .bind::<Array<Uuid>, _>(&ids)
            .bind::<Array<Integer>, _>(vec![1; n])
            .bind::<Array<Text>, _>(vec!["delivered"; n])
            .bind::<Array<Nullable<Integer>>, _>(vec![Some(200); n])
            .bind::<Array<Nullable<Text>>, _>(vec![None::<String>; n])
            .bind::<Array<Nullable<Double>>, _>(vec![None::<f64>; n])
            .bind::<Array<Bool>, _>(vec![false; n])
            .load(&mut conn)
            .await
            .unwrap(),
    );
    assert!(record.contains("deliveries_pkey"), "{record}");
    assert!(!record.contains("deliveries_due_idx"), "{record}");
}

#[tokio::test]
async fn the_relay_walks_the_due_index_in_order_whatever_the_statistics() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    outbox_with_stale_statistics(&mut conn).await;

    let plan = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            conn.batch_execute(CLAIM_DUE_SETUP).await?;
            let lines: Vec<PlanLine> = diesel::sql_query(format!("EXPLAIN {CLAIM_DUE_SQL}"))
                .bind::<BigInt, _>(500)
                .load(conn)
                .await?;
            Ok(plan_text(lines))
        })
        .await
        .unwrap();
    // An ordered walk that stops at the limit: no bitmap of every due row, no sort of
    // them all before the limit.
    assert!(plan.contains("Index Scan using deliveries_due_idx"), "{plan}");
    assert!(!plan.contains("Bitmap"), "{plan}");
    // A sort above the limit (of the kept rows) is fine; below it, it would sort every
    // due row. EXPLAIN prints a plan top-down, so every node under the limit comes after it.
    let limit = plan.find("Limit").expect("a limit");
    assert!(!plan[limit..].contains("Sort"), "no sort below the limit: {plan}");

    // And it does claim the oldest due rows.
    let claimed = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| deliveries::claim_due(conn, 500).await)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 500);
}

#[tokio::test]
async fn a_connection_parses_each_hot_statement_once() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    let ids = outbox_with_stale_statistics(&mut conn).await;

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    async fn prepared_statements(conn: &mut AsyncPgConnection) -> i64 {
        diesel::sql_query("SELECT count(*) AS n FROM pg_prepared_statements")
            .get_result::<Count>(conn)
            .await
            .unwrap()
            .n
    }
    let before = prepared_statements(&mut conn).await;
    let lease = std::time::Duration::from_secs(40);
    for chunk in ids.chunks(4) {
        let claimed = deliveries::claim(&mut conn, chunk, lease).await.unwrap();
        assert_eq!(claimed.len(), chunk.len());
    }
    // Four claims, one statement kept (the count query itself is not kept).
    assert_eq!(prepared_statements(&mut conn).await, before + 1);
}
