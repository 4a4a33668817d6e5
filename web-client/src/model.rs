//! What the page shows, computed from what the nodes answer: plain Rust with no browser types,
//! so it builds and is unit-tested on the host too.

use replog_proto::v1::{HealthReply, SecondaryHealth};

/// The nodes the page knows, in column order: (name, nginx path prefix, label).
pub const NODES: [Node; 3] = [
    Node {
        name: "master",
        label: "Master",
    },
    Node {
        name: "secondary-1",
        label: "Secondary 1",
    },
    Node {
        name: "secondary-2",
        label: "Secondary 2",
    },
];

/// The write concerns the page offers (the master counts as one node).
pub const W_CHOICES: [u32; 3] = [1, 2, 3];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// Stable name: the `data-node` attribute, and the nginx path `/node/<name>/`.
    pub name: &'static str,
    pub label: &'static str,
}

impl Node {
    /// The node's gRPC-Web base path behind nginx (no trailing slash: the client appends
    /// `/replog.v1.Log/<Method>`).
    pub fn base_path(&self) -> String {
        format!("/node/{}", self.name)
    }
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

/// The facts a node's own `Health` tells.
pub fn facts(health: &HealthReply) -> Vec<Fact> {
    let mut facts = vec![
        Fact {
            key: "role",
            label: "role",
            value: health.role.clone(),
        },
        Fact {
            key: "visible",
            label: "visible",
            value: health.visible.to_string(),
        },
    ];
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

/// The master lists its secondaries in its `SECONDARIES` order, which the deployments here
/// keep equal to the page's column order: secondary-N is the N-th.
pub fn secondary_index(node: &str) -> Option<usize> {
    node.strip_prefix("secondary-")?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(NODES[1].base_path(), "/node/secondary-1");
    }
}
