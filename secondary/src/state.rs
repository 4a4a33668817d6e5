//! The secondary's shared state, one `Arc`'d struct for the replication service and the API.

use crate::config::Config;
use crate::forward::Forwarder;
use crate::replica::{Refusal, Replica};
use replog_node::api::{ApiError, Health, Leadership, Node};
use replog_node::config::RETENTION_INTERVAL;
use replog_node::log::Message;
use replog_node::metrics::Metrics;
use replog_node::shutdown::Shutdown;
use replog_node::storage::{Record, SegmentLog};
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Without a call from the master for this long, the secondary calls itself cut off.
const MASTER_SILENCE: Duration = Duration::from_secs(5);

pub struct Secondary {
    pub config: Config,
    store: Mutex<Store>,
    last_contact: Mutex<Option<Instant>>,
    visible: watch::Sender<u64>,
    forward: Forwarder,
    pub shutdown: Shutdown,
    pub metrics: Metrics,
    /// The log file could not be written: the process stops, and exits non-zero.
    storage_failed: AtomicBool,
}

/// The replica and its file under one lock, so records reach the file in the order the
/// replica made them, and nothing is acknowledged before it is written.
pub struct Store {
    pub replica: Replica,
    file: Option<SegmentLog>,
    /// Set by [`Secondary::close`]: nothing is taken any more, and the file is closed.
    closed: bool,
    /// When retention last ran (see [`Secondary::retain`]).
    retained_at: Option<Instant>,
}

/// Why a request was not taken.
#[derive(Debug)]
pub enum Refused {
    /// Not applied, and our state tells the master why: it names another log identity, or a
    /// master process that the request's starts did not reach back to.
    Unapplied(ReplicaState),
    /// The request contradicts what we hold or follow (see [`Refusal`]).
    Master(String),
    /// The request is wrong in itself (see [`Refusal::is_malformed`]).
    Invalid(String),
    /// The log file could not be written; the secondary is stopping.
    Storage(String),
    /// The secondary has stopped (see [`Secondary::close`]).
    Stopped,
}

impl Secondary {
    pub fn new(
        config: Config,
        replica: Replica,
        file: Option<SegmentLog>,
        forward: Forwarder,
        shutdown: Shutdown,
    ) -> Self {
        // The replica learns the master starts its file records (the processes it took entries
        // from) and the mode: in failover mode a new master's lineage decides what it keeps.
        let replica = match &file {
            Some(file) => replica.with_starts(file.master_starts()),
            None => replica,
        }
        .in_failover(config.failover.is_some());
        let (visible, _) = watch::channel(replica.log().visible_upto());
        // Always announced, changed or not: the node waits for it to know the log was read.
        publish_standing(&config, &replica, true);
        Self {
            config,
            store: Mutex::new(Store {
                replica,
                file,
                closed: false,
                retained_at: None,
            }),
            last_contact: Mutex::new(None),
            visible,
            forward,
            shutdown,
            metrics: Metrics::default(),
            storage_failed: AtomicBool::new(false),
        }
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a write of the log file failed (the secondary is then stopping).
    pub fn has_storage_failed(&self) -> bool {
        self.storage_failed.load(Ordering::Relaxed)
    }

    /// A secondary that cannot write its log must not say it holds anything more: it stops.
    fn storage_failure(&self, error: &dyn std::fmt::Display) -> Refused {
        tracing::error!(%error, "cannot write the log to DATA_DIR; stopping");
        self.storage_failed.store(true, Ordering::Relaxed);
        self.shutdown.cancel();
        Refused::Storage(error.to_string())
    }

    /// Applies `RETENTION_BYTES`/`RETENTION_SECONDS` at most every [`RETENTION_INTERVAL`]:
    /// removes the oldest whole segments that only hold decided ids, and forgets them.
    fn retain(
        &self,
        replica: &mut Replica,
        file: &mut SegmentLog,
        retained_at: &mut Option<Instant>,
    ) -> Result<(), Refused> {
        let Some(retention) = self.config.storage.retention() else {
            return Ok(());
        };
        if retained_at.is_some_and(|at| at.elapsed() < RETENTION_INTERVAL) {
            return Ok(());
        }
        *retained_at = Some(Instant::now());
        let floor = replica.log().decided().saturating_add(1);
        let removed = file
            .retain(&retention, floor, std::time::SystemTime::now())
            .map_err(|error| self.storage_failure(&error))?;
        if !removed.is_empty() {
            replica.forget_before(file.first_id());
        }
        Ok(())
    }

    /// Counts and logs a refused replication request.
    pub fn refuse(&self, reason: &'static str, why: &dyn std::fmt::Display) {
        tracing::warn!(reason, %why, "refusing a replication request; nothing changed");
        self.metrics.replication_refused(reason);
    }

    pub fn is_durable(&self) -> bool {
        self.store().file.is_some()
    }

    /// Stops taking replication requests and closes the log file. A request being stored holds
    /// the lock, so it is written whole first; any request after this is refused
    /// ([`Refused::Stopped`]). After this returns nothing in the process holds the file, even
    /// if a task still holds the secondary: the failover node may open `DATA_DIR` for the master
    /// role at once.
    pub fn close(&self) {
        let mut store = self.store();
        store.closed = true;
        store.file = None;
    }

    fn contacted(&self) {
        *self.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn last_contact(&self) -> Option<Instant> {
        *self.last_contact.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one replication request, makes it durable (with `DATA_DIR`) and answers the
    /// resulting state. Blocking: with a file, call it off the async workers.
    pub fn receive(&self, request: ReplicateRequest) -> Result<ReplicaState, Refused> {
        let theirs = request.log_id.clone();
        let mut store = self.store();
        let Store {
            replica,
            file,
            closed,
            retained_at,
        } = &mut *store;
        if *closed {
            return Err(Refused::Stopped);
        }
        if let Some(role) = &self.config.failover {
            replica.note_leader(role.leader.borrow().as_ref().map_or(0, |l| l.term));
        }
        let rejoining = replica.is_rejoining();
        let records = match replica.receive(request) {
            Ok(records) => records,
            Err(refusal @ Refusal::ForeignLog) => {
                tracing::warn!(ours = replica.log().log_id(), %theirs, "refusing entries of another log identity");
                self.metrics.replication_refused(refusal.reason());
                return Err(Refused::Unapplied(replica.state()));
            }
            // The master sent no starts because it thought we follow it (we restarted since):
            // our state says which process we follow, and the next request brings them.
            Err(refusal @ Refusal::MissingStarts { .. }) => {
                tracing::info!(%refusal, "asking the master for its starts");
                self.contacted();
                return Err(Refused::Unapplied(replica.state()));
            }
            Err(refusal) => {
                self.refuse(refusal.reason(), &refusal);
                return Err(match refusal.is_malformed() {
                    true => Refused::Invalid(refusal.to_string()),
                    false => Refused::Master(refusal.to_string()),
                });
            }
        };
        // Only a request we take (or the handshake above) is contact with our master: a refused
        // one changes nothing, our health included.
        self.contacted();
        if let (Some(first_id), Some(file)) = (replica.take_restart(), file.as_mut()) {
            // Re-seeded: the files start again where the log now does, before its new records.
            if let Err(error) = file.restart_at(first_id, replica.log().log_id()) {
                return Err(self.storage_failure(&error));
            }
        }
        if let (Some(file), false) = (file.as_mut(), records.is_empty()) {
            let started = Instant::now();
            // What we hold is on disk before we say we hold it. The master's decisions need no
            // fsync of their own: if a power failure takes them, we report an older decided
            // frontier and the master sends them again (tombstones included), so it costs only a
            // moment of showing less.
            let holds_more = records.iter().any(|r| {
                matches!(
                    r,
                    Record::Entry { .. } | Record::Meta { .. } | Record::MasterStart { .. }
                )
            });
            let written = if holds_more {
                file.append(&records)
            } else {
                file.append_unsynced(&records)
            };
            self.metrics.log_write(started.elapsed());
            if let Err(error) = written {
                return Err(self.storage_failure(&error));
            }
        }
        if !records.is_empty() {
            tracing::debug!(
                records = records.len(),
                held = replica.log().last_id(),
                "stored"
            );
        }
        if let (Some(budget), Some(_)) = (self.config.storage.cache_budget(), file.as_ref()) {
            // Everything held is in the file now: the oldest decided payloads may go.
            replica.evict(budget);
        }
        if let Some(file) = file.as_mut() {
            self.retain(replica, file, retained_at)?;
        }
        if rejoining && !replica.is_rejoining() {
            // What it holds is on disk: it is whole again, also after a restart.
            if let Some(Err(error)) = file.as_ref().map(SegmentLog::mark_complete) {
                return Err(self.storage_failure(&error));
            }
            tracing::info!(
                held = replica.log().last_id(),
                "caught up with the master: this node counts in elections again"
            );
        }
        // Under the lock, so the standing published last is the latest.
        publish_standing(&self.config, replica, false);
        let upto = replica.log().visible_upto();
        replog_node::api::publish_visible(&self.visible, upto);
        Ok(replica.state())
    }
}

#[tonic::async_trait]
impl Node for Secondary {
    async fn append(
        &self,
        message: String,
        w: Option<u64>,
        key: Option<String>,
    ) -> Result<u64, ApiError> {
        // After SIGTERM, a forwarded append may wait for the master's answer for the grace
        // period; then this node stops, and the outcome is the master's to know, not ours.
        let grace_over = async {
            self.shutdown.cancelled().await;
            tokio::time::sleep(self.config.shutdown.shutdown_grace_seconds).await;
        };
        tokio::select! {
            answer = self.forward.append(message, w, key) => answer,
            _ = grace_over => Err(ApiError::OutcomeUnknown(
                "this secondary is shutting down and the master has not answered the forwarded \
                 append; it may be committed: retry with the same key to find out"
                    .into(),
            )),
        }
    }

    /// The cold part of the page is read from the files after the store's lock is let go, so
    /// a read from the disk never holds up replication.
    fn page(&self, from_id: u64, limit: usize) -> Result<Vec<Message>, ApiError> {
        let page = self.store().replica.log().page(from_id, limit)?;
        Ok(page.read()?)
    }

    fn first_id(&self) -> u64 {
        self.store().replica.log().first_id()
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn visible(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    fn health(&self) -> Health {
        let silence = self.last_contact().map(|t| t.elapsed());
        let leadership = self
            .config
            .failover
            .as_ref()
            .map(|role| Leadership::of(&role.name, role.leader.borrow().as_ref()));
        let leaderless = leadership.as_ref().is_some_and(|l| l.master.is_none());
        let store = self.store();
        let log = store.replica.log();
        let cut_off = silence.is_none_or(|s| s >= MASTER_SILENCE);
        let read_only_reason = if leaderless {
            Some(crate::forward::NO_MASTER.to_owned())
        } else if cut_off {
            Some("the master has not reached this secondary lately".to_owned())
        } else {
            None
        };
        Health {
            role: "secondary",
            log_id: log.log_id().to_owned(),
            first_id: log.first_id(),
            last_id: log.last_id(),
            decided: log.decided(),
            visible: log.visible_count(),
            quorum: !cut_off,
            // Appends here are forwarded; they can only work while the master reaches us (and,
            // in failover mode, while some node leads).
            read_only: read_only_reason.is_some(),
            read_only_reason,
            last_contact_ms_ago: silence.map(|s| s.as_millis() as u64),
            rejoining: leadership.is_some().then(|| store.replica.is_rejoining()),
            reseeded_from: store.replica.reseeded(),
            leadership,
            ..Health::default()
        }
    }
}

/// Failover mode: publishes where `replica` stands (its fields of the node's standing only),
/// waking the node's watchers if one changed, or `always`. Static mode: nothing.
fn publish_standing(config: &Config, replica: &Replica, always: bool) {
    let Some(role) = &config.failover else {
        return;
    };
    let log = replica.log();
    role.standing.send_if_modified(|standing| {
        let last_term = replica.last_term();
        let changed = standing.log_id != log.log_id()
            || standing.master_instance != replica.master()
            || standing.last_term != last_term
            || standing.held != log.last_id()
            || standing.decided != log.decided()
            || standing.rejoining != replica.is_rejoining();
        if changed {
            if standing.log_id != log.log_id() {
                standing.log_id = log.log_id().to_owned();
            }
            standing.master_instance = replica.master();
            standing.last_term = last_term;
            standing.held = log.last_id();
            standing.decided = log.decided();
            standing.rejoining = replica.is_rejoining();
        }
        changed || always
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use replog_node::failover::{Leader, SecondaryRole, Standing};
    use replog_node::log::Log;
    use replog_proto::v1::{Decisions, Entry, MasterStart};

    /// A secondary in failover mode as node "b" (in memory), with the node's ends of its role.
    fn in_failover(
        replica: Replica,
    ) -> (
        Secondary,
        watch::Sender<Option<Leader>>,
        watch::Receiver<Standing>,
    ) {
        in_failover_on(replica, None)
    }

    /// [`in_failover`], durable in `file`.
    fn in_failover_on(
        replica: Replica,
        file: Option<SegmentLog>,
    ) -> (
        Secondary,
        watch::Sender<Option<Leader>>,
        watch::Receiver<Standing>,
    ) {
        let (leader_tx, leader) = watch::channel(None);
        let (standing, standing_rx) = watch::channel(Standing {
            name: "b".into(),
            http: "b:8001".into(),
            grpc: "b:50051".into(),
            ..Standing::default()
        });
        let mut config = Config::parse_from(["secondary"]);
        config.failover = Some(SecondaryRole {
            name: "b".into(),
            leader: leader.clone(),
            standing,
        });
        let forward = Forwarder::following("b", leader);
        let secondary = Secondary::new(config, replica, file, forward, Shutdown::new());
        (secondary, leader_tx, standing_rx)
    }

    /// The log in `dir` as a node opens it (`DATA_DIR`), and its files.
    fn open_dir(
        dir: &std::path::Path,
        new_log_id: impl FnOnce() -> String,
    ) -> (replog_node::log::Log, SegmentLog) {
        let storage = replog_node::config::StorageArgs {
            data_dir: Some(dir.to_owned()),
            fsync: replog_node::storage::FsyncPolicy::Never,
            cache_bytes: 1 << 20,
            segment_bytes: 1 << 20,
            retention_bytes: None,
            retention_seconds: None,
        };
        let opened = storage.open(new_log_id).expect("open");
        (opened.log, opened.file.expect("files"))
    }

    /// A directory of its own for one test's log file.
    fn temp_dir(what: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "replog-secondary-{what}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    fn entry(id: u64, text: &str) -> Entry {
        Entry {
            id,
            message: text.as_bytes().to_vec().into(),
            tombstone: false,
        }
    }

    /// Log "L", master process `instance`, listing its start as one that recovered nothing (which
    /// only a replica that follows no master yet, or follows `instance`, takes as it is).
    fn request(instance: u64, entries: Vec<Entry>, decided_upto: Option<u64>) -> ReplicateRequest {
        let last_id = entries.last().map_or(0, |e| e.id);
        ReplicateRequest {
            last_id,
            log_id: "L".into(),
            entries,
            decisions: decided_upto.map(|upto| Decisions {
                decided_upto: upto,
                tombstones: vec![],
                since: 0,
            }),
            master_instance: instance,
            starts: vec![MasterStart {
                instance,
                recovered: 0,
            }],
            quiet: false,
            first_id: 0,
        }
    }

    /// The role's fields of a standing, with the node's as `in_failover` set them.
    fn standing(
        log_id: &str,
        master_instance: u64,
        last_term: u64,
        held: u64,
        decided: u64,
    ) -> Standing {
        Standing {
            name: "b".into(),
            http: "b:8001".into(),
            grpc: "b:50051".into(),
            log_id: log_id.into(),
            master_instance,
            last_term,
            held,
            decided,
            rejoining: false,
        }
    }

    #[test]
    fn the_standing_is_published_at_start_and_as_entries_and_decisions_arrive() {
        let mut log = Log::new("L".into());
        log.push("a".into(), false);
        let (secondary, _leader, mut standing_rx) = in_failover(Replica::new(log).with_master(3));
        assert_eq!(*standing_rx.borrow_and_update(), standing("L", 3, 3, 1, 0));

        let held = secondary.receive(request(3, vec![entry(2, "b"), entry(3, "c")], None));
        assert!(held.is_ok(), "{held:?}");
        assert!(standing_rx.has_changed().unwrap_or(false));
        assert_eq!(*standing_rx.borrow_and_update(), standing("L", 3, 3, 3, 0));

        // An entry beyond a gap is not held yet: nothing to publish.
        let ahead = secondary.receive(request(3, vec![entry(5, "e")], None));
        assert!(ahead.is_ok(), "{ahead:?}");
        assert!(!standing_rx.has_changed().unwrap_or(true));

        let decided = secondary.receive(request(3, vec![], Some(2)));
        assert!(decided.is_ok(), "{decided:?}");
        assert_eq!(*standing_rx.borrow_and_update(), standing("L", 3, 3, 3, 2));

        // A refused request changes nothing, and wakes nobody.
        let mut foreign = request(3, vec![entry(4, "d")], None);
        foreign.log_id = "other".into();
        assert!(matches!(
            secondary.receive(foreign),
            Err(Refused::Unapplied(_))
        ));
        let stale = secondary.receive(request(2, vec![entry(4, "d")], None));
        assert!(matches!(stale, Err(Refused::Master(_))), "{stale:?}");
        assert!(!standing_rx.has_changed().unwrap_or(true));

        // A new master (term) that recovered ids up to 2, listing its lineage: it is followed
        // and what it lacks goes, but the last term moves only with an id it wrote.
        let mut next = request(4, vec![], None);
        next.starts = vec![
            MasterStart {
                instance: 3,
                recovered: 0,
            },
            MasterStart {
                instance: 4,
                recovered: 2,
            },
        ];
        let switched = secondary.receive(next);
        assert!(switched.is_ok(), "{switched:?}");
        assert_eq!(*standing_rx.borrow_and_update(), standing("L", 4, 3, 2, 2));
        let written = secondary.receive(request(4, vec![entry(3, "c4")], None));
        assert!(written.is_ok(), "{written:?}");
        assert_eq!(*standing_rx.borrow_and_update(), standing("L", 4, 4, 3, 2));
    }

    #[test]
    fn a_rejoining_secondary_stays_incomplete_on_disk_until_it_has_caught_up() {
        use replog_node::storage::INCOMPLETE_MARKER;
        let dir = temp_dir("rejoining");
        let marker = dir.join(INCOMPLETE_MARKER);
        let open = || {
            let (log, file) = open_dir(&dir, String::new);
            let replica = Replica::new(log)
                .with_master(file.master_instance())
                .rejoining(true);
            in_failover_on(replica, Some(file))
        };
        // A log created anew is incomplete: it may have lost what it acknowledged.
        let (secondary, _leader, mut standing_rx) = open();
        assert!(marker.exists());
        assert!(standing_rx.borrow_and_update().rejoining);
        let first = ReplicateRequest {
            last_id: 4,
            ..request(1, vec![entry(1, "a"), entry(2, "b")], Some(0))
        };
        assert!(secondary.receive(first).expect("taken").rejoining);
        assert!(marker.exists());
        // Restarted before it caught up, it is still rejoining: its file says so.
        drop(secondary);
        let (secondary, _leader, mut standing_rx) = open();
        assert!(standing_rx.borrow_and_update().rejoining);
        let rest = ReplicateRequest {
            last_id: 4,
            ..request(1, vec![entry(3, "c"), entry(4, "d")], Some(2))
        };
        let state = secondary.receive(rest).expect("taken");
        assert!(!state.rejoining && state.held == 4);
        assert!(
            !marker.exists(),
            "caught up: complete again, also after a restart"
        );
        assert!(!standing_rx.borrow_and_update().rejoining);
        assert_eq!(secondary.health().rejoining, Some(false));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_secondary_behind_the_masters_first_retained_id_is_reseeded_on_disk() {
        let dir = temp_dir("reseed");
        let open = || {
            let (log, file) = open_dir(&dir, String::new);
            let replica = Replica::new(log).with_master(file.master_instance());
            in_failover_on(replica, Some(file))
        };
        let (secondary, _leader, _standing) = open();
        let first = request(1, vec![entry(1, "a"), entry(2, "b")], Some(2));
        assert_eq!(secondary.receive(first).expect("taken").held, 2);
        // The master's retention removed ids 1 to 9 while this secondary lacked 3 to 9.
        let behind = ReplicateRequest {
            first_id: 10,
            last_id: 11,
            ..request(1, vec![entry(10, "j"), entry(11, "k")], Some(11))
        };
        let state = secondary.receive(behind).expect("taken");
        assert_eq!((state.held, state.decided), (11, 11));
        let shown = |s: &Secondary| -> Vec<u64> {
            s.page(0, 100).expect("page").iter().map(|m| m.id).collect()
        };
        assert_eq!(shown(&secondary), [10, 11]);
        assert!(matches!(
            secondary.page(2, 10),
            Err(ApiError::Gone { first_id: 10, .. })
        ));
        let health = secondary.health();
        assert_eq!((health.first_id, health.reseeded_from), (10, Some(10)));
        // Restarted, it has the same log: from 10, nothing below, nothing missing.
        drop(secondary);
        let (secondary, _leader, _standing) = open();
        assert_eq!(shown(&secondary), [10, 11]);
        assert_eq!(secondary.health().log_id, "L");
        let next = ReplicateRequest {
            first_id: 10,
            last_id: 12,
            ..request(1, vec![entry(12, "l")], Some(12))
        };
        assert_eq!(secondary.receive(next).expect("taken").held, 12);
        assert_eq!(
            secondary.health().reseeded_from,
            None,
            "not re-seeded again"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fresh_secondary_joining_a_master_whose_log_starts_later_takes_it_from_there() {
        let dir = temp_dir("reseed-fresh");
        let (log, file) = open_dir(&dir, String::new);
        let replica = Replica::new(log).with_master(file.master_instance());
        let (secondary, _leader, _standing) = in_failover_on(replica, Some(file));
        let join = ReplicateRequest {
            first_id: 500,
            last_id: 501,
            ..request(3, vec![entry(500, "x"), entry(501, "y")], Some(501))
        };
        assert_eq!(secondary.receive(join).expect("taken").held, 501);
        drop(secondary);
        let (log, file) = open_dir(&dir, || unreachable!("the log exists"));
        assert_eq!(
            (log.log_id(), log.first_id(), log.last_id()),
            ("L", 500, 501)
        );
        assert_eq!(file.master_instance(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_replica_knows_the_starts_its_file_records() {
        let dir = temp_dir("starts");
        let (_, mut file) = open_dir(&dir, || "L".into());
        let entry = |id| Record::Entry {
            id,
            message: "m".into(),
            tombstone: false,
        };
        let start = |instance, recovered| Record::MasterStart {
            instance,
            recovered,
        };
        file.append(&[start(2, 0), entry(1), entry(2), entry(3), start(5, 3)])
            .expect("write");
        file.append(&[entry(4), Record::Decided { upto: 1 }])
            .expect("write");
        drop(file);
        let (log, file) = open_dir(&dir, || unreachable!());
        let replica = Replica::new(log).with_master(file.master_instance());
        let (secondary, _leader, _standing) = in_failover_on(replica, Some(file));
        assert_eq!(secondary.store().replica.starts(), &[(2, 0), (5, 3)]);
        // Term 7 never heard of process 5: what it gave us above 3 goes, and no more (known
        // only by number, process 5 would count as having kept nothing, below the decided 1).
        let mut next = request(7, vec![], None);
        next.starts = vec![
            MasterStart {
                instance: 2,
                recovered: 0,
            },
            MasterStart {
                instance: 7,
                recovered: 6,
            },
        ];
        let state = secondary.receive(next).expect("taken");
        assert_eq!((state.master_instance, state.held), (7, 3));
        secondary.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fresh_secondary_publishes_the_log_it_adopts() {
        let (secondary, _leader, mut standing_rx) = in_failover(Replica::new(Log::new("".into())));
        // Announced even though nothing differs from the node's default: the log was read.
        assert!(standing_rx.has_changed().unwrap_or(false));
        assert_eq!(*standing_rx.borrow_and_update(), standing("", 0, 0, 0, 0));
        let adopted = secondary.receive(request(1, vec![entry(1, "a")], Some(1)));
        assert!(adopted.is_ok(), "{adopted:?}");
        assert_eq!(*standing_rx.borrow_and_update(), standing("L", 1, 1, 1, 1));
    }

    #[test]
    fn health_names_the_leader_and_is_read_only_without_one() {
        let (secondary, leader_tx, _standing) = in_failover(Replica::new(Log::new("L".into())));
        let health = secondary.health();
        assert_eq!(
            health.leadership,
            Some(Leadership {
                node: "b".into(),
                master: None,
                term: 0,
                since_unix_ms: None,
            })
        );
        assert!(health.read_only);
        assert_eq!(
            health.read_only_reason.as_deref(),
            Some(crate::forward::NO_MASTER)
        );
        leader_tx.send_replace(Some(Leader {
            name: "a".into(),
            http: "a:8000".into(),
            term: 7,
            since_unix_ms: 1234,
        }));
        let leadership = secondary.health().leadership;
        assert_eq!(
            leadership,
            Some(Leadership {
                node: "b".into(),
                master: Some("a".into()),
                term: 7,
                since_unix_ms: Some(1234),
            })
        );
    }

    #[test]
    fn static_mode_publishes_nothing_and_shows_no_leadership() {
        let config = Config::parse_from(["secondary"]);
        let forward = Forwarder::new(None).expect("no master");
        let replica = Replica::new(Log::new("L".into()));
        let secondary = Secondary::new(config, replica, None, forward, Shutdown::new());
        assert_eq!(secondary.health().leadership, None);
    }

    #[test]
    fn a_closed_secondary_takes_nothing_more() {
        let (secondary, _leader, mut standing_rx) = in_failover(Replica::new(Log::new("".into())));
        standing_rx.borrow_and_update();
        secondary.close();
        assert!(matches!(
            secondary.receive(request(1, vec![entry(1, "a")], Some(1))),
            Err(Refused::Stopped)
        ));
        assert_eq!(secondary.store().replica.log().last_id(), 0);
        assert!(!standing_rx.has_changed().unwrap_or(true));
    }
}
