//! What a reload would change: the running [`Config`] against a freshly loaded one.
//!
//! Pure: it compares two validated configs and reads nothing. It sorts every
//! difference into what takes effect live (`changed`, for the operator's answer and
//! the audit line) and what labgate cannot apply without a restart (`restart`, each
//! naming the option: listeners, threads, the admin socket, the store, identity mode,
//! the bridge's lanes...). A reload with any `restart` item is refused as a whole, so
//! this list must name every option whose new value the running process would ignore.
//! Secret header values are never shown, only that they changed.

use super::{Config, Upstream};

/// The differences between two configs, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Changes a reload applies live, one line each.
    pub changed: Vec<String>,
    /// Options whose change needs a restart, one line each ("server.listen").
    pub restart: Vec<String>,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.restart.is_empty()
    }
}

/// Compares the running config `old` with `new`.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    restart_only(old, new, &mut d.restart);
    upstreams(old, new, &mut d);
    live(old, new, &mut d.changed);
    d
}

/// `[server]`, `[metrics]`, `[demo_lab]`, `[admin]`, the store, the reaper's tick and
/// identity mode are built into listeners, threads and services at start-up.
fn restart_only(old: &Config, new: &Config, out: &mut Vec<String>) {
    let (o, n) = (&old.server, &new.server);
    let mut need = |differs: bool, what: &str| {
        if differs {
            out.push(what.to_string());
        }
    };
    need(o.listen != n.listen, "server.listen");
    need(o.threads != n.threads, "server.threads");
    need(o.grace_period != n.grace_period, "server.grace_period");
    need(
        o.shutdown_timeout != n.shutdown_timeout,
        "server.shutdown_timeout",
    );
    need(
        o.trusted_proxies != n.trusted_proxies,
        "server.trusted_proxies",
    );
    need(o.tls != n.tls, "[server.tls]");
    need(
        o.keepalive_timeout != n.keepalive_timeout,
        "server.keepalive_timeout",
    );
    need(
        o.header_timeout != n.header_timeout,
        "server.header_timeout",
    );
    need(o.tcp_keepalive != n.tcp_keepalive, "server.tcp_keepalive");
    need(
        o.max_connections != n.max_connections,
        "server.max_connections",
    );
    need(
        o.max_connections_per_client != n.max_connections_per_client,
        "server.max_connections_per_client",
    );
    need(old.metrics.listen != new.metrics.listen, "metrics.listen");
    need(
        old.demo_lab.as_ref().map(|d| d.listen) != new.demo_lab.as_ref().map(|d| d.listen),
        "[demo_lab]",
    );
    need(old.admin_socket != new.admin_socket, "admin.socket");
    need(
        old.queue.state_path != new.queue.state_path,
        "queue.state_path",
    );
    need(
        old.queue.reap_interval != new.queue.reap_interval,
        "queue.reap_interval",
    );
    // On/off, or another source (header vs client certificate, its CA, its field).
    need(
        old.identity.as_ref().map(|i| &i.source) != new.identity.as_ref().map(|i| &i.source),
        "identity mode ([identity] on or off, or its source)",
    );
}

/// Upstreams by name: added, removed, or what changed. A bridged upstream (one with
/// `[upstream.neops]`, `[upstream.hooks]` or `[upstream.token]`) runs a lane built at
/// start-up for its position, name and address: any change to it needs a restart.
fn upstreams(old: &Config, new: &Config, d: &mut ConfigDiff) {
    let positions = old.upstreams.len().max(new.upstreams.len());
    for i in 0..positions {
        let (o, n) = (old.upstreams.get(i), new.upstreams.get(i));
        let bridged = |u: Option<&Upstream>| u.is_some_and(|u| u.bridge.is_active());
        if (bridged(o) || bridged(n)) && !same_lane(o, n) {
            let name = o.or(n).map_or("", |u| u.name.as_str());
            d.restart.push(format!(
                "upstream {name:?}: its bridge lane ([upstream.neops], [upstream.hooks], \
                 [upstream.token], or its name, address or position)"
            ));
        }
    }
    for n in &new.upstreams {
        match old.upstreams.iter().find(|o| o.name == n.name) {
            None => d
                .changed
                .push(format!("upstream {:?}: added ({})", n.name, n.authority)),
            Some(o) => {
                let what = upstream_changes(o, n);
                if !what.is_empty() {
                    d.changed
                        .push(format!("upstream {:?}: {}", n.name, what.join(", ")));
                }
            }
        }
    }
    for o in &old.upstreams {
        if !new.upstreams.iter().any(|n| n.name == o.name) {
            d.changed.push(format!("upstream {:?}: removed", o.name));
        }
    }
    if routes(old) != routes(new) {
        d.changed.push("routes".to_string());
    }
}

/// The lane a bridged upstream runs is the same in both (or neither has one).
fn same_lane(o: Option<&Upstream>, n: Option<&Upstream>) -> bool {
    match (o, n) {
        (Some(o), Some(n)) => {
            o.name == n.name
                && o.authority == n.authority
                && o.addr == n.addr
                && o.connect_timeout == n.connect_timeout
                // The bridge's option types have no PartialEq; their Debug is derived,
                // complete and holds no secret values (header names, hook targets).
                && format!("{:?}", o.bridge) == format!("{:?}", n.bridge)
        }
        _ => false,
    }
}

/// What differs in one upstream, as short names (no header values).
fn upstream_changes(o: &Upstream, n: &Upstream) -> Vec<String> {
    let mut out = Vec::new();
    if o.authority != n.authority || o.addr != n.addr {
        out.push(format!("address {} -> {}", o.authority, n.authority));
    }
    if o.strip_prefix != n.strip_prefix {
        out.push("strip_prefix".to_string());
    }
    if (o.connect_timeout, o.read_timeout, o.write_timeout)
        != (n.connect_timeout, n.read_timeout, n.write_timeout)
    {
        out.push("timeouts".to_string());
    }
    if o.headers != n.headers {
        out.push("headers (values not shown)".to_string());
    }
    // The settings as written; the files they name are read again on every reload.
    if format!("{:?}", o.tls) != format!("{:?}", n.tls) {
        out.push("tls".to_string());
    }
    out
}

/// The route table as (prefix, upstream name), in lookup order.
fn routes(c: &Config) -> Vec<(&str, &str)> {
    c.routes
        .iter()
        .map(|(prefix, &i)| (prefix, c.upstreams.get(i).map_or("", |u| u.name.as_str())))
        .collect()
}

/// Everything else a reload applies: limits, queue timeouts, tunnels, identity caps.
fn live(old: &Config, new: &Config, out: &mut Vec<String>) {
    let mut note = |differs: bool, what: &str| {
        if differs {
            out.push(what.to_string());
        }
    };
    let (oq, nq) = (&old.queue, &new.queue);
    note(
        oq.timeouts.active != nq.timeouts.active,
        "queue.active_timeout",
    );
    note(
        oq.timeouts.waiting != nq.timeouts.waiting,
        "queue.waiting_timeout",
    );
    note(oq.max_sessions != nq.max_sessions, "queue.max_sessions");
    note(
        oq.max_sessions_per_client != nq.max_sessions_per_client,
        "queue.max_sessions_per_client",
    );
    note(oq.max_hold != nq.max_hold, "queue.max_hold");
    note(
        (old.rate_limit.burst, old.rate_limit.refill_every)
            != (new.rate_limit.burst, new.rate_limit.refill_every),
        "rate_limit",
    );
    let (ot, nt) = (&old.tunnels, &new.tunnels);
    note(ot.allowlist != nt.allowlist, "tunnels allowlist");
    note(
        ot.max_per_session != nt.max_per_session,
        "tunnels.max_per_session",
    );
    note(
        (ot.connect_timeout, ot.keepalive) != (nt.connect_timeout, nt.keepalive),
        "tunnels timeouts",
    );
    if let (Some(o), Some(n)) = (&old.identity, &new.identity) {
        note(o.max_sessions != n.max_sessions, "identity.max_sessions");
        note(
            o.upstream_header != n.upstream_header,
            "identity.upstream_header",
        );
        note(
            o.status_page_names != n.status_page_names,
            "identity.status_page_names",
        );
    }
    note(
        old.compat.active_session_id != new.compat.active_session_id,
        "compat.active_session_id",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[queue]
active_timeout = "300s"

[rate_limit]
burst = 10
refill_every = "6s"

[[upstream]]
name = "r1"
address = "127.0.0.1:9000"
routes = ["/lab"]
"#;

    fn parse(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap()
    }

    fn with(from: &str, to: &str) -> Config {
        assert!(BASE.contains(from), "{from}");
        parse(&BASE.replacen(from, to, 1))
    }

    #[test]
    fn same_file_is_no_change() {
        assert!(diff(&parse(BASE), &parse(BASE)).is_empty());
    }

    #[test]
    fn equal_values_written_differently_are_no_change() {
        let d = diff(
            &parse(BASE),
            &with("active_timeout = \"300s\"", "active_timeout = \"5m\""),
        );
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn live_changes_are_named_and_need_no_restart() {
        let d = diff(
            &parse(BASE),
            &parse(&BASE.replace("burst = 10", "burst = 1").replace(
                "refill_every = \"6s\"",
                "refill_every = \"6s\"\n[tunnels]\nmax_per_session = 2",
            )),
        );
        assert_eq!(d.changed, ["rate_limit", "tunnels.max_per_session"]);
        assert!(d.restart.is_empty());
        let d = diff(
            &parse(BASE),
            &with(
                "active_timeout = \"300s\"",
                "active_timeout = \"60s\"\nmax_hold = \"1h\"\nmax_sessions = 5",
            ),
        );
        assert_eq!(
            d.changed,
            [
                "queue.active_timeout",
                "queue.max_sessions",
                // Its default follows max_sessions.
                "queue.max_sessions_per_client",
                "queue.max_hold"
            ]
        );
    }

    #[test]
    fn upstream_address_routes_and_headers_are_live() {
        let new = with(
            "address = \"127.0.0.1:9000\"\nroutes = [\"/lab\"]",
            "address = \"127.0.0.1:9001\"\nroutes = [\"/lab\", \"/lab/two\"]\nread_timeout = \"5s\"\n\
             [upstream.headers]\nX-Token = { env = \"PATH\" }",
        );
        let d = diff(&parse(BASE), &new);
        assert_eq!(
            d.changed,
            [
                "upstream \"r1\": address 127.0.0.1:9000 -> 127.0.0.1:9001, timeouts, \
                 headers (values not shown)",
                "routes"
            ]
        );
        assert!(d.restart.is_empty(), "{d:?}");
        // No secret value in what is reported.
        let path = std::env::var("PATH").unwrap_or_default();
        assert!(path.is_empty() || !format!("{d:?}").contains(&path));
    }

    #[test]
    fn upstreams_added_and_removed_by_name() {
        let two = format!(
            "{BASE}\n[[upstream]]\nname = \"r2\"\naddress = \"127.0.0.1:9002\"\nroutes = [\"/lab/r2\"]\n"
        );
        let d = diff(&parse(BASE), &parse(&two));
        assert_eq!(
            d.changed,
            ["upstream \"r2\": added (127.0.0.1:9002)", "routes"]
        );
        let d = diff(&parse(&two), &parse(BASE));
        assert_eq!(d.changed, ["upstream \"r2\": removed", "routes"]);
        assert!(d.restart.is_empty());
    }

    #[test]
    fn listeners_and_store_need_a_restart() {
        let d = diff(
            &parse(BASE),
            &with(
                "listen = [\"127.0.0.1:8080\"]",
                "listen = [\"127.0.0.1:8081\"]\nthreads = 3\n[metrics]\nlisten = \"127.0.0.1:9999\"\n\
                 [admin]\nsocket = \"/run/x/admin.sock\"",
            ),
        );
        assert_eq!(
            d.restart,
            [
                "server.listen",
                "server.threads",
                "metrics.listen",
                "admin.socket"
            ]
        );
        let d = diff(
            &parse(BASE),
            &with(
                "active_timeout = \"300s\"",
                "active_timeout = \"300s\"\nstate_path = \"/var/lib/labgate/q.redb\"",
            ),
        );
        assert_eq!(d.restart, ["queue.state_path"]);
    }

    #[test]
    fn identity_mode_switch_needs_a_restart_but_its_cap_does_not() {
        let header = "[identity]\nsource = \"header\"\nheader = \"X-User\"\n";
        let on = parse(&format!(
            "{header}{}",
            BASE.replace(
                "listen = [\"127.0.0.1:8080\"]",
                "listen = [\"127.0.0.1:8080\"]\ntrusted_proxies = [\"127.0.0.1/32\"]"
            )
        ));
        let off = with(
            "listen = [\"127.0.0.1:8080\"]",
            "listen = [\"127.0.0.1:8080\"]\ntrusted_proxies = [\"127.0.0.1/32\"]",
        );
        let d = diff(&off, &on);
        assert_eq!(
            d.restart,
            ["identity mode ([identity] on or off, or its source)"]
        );
        let capped = parse(&format!(
            "{header}max_sessions = 3\n{}",
            BASE.replace(
                "listen = [\"127.0.0.1:8080\"]",
                "listen = [\"127.0.0.1:8080\"]\ntrusted_proxies = [\"127.0.0.1/32\"]"
            )
        ));
        let d = diff(&on, &capped);
        assert_eq!(d.changed, ["identity.max_sessions"]);
        assert!(d.restart.is_empty());
    }

    #[test]
    fn a_bridged_upstream_cannot_change_live() {
        let bridged = format!("{BASE}[upstream.token]\nheader = \"X-Turn-Token\"\n");
        let moved = bridged.replace("127.0.0.1:9000", "127.0.0.1:9001");
        let d = diff(&parse(&bridged), &parse(&moved));
        assert_eq!(d.restart.len(), 1, "{d:?}");
        assert!(d.restart[0].starts_with("upstream \"r1\": its bridge lane"));
        // Adding the lane is no different.
        let d = diff(&parse(BASE), &parse(&bridged));
        assert_eq!(d.restart.len(), 1, "{d:?}");
        // An unbridged upstream appended after it is fine.
        let more = format!(
            "{bridged}\n[[upstream]]\nname = \"r2\"\naddress = \"127.0.0.1:9002\"\nroutes = [\"/lab/r2\"]\n"
        );
        let d = diff(&parse(&bridged), &parse(&more));
        assert!(d.restart.is_empty(), "{d:?}");
    }
}
