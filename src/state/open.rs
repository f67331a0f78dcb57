//! Building [`Shared`]: the queue restored from the durable store (every restored
//! session gets a full idle timeout from now), the sequence floor, and the bridge.

use super::turns::build_bridge;
use super::*;

impl Shared {
    /// Builds the shared state; with a `state_path`, opens the store and restores the
    /// queue from it (every restored session gets a full idle timeout from now).
    pub fn new(config: Config) -> anyhow::Result<Arc<Shared>> {
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let mut owners = Owners::default();
        let (queue, store, meta) = match &config.queue.state_path {
            None => (
                Queue::with_next_seq(config.queue.timeouts, store::seq_floor(None, wall_now)),
                None,
                HashMap::new(),
            ),
            Some(path) => {
                let (store, restored) = Store::open(path)?;
                for s in &restored.sessions {
                    // An owner that is not a valid identity leaves the session unowned:
                    // in identity mode nobody can use it, and it is reaped.
                    if let Some(owner) = restored
                        .owners
                        .get(&s.seq)
                        .and_then(|o| Identity::parse(o.as_bytes()))
                    {
                        owners.bind(s.id, owner);
                    }
                }
                let mut meta = HashMap::new();
                let sessions = restored
                    .sessions
                    .iter()
                    .map(|s| {
                        let label = restored.labels.get(&s.seq).cloned().unwrap_or_default();
                        meta.insert(s.id, Meta::new(None, s.created_ms, label));
                        let age =
                            Duration::from_millis(unix_ms(wall_now).saturating_sub(s.created_ms));
                        (s.id, s.seq, now.checked_sub(age).unwrap_or(now))
                    })
                    .collect();
                let queue = Queue::restore(
                    config.queue.timeouts,
                    store::seq_floor(Some(restored.next_seq), wall_now),
                    sessions,
                    now,
                )
                .with_context(|| format!("cannot restore the queue from {}", path.display()))?;
                tracing::info!(
                    target: AUDIT,
                    event = "queue_restored",
                    sessions = queue.len(),
                    next_seq = queue.next_seq(),
                    path = %path.display(),
                );
                let committer = Committer::start(store, path, metrics())
                    .context("cannot start the queue store's writer thread")?;
                (queue, Some(committer), meta)
            }
        };
        let mut queue = queue;
        queue.set_max_hold(config.queue.max_hold);
        let bridge = Arc::new(build_bridge(&config)?);
        queue.set_handoff(bridge.has_barrier());
        if let Some(turn) = bridge.pending_handoff() {
            if queue.resume_reset(turn, now) {
                tracing::warn!(target: AUDIT, event = "handoff_resumed", seq = turn, "labgate stopped while the lab was being reset; resetting it again");
            } else {
                bridge.record_handoff(None);
            }
        }
        let handoff_recorded = queue.resetting();
        let limiter = SessionLimiter::new(&config.rate_limit);
        let metrics = metrics();
        metrics.config_loaded();
        metrics.record_queue(queue.len(), queue.waiting(), queue.active_hold(now));
        let (changes, _) = watch::channel(0);
        Ok(Arc::new(Shared {
            config: arc_swap::ArcSwap::from_pointee(Current::new(config, metrics, None)),
            config_path: std::sync::OnceLock::new(),
            reloading: Mutex::new(()),
            bridge: bridge.clone(),
            committer: store,
            core: Mutex::new(Core {
                queue,
                conns: cut::Registry::default(),
                unsaved_removals: Vec::new(),
                meta,
                per_client: limits::LiveSessions::default(),
                history: History::default(),
                owners,
                recent_ends: VecDeque::new(),
                handoff: None,
                handoff_failed: false,
                handoff_recorded,
                bridge: bridge.clone(),
                tombstones: Tombstones::default(),
            }),
            draining: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            probes: Mutex::new(limits::ProbeDetector::default()),
            limiter: arc_swap::ArcSwap::from_pointee(limiter),
            metrics,
            forwarded_in_flight: AtomicUsize::new(0),
            changes,
            #[cfg(test)]
            poll_wakeups: AtomicUsize::new(0),
        }))
    }
}
