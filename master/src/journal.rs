//! The master's journal: makes entries and tombstones durable in `DATA_DIR`, many at a time.
//!
//! The ledger queues records in id order under its lock; this task takes whatever has queued
//! up, writes it in one write with one fsync (group commit), and then tells the ledger, which
//! counts the master's own acknowledgement, ships the entries and finishes aborts.

use crate::state::Master;
use replog_node::storage::{LogFile, Record};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// Records written per group commit at most.
const MAX_GROUP: usize = 8192;

pub async fn run(master: Arc<Master>, mut file: LogFile, mut records: UnboundedReceiver<Record>) {
    loop {
        let first = tokio::select! {
            record = records.recv() => record,
            _ = master.shutdown.cancelled() => records.try_recv().ok(),
        };
        let Some(first) = first else { return };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match records.try_recv() {
                Ok(record) => group.push(record),
                Err(_) => break,
            }
        }
        let mut entries_upto = None;
        let mut tombstones = Vec::new();
        for record in &group {
            match record {
                Record::Entry { id, .. } => entries_upto = Some(*id),
                Record::Tombstone { id } => tombstones.push(*id),
                Record::Meta { .. } | Record::Decided { .. } => {}
            }
        }
        let started = std::time::Instant::now();
        let written = tokio::task::spawn_blocking(move || {
            let result = file.append(&group);
            (file, result)
        })
        .await;
        master.metrics.log_write(started.elapsed());
        match written {
            Ok((back, Ok(()))) => file = back,
            Ok((_, Err(error))) => return fail(&master, &error.to_string()),
            Err(error) => return fail(&master, &error.to_string()),
        }
        master.update(|ledger| ledger.on_persisted(entries_upto, &tombstones));
        master.wake_senders();
    }
}

/// A master that cannot write its log must not acknowledge anything more: it stops.
fn fail(master: &Master, error: &str) {
    tracing::error!(%error, "cannot write the log to DATA_DIR; stopping");
    master.storage_failed();
}
