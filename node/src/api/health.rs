//! A node's health view: `GET /api/health` (JSON) and `Health` (gRPC) serve the same struct.

use replog_proto::v1 as pb;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// "master" or "secondary".
    #[schema(value_type = String)]
    pub role: &'static str,
    pub log_id: String,
    /// First retained id: reads below it answer 410 (1 unless retention removed older
    /// segments or the node was re-seeded from a master that had).
    pub first_id: u64,
    /// Master: last id assigned. Secondary: highest id held contiguously.
    pub last_id: u64,
    pub decided: u64,
    /// Number of visible entries.
    pub visible: u64,
    /// Master: ids waiting for their write concern.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// Master: nodes in the cluster and how many are reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reachable: Option<u64>,
    /// Master: a majority is reachable. Secondary: the master reached it lately.
    pub quorum: bool,
    pub read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only_reason: Option<String>,
    /// Master: each secondary.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secondaries: Vec<SecondaryHealth>,
    /// Milliseconds since the last contact with the master (secondary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_contact_ms_ago: Option<u64>,
    /// Failover mode only: this node's name and who is master, its term and since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leadership: Option<Leadership>,
    /// Failover mode, secondary only: its log may lack entries it acknowledged (it started with
    /// its log lost, created anew or cut) and it has not yet caught up with the master, so it
    /// does not count towards an election's majority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejoining: Option<bool>,
    /// Secondary only: the id its log was last started again at since the process started,
    /// because the master's retention had removed ids it lacked (see README "Retention").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reseeded_from: Option<u64>,
}

/// Failover mode: who leads, as this node last heard from etcd.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Leadership {
    /// This node's name (`NODE_NAME`).
    pub node: String,
    /// The master's name; `null` while there is none.
    pub master: Option<String>,
    /// The master's term; 0 while there is none.
    pub term: u64,
    /// When that master took over, in milliseconds since the Unix epoch.
    pub since_unix_ms: Option<u64>,
}

impl Leadership {
    /// What node `name` shows, with `leader` as last heard.
    pub fn of(name: &str, leader: Option<&crate::failover::Leader>) -> Self {
        Self {
            node: name.to_owned(),
            master: leader.map(|l| l.name.clone()),
            term: leader.map_or(0, |l| l.term),
            since_unix_ms: leader.map(|l| l.since_unix_ms),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecondaryHealth {
    pub address: String,
    /// "healthy", "suspected" or "unhealthy".
    #[schema(value_type = String)]
    pub status: &'static str,
    /// Milliseconds since the last reply; `null` if it never answered.
    pub last_contact_ms_ago: Option<u64>,
    /// Highest id it acknowledged (counts towards write concerns).
    pub acked_id: u64,
    /// Its contiguous high-water mark as last reported.
    pub held: u64,
    /// Entries it lacks: the master's last id minus `held`.
    pub lag: u64,
    pub last_error: Option<String>,
}

impl From<Health> for pb::HealthReply {
    fn from(h: Health) -> Self {
        pb::HealthReply {
            role: h.role.to_owned(),
            log_id: h.log_id,
            first_id: h.first_id,
            last_id: h.last_id,
            decided: h.decided,
            visible: h.visible,
            quorum: h.quorum,
            read_only: h.read_only,
            read_only_reason: h.read_only_reason.unwrap_or_default(),
            secondaries: h
                .secondaries
                .into_iter()
                .map(|s| pb::SecondaryHealth {
                    address: s.address,
                    status: s.status.to_owned(),
                    last_contact_ms_ago: s.last_contact_ms_ago,
                    acked_id: s.acked_id,
                    held: s.held,
                    lag: s.lag,
                    last_error: s.last_error.unwrap_or_default(),
                })
                .collect(),
            last_contact_ms_ago: h.last_contact_ms_ago,
            leadership: h.leadership.map(|l| pb::Leadership {
                node: l.node,
                master: l.master.unwrap_or_default(),
                term: l.term,
                since_unix_ms: l.since_unix_ms.unwrap_or_default(),
            }),
        }
    }
}
