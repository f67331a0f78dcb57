//! A raw HTTP/1.1 client: sends exact bytes (requests a normal client would normalise)
//! and parses one response at a time off a keep-alive connection. Every read is bounded
//! by [`RAW_TIMEOUT`] and the response head by 1 MiB.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One connection that can carry several requests (keep-alive).
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

const RAW_TIMEOUT: Duration = Duration::from_secs(10);

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RawConn> {
        let stream = tokio::time::timeout(RAW_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        Ok(RawConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends exact bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(RAW_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("read timed out"))??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response; `head_request` for HEAD (no body).
    pub async fn read_response(&mut self, head_request: bool) -> std::io::Result<RawResponse> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            if self.buf.len() > 1 << 20 {
                return Err(std::io::Error::other("response head too large"));
            }
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a response head ({} bytes: {:?})",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let body = if head_request || status < 200 || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                if self.fill().await? == 0 {
                    return Err(std::io::Error::other("closed inside a body"));
                }
            }
            self.buf.drain(..len).collect()
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            self.read_chunked().await?
        } else {
            // Read to close (bounded by RAW_TIMEOUT per read).
            while self.fill().await? > 0 {}
            std::mem::take(&mut self.buf)
        };
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    async fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                if self.fill().await? == 0 {
                    return Err(std::io::Error::other("closed inside chunked body"));
                }
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            self.buf.drain(..line_end + 2);
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    if let Some(p) = find(&self.buf, b"\r\n") {
                        let empty = p == 0;
                        self.buf.drain(..p + 2);
                        if empty {
                            return Ok(body);
                        }
                    } else if self.fill().await? == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if self.fill().await? == 0 {
                    return Err(std::io::Error::other("closed inside a chunk"));
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// True when the peer closed the connection (EOF) within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(timeout, self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Asserts that `stream`'s peer closes it (EOF or an error on read) within 5 s; `what`
/// names the leg in the failure.
pub async fn assert_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, what: &str) {
    let mut one = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut one))
        .await
        .unwrap_or_else(|_| panic!("{what} not closed within 5 s"));
    assert!(matches!(n, Ok(0) | Err(_)), "{what}: {n:?}");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `request` on a fresh connection and reads one response.
pub async fn raw_to(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let head = request.starts_with(b"HEAD ");
    let mut c = RawConn::connect(addr).await?;
    c.send(request).await?;
    c.read_response(head).await
}

pub async fn raw(addr: SocketAddr, request: &str) -> std::io::Result<RawResponse> {
    raw_to(addr, request.as_bytes()).await
}

/// As [`raw_to`], from the loopback address `from` (any of 127.0.0.0/8): a second
/// client address on one machine, for trusted-proxy tests.
pub async fn raw_from_addr(
    from: std::net::IpAddr,
    to: SocketAddr,
    request: &[u8],
) -> std::io::Result<RawResponse> {
    let head = request.starts_with(b"HEAD ");
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = tokio::time::timeout(RAW_TIMEOUT, socket.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let mut c = RawConn {
        stream,
        buf: Vec::new(),
    };
    c.send(request).await?;
    c.read_response(head).await
}
