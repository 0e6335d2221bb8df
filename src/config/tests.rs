//! The configuration's loading, layering, redaction and per-section checks.

use super::load::tidy_key_paths;
use super::secret::{redact_url, REDACTED};
use super::*;

#[test]
fn defaults_validate() {
    Config::default().validate().expect("defaults are valid");
}

#[test]
fn key_paths_get_their_dots() {
    assert_eq!(
        tidy_key_paths("bad value for key `sources[0]kind` and `a[1][2]b`"),
        "bad value for key `sources[0].kind` and `a[1][2].b`"
    );
}

#[test]
fn url_passwords_and_query_values_are_redacted() {
    let shown = redact_url("amqp://guest:hunter2@127.0.0.1:5672/%2f");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("guest"), "{shown}");
    let shown = redact_url("https://h.example/in?token=t0k&x=1");
    assert_eq!(shown, "https://h.example/in?token=redacted&x=redacted");
    assert_eq!(redact_url("postgres://a:b@h1:5432,h2:5433/db"), REDACTED);
}

fn load_toml(text: &str) -> Result<Config, Error> {
    let path = std::env::temp_dir().join(format!("relayd-config-{}.toml", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, text).unwrap();
    let loaded = Config::load(Some(&path));
    let _ = std::fs::remove_file(&path);
    loaded
}

#[test]
fn broker_urls_name_the_nodes_and_are_refused_beside_broker_url() {
    let config = load_toml(
        "[broker]\nurls = [\"amqp://a:5672/%2f\", \"amqp://b:5672/%2f\", \"amqps://c:5671/%2f\"]\n",
    )
    .unwrap();
    let nodes: Vec<&str> = config.broker.nodes().iter().map(Secret::expose).collect();
    assert_eq!(
        nodes,
        ["amqp://a:5672/%2f", "amqp://b:5672/%2f", "amqps://c:5671/%2f"]
    );
    let one = load_toml("[broker]\nurl = \"amqp://only:5672/%2f\"\n").unwrap();
    let nodes: Vec<&str> = one.broker.nodes().iter().map(Secret::expose).collect();
    assert_eq!(nodes, ["amqp://only:5672/%2f"]);
    let both = load_toml("[broker]\nurl = \"amqp://a:5672/%2f\"\nurls = [\"amqp://b:5672/%2f\"]\n");
    assert!(
        matches!(&both, Err(Error::Invalid { key, .. }) if key == "broker.urls"),
        "{both:?}"
    );
    let bad = load_toml("[broker]\nurls = [\"amqp://a:5672/%2f\", \"http://b/\"]\n");
    assert!(
        matches!(&bad, Err(Error::Invalid { key, .. }) if key == "broker.urls[1]"),
        "{bad:?}"
    );
}

#[test]
fn the_in_flight_bounds_must_be_ordered_and_positive() {
    let destination = "[[destinations]]\nname = \"d\"\nurl = \"http://h/\"\nsigning_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
    let loaded = load_toml(destination).unwrap();
    assert_eq!(
        (
            loaded.destinations[0].min_in_flight,
            loaded.destinations[0].max_in_flight
        ),
        (1, 256)
    );
    for bounds in ["min_in_flight = 0\n", "min_in_flight = 9\nmax_in_flight = 8\n"] {
        let refused = load_toml(&format!("{destination}{bounds}"));
        assert!(
            matches!(&refused, Err(Error::Invalid { key, .. }) if key.ends_with("min_in_flight")),
            "{bounds}: {refused:?}"
        );
    }
}

#[test]
fn names_are_restricted_to_path_and_queue_safe_characters() {
    assert!(is_valid_name("stripe-live_2"));
    assert!(!is_valid_name(""));
    assert!(!is_valid_name("Stripe"));
    assert!(!is_valid_name("a/b"));
    assert!(!is_valid_name(&"a".repeat(65)));
}

#[test]
fn rate_limits_are_written_per_second_minute_or_hour() {
    let rate = |text: &str| text.parse::<RateLimit>().map(|r| r.per_second());
    assert_eq!(rate("200/s"), Ok(200.0));
    assert_eq!(rate("600/m"), Ok(10.0));
    assert_eq!(rate("1800/h"), Ok(0.5));
    assert_eq!(rate(" 2.5 / s "), Ok(2.5));
    for bad in ["200", "0/s", "-1/s", "x/s", "5/d", "inf/s", ""] {
        assert!(rate(bad).is_err(), "{bad:?}");
    }
    assert_eq!("600/m".parse::<RateLimit>().unwrap().to_string(), "600/m");
    let loaded = load_toml(
        "[[destinations]]\nname = \"d\"\nurl = \"http://127.0.0.1:1/\"\nsigning_secret = \"whsec_AQID\"\nrate_limit = \"7/x\"\n",
    );
    assert!(loaded.is_err(), "{loaded:?}");
}

#[test]
fn ordering_takes_one_pointer_header_or_the_source() {
    let with = |ordering: &str| {
        load_toml(&format!(
            "[[destinations]]\nname = \"d\"\nurl = \"http://127.0.0.1:1/\"\nsigning_secret = \"whsec_AQID\"\nordering = {ordering}\n"
        ))
    };
    let ok = with(r#"{ key = "/data/object/customer", on_dead = "block" }"#).expect("a pointer");
    let ordering = ok.destinations[0].ordering.clone().expect("ordered");
    assert_eq!(ordering.on_dead, OnDead::Block);
    assert_eq!(
        with(r#"{ key = "source" }"#).unwrap().destinations[0]
            .ordering
            .as_ref()
            .map(|o| o.on_dead),
        Some(OnDead::Skip),
        "skip is the default"
    );
    assert!(with(r#"{ key_header = "X-Shopify-Shop-Domain" }"#).is_ok());
    for (bad, says) in [
        (r#"{ key = "data.object.customer" }"#, "JSON pointer"),
        (r#"{ key = "/a", key_header = "X-A" }"#, "exactly one"),
        (r#"{ on_dead = "block" }"#, "exactly one"),
        (r#"{ key_header = "bad header" }"#, "header name"),
        (r#"{ key = "/a", on_dead = "wait" }"#, "on_dead"),
        (r#"{ key = "/a", order = 1 }"#, "order"),
    ] {
        let error = with(bad).expect_err(bad).to_string();
        assert!(error.contains(says), "{bad}: {error}");
    }
}

#[test]
fn the_otlp_endpoint_is_an_http_url_and_off_by_default() {
    assert_eq!(Config::default().telemetry.otlp_endpoint, None);
    let on = load_toml("[telemetry]\notlp_endpoint = \"http://collector:4318\"\n").unwrap();
    assert_eq!(
        on.telemetry.otlp_endpoint.as_deref(),
        Some("http://collector:4318")
    );
    for bad in ["grpc://collector:4317", "collector:4318", "http://"] {
        let refused = load_toml(&format!("[telemetry]\notlp_endpoint = \"{bad}\"\n"));
        assert!(
            matches!(&refused, Err(Error::Invalid { key, .. }) if key == "telemetry.otlp_endpoint"),
            "{bad}: {refused:?}"
        );
    }
}

#[test]
fn square_and_twilio_need_their_public_url_and_no_other_kind_takes_one() {
    let source = |kind: &str, extra: &str| {
        load_toml(&format!(
            "[[sources]]\nname = \"s\"\nkind = \"{kind}\"\nsecrets = [\"k\"]\n{extra}"
        ))
    };
    let message = |r: Result<Config, Error>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message(source("square", "")).contains("sources[0].public_url: required"));
    assert!(message(source("square", "public_url = \"/webhooks/square\"")).contains("http:// or https://"));
    assert!(source("square", "public_url = \"https://hooks.example.com/square\"").is_ok());
    assert!(message(source("slack", "public_url = \"https://h.example/\"")).contains("only applies"));
    assert!(message(source("twilio", "")).contains("sources[0].public_url: required"));
    assert!(source("twilio", "public_url = \"https://hooks.example.com/twilio\"").is_ok());
    assert!(
        message(source(
            "twilio",
            "public_url = \"https://hooks.example.com/twilio?x=1\""
        ))
        .contains("without a query"),
        "the request's own query is appended"
    );
}

#[test]
fn meta_needs_its_verify_token_and_no_other_kind_takes_one() {
    let source = |kind: &str, extra: &str| {
        load_toml(&format!(
            "[[sources]]\nname = \"s\"\nkind = \"{kind}\"\nsecrets = [\"k\"]\n{extra}"
        ))
    };
    let message = |r: Result<Config, Error>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message(source("meta", "")).contains("sources[0].verify_token: required"));
    assert!(message(source("meta", "verify_token = \"\"")).contains("must not be empty"));
    assert!(source("meta", "verify_token = \"t0ken\"").is_ok());
    assert!(message(source("github", "verify_token = \"t\"")).contains("only applies"));
}

#[test]
fn a_discord_source_s_secrets_are_public_keys() {
    let source = |secret: &str| {
        load_toml(&format!(
            "[[sources]]\nname = \"d\"\nkind = \"discord\"\nsecrets = [\"{secret}\"]\n"
        ))
    };
    assert!(source("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a").is_ok());
    for bad in [
        "not-hex",
        "d75a98",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511aff",
    ] {
        let message = source(bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("sources[0].secrets[0]") && message.contains("64 hex digits"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn a_filter_that_does_not_compile_names_its_destination_and_position() {
    let destination = |filter: &str| {
        load_toml(&format!(
            "[[sources]]\nname = \"stripe\"\nkind = \"stripe\"\nsecrets = [\"whsec_x\"]\n\
             [[destinations]]\nname = \"billing\"\nurl = \"http://127.0.0.1:9/\"\n\
             signing_secret = \"whsec_AQID\"\nfilter = '''{filter}'''\n"
        ))
    };
    assert!(destination(r#"body.livemode && event_type == "invoice.paid""#).is_ok());
    let message = |filter: &str| {
        destination(filter)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        message("body.amount > ").contains("destinations[0].filter: line 1, column 15"),
        "{}",
        message("body.amount > ")
    );
    assert!(message("amount > 1").contains("unknown variable `amount`"));
    assert!(message(&"x".repeat(2000)).contains("at most 1024 bytes"));
}
