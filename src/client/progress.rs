//! What `labgate run` tells the person or CI log watching it, on stderr: a live
//! progress line (indicatif) while waiting when stderr is a terminal, plain
//! timestamped lines otherwise.
//!
//! Owns the wording and the pacing of those lines. Must never write to stdout (that
//! belongs to CMD) and never decide anything.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};

/// Without a terminal, a waiting line at least this often (and on every move).
const PLAIN_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    mode: Mode,
}

enum Mode {
    /// `--quiet`: only errors.
    Quiet,
    Live(Option<ProgressBar>),
    /// The position and the time of the last waiting line.
    Plain(Option<(u64, Instant)>),
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Live(None)
        } else {
            Mode::Plain(None)
        };
        Progress { mode }
    }

    /// The session is waiting at `position` and has waited `waited`; call on every
    /// answer and on a steady tick.
    pub fn waiting(&mut self, position: u64, waited: Duration) {
        match &mut self.mode {
            Mode::Quiet => {}
            Mode::Live(bar) => {
                let bar = bar.get_or_insert_with(|| {
                    let style = ProgressStyle::with_template(
                        "{spinner} labgate: waiting for the lab: {msg}, waited {elapsed}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                    let bar = ProgressBar::new_spinner().with_style(style);
                    bar.enable_steady_tick(Duration::from_millis(200));
                    bar
                });
                bar.set_message(position_text(position));
            }
            Mode::Plain(last) => {
                let due = match *last {
                    None => true,
                    Some((p, at)) => p != position || at.elapsed() >= PLAIN_EVERY,
                };
                if due {
                    *last = Some((position, Instant::now()));
                    plain_line(&format!(
                        "waiting for the lab: {}, waited {}",
                        position_text(position),
                        seconds(waited)
                    ));
                }
            }
        }
    }

    /// Ends the live line (if any).
    pub fn stop_waiting(&mut self) {
        if let Mode::Live(bar) = &mut self.mode {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
        }
    }

    /// One informational line (dropped with `--quiet`).
    pub fn say(&self, line: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Live(Some(bar)) => bar.suspend(|| eprintln!("labgate: {line}")),
            Mode::Live(None) => eprintln!("labgate: {line}"),
            Mode::Plain(_) => plain_line(line),
        }
    }

    /// One error line (printed even with `--quiet`).
    pub fn error(&self, line: &str) {
        match &self.mode {
            Mode::Live(Some(bar)) => bar.suspend(|| eprintln!("labgate: {line}")),
            Mode::Plain(_) => plain_line(line),
            _ => eprintln!("labgate: {line}"),
        }
    }
}

fn position_text(position: u64) -> String {
    match position {
        0 => "no session ahead".to_string(),
        1 => "1 session ahead".to_string(),
        n => format!("{n} sessions ahead"),
    }
}

fn plain_line(line: &str) {
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    // One write per line so lines from concurrent processes do not interleave.
    let _ = std::io::stderr().write_all(format!("{now} labgate: {line}\n").as_bytes());
}

/// Whole seconds, humantime style ("1m 5s").
pub fn seconds(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_naturally() {
        assert_eq!(position_text(0), "no session ahead");
        assert_eq!(position_text(1), "1 session ahead");
        assert_eq!(position_text(4), "4 sessions ahead");
        assert_eq!(seconds(Duration::from_millis(65_900)).to_string(), "1m 5s");
    }
}
