//! A TCP proxy in front of PostgreSQL that reads the client's side of the wire protocol and
//! counts its messages — how a test sees the round trips a client makes, which the server's
//! statistics do not show (a bare `Sync` runs no statement).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the clients sent so far, over every connection through the proxy.
#[derive(Debug, Default)]
pub struct WireCounts {
    /// `Sync` messages with nothing before them since the last `Sync` or query: a client
    /// asking "are you there?" (sqlx's ping), one round trip that runs nothing.
    bare_syncs: AtomicU64,
    /// Statements run: `Execute` (extended protocol) and `Query` (simple protocol).
    statements: AtomicU64,
    /// `Sync` and `Query` messages: each asks for a `ReadyForQuery`, and sqlx waits for it
    /// before it sends anything more — the client's round trips.
    round_trips: AtomicU64,
}

impl WireCounts {
    pub fn bare_syncs(&self) -> u64 {
        self.bare_syncs.load(Ordering::SeqCst)
    }

    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::SeqCst)
    }

    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::SeqCst)
    }
}

pub struct CountingProxy {
    /// `host:port` to put in a connection URL instead of the server's.
    pub address: SocketAddr,
    pub counts: Arc<WireCounts>,
    stop: CancellationToken,
}

impl CountingProxy {
    /// Forward connections to `server` (TCP only) until dropped.
    pub async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let address = listener.local_addr().expect("proxy address");
        let counts = Arc::new(WireCounts::default());
        let stop = CancellationToken::new();
        let counting = counts.clone();
        crate::proxy::forward_each_connection(
            listener,
            server,
            stop.clone(),
            move |client, upstream| {
                let counts = counting.clone();
                async move {
                    let (client_read, mut client_write) = client.into_split();
                    let (mut upstream_read, upstream_write) = upstream.into_split();
                    tokio::select! {
                        _ = forward_counting(client_read, upstream_write, counts) => {}
                        _ = tokio::io::copy(&mut upstream_read, &mut client_write) => {}
                    }
                }
            },
        );
        CountingProxy {
            address,
            counts,
            stop,
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copy the client's bytes to the server, parsing them as protocol messages on the way: the
/// untyped start-up packets (SSL request, startup), then `type byte + length + body`.
async fn forward_counting(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counts: Arc<WireCounts>,
) {
    let mut parser = Parser::default();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        parser.feed(&buffer[..read], &counts);
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct Parser {
    pending: Vec<u8>,
    /// Past the startup packet: messages carry a type byte.
    typed: bool,
    /// Anything since the last `Sync` or `Query`.
    since_sync: bool,
}

/// The SSLRequest and GSSENCRequest codes: an untyped packet after which another untyped
/// packet (the startup message) follows.
const NEGOTIATION_CODES: [u32; 2] = [80877103, 80877104];

impl Parser {
    fn feed(&mut self, bytes: &[u8], counts: &WireCounts) {
        self.pending.extend_from_slice(bytes);
        loop {
            let header = if self.typed { 5 } else { 4 };
            if self.pending.len() < header {
                return;
            }
            let at = header - 4;
            let length = u32::from_be_bytes(self.pending[at..at + 4].try_into().unwrap()) as usize;
            let total = at + length;
            if self.pending.len() < total {
                return;
            }
            let message: Vec<u8> = self.pending.drain(..total).collect();
            if self.typed {
                self.count(message[0], counts);
            } else {
                let code = u32::from_be_bytes(message[4..8].try_into().unwrap());
                self.typed = !NEGOTIATION_CODES.contains(&code);
            }
        }
    }

    fn count(&mut self, kind: u8, counts: &WireCounts) {
        match kind {
            b'S' => {
                counts.round_trips.fetch_add(1, Ordering::SeqCst);
                if !self.since_sync {
                    counts.bare_syncs.fetch_add(1, Ordering::SeqCst);
                }
                self.since_sync = false;
            }
            b'Q' => {
                counts.round_trips.fetch_add(1, Ordering::SeqCst);
                counts.statements.fetch_add(1, Ordering::SeqCst);
                self.since_sync = false;
            }
            b'E' => {
                counts.statements.fetch_add(1, Ordering::SeqCst);
                self.since_sync = true;
            }
            _ => self.since_sync = true,
        }
    }
}
