//! Recovery from the quorum: a master whose own log may be incomplete takes no append before it
//! has learned what the secondaries hold and copied what it lacks.
//!
//! The quorum's log is the truth, not one disk. A master whose log may lack acknowledged
//! entries (kept in memory only, no log in `DATA_DIR`, a cut tail, `FSYNC=never`; see
//! [`replog_node::config::Opened::doubt`]) cannot count itself: an append acknowledged with
//! `w >= 2` may be held by only one secondary, so it waits until it has heard from every
//! secondary, takes the most complete log among them (highest master process followed, then
//! most entries held, as Raft's election restriction compares last term, then length), copies
//! the entries above its own over the read-only `Fetch` call, in batches, with every tombstone
//! any secondary holds, makes them durable, and only then starts a new master process and
//! serves. Until then it is read-only and its reason names the secondaries it waits for.
//!
//! One exception keeps a new cluster startable with a secondary down: a master that holds
//! nothing, and hears from a majority of the nodes (itself included) that none of them holds
//! anything either, starts a new log. Appends acknowledged with `w=1` by a master that lost its
//! disk before shipping them are gone with it, as Redis documents for `WAIT`.
//!
//! In failover mode ([`plan_failover`]) the coordinator elected this node as the best of the
//! standings it saw, but those may be stale: it never copies. It waits for a majority (itself
//! included), and if any node it hears holds a more up-to-date log than its own (Raft's
//! election restriction: the later master process that wrote the last id held, then the longer
//! log; see [`replog_node::storage::record::last_term`]), it gives up the mastership ([`Plan::Yield`]) so that one can be elected instead. Every id a master
//! showed or answered 500 for is held by a majority (see [`crate::core::ledger`]), and every
//! majority meets the one heard here, so the log it serves lacks none of them.
//!
//! Tombstones are taken from a node only at ids up to its reported decided frontier: one beyond
//! it was never confirmed to any client, and in failover mode may come from a master whose
//! decision a later one never heard of.
//!
//! [`plan`] and [`plan_failover`] decide from what has been heard, without I/O; [`run`] does
//! the calls.

use crate::replication::Peer;
use crate::state::Master;
use replog_node::failover::vouches;
use replog_node::log::Log;
use replog_node::shutdown::Shutdown;
use replog_node::storage::record::last_term;
use replog_node::storage::{Record, SegmentLog};
use replog_proto::v1::{FetchRequest, ReplicaState};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Entries asked for per `Fetch` call.
const BATCH_ENTRIES: u32 = 4096;
/// Bytes asked for per `Fetch` call, well below the gRPC message limit.
const BATCH_BYTES: u64 = 8 << 20;
/// Pause between rounds of asking the secondaries that have not answered.
const ROUND: Duration = Duration::from_millis(200);

/// What one secondary said, as recovery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub state: ReplicaState,
    pub tombstones: Vec<u64>,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Not enough is known yet: stay read-only for this reason.
    Wait(String),
    /// The master's file is older than the cluster's log (the file may hold ids the cluster has
    /// since given to other messages): show nothing of it, set it aside, and recover as a
    /// master that lost its disk.
    Older(String),
    /// Serve the master's own log as it is (nothing beyond it anywhere).
    Serve,
    /// Copy `log_id`'s entries up to `upto` from secondary `source`, then serve.
    Copy {
        source: usize,
        log_id: String,
        upto: u64,
    },
    /// Failover mode: another node holds a more up-to-date log (or this one holds none and
    /// another does): give up the mastership, for this reason.
    Yield(String),
}

/// The master's own log as found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    pub log_id: String,
    pub last_id: u64,
    /// The last master process recorded in its file (0: none).
    pub instance: u64,
    /// The master process that wrote its last id (0: none), by its file's starts
    /// ([`replog_node::storage::record::last_term`]).
    pub last_term: u64,
    /// The log may lack acknowledged entries ([`replog_node::config::Opened::doubt`]).
    pub doubt: bool,
}

/// Decides from the master's own log and what each secondary said (`None`: not heard yet),
/// named by `addresses` for the reason.
///
/// A master without doubt has every entry its own processes acknowledged, so it needs only a
/// majority (itself included), as any quorum does; but if a secondary it hears follows a
/// later master process than its file names, another process served this log after it (one
/// that recovered it from the secondaries), and its file is old: serving it would give ids
/// again that the cluster has already given. [`run`] then sets the file aside and recovers
/// as a master that lost its disk.
pub fn plan(own: &Own, heard: &[Option<Heard>], addresses: &[String]) -> Plan {
    let (log_id, last_id) = (own.log_id.as_str(), own.last_id);
    let nodes = heard.len() + 1;
    let missing: Vec<&str> = heard
        .iter()
        .zip(addresses)
        .filter(|(h, _)| h.is_none())
        .map(|(_, a)| a.as_str())
        .collect();
    let holders: Vec<(usize, &ReplicaState)> = heard
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.as_ref().map(|h| (i, &h.state)))
        .filter(|(_, s)| s.held > 0)
        .collect();
    if last_id == 0 && holders.is_empty() && missing.len() < heard.len() {
        // Every secondary heard holds nothing, like this master.
        let empty = 1 + heard.len() - missing.len();
        if empty * 2 > nodes {
            return Plan::Serve;
        }
    }
    if !own.doubt {
        let newer = heard
            .iter()
            .zip(addresses)
            .filter_map(|(h, a)| h.as_ref().map(|h| (&h.state, a)))
            .find(|(s, _)| s.log_id == log_id && s.master_instance > own.instance);
        if let Some((state, address)) = newer {
            return Plan::Older(format!(
                "this master's log is older than the cluster's: secondary {address} follows \
                 master process {} but this file's last is {}",
                state.master_instance, own.instance
            ));
        }
        if (1 + heard.len() - missing.len()) * 2 > nodes {
            return Plan::Serve;
        }
        return Plan::Wait(format!(
            "starting: waiting to hear from a majority of the nodes; not yet from {}",
            missing.join(", ")
        ));
    }
    if !missing.is_empty() {
        return Plan::Wait(format!(
            "recovering: this master's log may be incomplete, so it takes no append before \
             every secondary has said what it holds; waiting for {}",
            missing.join(", ")
        ));
    }
    // Whose log counts: ours if we hold any, else the one the secondaries share.
    let ours = (last_id > 0).then(|| log_id.to_owned());
    let logs: BTreeSet<&str> = holders.iter().map(|(_, s)| s.log_id.as_str()).collect();
    let log_id = match ours {
        Some(ours) => ours,
        None if logs.len() > 1 => {
            return Plan::Wait(format!(
                "recovering: this master holds no log and the secondaries hold different ones \
                 ({}); start the master with its data, or wipe the secondaries that are wrong",
                logs.into_iter().collect::<Vec<_>>().join(", ")
            ))
        }
        None => match logs.into_iter().next() {
            Some(theirs) => theirs.to_owned(),
            None => return Plan::Serve,
        },
    };
    let best = holders
        .iter()
        .filter(|(_, s)| s.log_id == log_id)
        .max_by_key(|(_, s)| (s.master_instance, s.held));
    match best {
        Some(&(source, state)) if state.held > last_id => Plan::Copy {
            source,
            log_id,
            upto: state.held,
        },
        _ => Plan::Serve,
    }
}

/// Failover mode's plan: serve this node's own log once a majority (itself included) has
/// answered, unless a node it heard holds a more up-to-date log of the same identity by
/// (last term, held) than its own (`own.last_term`, `own.last_id`), or this node holds nothing
/// and another holds entries: then yield. The master process a node follows is no measure: a
/// node follows a new one before it has received what that one recovered, and may hold less
/// of the same log. `own.doubt` plays no part: a log that lacks entries is a shorter one, which
/// the comparison finds. A node that holds nothing, or is still catching up after it lost
/// entries, counts towards the majority only if this node holds nothing either ([`vouches`]).
pub fn plan_failover(own: &Own, heard: &[Option<Heard>], addresses: &[String]) -> Plan {
    let nodes = heard.len() + 1;
    let answered = heard.iter().zip(addresses);
    let mut better = answered
        .clone()
        .filter_map(|(h, a)| h.as_ref().map(|h| (&h.state, a)));
    let found = if own.last_id == 0 {
        better.find(|(s, _)| s.held > 0)
    } else {
        better.find(|(s, _)| {
            s.log_id == own.log_id && (s.last_term, s.held) > (own.last_term, own.last_id)
        })
    };
    if let Some((state, address)) = found {
        return Plan::Yield(format!(
            "{address} holds a more up-to-date log ({} entries of log {}, the last from master \
             process {}) than this node ({} entries of log {}, the last from master process {})",
            state.held, state.log_id, state.last_term, own.last_id, own.log_id, own.last_term
        ));
    }
    let counts = |h: &Heard| {
        vouches(
            own.last_id,
            h.state.held,
            &h.state.log_id,
            h.state.rejoining,
        )
    };
    let missing: Vec<&str> = answered
        .filter(|(h, _)| !h.as_ref().is_some_and(counts))
        .map(|(_, a)| a.as_str())
        .collect();
    if (nodes - missing.len()) * 2 > nodes {
        return Plan::Serve;
    }
    Plan::Wait(format!(
        "starting: waiting to hear from a majority of the nodes that hold a log; not yet from {}",
        missing.join(", ")
    ))
}

/// Failover mode: what this node compared its log with when it decided to serve, one line,
/// so that an election can be checked afterwards against what the other nodes held.
fn log_election(own: &Own, heard: &[Option<Heard>], addresses: &[String]) {
    let peers: Vec<String> = heard
        .iter()
        .zip(addresses)
        .map(|(h, address)| match h {
            Some(h) => format!(
                "{address}: log {} held {} last_term {} decided {} follows {}",
                h.state.log_id,
                h.state.held,
                h.state.last_term,
                h.state.decided,
                h.state.master_instance
            ),
            None => format!("{address}: not heard"),
        })
        .collect();
    tracing::info!(
        log_id = %own.log_id,
        held = own.last_id,
        last_term = own.last_term,
        peers = %peers.join("; "),
        "failover: this node's log is the most up-to-date of a majority: serving it"
    );
}

/// The tombstones of `log`'s ids that a node heard holds as decided and `log` lacks: a
/// tombstone a secondary holds as decided may be a 500 a master answered, so it stays one.
fn decided_tombstones(log: &Log, heard: &[Option<Heard>]) -> BTreeSet<u64> {
    let last = log.last_id();
    heard
        .iter()
        .flatten()
        .filter(|h| h.state.log_id == log.log_id())
        .flat_map(|h| {
            let decided = h.state.decided;
            h.tombstones
                .iter()
                .copied()
                .filter(move |&id| id <= decided)
        })
        .filter(|&id| id >= log.first_id() && id <= last && !log.is_tombstone(id))
        .collect()
}

/// Failover mode: how far `log` is decided already, by what the nodes heard report. What
/// earlier masters decided stays decided (a majority held it, so this log, the most up-to-date
/// of a majority, holds it too); the rest waits for a majority to be heard holding it.
fn decided_before(log: &Log, heard: &[Option<Heard>]) -> u64 {
    heard
        .iter()
        .flatten()
        .filter(|h| h.state.log_id == log.log_id())
        .map(|h| h.state.decided)
        .max()
        .unwrap_or(0)
        .max(log.decided())
        .min(log.last_id())
}

/// The highest master process any secondary follows: the new process is numbered above it,
/// so no secondary takes it for one it has already left behind.
fn highest_instance(heard: &[Option<Heard>]) -> u64 {
    heard
        .iter()
        .flatten()
        .map(|h| h.state.master_instance)
        .max()
        .unwrap_or(0)
}

/// How recovery ended.
pub enum Recovery {
    /// Serve this log.
    Serve(Box<Recovered>),
    /// Failover mode: another node holds a more up-to-date log; give up the mastership, for
    /// this reason.
    Yield(String),
    /// The master stops first (or cannot write its file).
    Stopped,
}

/// Whom recovery asks, how it decides, and how long it waits for an answer.
pub struct Asking {
    /// The secondaries, in the order of their indexes.
    pub peers: Arc<[Peer]>,
    /// Failover mode: [`plan_failover`] decides, not [`plan`].
    pub failover: bool,
    /// How long a secondary may take to say what it holds (`SUSPECT_AFTER_MS`).
    pub ask_within: Duration,
    /// How long one batch copied from a secondary may take (`RPC_TIMEOUT_SECONDS`).
    pub copy_within: Duration,
}

/// Recovers the log as [`plan`] (in failover mode [`plan_failover`]) says and makes it
/// durable, unless `shutdown` comes first; returns it for the caller to serve.
pub async fn run(
    master: &Master,
    shutdown: &Shutdown,
    asking: &Asking,
    mut log: Log,
    mut file: Option<SegmentLog>,
    mut doubt: Option<String>,
) -> Recovery {
    let Asking {
        peers,
        failover,
        ask_within,
        copy_within,
    } = asking;
    let failover = *failover;
    if let Some(doubt) = &doubt {
        tracing::warn!(%doubt, "the log may be incomplete: recovering it from the secondaries before taking appends");
    }
    let mut own_instance = file.as_ref().map_or(0, SegmentLog::master_instance);
    let mut own_starts = file
        .as_ref()
        .map_or(&[][..], SegmentLog::master_starts)
        .to_vec();
    let addresses: Vec<String> = peers.iter().map(|p| p.address.clone()).collect();
    let mut heard: Vec<Option<Heard>> = vec![None; peers.len()];
    let mut records = Vec::new();
    loop {
        for (index, peer) in peers.iter().enumerate() {
            let request = FetchRequest {
                from_id: 0,
                max_entries: 0,
                max_bytes: 0,
                tombstones: true,
            };
            let reply = tokio::select! {
                _ = shutdown.cancelled() => return Recovery::Stopped,
                reply = peer.fetch(request, *ask_within) => reply,
            };
            match reply {
                Ok(reply) => {
                    heard[index] = reply.state.map(|state| Heard {
                        state,
                        tombstones: reply.tombstones,
                    })
                }
                Err(status) => {
                    tracing::debug!(secondary = %peer.address, %status, "recovery: no answer");
                    let error = format!("{}: {}", status.code(), status.message());
                    master.update(|core| core.contact_failed(index, error));
                    heard[index] = None;
                }
            }
        }
        let own = Own {
            log_id: log.log_id().to_owned(),
            last_id: log.last_id(),
            instance: own_instance,
            last_term: last_term(&own_starts, log.last_id()),
            doubt: doubt.is_some(),
        };
        let planned = if failover {
            plan_failover(&own, &heard, &addresses)
        } else {
            plan(&own, &heard, &addresses)
        };
        match planned {
            Plan::Wait(reason) => master.set_recovering(Some(reason)),
            Plan::Yield(reason) => return Recovery::Yield(reason),
            Plan::Older(reason) => {
                // The cluster's log went on without this file: it is set aside (kept for the
                // operator) and this master recovers as one that lost its disk, from every
                // secondary. Nothing of the old file is shown meanwhile.
                let hidden = Log::new(own.log_id);
                master.install(hidden, None, &[]);
                master.set_known(false);
                master.set_recovering(Some(reason.clone()));
                // Only a file can be older (a log in memory always doubts, and waits).
                match file.as_mut().map(|old| (old.set_aside(), old.reader())) {
                    None => {}
                    Some((Ok(aside), reader)) => {
                        tracing::warn!(%reason, aside = %aside.display(), "this master's file is older than the cluster's log: set it aside; recovering the log from the secondaries");
                        log = Log::new(String::new()).with_files(reader);
                        records.clear();
                        own_instance = 0;
                        own_starts.clear();
                        doubt = Some(format!("{reason}; the old file was set aside"));
                        continue;
                    }
                    Some((Err(error), _)) => {
                        tracing::error!(%error, "recovery: cannot set the old log aside");
                        master.storage_failed();
                        return Recovery::Stopped;
                    }
                }
            }
            Plan::Serve => {
                if failover {
                    log_election(&own, &heard, &addresses);
                }
                break;
            }
            Plan::Copy {
                source,
                log_id,
                upto,
            } => {
                if log.last_id() == 0 && log.log_id() != log_id {
                    log = log.renamed_empty(log_id.clone());
                    records.push(Record::Meta { log_id });
                }
                match copy(&peers[source], *copy_within, &mut log, upto, &mut records).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(secondary = %addresses[source], %error, "recovery: copying failed; asking again");
                        master.set_recovering(Some(format!(
                            "recovering: copying entries from {} failed ({error}); asking again",
                            addresses[source]
                        )));
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Recovery::Stopped,
            _ = tokio::time::sleep(ROUND) => {}
        }
    }
    if log.last_id() == 0 && log.log_id().is_empty() {
        // A node whose file its secondary role made has no identity until a master names one:
        // it takes the one the others already adopted, or makes the cluster's first.
        let named: BTreeSet<&str> = heard
            .iter()
            .flatten()
            .map(|h| h.state.log_id.as_str())
            .filter(|id| !id.is_empty())
            .collect();
        let log_id = match named.len() {
            1 => named.into_iter().next().map(str::to_owned),
            _ => None,
        }
        .unwrap_or_else(replog_node::log::new_log_id);
        tracing::info!(%log_id, "a new log: naming it");
        log = log.renamed_empty(log_id.clone());
        records.insert(0, Record::Meta { log_id });
    }
    for id in decided_tombstones(&log, &heard) {
        log.tombstone(id);
        records.push(Record::Tombstone { id });
    }
    let copied = records
        .iter()
        .filter(|r| matches!(r, Record::Entry { .. }))
        .count();
    if let Some(file) = file.as_mut() {
        // The source's retention had removed ids this log lacked: the files start again where
        // the copy did (its identity with them, so no `Meta` record is needed).
        let restart = log.first_id() > file.last_id() + 1;
        if restart {
            records.retain(|r| !matches!(r, Record::Meta { .. }));
        }
        let written = match restart {
            true => file.restart_at(log.first_id(), log.log_id()),
            false => Ok(()),
        }
        .and_then(|()| file.append(&records))
        .and_then(|()| file.sync());
        if let Err(error) = written {
            tracing::error!(%error, "recovery: cannot write the recovered log to DATA_DIR");
            master.storage_failed();
            return Recovery::Stopped;
        }
    }
    if failover {
        log.set_decided(decided_before(&log, &heard));
    }
    tracing::info!(
        log_id = log.log_id(),
        last_id = log.last_id(),
        copied,
        "recovered the log from the secondaries"
    );
    Recovery::Serve(Box::new(Recovered {
        log,
        file,
        floor: highest_instance(&heard),
    }))
}

/// The log to serve, as recovery left it.
pub struct Recovered {
    pub log: Log,
    pub file: Option<SegmentLog>,
    /// The highest master process any secondary was heard to follow (0 if none was asked):
    /// the new process is numbered above it.
    pub floor: u64,
}

/// Why copying entries from a secondary stopped; recovery asks every secondary again, and the
/// read-only reason shows the text.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    /// The fetch failed or was refused.
    #[error("{}: {}", .0.code(), .0.message())]
    Fetch(tonic::Status),
    /// The secondary no longer holds the next entry (it was re-seeded or lost its files since
    /// it answered).
    #[error("it holds no entry after {0} any more")]
    Gone(u64),
    /// An entry whose message is not UTF-8: no master appends such a message.
    #[error("entry {0} is not valid UTF-8")]
    NotUtf8(u64),
}

/// Copies the entries after `log`'s last one up to `upto` from `peer`, in batches, each within
/// `timeout`.
async fn copy(
    peer: &Peer,
    timeout: Duration,
    log: &mut Log,
    upto: u64,
    records: &mut Vec<Record>,
) -> Result<(), CopyError> {
    while log.last_id() < upto {
        let request = FetchRequest {
            from_id: log.last_id() + 1,
            max_entries: BATCH_ENTRIES,
            max_bytes: BATCH_BYTES,
            tombstones: false,
        };
        let reply = peer
            .fetch(request, timeout)
            .await
            .map_err(CopyError::Fetch)?;
        if reply.entries.is_empty() {
            return Err(CopyError::Gone(log.last_id()));
        }
        let first = reply.entries[0].id;
        if first > log.last_id() + 1 {
            // The source's retention removed the ids from here to `first`: none of its peers
            // is asked for them (they were all decided, and retention said they may go), and
            // this log starts again where the source's does, as a re-seeded secondary does.
            tracing::warn!(
                secondary = %peer.address,
                held = log.last_id(),
                first_id = first,
                "recovery: the secondary's retention removed ids this log lacks: it starts again at its first retained id"
            );
            *log = log.restart_at(first);
            records.retain(|r| !matches!(r, Record::Entry { .. } | Record::Tombstone { .. }));
        }
        for entry in reply.entries {
            if entry.id != log.last_id() + 1 || entry.id > upto {
                break;
            }
            if std::str::from_utf8(&entry.message).is_err() {
                return Err(CopyError::NotUtf8(entry.id));
            }
            let id = log.push(entry.message.clone(), entry.tombstone);
            records.push(Record::Entry {
                id,
                message: entry.message,
                tombstone: entry.tombstone,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(log_id: &str, last_id: u64) -> Own {
        Own {
            log_id: log_id.into(),
            last_id,
            instance: 1,
            last_term: u64::from(last_id > 0),
            doubt: true,
        }
    }

    fn addresses(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("s{i}")).collect()
    }

    /// A node that follows `master_instance` and holds ids it wrote.
    fn holds(log_id: &str, held: u64, master_instance: u64) -> Option<Heard> {
        Some(Heard {
            state: ReplicaState {
                log_id: log_id.into(),
                instance: 1,
                held,
                decided: held,
                master_instance,
                last_term: if held > 0 { master_instance } else { 0 },
                ..ReplicaState::default()
            },
            tombstones: Vec::new(),
        })
    }

    /// `heard` with the master process that wrote its last id replaced.
    fn last_from(heard: Option<Heard>, last_term: u64) -> Option<Heard> {
        heard.map(|mut h| {
            h.state.last_term = last_term;
            h
        })
    }

    #[test]
    fn waits_for_every_secondary_and_names_the_missing() {
        let heard = [holds("L", 5, 1), None];
        match plan(&own("L", 3), &heard, &addresses(2)) {
            Plan::Wait(reason) => assert!(reason.contains("s2") && !reason.contains("s1")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_master_waits_while_a_secondary_it_heard_holds_a_log() {
        let heard = [holds("L", 5, 1), None];
        assert!(matches!(
            plan(&own("new", 0), &heard, &addresses(2)),
            Plan::Wait(_)
        ));
    }

    #[test]
    fn a_new_cluster_starts_with_a_majority_that_holds_nothing() {
        let heard = [holds("", 0, 0), None];
        assert_eq!(plan(&own("new", 0), &heard, &addresses(2)), Plan::Serve);
        // One of four nodes heard, with the master two of four: no majority.
        let heard = [holds("", 0, 0), None, None];
        assert!(matches!(
            plan(&own("new", 0), &heard, &addresses(3)),
            Plan::Wait(_)
        ));
    }

    #[test]
    fn copies_from_the_most_complete_secondary_of_the_latest_master() {
        let heard = [holds("L", 9, 2), holds("L", 7, 3)];
        assert_eq!(
            plan(&own("new", 0), &heard, &addresses(2)),
            Plan::Copy {
                source: 1,
                log_id: "L".into(),
                upto: 7
            }
        );
        let heard = [holds("L", 9, 3), holds("L", 7, 3)];
        assert_eq!(
            plan(&own("L", 4), &heard, &addresses(2)),
            Plan::Copy {
                source: 0,
                log_id: "L".into(),
                upto: 9
            }
        );
    }

    #[test]
    fn serves_its_own_log_when_nobody_holds_more() {
        let heard = [holds("L", 4, 3), holds("L", 2, 3)];
        assert_eq!(plan(&own("L", 4), &heard, &addresses(2)), Plan::Serve);
    }

    #[test]
    fn a_master_with_a_log_ignores_secondaries_of_another() {
        let heard = [holds("other", 50, 9), holds("L", 2, 3)];
        assert_eq!(plan(&own("L", 4), &heard, &addresses(2)), Plan::Serve);
    }

    #[test]
    fn an_empty_master_refuses_to_choose_between_two_logs() {
        let heard = [holds("A", 5, 1), holds("B", 5, 1)];
        match plan(&own("new", 0), &heard, &addresses(2)) {
            Plan::Wait(reason) => assert!(reason.contains("A, B")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_complete_master_needs_a_majority_and_refuses_when_its_file_is_old() {
        let complete = Own {
            doubt: false,
            ..own("L", 4)
        };
        assert!(matches!(
            plan(&complete, &[None, None], &addresses(2)),
            Plan::Wait(_)
        ));
        assert_eq!(
            plan(&complete, &[holds("L", 4, 1), None], &addresses(2)),
            Plan::Serve
        );
        match plan(&complete, &[None, holds("L", 6, 2)], &addresses(2)) {
            Plan::Older(reason) => assert!(reason.contains("s2") && reason.contains("older")),
            other => panic!("{other:?}"),
        }
    }

    /// A node whose file's last process is `instance`, which wrote its last id.
    fn complete(log_id: &str, last_id: u64, instance: u64) -> Own {
        Own {
            log_id: log_id.into(),
            last_id,
            instance,
            last_term: if last_id > 0 { instance } else { 0 },
            doubt: false,
        }
    }

    #[test]
    fn in_failover_mode_a_node_serves_its_own_log_once_a_majority_has_answered() {
        let own = complete("L", 5, 3);
        assert!(matches!(
            plan_failover(&own, &[None, None], &addresses(2)),
            Plan::Wait(reason) if reason.contains("s1, s2")
        ));
        assert_eq!(
            plan_failover(&own, &[holds("L", 5, 3), None], &addresses(2)),
            Plan::Serve
        );
        // Less up-to-date nodes and another log's do not count against it; nor does doubt.
        let heard = [holds("L", 9, 2), holds("other", 50, 9)];
        let doubtful = Own { doubt: true, ..own };
        assert_eq!(plan_failover(&doubtful, &heard, &addresses(2)), Plan::Serve);
        // Two of five is no majority.
        let heard = [holds("L", 1, 3), None, None, None];
        assert!(matches!(
            plan_failover(&complete("L", 5, 3), &heard, &addresses(4)),
            Plan::Wait(_)
        ));
    }

    #[test]
    fn in_failover_mode_a_node_yields_to_a_more_up_to_date_one_and_never_copies() {
        let own = complete("L", 5, 3);
        // A later last term, however short; the same one, longer.
        for better in [holds("L", 1, 4), holds("L", 6, 3)] {
            match plan_failover(&own, &[None, better], &addresses(2)) {
                Plan::Yield(reason) => assert!(reason.contains("s2"), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        // An empty node yields to any node that holds entries, whatever its log.
        assert!(matches!(
            plan_failover(
                &complete("new", 0, 0),
                &[holds("L", 1, 1), None],
                &addresses(2)
            ),
            Plan::Yield(_)
        ));
        // A new cluster: a majority holding nothing.
        assert_eq!(
            plan_failover(
                &complete("new", 0, 0),
                &[holds("", 0, 0), None],
                &addresses(2)
            ),
            Plan::Serve
        );
    }

    #[test]
    fn in_failover_mode_a_node_that_holds_nothing_does_not_count_towards_the_majority() {
        // s2 lost its disk: with it, this node would be a majority without s1, which may hold
        // appends acknowledged by s1 and s2 before the loss that this node lacks.
        let own = complete("L", 5, 3);
        let wiped = holds("", 0, 0);
        assert!(matches!(
            plan_failover(&own, &[None, wiped.clone()], &addresses(2)),
            Plan::Wait(reason) if reason.contains("s1, s2")
        ));
        // Once s1 answers, s1 decides: serve, or yield to its longer log.
        assert_eq!(
            plan_failover(&own, &[holds("L", 5, 3), wiped.clone()], &addresses(2)),
            Plan::Serve
        );
        assert!(matches!(
            plan_failover(&own, &[holds("L", 7, 3), wiped], &addresses(2)),
            Plan::Yield(_)
        ));
    }

    #[test]
    fn in_failover_mode_a_node_still_catching_up_after_losing_entries_does_not_count() {
        // s2 lost its disk and holds 2 ids again: s1 may hold appends acknowledged by s1 and
        // s2's lost disk that this node (3 ids) and s2 both lack.
        let own = complete("L", 3, 3);
        let rejoining = holds("L", 2, 3).map(|mut heard| {
            heard.state.rejoining = true;
            heard
        });
        assert!(matches!(
            plan_failover(&own, &[None, rejoining.clone()], &addresses(2)),
            Plan::Wait(reason) if reason.contains("s1, s2")
        ));
        // Caught up, it counts again.
        let caught_up = rejoining.map(|mut heard| {
            heard.state.rejoining = false;
            heard
        });
        assert_eq!(
            plan_failover(&own, &[None, caught_up], &addresses(2)),
            Plan::Serve
        );
    }

    #[test]
    fn in_failover_mode_the_last_term_held_counts_not_the_process_followed() {
        // s2 follows process 4 but holds 3 ids, the last written by 3: a shorter log of the
        // same lineage, to which this node (10 ids, the last from 3) does not yield.
        let own = complete("L", 10, 3);
        let catching_up = last_from(holds("L", 3, 4), 3);
        assert_eq!(
            plan_failover(&own, &[None, catching_up], &addresses(2)),
            Plan::Serve
        );
        // This node follows process 4 and holds 10 ids, the last from 3; s1 never heard of 4
        // and holds 12 of 3's: this node yields.
        let own = Own {
            last_term: 3,
            ..complete("L", 10, 4)
        };
        match plan_failover(&own, &[holds("L", 12, 3), None], &addresses(2)) {
            Plan::Yield(reason) => assert!(reason.contains("s1"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    /// A log of `n` entries named "L".
    fn entries(n: u64) -> Log {
        let mut log = Log::new("L".into());
        for _ in 0..n {
            log.push(bytes::Bytes::from("m"), false);
        }
        log
    }

    /// `heard` with its decided frontier and tombstones replaced.
    fn with(heard: Option<Heard>, decided: u64, tombstones: Vec<u64>) -> Option<Heard> {
        heard.map(|mut h| {
            h.state.decided = decided;
            h.tombstones = tombstones;
            h
        })
    }

    #[test]
    fn only_tombstones_a_node_holds_as_decided_are_taken() {
        let log = entries(6);
        let heard = [
            with(holds("L", 6, 1), 3, vec![2, 4]),
            with(holds("L", 6, 1), 4, vec![4, 5]),
            with(holds("other", 6, 1), 6, vec![1]),
            None,
        ];
        assert_eq!(
            decided_tombstones(&log, &heard)
                .into_iter()
                .collect::<Vec<_>>(),
            vec![2, 4]
        );
    }

    #[test]
    fn in_failover_mode_the_log_is_decided_as_far_as_a_node_heard_says() {
        let mut log = entries(6);
        log.set_decided(2);
        let heard = |decided| [with(holds("L", 9, 1), decided, Vec::new()), None];
        assert_eq!(
            decided_before(&log, &heard(1)),
            2,
            "its own file's frontier"
        );
        assert_eq!(decided_before(&log, &heard(4)), 4);
        assert_eq!(decided_before(&log, &heard(8)), 6, "never past its own log");
    }

    #[test]
    fn the_new_process_is_numbered_above_every_secondarys() {
        assert_eq!(
            highest_instance(&[holds("L", 1, 4), None, holds("L", 1, 7)]),
            7
        );
    }
}
