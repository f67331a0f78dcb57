//! The bridge between labgate's turns and what the lab needs around them (contract §8):
//! upstream sessions on a neops-remote-lab server, per-turn tokens, and handoff hooks.
//!
//! One *lane* per `[[upstream]]` that uses any of these. Each lane is a task that follows
//! the queue's ACTIVE turn (through [`Turns`]), drives its pure [`machine::Lane`], performs
//! each action with a bounded call, and publishes what forwarded requests need: the
//! turn's upstream session id and token ([`Ready`]). The proxy asks [`Bridge::ready`]
//! before forwarding and waits (bounded) until the lane serves the request's turn.
//!
//! Owns the lane tasks, the published views, the audit lines and metrics of upstream
//! sessions, hooks and tokens. Must never import the queue's shared state (that state
//! implements [`Turns`]), never hold a lock across `.await`, and never log a token or an
//! upstream id in full.

pub mod config;
pub mod hooks;
pub mod machine;
pub mod metrics;
pub mod neops;
pub mod persist;
pub mod token;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderName;
use tokio::sync::{watch, Notify};

use config::BridgeConfig;
use hooks::{HookError, Runner};
use machine::{Action, Lane, Note, Outcome, UpstreamId, Wanted};
use neops::NeopsApi;
use token::Token;

/// Audit events share labgate's audit target.
const AUDIT: &str = "labgate::audit";

/// What the bridge needs from the queue. Implemented by the shared state.
pub trait Turns: Send + Sync + 'static {
    /// The ACTIVE turn and the turn a handoff barrier waits on.
    fn wanted(&self) -> Wanted;
    /// Bumped after every queue change.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Why turn `seq` ended, if it ended recently.
    fn end_reason(&self, seq: u64) -> Option<&'static str>;
    /// The hold limit a turn gets, if any.
    fn hold_limit(&self) -> Option<Duration>;
    /// Lane `lane` finished the end steps of `turn`.
    fn handoff_done(&self, lane: usize, turn: u64);
    /// Lane `lane` could not reset the lab after `turn`: keep it held.
    fn handoff_failed(&self, lane: usize, turn: u64, why: &'static str);
}

/// What a forwarded request of turn `turn` carries on a bridged upstream.
#[derive(Clone, Debug)]
pub struct Ready {
    pub turn: u64,
    /// Replaces `X-Session-ID` (a neops upstream).
    pub upstream_id: Option<UpstreamId>,
    /// Goes in the lane's token header.
    pub token: Option<Token>,
}

/// The lane did not serve the request's turn within `ready_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReady;

/// One upstream's lane, as the proxy and the lane task share it.
pub struct LaneHandle {
    pub index: usize,
    pub name: String,
    pub config: BridgeConfig,
    view: watch::Sender<Option<Arc<Ready>>>,
    /// The lane's barrier failed and waits for an operator.
    failed: AtomicBool,
    nudge: Notify,
    retry: Notify,
    api: Option<NeopsApi>,
}

/// Where each bridged upstream is and how to reach it.
pub struct LaneSpec {
    pub index: usize,
    pub name: String,
    pub authority: String,
    pub addr: std::net::SocketAddr,
    pub connect_timeout: Duration,
    pub config: BridgeConfig,
}

/// Every lane; indexed by upstream index.
pub struct Bridge {
    lanes: Vec<Option<Arc<LaneHandle>>>,
    owned: persist::Owned,
    runner: Runner,
}

impl Bridge {
    /// Builds the lanes for `upstreams` (the number of upstreams) from `specs`;
    /// `owned` remembers upstream sessions across restarts.
    pub fn new(
        upstreams: usize,
        specs: Vec<LaneSpec>,
        owned: persist::Owned,
    ) -> anyhow::Result<Bridge> {
        let mut lanes: Vec<Option<Arc<LaneHandle>>> = (0..upstreams).map(|_| None).collect();
        for spec in specs {
            if !spec.config.is_active() {
                continue;
            }
            let api = match &spec.config.neops {
                Some(n) => Some(NeopsApi::new(
                    &spec.authority,
                    spec.addr,
                    spec.connect_timeout,
                    n.call_timeout,
                    n.delete_timeout,
                )?),
                None => None,
            };
            metrics::metrics().init(&spec.name);
            let slot = lanes
                .get_mut(spec.index)
                .ok_or_else(|| anyhow::anyhow!("lane for an unknown upstream"))?;
            *slot = Some(Arc::new(LaneHandle {
                index: spec.index,
                name: spec.name,
                config: spec.config,
                view: watch::channel(None).0,
                failed: AtomicBool::new(false),
                nudge: Notify::new(),
                retry: Notify::new(),
                api,
            }));
        }
        Ok(Bridge {
            lanes,
            owned,
            runner: Runner::new()?,
        })
    }

    /// The turn whose reset was under way when labgate last stopped (durable queue only).
    pub fn pending_handoff(&self) -> Option<u64> {
        self.owned.handoff()
    }

    /// Records the turn whose reset holds the queue (`None`: none), durably when the queue
    /// is durable.
    pub fn record_handoff(&self, turn: Option<u64>) {
        if let Err(e) = self.owned.set_handoff(turn) {
            tracing::error!(error = %e, "cannot record the pending handoff");
        }
    }

    /// No upstream uses the bridge.
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(Option::is_none)
    }

    /// Whether some lane holds the next holder back until its end steps pass.
    pub fn has_barrier(&self) -> bool {
        self.barrier_lanes().next().is_some()
    }

    /// The lanes whose end steps gate the next promotion.
    pub fn barrier_lanes(&self) -> impl Iterator<Item = usize> + '_ {
        self.lanes
            .iter()
            .flatten()
            .filter(|l| l.config.features().barrier())
            .map(|l| l.index)
    }

    pub fn lane(&self, upstream: usize) -> Option<&Arc<LaneHandle>> {
        self.lanes.get(upstream).and_then(Option::as_ref)
    }

    /// Every token header any lane injects (so client copies are dropped everywhere).
    pub fn token_headers(&self) -> Vec<HeaderName> {
        self.lanes
            .iter()
            .flatten()
            .filter_map(|l| l.config.token_header.clone())
            .collect()
    }

    /// What a request of `turn` to `upstream` carries: `Ok(None)` when the upstream is not
    /// bridged; waits up to the lane's `ready_wait` for the lane to serve `turn`.
    pub async fn ready(&self, upstream: usize, turn: u64) -> Result<Option<Arc<Ready>>, NotReady> {
        let Some(lane) = self.lane(upstream) else {
            return Ok(None);
        };
        let mut rx = lane.view.subscribe();
        let wait = lane.config.ready_wait;
        let found = tokio::time::timeout(
            wait,
            rx.wait_for(|v| v.as_ref().is_some_and(|r| r.turn >= turn)),
        )
        .await;
        match found {
            Ok(Ok(v)) => match v.as_ref() {
                Some(r) if r.turn == turn => Ok(Some(r.clone())),
                _ => Err(NotReady),
            },
            _ => {
                metrics::metrics()
                    .not_ready
                    .with_label_values(&[lane.name.as_str()])
                    .inc();
                Err(NotReady)
            }
        }
    }

    /// A forwarded request got an answer that suggests the upstream forgot its session.
    pub fn nudge(&self, upstream: usize) {
        if let Some(l) = self.lane(upstream) {
            l.nudge.notify_one();
        }
    }

    /// An operator retries every failed handoff; returns how many lanes had one.
    pub fn retry_failed_handoffs(&self) -> usize {
        let mut n = 0;
        for l in self.lanes.iter().flatten() {
            if l.failed.load(Ordering::SeqCst) {
                l.retry.notify_one();
                n += 1;
            }
        }
        n
    }

    /// Runs every lane until `stop` turns true. Each lane is its own task so that one
    /// slow upstream (a minutes-long `netlab down`) never delays another.
    pub async fn run(self: Arc<Self>, turns: Arc<dyn Turns>, stop: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for lane in self.lanes.iter().flatten() {
            tasks.spawn(run_lane(
                self.clone(),
                lane.clone(),
                turns.clone(),
                stop.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn hook(
        &self,
        lane: &LaneHandle,
        which: &'static str,
        event: serde_json::Value,
    ) -> Outcome {
        let hooks = &lane.config.hooks;
        let hook = match which {
            "start" => hooks.start.as_ref(),
            "end" => hooks.end.as_ref(),
            "reset" => hooks.reset.as_ref(),
            _ => hooks.health.as_ref(),
        };
        let Some(hook) = hook else {
            return Outcome::Ok;
        };
        let started = Instant::now();
        let result = self.runner.run(hook, &event, which == "health").await;
        let took = started.elapsed();
        let m = metrics::metrics();
        let label = result.err().map_or("ok", |e: HookError| e.as_str());
        m.hook_calls
            .with_label_values(&[lane.name.as_str(), which, label])
            .inc();
        m.hook_duration
            .with_label_values(&[lane.name.as_str(), which])
            .observe(took.as_secs_f64());
        // Health checks repeat every few seconds: only failures of the others are news.
        if which != "health" || result.is_err() {
            tracing::info!(
                target: AUDIT,
                event = "hook",
                upstream = %lane.name,
                hook = which,
                seq = event.get("seq").and_then(|v| v.as_u64()),
                result = label,
                secs = took.as_secs_f64(),
            );
        }
        if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Failed
        }
    }
}

/// Performs one action; every call is bounded by its own timeout.
async fn perform(
    bridge: &Bridge,
    lane: &LaneHandle,
    turns: &dyn Turns,
    token: Option<&Token>,
    action: &Action,
) -> Outcome {
    let name = lane.name.as_str();
    let call = |r: Result<Outcome, neops::CallError>, what: &'static str| match r {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(target: AUDIT, event = "upstream_session_call_failed", upstream = name, call = what, error = e.as_str());
            Outcome::Failed
        }
    };
    match action {
        Action::StartHook { turn } => {
            let event = serde_json::json!({
                "event": "start",
                "upstream": name,
                "seq": turn,
                "token": token.map(Token::expose),
                "hold_limit_secs": turns.hold_limit().map(|d| d.as_secs()),
            });
            bridge.hook(lane, "start", event).await
        }
        Action::EndHook { turn } => {
            let event = serde_json::json!({
                "event": "end",
                "upstream": name,
                "seq": turn,
                "reason": turns.end_reason(*turn).unwrap_or("unknown"),
            });
            bridge.hook(lane, "end", event).await
        }
        Action::Reset { turn } => {
            let event = serde_json::json!({"event": "reset", "upstream": name, "seq": turn});
            bridge.hook(lane, "reset", event).await
        }
        Action::Health { turn } => {
            let event = serde_json::json!({"event": "health", "upstream": name, "seq": turn});
            bridge.hook(lane, "health", event).await
        }
        // The machine asks for these only on a neops lane, which always has an API.
        Action::Open { .. }
        | Action::Poll { .. }
        | Action::Keepalive { .. }
        | Action::Delete { .. } => {
            let Some(api) = lane.api.as_ref() else {
                return Outcome::Failed;
            };
            match action {
                Action::Open { .. } => call(api.open().await, "open"),
                Action::Poll { id, .. } => call(api.poll(id).await, "poll"),
                Action::Keepalive { id, .. } => call(api.keepalive(id).await, "keepalive"),
                Action::Delete { id, .. } => call(api.delete(id).await, "delete"),
                _ => Outcome::Failed,
            }
        }
    }
}

/// The lane's per-turn secret: minted when a turn begins, dropped when it ends.
struct TurnToken(Option<(u64, Token)>);

async fn run_lane(
    bridge: Arc<Bridge>,
    lane: Arc<LaneHandle>,
    turns: Arc<dyn Turns>,
    mut stop: watch::Receiver<bool>,
) {
    let name = lane.name.clone();
    let m = metrics::metrics();
    let mut machine = Lane::new(lane.config.features(), lane.config.timing);
    let mut changes = turns.changes();
    let mut token = TurnToken(None);
    let mut waiting_reported = false;
    if let Some((turn, id)) = bridge.owned.get(&name) {
        tracing::info!(target: AUDIT, event = "upstream_session_restored", upstream = %name, seq = turn, upstream_session = id.short());
        let notes = machine.adopt(turn, id, turns.wanted(), Instant::now());
        apply(
            &bridge,
            &lane,
            &*turns,
            &mut token,
            &mut waiting_reported,
            notes,
        );
    }
    loop {
        if *stop.borrow() {
            break;
        }
        let now = Instant::now();
        let notes = machine.want(turns.wanted(), now);
        apply(
            &bridge,
            &lane,
            &*turns,
            &mut token,
            &mut waiting_reported,
            notes,
        );
        publish(&bridge, &lane, &machine, &token);
        match machine.next(now) {
            Ok(action) => {
                let tok = token.0.as_ref().map(|(_, t)| t);
                let outcome = tokio::select! {
                    o = perform(&bridge, &lane, &*turns, tok, &action) => o,
                    _ = stop.changed() => break,
                };
                let notes = machine.done(outcome, Instant::now());
                apply(
                    &bridge,
                    &lane,
                    &*turns,
                    &mut token,
                    &mut waiting_reported,
                    notes,
                );
                publish(&bridge, &lane, &machine, &token);
            }
            Err(until) => {
                let sleep = async {
                    match until {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sleep => {}
                    r = changes.changed() => if r.is_err() { break },
                    _ = lane.nudge.notified() => machine.check_now(Instant::now()),
                    _ = lane.retry.notified() => {
                        if machine.retry(Instant::now()) {
                            tracing::warn!(target: AUDIT, event = "handoff_retry", upstream = %name);
                        }
                    }
                    _ = stop.changed() => {}
                }
            }
        }
        m.undeleted
            .with_label_values(&[name.as_str()])
            .set(i64::from(machine.undeleted()));
    }
    // A memory-only queue forgets every session on the way down: so must the upstream,
    // or its lab stays up for nobody until the server reaps it (300 s). A durable queue
    // restores the holder, whose upstream session is then re-established.
    if let (false, Some((turn, id)), Some(api)) = (
        bridge.owned.is_durable(),
        machine.owned().map(|(t, id)| (t, id.clone())),
        lane.api.as_ref(),
    ) {
        let outcome = tokio::time::timeout(SHUTDOWN_DELETE, api.delete(&id)).await;
        let deleted = matches!(outcome, Ok(Ok(Outcome::Deleted | Outcome::Gone)));
        tracing::info!(target: AUDIT, event = "upstream_session_deleted_at_shutdown", upstream = %name, seq = turn, upstream_session = id.short(), deleted);
    }
    tracing::debug!(upstream = %name, "bridge lane stopped");
}

/// How long a shutdown waits for the server to accept an upstream session's deletion
/// (it tears the lab down on its own after answering or after the connection closes).
const SHUTDOWN_DELETE: Duration = Duration::from_secs(3);

/// Publishes what requests of the lane's turn carry, and remembers the owned session.
fn publish(bridge: &Bridge, lane: &LaneHandle, machine: &Lane, token: &TurnToken) {
    let ready = machine.ready().map(|(turn, id)| {
        Arc::new(Ready {
            turn,
            upstream_id: id.cloned(),
            token: token
                .0
                .as_ref()
                .filter(|(t, _)| *t == turn)
                .map(|(_, tok)| tok.clone()),
        })
    });
    lane.view.send_if_modified(|v| {
        let same = match (&*v, &ready) {
            (None, None) => true,
            (Some(a), Some(b)) => a.turn == b.turn && a.upstream_id == b.upstream_id,
            _ => false,
        };
        if !same {
            *v = ready;
        }
        !same
    });
    if let Err(e) = bridge.owned.set(&lane.name, machine.owned()) {
        tracing::error!(upstream = %lane.name, error = %e, "cannot record the owned upstream session");
    }
}

/// Turns the machine's notes into tokens, audit lines, metrics and barrier reports.
fn apply(
    bridge: &Bridge,
    lane: &LaneHandle,
    turns: &dyn Turns,
    token: &mut TurnToken,
    waiting_reported: &mut bool,
    notes: Vec<Note>,
) {
    let _ = bridge;
    let name = lane.name.as_str();
    let m = metrics::metrics();
    for note in notes {
        match note {
            Note::Began { turn } => {
                if lane.config.token_header.is_some() {
                    match Token::mint() {
                        Ok(t) => {
                            m.tokens_minted.with_label_values(&[name]).inc();
                            tracing::info!(target: AUDIT, event = "token_minted", upstream = name, seq = turn, token = %t.tag());
                            token.0 = Some((turn, t));
                        }
                        // No token means every request of the turn is refused by a lab
                        // that checks it: loud, not fatal.
                        Err(e) => {
                            tracing::error!(upstream = name, seq = turn, error = %e, "cannot mint a turn token")
                        }
                    }
                }
            }
            Note::Ready { turn } => {
                tracing::info!(target: AUDIT, event = "bridge_ready", upstream = name, seq = turn);
                if *waiting_reported {
                    *waiting_reported = false;
                    m.waiting.with_label_values(&[name]).set(0);
                }
            }
            Note::Ended { turn } => {
                if let Some((_, t)) = token.0.take() {
                    m.tokens_revoked.with_label_values(&[name]).inc();
                    tracing::info!(target: AUDIT, event = "token_revoked", upstream = name, seq = turn, token = %t.tag());
                }
                if *waiting_reported {
                    *waiting_reported = false;
                    m.waiting.with_label_values(&[name]).set(0);
                }
            }
            Note::Opened { turn, id, reopened } => {
                let kind = if reopened { "reopened" } else { "new" };
                m.sessions_opened.with_label_values(&[name, kind]).inc();
                tracing::info!(target: AUDIT, event = "upstream_session_opened", upstream = name, seq = turn, upstream_session = id.short(), kind);
            }
            Note::OpenFailed {
                turn,
                attempt,
                retry_in,
            } => {
                m.open_failures.with_label_values(&[name]).inc();
                tracing::warn!(target: AUDIT, event = "upstream_session_open_failed", upstream = name, seq = turn, attempt, retry_in_secs = retry_in.as_secs_f64());
            }
            Note::UpstreamWaiting {
                turn,
                position,
                waited,
            } => {
                *waiting_reported = true;
                m.waiting.with_label_values(&[name]).set(1);
                tracing::warn!(
                    target: AUDIT,
                    event = "upstream_session_waiting",
                    upstream = name,
                    seq = turn,
                    upstream_position = position,
                    waited_secs = waited.as_secs_f64(),
                    "the upstream has another active session: somebody uses it around labgate"
                );
            }
            Note::Lost { turn, id } => {
                m.sessions_lost.with_label_values(&[name]).inc();
                tracing::warn!(target: AUDIT, event = "upstream_session_lost", upstream = name, seq = turn, upstream_session = id.short(), "the upstream forgot the turn's session; opening a new one");
            }
            Note::Deleted { turn, id } => {
                m.sessions_deleted.with_label_values(&[name]).inc();
                tracing::info!(target: AUDIT, event = "upstream_session_deleted", upstream = name, seq = turn, upstream_session = id.short());
            }
            Note::DeleteFailed {
                turn,
                id,
                attempt,
                retry_in,
            } => {
                m.delete_failures.with_label_values(&[name]).inc();
                tracing::error!(target: AUDIT, event = "upstream_session_delete_failed", upstream = name, seq = turn, upstream_session = id.short(), attempt, retry_in_secs = retry_in.as_secs_f64(), "cannot delete the upstream session of an ended turn; retrying");
            }
            Note::HookFailed { turn, hook } => {
                tracing::warn!(target: AUDIT, event = "hook_failed", upstream = name, seq = turn, hook);
            }
            Note::HandoffDone { turn } => {
                lane.failed.store(false, Ordering::SeqCst);
                m.handoff_failed.with_label_values(&[name]).set(0);
                turns.handoff_done(lane.index, turn);
            }
            Note::HandoffFailed { turn, why } => {
                lane.failed.store(true, Ordering::SeqCst);
                m.handoff_failed.with_label_values(&[name]).set(1);
                tracing::error!(target: AUDIT, event = "handoff_failed", upstream = name, seq = turn, why, "the lab stays held and draining until an operator retries");
                turns.handoff_failed(lane.index, turn, why);
            }
        }
    }
}

#[cfg(test)]
mod tests;
