// @generated automatically by Diesel CLI.

diesel::table! {
    dedup_keys (source, key) {
        source -> Text,
        key -> Bytea,
        event_id -> Uuid,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    deliveries (id) {
        id -> Uuid,
        event_id -> Uuid,
        destination -> Text,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        lease_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        last_status_code -> Nullable<Int4>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        delivered_at -> Nullable<Timestamptz>,
        ordering_key -> Nullable<Text>,
        ordering_seq -> Nullable<Int8>,
    }
}

diesel::table! {
    delivery_attempts (id) {
        id -> Int8,
        delivery_id -> Uuid,
        attempt -> Int4,
        started_at -> Timestamptz,
        duration_ms -> Int4,
        status_code -> Nullable<Int4>,
        error -> Nullable<Text>,
        response_snippet -> Nullable<Text>,
        throttled -> Bool,
    }
}

diesel::table! {
    destination_states (destination) {
        destination -> Text,
        state -> Text,
        reason -> Nullable<Text>,
        probe_interval -> Nullable<Float8>,
        next_probe_at -> Nullable<Timestamptz>,
        probe_until -> Nullable<Timestamptz>,
        changed_at -> Timestamptz,
    }
}

diesel::table! {
    events (id) {
        id -> Uuid,
        source -> Text,
        event_id -> Text,
        event_type -> Text,
        payload -> Bytea,
        content_type -> Text,
        headers -> Jsonb,
        received_at -> Timestamptz,
        traceparent -> Nullable<Text>,
        filtered -> Nullable<Jsonb>,
        body -> Nullable<Jsonb>,
        txid -> Nullable<Int8>,
    }
}

diesel::table! {
    operator_watch (key) {
        key -> Text,
        state -> Text,
        seen_at -> Timestamptz,
    }
}

diesel::table! {
    ordering_keys (destination, key) {
        destination -> Text,
        key -> Text,
        last_seq -> Int8,
        head -> Nullable<Uuid>,
        changed_at -> Timestamptz,
    }
}

diesel::table! {
    replay_jobs (id) {
        id -> Uuid,
        filter -> Jsonb,
        max_rate -> Nullable<Int4>,
        status -> Text,
        matching -> Int8,
        replayed -> Int8,
        cursor -> Nullable<Uuid>,
        next_page_at -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    worker_heartbeats (id) {
        id -> Uuid,
        beat_at -> Timestamptz,
    }
}

diesel::joinable!(deliveries -> events (event_id));

diesel::allow_tables_to_appear_in_same_query!(
    dedup_keys,
    deliveries,
    delivery_attempts,
    destination_states,
    events,
    operator_watch,
    ordering_keys,
    replay_jobs,
    worker_heartbeats,
);
