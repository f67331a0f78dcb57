//! The process's log: where it goes (stderr), its format, its level filter, and whether
//! the pretty format is coloured.
//!
//! Owns the colour decision as a pure function ([`colour`]) so it is tested without a
//! terminal. Colour escapes are for a person at a terminal only: in a file, journald or
//! `docker logs` they are noise that breaks `grep`. `NO_COLOR` (<https://no-color.org>)
//! set to anything non-empty turns colour off even on a terminal. Must never decide
//! what is logged: that is each caller's.

use std::ffi::OsStr;
use std::io::IsTerminal;

/// The two log formats of `labgate serve` and `labgate demo-lab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One human-readable line per event; coloured only on a terminal.
    Pretty,
    /// One JSON object per line (never coloured).
    Json,
}

/// Whether the pretty log is coloured: only when stderr is a terminal and `NO_COLOR`
/// (its value given as `no_color`) is absent or empty, as no-color.org asks.
pub fn colour(stderr_is_tty: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_tty && no_color.is_none_or(OsStr::is_empty)
}

/// Installs the subscriber: `LABGATE_LOG` is the filter (`info` by default), stderr the
/// writer. A second call (never expected) is ignored rather than aborting the process.
pub fn init(format: Format) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LABGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        Format::Pretty => builder.with_ansi(ansi).try_init(),
        Format::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = |v: &'static str| Some(OsStr::new(v));
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file, a pipe, journald: no escapes");
        assert!(!colour(true, set("1")));
        assert!(
            !colour(true, set("0")),
            "any non-empty value means no colour"
        );
        assert!(colour(true, set("")), "an empty NO_COLOR is as if unset");
        assert!(!colour(false, set("")));
    }
}
