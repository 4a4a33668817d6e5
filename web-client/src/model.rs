//! What the page shows, computed from what the nodes answer: plain Rust with no browser types,
//! so it builds and is unit-tested on the host too.

use replog_proto::v1::{HealthReply, Leadership, SecondaryHealth};
use std::fmt;

/// The columns when `/nodes.json` is missing or bad: the static deployment's three nodes.
pub const DEFAULT_NODES: [&str; 3] = ["master", "secondary-1", "secondary-2"];

/// At most this many columns: a longer list is a mistake, not a cluster.
pub const MAX_NODES: usize = 16;

/// Longest node name the page takes: names become element ids and URL paths.
pub const MAX_NAME_LEN: usize = 64;

/// A node the page shows, in column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Stable name: the `data-node` attribute, the suffix of the column's element ids, and the
    /// nginx path `/node/<name>/`.
    pub name: String,
    /// The column's title until the node's health names it.
    pub label: String,
}

impl Node {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            label: label(name),
        }
    }

    /// The node's gRPC-Web base path behind nginx (no trailing slash: the client appends
    /// `/replog.v1.Log/<Method>`).
    pub fn base_path(&self) -> String {
        format!("/node/{}", self.name)
    }
}

/// The static deployment's names read as words ("secondary-2" is "Secondary 2"); other names
/// are shown as they are.
pub fn label(name: &str) -> String {
    if name == "master" {
        return "Master".to_owned();
    }
    match name.strip_prefix("secondary-") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            format!("Secondary {n}")
        }
        _ => name.to_owned(),
    }
}

pub fn default_nodes() -> Vec<Node> {
    DEFAULT_NODES.iter().map(|name| Node::new(name)).collect()
}

/// Why a `/nodes.json` list was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodesError {
    NotAList,
    Empty,
    TooMany(usize),
    BadName(String),
    Twice(String),
}

impl fmt::Display for NodesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAList => write!(f, "not a JSON array of node names"),
            Self::Empty => write!(f, "no nodes listed"),
            Self::TooMany(n) => write!(f, "{n} nodes listed, at most {MAX_NODES} are shown"),
            Self::BadName(name) => write!(
                f,
                "node name {name:?} is not 1 to {MAX_NAME_LEN} letters, digits, '-' or '_'"
            ),
            Self::Twice(name) => write!(f, "node {name:?} is listed twice"),
        }
    }
}

/// The columns `/nodes.json` asks for, in its order. Names must be safe as element ids, CSS
/// selectors and URL path segments, since they are used as all three.
pub fn parse_nodes(names: &[String]) -> Result<Vec<Node>, NodesError> {
    if names.is_empty() {
        return Err(NodesError::Empty);
    }
    if names.len() > MAX_NODES {
        return Err(NodesError::TooMany(names.len()));
    }
    let mut nodes: Vec<Node> = Vec::with_capacity(names.len());
    for name in names {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(NodesError::BadName(name.clone()));
        }
        if nodes.iter().any(|n| n.name == *name) {
            return Err(NodesError::Twice(name.clone()));
        }
        nodes.push(Node::new(name));
    }
    Ok(nodes)
}

/// The write concerns the page offers for `nodes` nodes (the master counts as one).
pub fn w_choices(nodes: usize) -> Vec<u32> {
    (1..=nodes.max(1) as u32).collect()
}

/// Delay before the `attempt`-th reconnect (0-based): 250 ms doubling to at most 4 s.
pub fn backoff_ms(attempt: u32) -> u32 {
    250u32.saturating_mul(1 << attempt.min(8)).min(4_000)
}

/// The canonical name of a gRPC status code (`UNAVAILABLE`, ...), as people read them in docs.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// An error in words: `UNAVAILABLE: no quorum ...`. A failed fetch (node or nginx gone) has
/// no useful status message, so it says what it means.
pub fn describe_error(code: i32, message: &str) -> String {
    let message = message.trim();
    let message = if message.is_empty() {
        "no answer"
    } else if message.contains("Failed to fetch") || message.contains("NetworkError") {
        "the node cannot be reached"
    } else {
        message
    };
    format!("{}: {message}", code_name(code))
}

/// Whether a failed append's answer leaves its outcome unknown (gRPC `UNKNOWN`: the node lost
/// the master's answer, the master stopped before deciding, or the request failed in the
/// browser after it may have been sent): it may be in the log or not.
pub fn outcome_unknown(code: i32) -> bool {
    code == 2
}

/// Whether a failed `Watch` started below the node's first retained id (gRPC `OUT_OF_RANGE`).
pub fn behind_retention(code: i32) -> bool {
    code == 11
}

/// A failed append in words; an unknown outcome says so and how to find out.
pub fn describe_append_error(code: i32, message: &str) -> String {
    let text = describe_error(code, message);
    if outcome_unknown(code) {
        format!(
            "Outcome unknown: {text} (append the same message again to find out: it is retried with the same key, so it is not appended twice)"
        )
    } else {
        text
    }
}

/// Where a column's `Watch` starts: after the last id it shows, or, showing nothing yet, at
/// the node's first retained id (0), which retention may have moved past 1.
pub fn watch_from(shown: u64) -> u64 {
    match shown {
        0 => 0,
        shown => shown + 1,
    }
}

/// The idempotency key of a new append: the page's start, in ms since the epoch, and a count
/// of its appends keep keys apart across pages and reloads.
pub fn append_key(page_started_ms: f64, seq: u64) -> String {
    format!("web-{:.0}-{seq}", page_started_ms.max(0.0))
}

/// How a node's badge reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Badge {
    /// `up`, `read-only`, `down` or `connecting`: the column's `data-status`.
    pub status: &'static str,
    pub text: String,
}

/// One line of a node's health panel: label, value, and a `data-key` for tests and styling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub key: &'static str,
    pub label: &'static str,
    pub value: String,
}

pub fn badge(health: &HealthReply) -> Badge {
    if health.read_only {
        Badge {
            status: "read-only",
            text: "read-only".into(),
        }
    } else {
        Badge {
            status: "up",
            text: "up".into(),
        }
    }
}

pub fn ms_ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) if ms < 1_000 => format!("{ms} ms ago"),
        Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
    }
}

/// The facts a node's own `Health` tells (its role shows as the column's role badge).
pub fn facts(health: &HealthReply) -> Vec<Fact> {
    let mut facts = vec![Fact {
        key: "visible",
        label: "visible",
        value: health.visible.to_string(),
    }];
    if health.role == "master" {
        facts.push(Fact {
            key: "quorum",
            label: "quorum",
            value: if health.quorum { "yes" } else { "no" }.into(),
        });
        facts.push(Fact {
            key: "last-id",
            label: "last id",
            value: health.last_id.to_string(),
        });
    } else {
        facts.push(Fact {
            key: "held",
            label: "held",
            value: health.last_id.to_string(),
        });
        facts.push(Fact {
            key: "master-contact",
            label: "master contact",
            value: ms_ago(health.last_contact_ms_ago),
        });
    }
    if health.read_only {
        let reason = if health.read_only_reason.is_empty() {
            "no reason given".to_owned()
        } else {
            health.read_only_reason.clone()
        };
        facts.push(Fact {
            key: "read-only",
            label: "read-only",
            value: reason,
        });
    }
    facts
}

/// How the master sees one secondary, for that secondary's column.
pub fn master_view(secondary: &SecondaryHealth) -> String {
    let mut text = format!(
        "{}, lag {}, last contact {}",
        secondary.status,
        secondary.lag,
        ms_ago(secondary.last_contact_ms_ago)
    );
    if !secondary.last_error.is_empty() && secondary.status != "healthy" {
        text.push_str(&format!(" ({})", secondary.last_error));
    }
    text
}

/// In static mode the master lists its secondaries in its `SECONDARIES` order, which the
/// deployments here keep equal to the secondaries' numbers: secondary-N is the N-th.
pub fn secondary_index(node: &str) -> Option<usize> {
    node.strip_prefix("secondary-")?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// The host of a `host:port` or `http://host:port/...` address.
fn host_of(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// How the master (column `master`, answering `master_health`) sees the node of column
/// `index`: the entry of its `secondaries` whose address names that node's host; else, in
/// failover mode (the master's health has `leadership`), the entry at the node's position among
/// the other columns, since a failover master lists the other PEERS in PEERS order and
/// `/nodes.json` lists them in that order too; else, in static mode, secondary-N's N-th entry.
pub fn secondary_of<'h>(
    nodes: &[Node],
    master: usize,
    index: usize,
    master_health: &'h HealthReply,
) -> Option<&'h SecondaryHealth> {
    if index == master {
        return None;
    }
    let name = &nodes.get(index)?.name;
    let secondaries = &master_health.secondaries;
    if let Some(s) = secondaries.iter().find(|s| host_of(&s.address) == name) {
        return Some(s);
    }
    if master_health.leadership.is_some() {
        if secondaries.len() + 1 != nodes.len() {
            return None;
        }
        let position = if index < master { index } else { index - 1 };
        return secondaries.get(position);
    }
    secondaries.get(secondary_index(name)?)
}

/// Which column is the master's. In failover mode, what the live nodes last heard from etcd
/// (the latest term wins; `None` when they all say there is none, or name a node the page does
/// not show); otherwise the live
/// column whose node says it is the master; otherwise `previous`, so that a master that stops
/// answering is still the one the page reports as unreachable.
///
/// `live[i]` is column i's latest `Health` answer, `None` when its last call failed or none
/// came yet.
pub fn master_index(
    nodes: &[Node],
    live: &[Option<&HealthReply>],
    previous: Option<usize>,
) -> Option<usize> {
    let leaderships: Vec<&Leadership> = live
        .iter()
        .flatten()
        .filter_map(|h| h.leadership.as_ref())
        .collect();
    if !leaderships.is_empty() {
        let named = leaderships
            .iter()
            .filter(|l| !l.master.is_empty())
            .max_by_key(|l| l.term);
        return match named {
            Some(l) => nodes.iter().position(|n| n.name == l.master),
            None => None,
        };
    }
    live.iter()
        .position(|h| h.is_some_and(|h| h.role == "master"))
        .or(previous)
}

/// The column's title: the name the node gives itself in failover mode, else its label.
pub fn title(node: &Node, health: Option<&HealthReply>) -> String {
    match health.and_then(|h| h.leadership.as_ref()) {
        Some(l) if !l.node.is_empty() => l.node.clone(),
        _ => node.label.clone(),
    }
}

/// The role badge: what the node's own health says it is.
pub fn role(health: &HealthReply) -> &str {
    if health.role.is_empty() {
        "unknown"
    } else {
        &health.role
    }
}

/// The role badge's text: the role, or what it was when the node's last health call failed.
pub fn role_badge(health: &HealthReply, live: bool) -> String {
    if live {
        role(health).to_owned()
    } else {
        format!("was {}", role(health))
    }
}

/// A time as the reader's clock shows it: `HH:MM:SS` when on the same local day as `now`,
/// else `YYYY-MM-DD HH:MM:SS`. `utc_minus_local_min` is JavaScript's `getTimezoneOffset()`.
pub fn local_time(unix_ms: u64, now_unix_ms: u64, utc_minus_local_min: i64) -> String {
    let local = |ms: u64| (ms / 1000) as i64 - utc_minus_local_min * 60;
    let (secs, now) = (local(unix_ms), local(now_unix_ms));
    let (day, second) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let clock = format!(
        "{:02}:{:02}:{:02}",
        second / 3600,
        second % 3600 / 60,
        second % 60
    );
    if day == now.div_euclid(86_400) {
        clock
    } else {
        let (y, m, d) = civil_from_days(day);
        format!("{y:04}-{m:02}-{d:02} {clock}")
    }
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01), after Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The leadership line of a failover node's column; `local` renders a Unix time in ms as the
/// reader's clock shows it.
pub fn leadership_line(leadership: &Leadership, local: impl Fn(u64) -> String) -> String {
    if leadership.master.is_empty() {
        return "no master: failover in progress".to_owned();
    }
    let mut line = format!("master: {} · term {}", leadership.master, leadership.term);
    if leadership.since_unix_ms > 0 {
        line.push_str(&format!(" · since {}", local(leadership.since_unix_ms)));
    }
    line
}

/// The line over the columns: is the cluster taking appends. `master` is the master's title
/// and its latest health (`None` when its last call failed), if a column is the master's.
pub fn summary(
    master: Option<(&str, Option<&HealthReply>)>,
    failover: bool,
    answered: bool,
) -> (&'static str, String) {
    match master {
        None if failover => (
            "failover",
            "No master: failover in progress; appends wait for the next master.".to_owned(),
        ),
        None if answered => (
            "down",
            "No node says it is the master: appends fail on every node.".to_owned(),
        ),
        None => ("connecting", "Connecting…".to_owned()),
        Some((title, None)) if failover => (
            "down",
            format!(
                "The master ({title}) is unreachable: appends fail until another node takes over."
            ),
        ),
        Some((title, None)) => (
            "down",
            format!("The master ({title}) is unreachable: appends fail on every node."),
        ),
        Some((_, Some(h))) if h.read_only => (
            "read-only",
            format!("The cluster is read-only: {}", h.read_only_reason),
        ),
        Some((title, Some(h))) => {
            let healthy = h
                .secondaries
                .iter()
                .filter(|s| s.status == "healthy")
                .count();
            let master = if failover {
                format!("{title} is master and")
            } else {
                "the master".to_owned()
            };
            (
                "up",
                format!(
                    "Taking appends: {master} has quorum, {healthy} of {} secondaries healthy.",
                    h.secondaries.len()
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_showing_nothing_watches_from_the_first_retained_id() {
        assert_eq!(watch_from(0), 0);
        assert_eq!(watch_from(41), 42);
        assert!(behind_retention(11) && !behind_retention(14));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(0), 250);
        assert_eq!(backoff_ms(1), 500);
        assert_eq!(backoff_ms(3), 2_000);
        assert_eq!(backoff_ms(4), 4_000);
        assert_eq!(backoff_ms(100), 4_000);
    }

    #[test]
    fn errors_read_as_words() {
        assert_eq!(
            describe_error(14, "no quorum"),
            "UNAVAILABLE: no quorum".to_owned()
        );
        assert_eq!(
            describe_error(2, "JS API error: TypeError: Failed to fetch"),
            "UNKNOWN: the node cannot be reached"
        );
        assert_eq!(describe_error(3, ""), "INVALID_ARGUMENT: no answer");
    }

    #[test]
    fn an_unknown_outcome_says_so_and_how_to_find_out() {
        let text = describe_append_error(2, "the master's answer did not come back");
        assert!(
            text.starts_with("Outcome unknown: UNKNOWN: the master's answer"),
            "{text}"
        );
        assert!(text.contains("same key"), "{text}");
        assert_eq!(
            describe_append_error(10, "Replication failed. Message not committed."),
            "ABORTED: Replication failed. Message not committed."
        );
    }

    #[test]
    fn keys_fit_the_apis_alphabet() {
        let key = append_key(1_764_655_200_123.4, 7);
        assert_eq!(key, "web-1764655200123-7");
        assert!(key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)));
    }

    #[test]
    fn read_only_master_says_why() {
        let health = HealthReply {
            role: "master".into(),
            read_only: true,
            read_only_reason: "no quorum: 1 of 3 nodes reachable".into(),
            ..Default::default()
        };
        assert_eq!(badge(&health).status, "read-only");
        let facts = facts(&health);
        assert!(facts
            .iter()
            .any(|f| f.key == "read-only" && f.value.contains("no quorum")));
        assert!(facts.iter().any(|f| f.key == "quorum" && f.value == "no"));
    }

    #[test]
    fn secondaries_map_to_columns() {
        assert_eq!(secondary_index("secondary-1"), Some(0));
        assert_eq!(secondary_index("secondary-2"), Some(1));
        assert_eq!(secondary_index("master"), None);
        assert_eq!(secondary_index("secondary-0"), None);
    }

    #[test]
    fn node_paths() {
        assert_eq!(default_nodes()[1].base_path(), "/node/secondary-1");
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn nodes(list: &[&str]) -> Vec<Node> {
        parse_nodes(&names(list)).expect("valid names")
    }

    #[test]
    fn the_default_columns_are_the_static_three() {
        let defaults = default_nodes();
        let shown: Vec<(&str, &str)> = defaults
            .iter()
            .map(|n| (n.name.as_str(), n.label.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("master", "Master"),
                ("secondary-1", "Secondary 1"),
                ("secondary-2", "Secondary 2")
            ]
        );
    }

    #[test]
    fn nodes_json_names_the_columns_in_its_order() {
        let listed = nodes(&["node-3", "secondary-2", "master", "a_b"]);
        let shown: Vec<(&str, &str)> = listed
            .iter()
            .map(|n| (n.name.as_str(), n.label.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("node-3", "node-3"),
                ("secondary-2", "Secondary 2"),
                ("master", "Master"),
                ("a_b", "a_b")
            ]
        );
        assert_eq!(listed[0].base_path(), "/node/node-3");
        assert_eq!(label("secondary-"), "secondary-");
        assert_eq!(label("secondary-x"), "secondary-x");
    }

    #[test]
    fn a_bad_nodes_json_is_refused_with_the_reason() {
        assert_eq!(parse_nodes(&[]), Err(NodesError::Empty));
        let many: Vec<String> = (0..=MAX_NODES).map(|i| format!("n{i}")).collect();
        assert_eq!(parse_nodes(&many), Err(NodesError::TooMany(MAX_NODES + 1)));
        for bad in [
            "",
            "a b",
            "a.b",
            "a/b",
            "<x>",
            "ü",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert_eq!(
                parse_nodes(&names(&["master", bad])),
                Err(NodesError::BadName(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_nodes(&names(&["a", "b", "a"])),
            Err(NodesError::Twice("a".into()))
        );
        assert!(NodesError::BadName("a b".into())
            .to_string()
            .contains("\"a b\""));
        assert!(parse_nodes(&names(&[&"x".repeat(MAX_NAME_LEN)])).is_ok());
    }

    #[test]
    fn w_goes_up_to_every_node() {
        assert_eq!(w_choices(3), [1, 2, 3]);
        assert_eq!(w_choices(5), [1, 2, 3, 4, 5]);
        assert_eq!(w_choices(0), [1]);
    }

    fn health(role: &str) -> HealthReply {
        HealthReply {
            role: role.into(),
            ..Default::default()
        }
    }

    fn failover(role: &str, node: &str, master: &str, term: u64) -> HealthReply {
        HealthReply {
            leadership: Some(Leadership {
                node: node.into(),
                master: master.into(),
                term,
                since_unix_ms: if master.is_empty() { 0 } else { 1_000 },
            }),
            ..health(role)
        }
    }

    fn secondary(address: &str) -> SecondaryHealth {
        SecondaryHealth {
            address: address.into(),
            status: "healthy".into(),
            ..Default::default()
        }
    }

    #[test]
    fn in_static_mode_the_master_is_the_node_that_says_so_and_stays_it_while_down() {
        let columns = nodes(&["secondary-1", "master", "secondary-2"]);
        let (m, s) = (health("master"), health("secondary"));
        assert_eq!(
            master_index(&columns, &[Some(&s), Some(&m), Some(&s)], Some(1)),
            Some(1)
        );
        assert_eq!(
            master_index(&columns, &[Some(&s), None, Some(&s)], Some(1)),
            Some(1)
        );
        assert_eq!(master_index(&columns, &[None, None, None], None), None);
    }

    #[test]
    fn in_failover_mode_the_master_is_the_latest_term_the_nodes_heard_of() {
        let columns = nodes(&["a", "b", "c"]);
        // b was master in term 4; c heard first that a took over in term 5.
        let a = failover("master", "a", "a", 5);
        let b = failover("master", "b", "b", 4);
        let c = failover("secondary", "c", "a", 5);
        assert_eq!(
            master_index(&columns, &[Some(&a), Some(&b), Some(&c)], Some(1)),
            Some(0)
        );
        assert_eq!(
            master_index(&columns, &[None, Some(&b), None], Some(0)),
            Some(1)
        );
        // Nobody leads: no master, whoever led before.
        let none_b = failover("secondary", "b", "", 0);
        let none_c = failover("secondary", "c", "", 0);
        assert_eq!(
            master_index(&columns, &[None, Some(&none_b), Some(&none_c)], Some(0)),
            None
        );
        // A master the page does not show.
        let elsewhere = failover("secondary", "c", "d", 9);
        assert_eq!(master_index(&columns, &[Some(&elsewhere)], Some(0)), None);
    }

    #[test]
    fn the_static_master_view_follows_secondary_numbers() {
        let columns = nodes(&["secondary-2", "master", "secondary-1"]);
        let master = HealthReply {
            secondaries: vec![secondary("127.0.0.1:9001"), secondary("127.0.0.1:9002")],
            ..health("master")
        };
        let of = |i| secondary_of(&columns, 1, i, &master).map(|s| s.address.as_str());
        assert_eq!(of(0), Some("127.0.0.1:9002"));
        assert_eq!(of(2), Some("127.0.0.1:9001"));
        assert_eq!(of(1), None);
    }

    #[test]
    fn the_failover_master_view_follows_peers_order_or_the_host() {
        let columns = nodes(&["a", "b", "c"]);
        let master = HealthReply {
            secondaries: vec![secondary("127.0.0.1:9001"), secondary("127.0.0.1:9003")],
            ..failover("master", "b", "b", 2)
        };
        let of = |i| secondary_of(&columns, 1, i, &master).map(|s| s.address.as_str());
        assert_eq!(of(0), Some("127.0.0.1:9001"));
        assert_eq!(of(2), Some("127.0.0.1:9003"));
        assert_eq!(of(1), None);
        // Addresses that name the nodes decide whatever the order.
        let named = HealthReply {
            secondaries: vec![secondary("http://c:50051"), secondary("a:50051")],
            ..master.clone()
        };
        assert_eq!(
            secondary_of(&columns, 1, 0, &named).map(|s| s.address.as_str()),
            Some("a:50051")
        );
        // A master with another membership than the page's: no guess.
        let partial = HealthReply {
            secondaries: vec![secondary("127.0.0.1:9001")],
            ..master
        };
        assert_eq!(secondary_of(&columns, 1, 2, &partial), None);
    }

    #[test]
    fn a_failover_node_titles_its_column_with_its_name() {
        let node = Node::new("secondary-1");
        assert_eq!(title(&node, None), "Secondary 1");
        assert_eq!(title(&node, Some(&health("secondary"))), "Secondary 1");
        let named = failover("secondary", "node-1", "node-2", 3);
        assert_eq!(title(&node, Some(&named)), "node-1");
        assert_eq!(role(&named), "secondary");
        assert_eq!(role_badge(&named, true), "secondary");
        assert_eq!(role_badge(&health("master"), false), "was master");
        assert_eq!(role(&HealthReply::default()), "unknown");
    }

    #[test]
    fn the_leadership_line_names_master_term_and_since() {
        let local = |ms: u64| format!("<{ms}>");
        let led = failover("secondary", "a", "b", 7).leadership.expect("set");
        assert_eq!(
            leadership_line(&led, local),
            "master: b · term 7 · since <1000>"
        );
        let unknown_since = Leadership {
            since_unix_ms: 0,
            ..led
        };
        assert_eq!(leadership_line(&unknown_since, local), "master: b · term 7");
        let none = failover("secondary", "a", "", 0).leadership.expect("set");
        assert_eq!(
            leadership_line(&none, local),
            "no master: failover in progress"
        );
    }

    #[test]
    fn times_read_on_the_local_clock() {
        // 2025-12-02 13:46:05 UTC.
        let t = 1_764_683_165_000;
        assert_eq!(local_time(t, t + 60_000, 0), "13:46:05");
        // UTC+1 (getTimezoneOffset -60).
        assert_eq!(local_time(t, t, -60), "14:46:05");
        // UTC-14: still the day before.
        assert_eq!(local_time(t, t, 14 * 60), "23:46:05");
        // Another day shows the date.
        assert_eq!(local_time(t, t + 86_400_000, 0), "2025-12-02 13:46:05");
        assert_eq!(local_time(0, 86_400_000, 0), "1970-01-01 00:00:00");
        assert_eq!(local_time(951_782_400_000, 0, 0), "2000-02-29 00:00:00");
    }

    #[test]
    fn the_summary_says_whether_appends_are_taken() {
        assert_eq!(summary(None, false, false).0, "connecting");
        assert_eq!(summary(None, false, true).0, "down");
        let (state, text) = summary(None, true, true);
        assert_eq!(state, "failover");
        assert!(text.contains("failover in progress"), "{text}");
        let (state, text) = summary(Some(("Master", None)), false, true);
        assert_eq!(state, "down");
        assert!(
            text.contains("Master") && text.contains("unreachable"),
            "{text}"
        );
        let read_only = HealthReply {
            read_only: true,
            read_only_reason: "no quorum".into(),
            ..health("master")
        };
        assert_eq!(
            summary(Some(("Master", Some(&read_only))), false, true),
            (
                "read-only",
                "The cluster is read-only: no quorum".to_owned()
            )
        );
        let up = HealthReply {
            secondaries: vec![
                secondary("a:1"),
                SecondaryHealth {
                    status: "unhealthy".into(),
                    ..secondary("b:1")
                },
            ],
            ..failover("master", "node-2", "node-2", 3)
        };
        let (state, text) = summary(Some(("node-2", Some(&up))), true, true);
        assert_eq!(state, "up");
        assert_eq!(
            text,
            "Taking appends: node-2 is master and has quorum, 1 of 2 secondaries healthy."
        );
        let (_, text) = summary(Some(("Master", Some(&up))), false, true);
        assert_eq!(
            text,
            "Taking appends: the master has quorum, 1 of 2 secondaries healthy."
        );
    }
}
