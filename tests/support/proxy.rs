//! A TCP proxy a test can cut, to partition one client from its brokers.
//!
//! Cutting blackholes every connection through the proxy, existing and new: bytes stop
//! flowing both ways but no socket is closed, as when a network path fails silently. The
//! client finds out the way a real one does — through its own timeouts — and the brokers
//! through the session timeout of its group member. Healing lets the bytes flow again.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct CuttableProxy {
    /// Where clients connect.
    pub port: u16,
    cut: watch::Sender<bool>,
    stop: CancellationToken,
}

impl CuttableProxy {
    /// Forward `listener`'s connections to `target` until dropped.
    pub fn start(listener: std::net::TcpListener, target: SocketAddr) -> Self {
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("non-blocking proxy");
        let listener = TcpListener::from_std(listener).expect("proxy listener");
        let (cut, cut_rx) = watch::channel(false);
        let stop = CancellationToken::new();
        forward_each_connection(listener, target, stop.clone(), move |client, upstream| {
            let cut = cut_rx.clone();
            async move {
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                tokio::select! {
                    _ = pipe(client_read, upstream_write, cut.clone()) => {}
                    _ = pipe(upstream_read, client_write, cut) => {}
                }
            }
        });
        CuttableProxy { port, cut, stop }
    }

    /// Blackhole every connection, existing and new.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Let bytes flow again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Accept `listener`'s connections until `stop`, connect each to `target` and hand both
/// streams to `relay` (ended by `stop` too); a connection `target` refuses is closed.
pub(crate) fn forward_each_connection<F, Fut>(
    listener: TcpListener,
    target: SocketAddr,
    stop: CancellationToken,
    relay: F,
) where
    F: Fn(TcpStream, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let relay = std::sync::Arc::new(relay);
    tokio::spawn(async move {
        loop {
            let client = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => client,
                    Err(_) => continue,
                },
            };
            let (relay, stop) = (relay.clone(), stop.clone());
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = relay(client, upstream) => {}
                }
            });
        }
    });
}

/// Copy bytes one way; while cut, hold them (neither read nor write, nor close).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if cut.wait_for(|cut| !cut).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Cut while waiting for bytes: go back to waiting for the heal.
            _ = cut.wait_for(|cut| *cut) => continue,
        };
        if cut.wait_for(|cut| !cut).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
