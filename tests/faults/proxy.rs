//! A TCP proxy for fault injection, between relayd and RabbitMQ or PostgreSQL.
//!
//! On command it adds latency, resets every open connection (RST, as a crashed peer or a
//! middlebox would), refuses new connections, and blackholes: connections stay open but
//! no byte passes in the chosen directions — the half-open case that only heartbeats,
//! keepalives and timeouts detect. Held bytes flow again when the blackhole ends, as TCP
//! retransmission would deliver them after a partition heals. It can also abandon the
//! connections open now (they pass nothing until healed, while new ones work: a peer
//! that vanished behind an address that still answers). It stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does to traffic right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// New connections are reset as soon as they are accepted.
    pub refuse: bool,
    /// Bytes from the client (relayd) to the server are held.
    pub hold_to_server: bool,
    /// Bytes from the server to the client (relayd) are held.
    pub hold_to_client: bool,
    /// Each chunk waits this long before it is passed on.
    pub latency: Duration,
    /// Connections numbered below this (in accept order, from 0) pass nothing.
    pub abandoned_before: usize,
}

pub struct Proxy {
    pub addr: SocketAddr,
    faults: watch::Sender<Faults>,
    /// Bumped to reset every connection open at that moment.
    resets: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let (faults, faults_rx) = watch::channel(Faults::default());
        let (resets, resets_rx) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stopped, counter) = (stop.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopped.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { continue };
                let id = counter.fetch_add(1, Ordering::Relaxed);
                if faults_rx.borrow().refuse {
                    reset(client);
                    continue;
                }
                let (faults, resets, stopped) = (faults_rx.clone(), resets_rx.clone(), stopped.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        reset(client);
                        return;
                    };
                    connection(id, client, server, faults, resets, stopped).await;
                });
            }
        });
        Self {
            addr,
            faults,
            resets,
            accepted,
            stop,
        }
    }

    /// Connections accepted so far (refused ones included).
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Replaces the active faults.
    pub fn set(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// No byte passes in either direction, on open and new connections alike.
    pub fn blackhole(&self) {
        self.set(Faults {
            hold_to_server: true,
            hold_to_client: true,
            ..Faults::default()
        });
    }

    /// Back to passing everything through untouched.
    pub fn heal(&self) {
        self.set(Faults::default());
    }

    /// Every connection open now passes nothing from here on (until [`Self::heal`]);
    /// later ones are not affected.
    pub fn abandon_open(&self) {
        let open_before = self.connections();
        self.faults.send_modify(|f| f.abandoned_before = open_before);
    }

    /// Resets (RST) every connection open now; later ones are not affected.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Closes with RST instead of FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn connection(
    id: usize,
    client: TcpStream,
    server: TcpStream,
    faults: watch::Receiver<Faults>,
    mut resets: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    use std::os::fd::AsFd;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    resets.mark_unchanged();
    // Duplicates of both sockets: the halves move into the pumps, and a reset still
    // needs to set linger 0 on the sockets before they close.
    let sockets = [
        client.as_fd().try_clone_to_owned(),
        server.as_fd().try_clone_to_owned(),
    ];
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(id, client_read, server_write, faults.clone(), |f| {
        f.hold_to_server
    });
    let down = pump(id, server_read, client_write, faults, |f| f.hold_to_client);
    let reset = tokio::select! {
        _ = async { tokio::join!(up, down) } => false,
        _ = resets.changed() => true,
        _ = stop.cancelled() => true,
    };
    if reset {
        for socket in sockets.iter().flatten() {
            let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
        }
    }
    // The pumps (and with them the halves) were dropped by the select; the duplicates
    // close last, and only then does each socket really close (RST after a reset).
}

/// Copies `from` into `to` for connection `id`, holding bytes while `held(faults)` or
/// the connection is abandoned, and delaying them by the latency. A clean end of `from`
/// is passed on as a FIN.
async fn pump(
    id: usize,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut faults: watch::Receiver<Faults>,
    held: fn(&Faults) -> bool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        loop {
            let now = *faults.borrow_and_update();
            if !held(&now) && id >= now.abandoned_before {
                if !now.latency.is_zero() {
                    tokio::time::sleep(now.latency).await;
                }
                break;
            }
            if faults.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
