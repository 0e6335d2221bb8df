//! A pass-through TCP proxy in front of RabbitMQ that counts the AMQP 0-9-1 frames
//! crossing it, by direction and kind (each method by name, content headers, bodies,
//! heartbeats), for the anatomy scenario's "frames per event". Bytes are forwarded as
//! they arrive; the count parses a copy. Stops when dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Frames counted, by `"→ basic.publish"`-like keys (→ client to broker, ← back).
#[derive(Default)]
pub struct Counts {
    pub frames: BTreeMap<String, u64>,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

pub struct AmqpCounter {
    /// The broker URL through the proxy (same credentials and vhost).
    pub url: String,
    pub counts: Arc<Mutex<Counts>>,
    task: tokio::task::JoinHandle<()>,
}

impl AmqpCounter {
    pub async fn start(broker_url: &str) -> anyhow::Result<Self> {
        let mut url = url::Url::parse(broker_url)?;
        let upstream = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(5672)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        url.set_port(Some(port))
            .map_err(|()| anyhow::anyhow!("cannot set the port of {broker_url}"))?;
        let counts = Arc::new(Mutex::new(Counts::default()));
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let counts = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        let out = pump(client_read, server_write, counts.clone(), true);
                        let back = pump(server_read, client_write, counts, false);
                        let _ = tokio::join!(out, back);
                    }
                });
            }
        });
        Ok(Self {
            url: url.to_string(),
            counts,
            task,
        })
    }

    /// Forgets what was counted so far (after a warm-up).
    pub fn reset(&self) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts = Counts::default();
        }
    }
}

impl Drop for AmqpCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, counting the frames of one direction.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counts: Arc<Mutex<Counts>>,
    outgoing: bool,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut parser = Parser::new(outgoing);
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buffer[..n]).await?;
        let found = parser.feed(&buffer[..n]);
        if let Ok(mut counts) = counts.lock() {
            if outgoing {
                counts.bytes_out += n as u64;
            } else {
                counts.bytes_in += n as u64;
            }
            for kind in found {
                *counts.frames.entry(kind).or_default() += 1;
            }
        }
    }
}

/// Splits one direction's bytes into frames: type (1), channel (2), size (4), payload,
/// frame end (0xCE). The client's direction starts with the 8-byte protocol header.
struct Parser {
    pending: Vec<u8>,
    preamble: usize,
    arrow: &'static str,
}

impl Parser {
    fn new(outgoing: bool) -> Self {
        Self {
            pending: Vec::new(),
            preamble: if outgoing { 8 } else { 0 },
            arrow: if outgoing { "→" } else { "←" },
        }
    }

    /// The kinds of the frames completed by `bytes`.
    fn feed(&mut self, mut bytes: &[u8]) -> Vec<String> {
        if self.preamble > 0 {
            let skip = self.preamble.min(bytes.len());
            self.preamble -= skip;
            bytes = &bytes[skip..];
        }
        self.pending.extend_from_slice(bytes);
        let mut found = Vec::new();
        let mut at = 0;
        while self.pending.len() - at >= 7 {
            let header = &self.pending[at..at + 7];
            let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
            if self.pending.len() - at < 7 + size + 1 {
                break;
            }
            let payload = &self.pending[at + 7..at + 7 + size];
            found.push(format!("{} {}", self.arrow, kind(header[0], payload)));
            at += 7 + size + 1;
        }
        self.pending.drain(..at);
        found
    }
}

fn kind(frame_type: u8, payload: &[u8]) -> String {
    match frame_type {
        1 if payload.len() >= 4 => {
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let method = u16::from_be_bytes([payload[2], payload[3]]);
            method_name(class, method)
        }
        2 => "content header".into(),
        3 => "content body".into(),
        8 => "heartbeat".into(),
        other => format!("frame type {other}"),
    }
}

fn method_name(class: u16, method: u16) -> String {
    let name = match (class, method) {
        (60, 10) => "basic.qos",
        (60, 11) => "basic.qos-ok",
        (60, 20) => "basic.consume",
        (60, 21) => "basic.consume-ok",
        (60, 40) => "basic.publish",
        (60, 60) => "basic.deliver",
        (60, 80) => "basic.ack",
        (60, 90) => "basic.reject",
        (60, 120) => "basic.nack",
        (85, 10) => "confirm.select",
        (85, 11) => "confirm.select-ok",
        (20, 10) => "channel.open",
        (20, 11) => "channel.open-ok",
        (20, 40) => "channel.close",
        (20, 41) => "channel.close-ok",
        (50, 10) => "queue.declare",
        (50, 11) => "queue.declare-ok",
        (50, 20) => "queue.bind",
        (50, 21) => "queue.bind-ok",
        (40, 10) => "exchange.declare",
        (40, 11) => "exchange.declare-ok",
        _ => return format!("method {class}.{method}"),
    };
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_are_counted_once_each() {
        let mut bytes = b"AMQP\x00\x00\x09\x01".to_vec();
        // basic.publish on channel 1 with a 4-byte payload tail, then a heartbeat.
        bytes.extend([1, 0, 1, 0, 0, 0, 8, 0, 60, 0, 40, 0, 0, 0, 0, 0xCE]);
        bytes.extend([8, 0, 0, 0, 0, 0, 0, 0xCE]);
        let mut parser = Parser::new(true);
        let mut found = Vec::new();
        for chunk in bytes.chunks(5) {
            found.extend(parser.feed(chunk));
        }
        assert_eq!(found, vec!["→ basic.publish", "→ heartbeat"]);
    }
}
