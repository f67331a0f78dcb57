//! The upstream session API of a neops-remote-lab server, as labgate's bridge calls it:
//! open (`POST /session`), poll (`GET /session/{id}`), keep alive
//! (`POST /session/heartbeat`) and delete (`DELETE /session/{id}`, which makes the server
//! run `netlab down --cleanup` for an ACTIVE session before it answers).
//!
//! Owns the wire format and the bounds on each call (timeout, answer size). Must never
//! decide anything: every answer becomes a machine [`Outcome`]. Must never log an
//! upstream id in full.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::machine::{Outcome, UpstreamId};

/// Session API answers are a few dozen bytes; anything larger is not the neops server.
const MAX_ANSWER: usize = 16 * 1024;

pub struct NeopsApi {
    client: reqwest::Client,
    base: String,
    /// `DELETE` of an ACTIVE session waits for `netlab down`: minutes on a real lab.
    delete_timeout: Duration,
}

#[derive(Deserialize)]
struct Created {
    session_id: String,
    position: i64,
}

#[derive(Deserialize)]
struct StatusAnswer {
    status: String,
    position: i64,
}

/// Why a call did not produce an answer the machine can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    Connect,
    Timeout,
    /// An answer that is not the session API's (status or body).
    Answer,
}

impl CallError {
    pub fn as_str(&self) -> &'static str {
        match self {
            CallError::Connect => "connect",
            CallError::Timeout => "timeout",
            CallError::Answer => "answer",
        }
    }
}

fn classify(e: &reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::Timeout
    } else if e.is_connect() || e.is_request() {
        CallError::Connect
    } else {
        CallError::Answer
    }
}

impl NeopsApi {
    /// `authority` is sent as `Host`; `addr` (resolved at start-up) is where it goes.
    pub fn new(
        authority: &str,
        addr: SocketAddr,
        connect_timeout: Duration,
        call_timeout: Duration,
        delete_timeout: Duration,
    ) -> Result<NeopsApi, reqwest::Error> {
        // The authority resolves to the start-up address only: no DNS on this path.
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(call_timeout)
            .resolve(host.trim_matches(['[', ']']), addr)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(NeopsApi {
            client,
            base: format!("http://{authority}"),
            delete_timeout,
        })
    }

    async fn body(resp: reqwest::Response) -> Result<(u16, Vec<u8>), CallError> {
        let status = resp.status().as_u16();
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e))? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(CallError::Answer);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    /// `POST /session`.
    pub async fn open(&self) -> Result<Outcome, CallError> {
        let resp = self
            .client
            .post(format!("{}/session", self.base))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let (status, body) = Self::body(resp).await?;
        if status != 201 && status != 200 {
            return Err(CallError::Answer);
        }
        let c: Created = serde_json::from_slice(&body).map_err(|_| CallError::Answer)?;
        let id = UpstreamId::new(&c.session_id).ok_or(CallError::Answer)?;
        Ok(Outcome::Opened {
            id,
            active: c.position == 0,
        })
    }

    /// `GET /session/{id}`.
    pub async fn poll(&self, id: &UpstreamId) -> Result<Outcome, CallError> {
        let resp = self
            .client
            .get(format!("{}/session/{}", self.base, id.as_str()))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let (status, body) = Self::body(resp).await?;
        match status {
            404 => Ok(Outcome::Gone),
            200 => {
                let s: StatusAnswer =
                    serde_json::from_slice(&body).map_err(|_| CallError::Answer)?;
                Ok(Outcome::Status {
                    active: s.status == "active",
                    position: s.position,
                })
            }
            _ => Err(CallError::Answer),
        }
    }

    /// `POST /session/heartbeat`.
    pub async fn keepalive(&self, id: &UpstreamId) -> Result<Outcome, CallError> {
        let resp = self
            .client
            .post(format!("{}/session/heartbeat", self.base))
            .header("x-session-id", id.as_str())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        match Self::body(resp).await?.0 {
            204 | 200 => Ok(Outcome::Alive),
            404 => Ok(Outcome::Gone),
            _ => Err(CallError::Answer),
        }
    }

    /// `DELETE /session/{id}`: the server tears the lab down before it answers.
    pub async fn delete(&self, id: &UpstreamId) -> Result<Outcome, CallError> {
        let resp = self
            .client
            .delete(format!("{}/session/{}", self.base, id.as_str()))
            .timeout(self.delete_timeout)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        match Self::body(resp).await?.0 {
            204 | 200 => Ok(Outcome::Deleted),
            404 => Ok(Outcome::Gone),
            _ => Err(CallError::Answer),
        }
    }
}
