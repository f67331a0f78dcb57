//! What a `labgate run` wait is watched by: SIGINT/SIGTERM/SIGHUP, the wait deadline
//! and the waiting line, around any future.
//!
//! Owns the signal handlers (installed once, before the first request, so no signal
//! kills labgate with a session open). Must never send a request itself.

use std::future::Future;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::sleep_until;

use super::progress::Progress;

/// How often the waiting line is refreshed between two answers.
const TICK: Duration = Duration::from_secs(1);

/// Why a wait stopped early.
pub enum Interrupt {
    Signal(Signal),
    Deadline,
}

/// SIGINT, SIGTERM and SIGHUP as one stream.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
    }
}

/// Everything a wait is watched by: signals, the wait deadline, the progress line.
pub struct Watch {
    pub signals: Signals,
    pub deadline: Option<Instant>,
    pub started: Instant,
    pub position: u64,
    pub progress: Progress,
}

impl Watch {
    /// Runs `fut` to completion unless a signal or the deadline comes first,
    /// refreshing the waiting line meanwhile (when `show` is set).
    pub async fn guard<F: Future>(&mut self, fut: F, show: bool) -> Result<F::Output, Interrupt> {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(TICK);
        let deadline = self.deadline.map(tokio::time::Instant::from_std);
        loop {
            tokio::select! {
                // A pending signal wins over a ready `fut`: see the check before CMD.
                biased;
                sig = self.signals.recv() => return Err(Interrupt::Signal(sig)),
                out = &mut fut => return Ok(out),
                _ = sleep_until_opt(deadline) => return Err(Interrupt::Deadline),
                _ = tick.tick(), if show => {
                    self.progress.waiting(self.position, self.started.elapsed());
                }
            }
        }
    }
}

pub async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
