//! WebSockets: an in-process echo upstream that counts its connections, and a client
//! WebSocket through labgate, proven open with one round trip.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;

use super::Gateway;

/// A WebSocket echo server that counts the connections it accepted.
pub struct WsUpstream {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl WsUpstream {
    pub async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let addr = listener.local_addr().expect("ws addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let c2 = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            if ws.send(msg).await.is_err() {
                                break;
                            }
                        } else if msg.is_close() {
                            break;
                        }
                    }
                });
            }
        });
        WsUpstream {
            addr,
            connections,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client WebSocket through labgate.
pub type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `path` for session `id` through an echo upstream and proves it
/// works with one round trip. Once: labgate relays upgrades on its own connection, so
/// pingora's teardown right after the `101` (cloudflare/pingora#946) no longer happens,
/// and a teardown fails the test.
pub async fn open_echo_ws(gw: &Gateway, path: &str, id: &str) -> ClientWs {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut req = format!("ws://127.0.0.1:{}{path}", gw.port)
        .into_client_request()
        .expect("ws request");
    req.headers_mut()
        .insert("X-Session-ID", id.parse().expect("header value"));
    let (mut socket, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    socket
        .send(Message::text("probe"))
        .await
        .expect("send the probe");
    let echo = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("probe echo in time")
        .expect("the WebSocket is open after its 101")
        .expect("the probe's echo");
    assert_eq!(
        echo,
        Message::text("probe"),
        "the echo upstream answers the probe"
    );
    socket
}
