//! The session API as seen by a client: one method per request of contract §1, each
//! returning typed answers or a typed [`ClientError`] that knows its exit code.
//!
//! Owns: URL building, request timeouts, retrying connection failures with bounded
//! backoff, and reading `X-Lab-Active-Timeout`. Must never print, sleep outside a
//! retry, or decide what a failure means for a running command (that is `run`'s job).

use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::exit;
use crate::label::Label;

/// Header carrying the server's `active_timeout` in seconds (labgate only).
const ACTIVE_TIMEOUT_HEADER: &str = "x-lab-active-timeout";

/// Every request except a long-poll must be answered within this.
/// How the server says a session it no longer knows ended (its tombstone), and the
/// operator's reason for a kick.
const ENDED_HEADER: &str = "x-lab-session-ended";
const END_NOTE_HEADER: &str = "x-lab-end-note";

/// The most of a server-sent reason shown, in characters.
const MAX_REASON_CHARS: usize = 200;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// First pause after a connection failure; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {cause} (gave up after {tries} attempt(s) in {spent})")]
    Unreachable {
        url: String,
        cause: String,
        tries: u32,
        spent: humantime::Duration,
    },
    /// 404 for a session id; with how it ended when the server still remembers it.
    #[error("session {0} not found{why}", why = ended_suffix(.1.as_ref()))]
    NotFound(String, Option<Ended>),
    /// 429 rate limited, 503 queue full or draining: try again later.
    #[error("{url} answered {status}: {detail}")]
    Refused {
        url: String,
        status: StatusCode,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{url} answered {status}: {detail}")]
    Unexpected {
        url: String,
        status: StatusCode,
        detail: String,
    },
    #[error("{url}: unreadable answer: {why}")]
    BadAnswer { url: String, why: String },
}

impl ClientError {
    /// The process exit code for this failure (see the README's "CI usage").
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => exit::UNAVAILABLE,
            ClientError::NotFound(..) => exit::NOT_FOUND,
            ClientError::Refused { .. } => exit::TEMPFAIL,
            ClientError::Unexpected { .. } | ClientError::BadAnswer { .. } => exit::PROTOCOL,
        }
    }
}

/// Why the server ended a session (`X-Lab-Session-Ended`, `X-Lab-End-Note`), as sent:
/// bounded and stripped of control characters before it reaches a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub reason: String,
    pub note: Option<String>,
}

impl Ended {
    fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<Ended> {
        let get = |name| {
            headers
                .get(name)
                .map(|v| printable(&String::from_utf8_lossy(v.as_bytes())))
                .filter(|v| !v.is_empty())
        };
        Some(Ended {
            reason: get(ENDED_HEADER)?,
            note: get(END_NOTE_HEADER),
        })
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason.as_str() {
            "kicked" => f.write_str("kicked by an operator")?,
            "expired" => f.write_str("expired: held longer than max_hold while others waited")?,
            "stale" => f.write_str("reaped: no sign of life within the server's idle timeout")?,
            "deleted" => f.write_str("ended by a DELETE")?,
            other => write!(f, "ended: {other}")?,
        }
        match &self.note {
            Some(note) => write!(f, ": {note}"),
            None => Ok(()),
        }
    }
}

fn ended_suffix(ended: Option<&Ended>) -> String {
    ended.map(|e| format!(" ({e})")).unwrap_or_default()
}

/// A server-sent text fit for one terminal line: control characters dropped, bounded.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect::<String>()
        .trim()
        .to_string()
}

/// `POST /session`.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub position: u64,
    pub active_timeout: Option<Duration>,
    /// The server's JSON body, unchanged.
    pub body: String,
}

/// `GET /session/{id}`.
#[derive(Debug, Clone)]
pub struct Status {
    pub active: bool,
    pub position: u64,
    pub active_timeout: Option<Duration>,
    pub body: String,
}

/// `GET /tunnels`: the targets a session may open tunnels to.
#[derive(Debug, Clone, Deserialize)]
pub struct Tunnels {
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub networks: Vec<Network>,
}

/// A named device: `name` is what `labgate tunnel` and ssh's `%h` use.
#[derive(Debug, Clone, Deserialize)]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// A management network: every address in `cidr`, on `ports`.
#[derive(Debug, Clone, Deserialize)]
pub struct Network {
    pub cidr: String,
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Deserialize)]
struct CreatedBody {
    session_id: String,
    position: u64,
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
    position: u64,
}

/// A client for one labgate (or neops-remote-lab) base URL.
#[derive(Clone)]
pub struct LabClient {
    http: reqwest::Client,
    base: String,
    retry_for: Duration,
    trust: super::tls::Trust,
}

impl LabClient {
    /// `base` is the server's URL (`http://host:port`, optionally with a path prefix);
    /// connection failures are retried for at most `retry_for`.
    pub fn new(
        base: &str,
        retry_for: Duration,
        trust: &super::tls::Trust,
    ) -> Result<LabClient, String> {
        let url = reqwest::Url::parse(base).map_err(|e| format!("invalid URL {base:?}: {e}"))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "invalid URL {base:?}: unsupported scheme {other:?}"
                ))
            }
        };
        if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "invalid URL {base:?}: expected http(s)://HOST[:PORT][/PREFIX]"
            ));
        }
        let mut builder = reqwest::Client::builder()
            // A CI runner's HTTP_PROXY is meant for the internet, not for the lab host.
            .no_proxy()
            .connect_timeout(REQUEST_TIMEOUT);
        if https {
            // The same trust as the tunnels' (`client::tls`): one rustls config.
            builder = builder.use_preconfigured_tls(trust.config()?.as_ref().clone());
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(LabClient {
            http,
            base: url.as_str().trim_end_matches('/').to_string(),
            retry_for,
            trust: trust.clone(),
        })
    }

    /// Whom an `https://` base URL is checked against (the tunnels use it too).
    pub fn trust(&self) -> &super::tls::Trust {
        &self.trust
    }

    /// The base URL without a trailing slash (what `LAB_URL` is set to for CMD).
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /session`; a non-empty `label` goes as its JSON body (owner and note, for
    /// display), an empty one sends no body at all, as neops clients do. A server that
    /// does not know labels (neops-remote-lab) ignores the body.
    pub async fn create(&self, label: &Label) -> Result<Created, ClientError> {
        let url = self.url("/session");
        // Not idempotent: a retry after the request may have reached the server could
        // leave an orphan session that would later hold the lab, so only failures to
        // connect (nothing was sent) are retried.
        let resp = self
            .send(&url, false, || {
                let req = self.http.post(&url).timeout(REQUEST_TIMEOUT);
                if label.is_empty() {
                    req
                } else {
                    req.json(label)
                }
            })
            .await?;
        let active_timeout = active_timeout(&resp);
        match resp.status() {
            StatusCode::CREATED | StatusCode::OK => {
                let body = text(&url, resp).await?;
                let b: CreatedBody = parse(&url, &body)?;
                Ok(Created {
                    id: b.session_id,
                    position: b.position,
                    active_timeout,
                    body,
                })
            }
            _ => Err(failure(&url, None, resp).await),
        }
    }

    /// `GET /session/{id}`, as a long-poll of `wait` seconds when given (a server
    /// without long-poll ignores the query and answers at once).
    pub async fn status(&self, id: &str, wait: Option<u64>) -> Result<Status, ClientError> {
        self.status_query(id, wait, false).await
    }

    /// `GET /session/{id}?wait=N&while=active`: the holder's watch. A server with it
    /// answers as soon as the session is no longer ACTIVE; one without answers at once.
    pub async fn watch_active(&self, id: &str, wait: u64) -> Result<Status, ClientError> {
        self.status_query(id, Some(wait), true).await
    }

    async fn status_query(
        &self,
        id: &str,
        wait: Option<u64>,
        while_active: bool,
    ) -> Result<Status, ClientError> {
        plausible(id)?;
        let url = self.url(&format!("/session/{id}"));
        let (mut query, timeout): (Vec<(&str, String)>, Duration) = match wait {
            Some(n) => (
                vec![("wait", n.to_string())],
                REQUEST_TIMEOUT + Duration::from_secs(n),
            ),
            None => (Vec::new(), REQUEST_TIMEOUT),
        };
        if while_active {
            query.push(("while", "active".to_string()));
        }
        let resp = self
            .send(&url, true, || {
                self.http.get(&url).query(&query).timeout(timeout)
            })
            .await?;
        let active_timeout = active_timeout(&resp);
        match resp.status() {
            StatusCode::OK => {
                let body = text(&url, resp).await?;
                let b: StatusBody = parse(&url, &body)?;
                let active = match b.status.as_str() {
                    "active" => true,
                    "waiting" => false,
                    other => {
                        return Err(ClientError::BadAnswer {
                            url,
                            why: format!("unknown status {other:?}"),
                        })
                    }
                };
                Ok(Status {
                    active,
                    position: b.position,
                    active_timeout,
                    body,
                })
            }
            _ => Err(failure(&url, Some(id), resp).await),
        }
    }

    /// `POST /session/heartbeat`.
    pub async fn heartbeat(&self, id: &str) -> Result<(), ClientError> {
        plausible(id)?;
        let url = self.url("/session/heartbeat");
        let resp = self
            .send(&url, true, || {
                self.http
                    .post(&url)
                    .header("X-Session-ID", id)
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            _ => Err(failure(&url, Some(id), resp).await),
        }
    }

    /// `DELETE /session/{id}`.
    pub async fn end(&self, id: &str) -> Result<(), ClientError> {
        plausible(id)?;
        let url = self.url(&format!("/session/{id}"));
        let resp = self
            .send(&url, true, || {
                self.http
                    .request(Method::DELETE, &url)
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            _ => Err(failure(&url, Some(id), resp).await),
        }
    }

    /// `GET /tunnels`: what the session may reach through a tunnel.
    pub async fn tunnels(&self, id: &str) -> Result<Tunnels, ClientError> {
        plausible(id)?;
        let url = self.url("/tunnels");
        let resp = self
            .send(&url, true, || {
                self.http
                    .get(&url)
                    .header("X-Session-ID", id)
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let body = text(&url, resp).await?;
                parse(&url, &body)
            }
            _ => Err(failure(&url, Some(id), resp).await),
        }
    }

    /// Sends the request built by `build`, retrying transport failures with doubling
    /// pauses until `retry_for` has passed (then one last try). `idempotent` = false retries only failures to
    /// connect.
    /// `GET /status.json`: the public status as the server's JSON text (a `GET`:
    /// retried like one).
    pub async fn lab_status(&self) -> Result<String, ClientError> {
        let url = self.url("/status.json");
        let resp = self
            .send(&url, true, || self.http.get(&url).timeout(REQUEST_TIMEOUT))
            .await?;
        match resp.status() {
            StatusCode::OK => text(&url, resp).await,
            _ => Err(failure(&url, None, resp).await),
        }
    }

    async fn send(
        &self,
        url: &str,
        idempotent: bool,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, ClientError> {
        let start = Instant::now();
        let mut pause = FIRST_BACKOFF;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let err = match build().send().await {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            let retryable =
                err.is_connect() || (idempotent && (err.is_timeout() || err.is_request()));
            let spent = start.elapsed();
            if !retryable || spent >= self.retry_for {
                return Err(ClientError::Unreachable {
                    url: url.to_string(),
                    cause: root_cause(&err),
                    tries,
                    spent: round(spent).into(),
                });
            }
            tokio::time::sleep(pause.min(self.retry_for - spent)).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
}

/// The innermost error message: "Connection refused (os error 111)" rather than
/// reqwest's "error sending request for url (...)".
fn root_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

/// A malformed id is simply unknown (contract §1); deciding so here keeps it out of
/// URLs and headers, where the server's path check would answer `400` instead.
fn plausible(id: &str) -> Result<(), ClientError> {
    if plausible_id(id) {
        Ok(())
    } else {
        Err(ClientError::NotFound(id.chars().take(40).collect(), None))
    }
}

/// Whether `id` may be a session id at all (what goes into a header or a path).
pub fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn active_timeout(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(ACTIVE_TIMEOUT_HEADER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

async fn text(url: &str, resp: Response) -> Result<String, ClientError> {
    resp.text().await.map_err(|e| ClientError::BadAnswer {
        url: url.to_string(),
        why: root_cause(&e),
    })
}

fn parse<T: serde::de::DeserializeOwned>(url: &str, body: &str) -> Result<T, ClientError> {
    serde_json::from_str(body).map_err(|e| ClientError::BadAnswer {
        url: url.to_string(),
        why: format!("{e}: {}", excerpt(body)),
    })
}

/// Turns a non-success answer into its error; `id` makes a 404 a [`ClientError::NotFound`].
async fn failure(url: &str, id: Option<&str>, resp: Response) -> ClientError {
    let status = resp.status();
    let ended = Ended::from_headers(resp.headers());
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| match &v["detail"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        })
        .unwrap_or_else(|| excerpt(&body));
    match (status, id) {
        (StatusCode::NOT_FOUND, Some(id)) => ClientError::NotFound(id.to_string(), ended),
        (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE, _) => {
            ClientError::Refused {
                url: url.to_string(),
                status,
                detail,
                retry_after,
            }
        }
        _ => ClientError::Unexpected {
            url: url.to_string(),
            status,
            detail,
        },
    }
}

/// The start of a body for an error line: one line, at most 200 characters.
fn excerpt(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if one_line.trim().is_empty() {
        "(empty body)".to_string()
    } else {
        one_line.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_normalised_and_checked() {
        let trust = super::super::tls::Trust::default();
        let c = LabClient::new("http://127.0.0.1:8080/", Duration::ZERO, &trust).unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:8080");
        assert_eq!(c.url("/session"), "http://127.0.0.1:8080/session");
        let c = LabClient::new("http://gw/labgate/", Duration::ZERO, &trust).unwrap();
        assert_eq!(c.url("/session"), "http://gw/labgate/session");
        for bad in ["127.0.0.1:8080", "ftp://x", "http://x/?a=1", "not a url"] {
            assert!(
                LabClient::new(bad, Duration::ZERO, &trust).is_err(),
                "{bad}"
            );
        }
        // https with a CA file that is not there: said at once.
        let missing = super::super::tls::Trust::new(Some("/nonexistent/ca.pem".into()));
        let e = LabClient::new("https://x", Duration::ZERO, &missing)
            .err()
            .unwrap();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn malformed_ids_are_unknown_without_asking() {
        assert!(plausible("8c0a9e1b-3f4d-4c8e-9a6b-1f2e3d4c5b6a").is_ok());
        for bad in ["", "../x", "a/b", "a?b", "a b", "a\nb", &"x".repeat(129)] {
            assert!(
                matches!(plausible(bad), Err(ClientError::NotFound(..))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn excerpt_is_one_bounded_line() {
        assert_eq!(excerpt(""), "(empty body)");
        assert_eq!(excerpt("a\nb"), "a b");
        assert_eq!(excerpt(&"x".repeat(500)).len(), 200);
    }
}
