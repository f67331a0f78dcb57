//! The bridge's options on an `[[upstream]]`: raw serde types mirroring the TOML and the
//! validated [`BridgeConfig`], built in one fallible step that the config module calls
//! for each upstream.
//!
//! ```toml
//! [[upstream]]
//! name = "netlab"
//! address = "127.0.0.1:8000"
//! routes = ["/lab"]
//!
//! [upstream.neops]            # a neops-remote-lab server: one upstream session per turn
//! keepalive = "60s"
//!
//! [upstream.token]            # a fresh random token per turn, in this header
//! header = "X-Lab-Token"
//!
//! [upstream.hooks]
//! start = { url = "http://127.0.0.1:9000/turn/start" }
//! end = { url = "http://127.0.0.1:9000/turn/end" }
//! reset = { command = ["/usr/local/bin/lab-reset"], timeout = "10m" }
//! health = { url = "http://127.0.0.1:9000/healthz", within = "2m" }
//! ```
//!
//! Owns the option names, defaults and checks. Must never panic on input; problems come
//! back as (span, message) for the config module to place in the file.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::hooks::{Hook, Target};
use super::machine::{Features, Timing};

/// A location in the file (or none) and a one-line message.
pub type Problem = (Option<Range<usize>>, String);

/// A humantime duration ("60s", "10m", "500ms").
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write it like \"60s\", \"10m\" or \"500ms\""
            ))
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawNeops {
    /// Heartbeat period; the server reaps a session after 300 s without one.
    keepalive: Option<Spanned<Dur>>,
    /// Poll period while the upstream session waits.
    poll: Option<Spanned<Dur>>,
    /// Each open, poll and heartbeat call.
    call_timeout: Option<Spanned<Dur>>,
    /// A delete: the server runs `netlab down` before it answers.
    delete_timeout: Option<Spanned<Dur>>,
    /// Longest delay between two tries of a failed open or delete.
    retry_max: Option<Spanned<Dur>>,
    /// How long a forwarded request waits for its turn's upstream session before `423`.
    ready_wait: Option<Spanned<Dur>>,
    /// An upstream session waiting longer than this is reported (someone uses the
    /// upstream around labgate).
    report_waiting_after: Option<Spanned<Dur>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    header: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    start: Option<Spanned<RawHook>>,
    end: Option<Spanned<RawHook>>,
    reset: Option<Spanned<RawHook>>,
    health: Option<Spanned<RawHook>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    url: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    /// One call (for `health`: one check).
    timeout: Option<Spanned<Dur>>,
    /// `health` only: the period between checks...
    every: Option<Spanned<Dur>>,
    /// ...and how long it may keep failing before the handoff fails.
    within: Option<Spanned<Dur>>,
}

/// The bridge tables of one `[[upstream]]`, as parsed.
#[derive(Deserialize, Default)]
pub struct RawBridge {
    pub neops: Option<Spanned<RawNeops>>,
    pub token: Option<RawToken>,
    pub hooks: Option<RawHooks>,
}

#[derive(Clone, Debug)]
pub struct NeopsConfig {
    pub call_timeout: Duration,
    pub delete_timeout: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct HooksConfig {
    pub start: Option<Hook>,
    pub end: Option<Hook>,
    pub reset: Option<Hook>,
    pub health: Option<Hook>,
}

/// What the bridge does for one upstream.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    pub neops: Option<NeopsConfig>,
    /// The header the per-turn token goes in.
    pub token_header: Option<HeaderName>,
    pub hooks: HooksConfig,
    pub timing: Timing,
    /// How long a forwarded request waits for the lane to be ready.
    pub ready_wait: Duration,
}

impl BridgeConfig {
    pub fn features(&self) -> Features {
        Features {
            neops: self.neops.is_some(),
            start_hook: self.hooks.start.is_some(),
            end_hook: self.hooks.end.is_some(),
            reset_hook: self.hooks.reset.is_some(),
            health: self.hooks.health.is_some(),
        }
    }

    /// Whether this upstream needs a lane at all.
    pub fn is_active(&self) -> bool {
        self.features() != Features::default() || self.token_header.is_some()
    }
}

fn span_of<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    let span = s.span();
    (!span.is_empty()).then_some(span)
}

fn dur(d: &Option<Spanned<Dur>>, default: Duration, what: &str) -> Result<Duration, Problem> {
    match d {
        None => Ok(default),
        Some(s) if s.get_ref().0.is_zero() => {
            Err((span_of(s), format!("{what} must be greater than zero")))
        }
        Some(s) => Ok(s.get_ref().0),
    }
}

/// The neops server reaps an ACTIVE session after 300 s without a heartbeat.
const NEOPS_REAP: Duration = Duration::from_secs(300);

impl RawBridge {
    /// Validates the bridge options of upstream `name`; `injected` are the names of the
    /// headers the upstream already injects (a token header must not collide).
    pub fn validate(self, name: &str, injected: &[HeaderName]) -> Result<BridgeConfig, Problem> {
        let neops_raw = self.neops.as_ref().map(|n| n.get_ref());
        let get = |f: fn(&RawNeops) -> &Option<Spanned<Dur>>| neops_raw.and_then(|n| f(n).as_ref());
        let opt = |f: fn(&RawNeops) -> &Option<Spanned<Dur>>| get(f).cloned();
        let keepalive = dur(
            &opt(|n| &n.keepalive),
            Duration::from_secs(60),
            "neops.keepalive",
        )?;
        if keepalive >= NEOPS_REAP {
            return Err((
                get(|n| &n.keepalive).and_then(span_of),
                "neops.keepalive must be under 300s: the server reaps a session after 300s without one".into(),
            ));
        }
        let neops = match &self.neops {
            Some(_) => Some(NeopsConfig {
                call_timeout: dur(
                    &opt(|n| &n.call_timeout),
                    Duration::from_secs(10),
                    "neops.call_timeout",
                )?,
                delete_timeout: dur(
                    &opt(|n| &n.delete_timeout),
                    Duration::from_secs(600),
                    "neops.delete_timeout",
                )?,
            }),
            None => None,
        };
        let token_header = match self.token {
            None => None,
            Some(t) => {
                let text = t.header.get_ref().trim().to_ascii_lowercase();
                let header = HeaderName::from_bytes(text.as_bytes()).map_err(|_| {
                    (
                        span_of(&t.header),
                        format!("invalid token header name {text:?}"),
                    )
                })?;
                if crate::forward::is_managed(header.as_str()) || injected.contains(&header) {
                    return Err((
                        span_of(&t.header),
                        format!("token.header {text:?} is already managed by labgate or injected for upstream {name:?}"),
                    ));
                }
                Some(header)
            }
        };
        let raw_hooks = self.hooks.unwrap_or_default();
        let health_raw = raw_hooks.health.as_ref().map(|h| h.get_ref());
        let health_every = dur(
            &health_raw.and_then(|h| h.every.clone()),
            Duration::from_secs(2),
            "hooks.health.every",
        )?;
        let health_within = dur(
            &health_raw.and_then(|h| h.within.clone()),
            Duration::from_secs(120),
            "hooks.health.within",
        )?;
        let hooks = HooksConfig {
            start: hook(raw_hooks.start, "start", Duration::from_secs(30))?,
            end: hook(raw_hooks.end, "end", Duration::from_secs(30))?,
            reset: hook(raw_hooks.reset, "reset", Duration::from_secs(600))?,
            health: hook(raw_hooks.health, "health", Duration::from_secs(5))?,
        };
        let timing = Timing {
            keepalive,
            poll: dur(&opt(|n| &n.poll), Duration::from_secs(1), "neops.poll")?,
            retry_min: Duration::from_secs(1),
            retry_max: dur(
                &opt(|n| &n.retry_max),
                Duration::from_secs(30),
                "neops.retry_max",
            )?,
            report_waiting_after: dur(
                &opt(|n| &n.report_waiting_after),
                Duration::from_secs(10),
                "neops.report_waiting_after",
            )?,
            health_every,
            health_within,
        };
        Ok(BridgeConfig {
            neops,
            token_header,
            hooks,
            timing,
            ready_wait: dur(
                &opt(|n| &n.ready_wait),
                Duration::from_secs(10),
                "neops.ready_wait",
            )?,
        })
    }
}

fn hook(
    raw: Option<Spanned<RawHook>>,
    which: &str,
    timeout: Duration,
) -> Result<Option<Hook>, Problem> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let span = span_of(&raw);
    let raw = raw.into_inner();
    if which != "health" && (raw.every.is_some() || raw.within.is_some()) {
        return Err((
            span,
            format!("hooks.{which}: `every` and `within` are for hooks.health only"),
        ));
    }
    let timeout = dur(&raw.timeout, timeout, &format!("hooks.{which}.timeout"))?;
    let target = match (raw.url, raw.command) {
        (Some(url), None) => {
            let text = url.get_ref().trim();
            let addr = http_target(text)
                .map_err(|m| (span_of(&url), format!("hooks.{which}.url: {m}")))?;
            Target::Http {
                url: text.to_string(),
                addr,
            }
        }
        (None, Some(cmd)) => {
            let argv = cmd.get_ref().clone();
            match argv.first() {
                Some(p) if p.starts_with('/') => {}
                _ => {
                    return Err((
                        span_of(&cmd),
                        format!("hooks.{which}.command: give the program as an absolute path, then its arguments"),
                    ))
                }
            }
            Target::Command { argv }
        }
        _ => {
            return Err((
                span,
                format!("hooks.{which}: give exactly one of `url` or `command`"),
            ));
        }
    };
    Ok(Some(Hook { target, timeout }))
}

/// An `http://` URL whose host resolves now, once (no DNS on the request path).
fn http_target(text: &str) -> Result<SocketAddr, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("invalid URL {text:?} ({e})"))?;
    if url.scheme() != "http" {
        return Err(format!("{text:?} is not an http:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in a hook URL".into());
    }
    let host = url
        .host_str()
        .ok_or_else(|| format!("{text:?} has no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BridgeConfig, Problem> {
        let raw: RawBridge = toml::from_str(text).map_err(|e| (None, e.to_string()))?;
        raw.validate("lab", &[])
    }

    #[test]
    fn no_options_means_no_lane() {
        let c = parse("").unwrap();
        assert!(!c.is_active());
    }

    #[test]
    fn a_full_bridge_parses() {
        let c = parse(
            r#"
            [neops]
            keepalive = "30s"
            ready_wait = "2s"
            [token]
            header = "X-Lab-Token"
            [hooks]
            start = { url = "http://127.0.0.1:9/start" }
            end = { command = ["/bin/true"] }
            reset = { command = ["/bin/sh", "-c", "sleep 1"], timeout = "5m" }
            health = { url = "http://127.0.0.1:9/healthz", every = "1s", within = "30s" }
            "#,
        )
        .unwrap();
        assert!(c.is_active());
        let f = c.features();
        assert!(f.neops && f.start_hook && f.end_hook && f.reset_hook && f.health);
        assert_eq!(c.timing.keepalive, Duration::from_secs(30));
        assert_eq!(c.timing.health_within, Duration::from_secs(30));
        assert_eq!(c.ready_wait, Duration::from_secs(2));
        assert_eq!(c.token_header.unwrap().as_str(), "x-lab-token");
        assert_eq!(c.hooks.reset.unwrap().timeout, Duration::from_secs(300));
    }

    #[test]
    fn bad_bridge_options_are_refused_with_a_reason() {
        for (text, want) in [
            ("[neops]\nkeepalive = \"300s\"", "under 300s"),
            ("[neops]\npoll = \"0s\"", "greater than zero"),
            ("[neops]\nbogus = 1", "unknown field"),
            ("[token]\nheader = \"X-Session-ID\"", "already managed"),
            ("[token]\nheader = \"bad header\"", "invalid token header"),
            ("[hooks]\nreset = { }", "exactly one of"),
            (
                "[hooks]\nreset = { url = \"https://x/\" }",
                "not an http://",
            ),
            (
                "[hooks]\nreset = { url = \"http://u:p@127.0.0.1/\" }",
                "credentials",
            ),
            (
                "[hooks]\nreset = { command = [\"reset.sh\"] }",
                "absolute path",
            ),
            ("[hooks]\nreset = { command = [] }", "absolute path"),
            (
                "[hooks]\nstart = { command = [\"/bin/true\"], within = \"1s\" }",
                "health only",
            ),
        ] {
            let err = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text} was accepted"));
            assert!(err.1.contains(want), "{text}: {}", err.1);
        }
    }

    #[test]
    fn a_token_header_may_not_shadow_an_injected_one() {
        let raw: RawBridge = toml::from_str("[token]\nheader = \"authorization\"").unwrap();
        let err = raw
            .validate("lab", &[HeaderName::from_static("authorization")])
            .unwrap_err();
        assert!(err.1.contains("injected"));
    }
}
