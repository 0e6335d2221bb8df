//! Opening amiquip connections, and the reconnect schedule (tokio-retry's exponential
//! backoff with jitter, used as a plain iterator of delays on a blocking thread).

use std::time::Duration;

use amiquip::{Connection, ConnectionTuning};
use tokio_retry::strategy::ExponentialBackoff;

use crate::config::BrokerConfig;

/// How long a TCP connect plus AMQP handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection with heartbeats and a connect timeout, unless the configured URL
/// already sets them. `amqps://` URLs use TLS (and need a hostname).
pub(super) fn connect(config: &BrokerConfig) -> amiquip::Result<Connection> {
    let url = tuned_url(config.url.expose(), config.heartbeat);
    Connection::insecure_open_tuned(&url, ConnectionTuning::default())
}

fn tuned_url(url: &str, heartbeat: Duration) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    let present: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
    {
        let mut query = parsed.query_pairs_mut();
        if !present.iter().any(|k| k == "heartbeat") {
            query.append_pair("heartbeat", &heartbeat.as_secs().max(1).to_string());
        }
        if !present.iter().any(|k| k == "connection_timeout") {
            query.append_pair("connection_timeout", &CONNECT_TIMEOUT.as_millis().to_string());
        }
    }
    parsed.to_string()
}

/// Delays between reconnect attempts: 200 ms doubling up to 30 s, each with "equal
/// jitter" (half fixed, half random) so replicas do not reconnect in lockstep.
pub(super) fn reconnect_delays() -> impl Iterator<Item = Duration> {
    ExponentialBackoff::from_millis(2)
        .factor(100)
        .max_delay(Duration::from_secs(30))
        .map(|delay| delay / 2 + tokio_retry::strategy::jitter(delay / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_and_timeout_are_added_unless_given() {
        let url = tuned_url("amqp://guest:guest@127.0.0.1:5672/%2f", Duration::from_secs(10));
        assert!(
            url.contains("heartbeat=10") && url.contains("connection_timeout=5000"),
            "{url}"
        );
        let url = tuned_url("amqp://h/%2f?heartbeat=3", Duration::from_secs(10));
        assert!(
            url.contains("heartbeat=3") && !url.contains("heartbeat=10"),
            "{url}"
        );
    }

    #[test]
    fn reconnect_delays_grow_and_stay_bounded() {
        let delays: Vec<Duration> = reconnect_delays().take(12).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(delays[3] >= Duration::from_millis(800), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)), "{delays:?}");
    }
}
