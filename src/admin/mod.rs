//! The operator plane: the admin API on a Unix socket and the `labgate admin` command.
//!
//! Owns the one model both halves share: the commands ([`Action`], which is also the
//! CLI's clap definition, so a new command is added once), the routes and the JSON
//! bodies. [`server`] answers on the socket; [`cli`] calls it and prints the answer.
//! Routes: `GET /v1/queue`, `POST /v1/sessions/{id|tag|tag prefix}/kick` (`{"reason": "..."}`),
//! `POST /v1/drain`, `POST /v1/resume`, `POST /v1/handoff/retry`, `POST /v1/reload`.
//! Must never hold policy: kicking, draining and
//! listing are `Shared`'s.

use serde::{Deserialize, Serialize};

pub mod cli;
pub mod server;
pub mod socket;

pub use cli::{call, render_table, run_cli};
pub use server::AdminService;
pub use socket::{bind, SocketFile};

/// What `labgate admin` is asked to do: the subcommands of `labgate admin`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// List the queue: every session with its tag, state, claimed owner and note,
    /// client, requests in flight, hold.
    Queue,
    /// End a session now (reason `kicked`), cutting its connections.
    Kick {
        /// The session: its tag (as logs and the status page show it), an unambiguous
        /// prefix of the tag (4+ hex digits), or its full id.
        id: String,
        /// Why: written to the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Refuse new sessions (503 "Lab is draining"); the queue goes on.
    Drain,
    /// Accept new sessions again.
    Resume,
    /// Run the reset and health check again after a failed handoff (the lab was held);
    /// `resume` afterwards reopens the queue to new sessions.
    RetryHandoff,
    /// Read the config file again and apply it without a restart (as SIGHUP does): all
    /// or nothing; a bad file or a change that needs a restart is refused with the
    /// reasons, and the running config stays.
    Reload,
}

/// `POST /v1/reload` answer: applied (`200`), or refused (`422`, with `detail` and one
/// line per problem in `errors`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ReloadAnswer {
    pub reloaded: bool,
    /// What changed, one line each.
    #[serde(default)]
    pub changed: Vec<String>,
    /// The new config's warnings.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Why it was refused, one line each: `labgate check`'s messages, or "needs a
    /// restart: OPTION".
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `POST /v1/handoff/retry` answer.
#[derive(Serialize, Deserialize)]
pub struct Retried {
    /// Upstreams whose failed reset runs again.
    pub retried: usize,
}

/// `POST /v1/sessions/{id}/kick` request body.
#[derive(Serialize, Deserialize)]
pub struct KickRequest {
    pub reason: String,
}

/// `POST /v1/sessions/{id}/kick` answer.
#[derive(Serialize, Deserialize)]
pub struct Kicked {
    pub connections_cut: usize,
    pub kicked: String,
    /// The kicked session's public tag.
    #[serde(default)]
    pub tag: String,
    pub reason: String,
}

/// `POST /v1/drain` and `POST /v1/resume` answer.
#[derive(Serialize, Deserialize)]
pub struct Drained {
    pub draining: bool,
    pub was_draining: bool,
}

/// One session as an operator sees it (`labgate admin queue`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: String,
    /// The session's one public name (logs, status page, `admin kick`).
    #[serde(default)]
    pub tag: String,
    pub state: String,
    pub position: usize,
    pub seq: u64,
    /// Unix seconds.
    pub created: f64,
    pub last_seen_secs_ago: f64,
    pub client: Option<String>,
    pub requests_in_flight: u32,
    pub hold_secs: Option<f64>,
    /// Identity mode: who opened the session (verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Who the session's client says it is (`POST /session`'s `owner`): a claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What the session says it is for (`POST /session`'s `note`): a claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `GET /v1/queue` answer.
#[derive(Serialize, Deserialize)]
pub struct QueueListing {
    pub draining: bool,
    pub sessions: Vec<SessionRow>,
}
