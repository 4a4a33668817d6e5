//! The master's journal: makes entries and tombstones durable in `DATA_DIR`, many at a time.
//!
//! The core asks for records in id order ([`crate::core::Effect::Persist`]); this task takes
//! whatever has queued up and writes it in one write (group commit). Then it tells the core the
//! entries are written, so they are shipped at once, and only then syncs them (one fsync), on
//! the blocking pool: the secondaries receive and sync their copies while ours syncs, instead
//! of after it. When the sync ends, the core counts the master's own acknowledgement (no
//! commit happens before it) and finishes aborts.
//!
//! In failover mode the core also asks for the decided frontier as it moves
//! ([`Record::Decided`]). A group keeps only the latest of these, after its entries and
//! tombstones; a group of nothing else is written without a sync, riding on the next group's
//! (a power failure may take it, which costs a little of the frontier, not a promise).
//!
//! Between groups it applies retention (`RETENTION_BYTES`, `RETENTION_SECONDS`) every
//! [`RETENTION_INTERVAL`]: whole old segments go, never one holding an id a secondary the master
//! hears from still needs ([`crate::core::Core::retention_floor`]), and the core forgets them.

use crate::state::Master;
use replog_node::config::RETENTION_INTERVAL;
use replog_node::metrics::Metrics;
use replog_node::runtime::blocking_io;
use replog_node::shutdown::Shutdown;
use replog_node::storage::segments::Retention;
use replog_node::storage::{FsyncPolicy, Record, SegmentLog};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::MissedTickBehavior;

/// Records written per group commit at most.
const MAX_GROUP: usize = 8192;

/// Writes the `records` the core asks for to `file` until `shutdown` (then what is queued
/// still), applying `retention` if there is one, and counts the writes' times in `metrics`.
pub async fn run(
    master: Arc<Master>,
    mut file: SegmentLog,
    mut records: UnboundedReceiver<Record>,
    retention: Option<Retention>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) {
    let mut retention_due = tokio::time::interval(RETENTION_INTERVAL);
    retention_due.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            record = records.recv() => record,
            _ = retention_due.tick(), if retention.is_some() => {
                let Some(retention) = retention else { continue };
                let Some(back) = retain(&master, file, retention).await else {
                    return;
                };
                file = back;
                continue;
            }
            _ = shutdown.cancelled() => records.try_recv().ok(),
        };
        let Some(first) = first else { return };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match records.try_recv() {
                Ok(record) => group.push(record),
                Err(_) => break,
            }
        }
        let decided = latest_decided(&mut group);
        let mut entries_upto = None;
        let mut tombstones = Vec::new();
        for record in &group {
            match record {
                Record::Entry { id, .. } => entries_upto = Some(*id),
                Record::Tombstone { id } => tombstones.push(*id),
                Record::Meta { .. } | Record::Decided { .. } | Record::MasterStart { .. } => {}
            }
        }
        // Only the frontier moved: nothing waits for this write to be durable.
        let frontier_only = group.is_empty();
        group.extend(decided.map(|upto| Record::Decided { upto }));
        let started = std::time::Instant::now();
        let written = blocking_io(move || {
            let result = file.append_unsynced(&group);
            (file, result)
        })
        .await;
        let Some((back, ())) = take_back(&master, written) else {
            return;
        };
        file = back;
        if frontier_only {
            continue;
        }
        if let Some(upto) = entries_upto {
            master.update(|core| core.on_written(upto));
        }
        if file.policy() == FsyncPolicy::Always {
            // Not `blocking_io`: run in place on a one-thread runtime, the sync would hold back
            // the shipping it is meant to overlap.
            let synced = tokio::task::spawn_blocking(move || {
                let result = file.sync();
                (file, result)
            })
            .await;
            let Some((back, ())) = take_back(&master, synced) else {
                return;
            };
            file = back;
        }
        metrics.log_write(started.elapsed());
        master.update(|core| core.on_persisted(entries_upto, &tombstones));
    }
}

/// Removes the old segments retention lets go (see the module doc) and has the core forget
/// their ids. `None` once the master stopped because the files failed.
async fn retain(master: &Master, mut file: SegmentLog, retention: Retention) -> Option<SegmentLog> {
    let floor = master.update(|core| {
        let decided = core.ledger().log().decided();
        core.retention_floor(Instant::now())
            .min(decided.saturating_add(1))
    });
    let done = blocking_io(move || {
        let result = file
            .retain(&retention, floor, SystemTime::now())
            .map(|removed| (!removed.is_empty()).then(|| file.first_id()));
        (file, result)
    })
    .await;
    let (file, first_id) = take_back(master, done)?;
    if let Some(first_id) = first_id {
        master.update(|core| core.forget_before(first_id));
    }
    Some(file)
}

/// Takes the `Decided` records out of `group`; returns the highest frontier among them. The
/// frontier only moves forward, so that one says all the others say.
fn latest_decided(group: &mut Vec<Record>) -> Option<u64> {
    let mut latest = None;
    group.retain(|record| match *record {
        Record::Decided { upto } => {
            latest = latest.max(Some(upto));
            false
        }
        _ => true,
    });
    latest
}

/// The file back from a blocking write, sync or retention, with what it returned; `None` once
/// the master stopped because it failed.
fn take_back<T, E: std::fmt::Display>(
    master: &Master,
    done: Result<(SegmentLog, Result<T, E>), tokio::task::JoinError>,
) -> Option<(SegmentLog, T)> {
    let error = match done {
        Ok((file, Ok(value))) => return Some((file, value)),
        Ok((_, Err(error))) => error.to_string(),
        Err(error) => error.to_string(),
    };
    fail(master, &error);
    None
}

/// A master that cannot write its log must not acknowledge anything more: it stops.
fn fail(master: &Master, error: &str) {
    tracing::error!(%error, "cannot write the log to DATA_DIR; stopping");
    master.storage_failed();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_keeps_the_latest_frontier_only() {
        let entry = |id| Record::Entry {
            id,
            message: "m".into(),
            tombstone: false,
        };
        let mut group = vec![
            Record::Decided { upto: 3 },
            entry(5),
            Record::Decided { upto: 4 },
            Record::Tombstone { id: 5 },
        ];
        assert_eq!(latest_decided(&mut group), Some(4));
        assert_eq!(group, vec![entry(5), Record::Tombstone { id: 5 }]);
        let mut none = vec![entry(6)];
        assert_eq!(latest_decided(&mut none), None);
        assert_eq!(none, vec![entry(6)]);
    }
}
