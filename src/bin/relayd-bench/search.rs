//! The `search` scenario: the admin API's event search over `--search-events` stored
//! events (1,000,000 by default), each with one delivered delivery, as an operator
//! asks it — one customer's events by `match` (the GIN index), with a type and a
//! week's range, by a `where` whose equality the index answers, a `where` the index
//! cannot help (bounded by its scan budget) and a `match` a third of all events hold
//! (bounded by the query timeout) — timed at the HTTP client, each beside the
//! same containment query sent straight to PostgreSQL in the same run (the database's
//! own time). The events are written by SQL in bulk (Stripe-shaped invoices of ~450 B,
//! `--search-customers` customers, spread over 30 days), then analysed, as a database
//! that has been running would be.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::report::{percentile_ms, Row};
use crate::{process, setup, Args};

/// Queries timed per search.
const QUERIES: usize = 200;

/// Rows written per statement while seeding.
const SEED_BATCH: u64 = 100_000;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

/// A UUIDv7 for a time (relayd's ids are v7, so the list's id order is time order).
const UUID7: &str = "CREATE FUNCTION pg_temp.uuid7(ts timestamptz) RETURNS uuid AS $$ \
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING \
    substring(int8send(floor(extract(epoch FROM ts) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), \
    'hex')::uuid $$ LANGUAGE sql VOLATILE";

pub async fn search(args: &Args) -> anyhow::Result<Vec<Row>> {
    let database = setup::fresh_database(args).await?;
    let seeded = seed(&database, args.search_events, args.search_customers).await?;
    eprintln!("relayd-bench: search: {seeded}");
    let setup = setup::write_config(args, &database, None)?;
    let text = std::fs::read_to_string(&setup.config)?;
    let ops = format!("[ops]\nlisten = \"{}\"\n", setup.ops);
    anyhow::ensure!(text.contains(&ops), "the bench's config has an [ops] table");
    std::fs::write(
        &setup.config,
        text.replace(&ops, &format!("{ops}admin_token = \"{ADMIN_TOKEN}\"\n")),
    )?;
    let relayd =
        process::Relayd::start(&setup::relayd_binary(args), &setup.config, "ingest", &setup.ops).await?;
    let client = reqwest::Client::new();
    let base = format!("http://{}/admin/api/events", setup.ops);
    let customers = args.search_customers.max(1);
    // A different customer each query, the same ones for every search.
    let customer = |n: usize| format!("cus_{}", (n as u64 * 7919 + 13) % customers);
    let week_ago = (chrono::Utc::now() - chrono::Duration::days(7)).to_rfc3339();

    let mut raw = AsyncPgConnection::establish(&database).await?;
    let mut raw_times = Vec::with_capacity(QUERIES);
    for n in 0..QUERIES {
        let document = serde_json::json!({ "data": { "object": { "customer": customer(n) } } });
        let started = Instant::now();
        diesel::sql_query("SELECT id FROM events WHERE body @> $1 ORDER BY id DESC LIMIT 50")
            .bind::<diesel::sql_types::Jsonb, _>(document)
            .execute(&mut raw)
            .await?;
        raw_times.push(started.elapsed());
    }
    raw_times.sort();
    let raw_note = format!(
        "the same containment straight in SQL: p50 {:.1} ms, p99 {:.1} ms",
        percentile_ms(&raw_times, 0.5).unwrap_or(0.0),
        percentile_ms(&raw_times, 0.99).unwrap_or(0.0)
    );

    // Each search: its name, and its query parameters for the n-th try.
    type Params = Vec<(&'static str, String)>;
    type Search<'a> = (&'a str, Box<dyn Fn(usize) -> Params + 'a>);
    let searches: [Search<'_>; 5] = [
        (
            "match: one customer",
            Box::new(|n| {
                vec![(
                    "match",
                    format!(r#"{{"data":{{"object":{{"customer":"{}"}}}}}}"#, customer(n)),
                )]
            }),
        ),
        (
            "match + type + last 7 days",
            Box::new(|n| {
                vec![
                    (
                        "match",
                        format!(r#"{{"data":{{"object":{{"customer":"{}"}}}}}}"#, customer(n)),
                    ),
                    ("event_type", "invoice.paid".into()),
                    ("since", week_ago.clone()),
                ]
            }),
        ),
        (
            "where: customer == and amount >=",
            Box::new(|n| {
                vec![(
                    "where",
                    format!(
                        r#"body.data.object.customer == "{}" && body.data.object.amount_paid >= 50000"#,
                        customer(n)
                    ),
                )]
            }),
        ),
        (
            "where the index cannot narrow (rare amounts)",
            Box::new(|n| vec![("where", format!("body.data.object.amount_paid > {}", 99_980 + n))]),
        ),
        (
            "match a third of all events",
            Box::new(|_| vec![("match", r#"{"livemode":true}"#.to_string())]),
        ),
    ];
    let mut rows = Vec::new();
    for (name, params) in &searches {
        // The broad searches read their whole budget (or time out) each time: fewer tries.
        let tries = if name.contains("cannot") || name.contains("third") {
            10
        } else {
            QUERIES
        };
        let mut times = Vec::with_capacity(tries);
        let (mut found, mut scanned, mut errors) = (0u64, 0u64, 0u64);
        for n in 0..tries {
            let mut params = params(n);
            params.push(("limit", "50".into()));
            let url = reqwest::Url::parse_with_params(&base, &params)?;
            let started = Instant::now();
            let response = client.get(url).bearer_auth(ADMIN_TOKEN).send().await?;
            let ok = response.status().is_success();
            let page: serde_json::Value =
                serde_json::from_slice(&response.bytes().await?).unwrap_or_default();
            times.push(started.elapsed());
            if !ok {
                errors += 1;
                continue;
            }
            found += page["items"].as_array().map_or(0, |items| items.len() as u64);
            scanned += page["scanned"].as_u64().unwrap_or(0);
        }
        times.sort();
        let elapsed: Duration = times.iter().sum();
        rows.push(Row {
            scenario: format!("search: {name}"),
            achieved_per_s: tries as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            requests: tries as u64,
            errors,
            p50_ms: percentile_ms(&times, 0.5),
            p90_ms: percentile_ms(&times, 0.9),
            p99_ms: percentile_ms(&times, 0.99),
            max_ms: percentile_ms(&times, 1.0),
            notes: Some(format!(
                "{} stored events; {:.1} found and {:.0} candidates read per answered query{}; {raw_note}",
                args.search_events,
                found as f64 / (tries as u64 - errors).max(1) as f64,
                scanned as f64 / (tries as u64 - errors).max(1) as f64,
                if errors > 0 {
                    format!("; {errors} answered 503 search_too_broad at the query timeout")
                } else {
                    String::new()
                },
            )),
            ..Row::default()
        });
    }
    relayd.stop();
    Ok(rows)
}

/// Writes `events` Stripe-shaped invoices with a delivered delivery each and analyses
/// the tables; says how long it took and how large the body index is.
async fn seed(database: &str, events: u64, customers: u64) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut conn = AsyncPgConnection::establish(database).await?;
    diesel::sql_query(UUID7).execute(&mut conn).await?;
    let mut from = 0;
    while from < events {
        let to = (from + SEED_BATCH).min(events);
        diesel::sql_query(format!(
            "WITH e AS ( \
               SELECT i, now() - ({events} - i) * interval '2592 milliseconds' * (1000000.0 / {events}) AS at, \
                 jsonb_build_object( \
                   'id', 'evt_' || i, 'object', 'event', \
                   'type', (ARRAY['invoice.paid','invoice.created','invoice.finalized','charge.succeeded','customer.updated'])[1 + i % 5], \
                   'livemode', i % 3 = 0, 'created', 1765000000 + i, \
                   'data', jsonb_build_object('object', jsonb_build_object( \
                     'id', 'in_' || md5(i::text), 'object', 'invoice', \
                     'customer', 'cus_' || (i % {customers}), \
                     'amount_paid', (i * 7919) % 100000, 'currency', 'usd', \
                     'status', 'paid', 'description', 'Subscription ' || (i % 97), \
                     'lines', jsonb_build_array(jsonb_build_object('id', 'il_' || i, 'amount', (i * 7919) % 100000))))) AS body \
               FROM generate_series({from}::bigint, {to} - 1) AS i), \
             ins AS ( \
               INSERT INTO events (id, source, event_id, event_type, payload, content_type, headers, received_at, body) \
               SELECT pg_temp.uuid7(at), 'stripe', body->>'id', body->>'type', convert_to(body::text, 'UTF8'), \
                 'application/json', '{{\"user-agent\": \"Stripe/1.0\"}}', at, body FROM e \
               RETURNING id, received_at) \
             INSERT INTO deliveries (id, event_id, destination, status, attempts, created_at, updated_at, delivered_at) \
             SELECT gen_random_uuid(), id, 'billing', 'delivered', 1, received_at, received_at, received_at FROM ins",
        ))
        .execute(&mut conn)
        .await?;
        from = to;
    }
    diesel::sql_query("VACUUM ANALYZE events")
        .execute(&mut conn)
        .await?;
    diesel::sql_query("VACUUM ANALYZE deliveries")
        .execute(&mut conn)
        .await?;
    #[derive(diesel::QueryableByName)]
    struct Size {
        #[diesel(sql_type = diesel::sql_types::Text)]
        index: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        table: String,
    }
    let size: Size = diesel::sql_query(
        "SELECT pg_size_pretty(pg_relation_size('events_body_idx')) AS index, \
                pg_size_pretty(pg_total_relation_size('events')) AS table",
    )
    .get_result(&mut conn)
    .await?;
    Ok(format!(
        "{events} events and deliveries written in {:.0} s; events {} with its indexes, the body's GIN index {}",
        started.elapsed().as_secs_f64(),
        size.table,
        size.index
    ))
}
