//! Opening amiquip connections (typed [`SessionError`]s), and the reconnect schedule
//! ([`crate::retry`]'s backoff, used as a plain iterator of delays on a blocking thread).

use std::time::{Duration, Instant};

use amiquip::{Auth, Connection, ConnectionOptions, ConnectionTuning};

use crate::config::BrokerConfig;

/// Why a broker connection could not be opened or set up. Its text never holds the URL
/// (it may hold a password): only `host:port`.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("broker.url is not a valid URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("broker.url scheme must be amqp or amqps, not {0:?}")]
    Scheme(String),
    #[error("cannot resolve {at}: {source}")]
    Resolve { at: String, source: std::io::Error },
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("cannot connect to {at}: {source}")]
    Connect { at: String, source: std::io::Error },
    #[error("socket setup for {at}: {source}")]
    Socket { at: String, source: std::io::Error },
    #[error("reading cacertfile {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    #[error("cacertfile {path} is not a PEM certificate: {source}")]
    CaPem { path: String, source: native_tls::Error },
    #[error("TLS setup: {0}")]
    Tls(native_tls::Error),
    /// The AMQP handshake, a channel or the topology failed on that node.
    #[error("{at}: {source}")]
    Amqp {
        at: String,
        // Boxed: amiquip's error is large, and every connect returns this.
        source: Box<amiquip::Error>,
    },
    /// Every node was tried; each one's error.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    AllNodes(Vec<SessionError>),
}

/// How long a TCP connect plus AMQP handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker's nodes as one thread walks them: from this process's starting node
/// (a random rotation of `broker.urls`, the same for every thread of the process, so
/// replicas spread over the nodes while one process's connections share one), on to
/// the next after a connection is lost or a node does not answer.
pub(super) struct Nodes {
    urls: Vec<String>,
    heartbeat: Duration,
    /// Index (into `urls`) of the node tried first next time.
    next: usize,
    /// Index of the node the current connection is on.
    current: Option<usize>,
}

/// This process's rotation of the node list, drawn once.
fn process_offset() -> usize {
    static OFFSET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| rand::random::<u32>() as usize)
}

impl Nodes {
    pub(super) fn new(config: &BrokerConfig) -> Self {
        let urls: Vec<String> = config
            .nodes()
            .iter()
            .map(|url| url.expose().to_string())
            .collect();
        let next = process_offset() % urls.len().max(1);
        Self {
            urls,
            heartbeat: config.heartbeat,
            next,
            current: None,
        }
    }

    /// Connects to the first node that answers, starting from the next in turn.
    /// Returns the connection and the node's `host:port` (never credentials).
    pub(super) fn connect(&mut self) -> Result<(Connection, String), SessionError> {
        let mut errors = Vec::new();
        for step in 0..self.urls.len() {
            let i = (self.next + step) % self.urls.len();
            let target = Target::parse(&self.urls[i], self.heartbeat)?;
            let node = format!("{}:{}", target.host, target.port);
            match target.open() {
                Ok(connection) => {
                    self.current = Some(i);
                    self.next = i;
                    return Ok((connection, node));
                }
                Err(e) => errors.push(e),
            }
        }
        // Next time, start past the first node tried now.
        self.next = (self.next + 1) % self.urls.len().max(1);
        Err(SessionError::AllNodes(errors))
    }

    /// The connection was lost: the next try starts at the node after it.
    pub(super) fn lost(&mut self) {
        if let Some(i) = self.current.take() {
            self.next = (i + 1) % self.urls.len();
        }
    }
}

/// Where and how to connect, from an `amqp://` or `amqps://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    vhost: String,
    username: String,
    password: String,
    heartbeat: u16,
    /// `cacertfile`: a PEM file of the CA certificates to trust (amqps only).
    ca_file: Option<String>,
}

impl Target {
    /// Parses the URL as amiquip would (RabbitMQ's URI spec; guest/guest and vhost `/`
    /// by default), plus `heartbeat` from the query or the configuration.
    fn parse(url: &str, heartbeat: Duration) -> Result<Self, SessionError> {
        let parsed = url::Url::parse(url)?;
        let tls = match parsed.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => return Err(SessionError::Scheme(other.to_string())),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let vhost = parsed
            .path_segments()
            .and_then(|mut segments| segments.next().map(decode))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "/".into());
        let heartbeat = parsed
            .query_pairs()
            .find(|(k, _)| k == "heartbeat")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| u16::try_from(heartbeat.as_secs()).unwrap_or(u16::MAX));
        let ca_file = parsed
            .query_pairs()
            .find(|(k, _)| k == "cacertfile")
            .map(|(_, v)| v.into_owned());
        Ok(Self {
            tls,
            host: parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .unwrap_or("localhost")
                .to_string(),
            port: parsed.port().unwrap_or(if tls { 5671 } else { 5672 }),
            vhost,
            username: Some(parsed.username())
                .filter(|u| !u.is_empty())
                .map_or("guest".into(), decode),
            password: parsed.password().map_or("guest".into(), decode),
            heartbeat,
            ca_file,
        })
    }

    /// Opens a connection: heartbeats (`broker.heartbeat`, or the URL's `heartbeat`), a
    /// connect timeout, and TCP_NODELAY. amiquip opens its own sockets without NODELAY,
    /// and then a worker's stream of small ack frames meets the broker's delayed ACKs:
    /// Nagle holds each ack up to 40 ms, which capped deliveries at about one prefetch
    /// window per 40–60 ms. So relayd connects the socket itself and hands it to
    /// amiquip. `amqps://` URLs use TLS and need a hostname; the server's certificate is
    /// checked against the system's roots, or against the CA in the URL's `cacertfile`
    /// (as in RabbitMQ's URI spec).
    fn open(&self) -> Result<Connection, SessionError> {
        let stream = self.tcp_stream()?;
        let options = ConnectionOptions::default()
            .auth(Auth::Plain {
                username: self.username.clone(),
                password: self.password.clone(),
            })
            .virtual_host(self.vhost.clone())
            .heartbeat(self.heartbeat)
            .connection_timeout(Some(CONNECT_TIMEOUT));
        let connection = if self.tls {
            let mut connector = native_tls::TlsConnector::builder();
            if let Some(path) = &self.ca_file {
                let pem = std::fs::read(path).map_err(|source| SessionError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                let ca = native_tls::Certificate::from_pem(&pem).map_err(|source| SessionError::CaPem {
                    path: path.clone(),
                    source,
                })?;
                connector.add_root_certificate(ca);
            }
            let connector = connector.build().map_err(SessionError::Tls)?;
            Connection::open_tls_stream(
                connector,
                &self.host,
                stream,
                options,
                ConnectionTuning::default(),
            )
        } else {
            Connection::insecure_open_stream(stream, options, ConnectionTuning::default())
        };
        connection.map_err(|source| SessionError::Amqp {
            at: format!("{}:{}", self.host, self.port),
            source: Box::new(source),
        })
    }

    /// A connected, non-blocking socket with TCP_NODELAY, as amiquip's I/O loop wants it.
    fn tcp_stream(&self) -> Result<mio::net::TcpStream, SessionError> {
        use std::net::ToSocketAddrs;
        let at = format!("{}:{}", self.host, self.port);
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let addrs = (host, self.port)
            .to_socket_addrs()
            .map_err(|source| SessionError::Resolve {
                at: at.clone(),
                source,
            })?;
        let mut last_error = SessionError::NoAddress(at.clone());
        for addr in addrs {
            match std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let setup = |source| SessionError::Socket {
                        at: at.clone(),
                        source,
                    };
                    stream.set_nodelay(true).map_err(setup)?;
                    stream.set_nonblocking(true).map_err(setup)?;
                    return mio::net::TcpStream::from_stream(stream).map_err(setup);
                }
                Err(source) => {
                    last_error = SessionError::Connect {
                        at: at.clone(),
                        source,
                    }
                }
            }
        }
        Err(last_error)
    }
}

/// The longest wait between two connection tries.
pub(super) const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// A session that lived at least this long counts as healthy: losing it restarts the
/// backoff from its first (immediate) try. One lost sooner keeps backing off, so a
/// broker that accepts and then drops connections is not hammered.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Delays between reconnect attempts: 200 ms doubling up to [`MAX_RECONNECT_DELAY`],
/// each with "equal jitter" ([`crate::retry::backoff_with_floor`]).
pub(super) fn reconnect_delays() -> impl Iterator<Item = Duration> {
    crate::retry::backoff_with_floor(Duration::from_millis(200), MAX_RECONNECT_DELAY)
}

/// When a broker thread should next try to connect: immediately after a loss is
/// noticed, then on [`reconnect_delays`] while tries fail. One value per thread; every
/// state change goes through a method, so the schedule always converges on a try.
pub(super) struct Reconnect {
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    next_try: Instant,
    connected_at: Option<Instant>,
}

impl Reconnect {
    /// Not connected, first try due now.
    pub(super) fn new() -> Self {
        Self {
            delays: Box::new(reconnect_delays()),
            next_try: Instant::now(),
            connected_at: None,
        }
    }

    /// Whether a try is due now.
    pub(super) fn due(&self) -> bool {
        self.connected_at.is_none() && Instant::now() >= self.next_try
    }

    /// How long until the next try (zero when it is due).
    pub(super) fn wait(&self) -> Duration {
        self.next_try.saturating_duration_since(Instant::now())
    }

    pub(super) fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    /// A try failed: the next one waits the next backoff step, which is returned.
    pub(super) fn failed(&mut self) -> Duration {
        let delay = self.delays.next().unwrap_or(MAX_RECONNECT_DELAY);
        self.next_try = Instant::now() + delay;
        delay
    }

    /// The session was lost: try again at once if it had been stable, else back off.
    pub(super) fn lost(&mut self) {
        let stable = self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= STABLE_SESSION);
        if stable {
            self.delays = Box::new(reconnect_delays());
            self.next_try = Instant::now();
        } else {
            self.failed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_like_rabbitmqs_uri_spec() {
        let target = Target::parse(
            "amqp://guest:gu%40est@127.0.0.1:5672/%2f",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(
            target,
            Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: 5672,
                vhost: "/".into(),
                username: "guest".into(),
                password: "gu@est".into(),
                heartbeat: 10,
                ca_file: None,
            }
        );
        let target = Target::parse(
            "amqps://mq.example.com/tenant?heartbeat=3&cacertfile=%2Fetc%2Fca.pem",
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(target.tls);
        assert_eq!(
            (target.port, target.vhost.as_str(), target.heartbeat),
            (5671, "tenant", 3)
        );
        assert_eq!(target.ca_file.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            (target.username.as_str(), target.password.as_str()),
            ("guest", "guest")
        );
        assert!(Target::parse("http://h/", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn reconnect_delays_grow_and_stay_bounded() {
        let delays: Vec<Duration> = reconnect_delays().take(12).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(delays[3] >= Duration::from_millis(800), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= MAX_RECONNECT_DELAY), "{delays:?}");
    }

    #[test]
    fn a_lost_stable_session_is_retried_at_once_and_failures_back_off() {
        let mut reconnect = Reconnect::new();
        assert!(reconnect.due(), "the first try is immediate");
        let delay = reconnect.failed();
        assert!(!reconnect.due() && delay > Duration::ZERO && reconnect.wait() <= delay);
        reconnect.connected();
        assert!(!reconnect.due(), "no try while connected");
        // A session that lived long enough: its loss is retried at once.
        reconnect.connected_at = Some(Instant::now() - STABLE_SESSION);
        reconnect.lost();
        assert!(reconnect.due() && reconnect.wait() == Duration::ZERO);
        // One lost right after connecting backs off instead.
        reconnect.connected();
        reconnect.lost();
        assert!(!reconnect.due() && reconnect.wait() > Duration::ZERO);
        assert!(reconnect.wait() <= MAX_RECONNECT_DELAY);
    }
}
