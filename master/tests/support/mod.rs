//! What the master's model tests share: reading back a node's records.

use replog_node::log::Log;
use replog_node::storage::Record;

/// Rebuilds a log from a node's records, as `LogFile::open` does; also the master starts
/// `(instance, recovered)` in them.
pub fn replay(records: &[Record]) -> (Log, Vec<(u64, u64)>) {
    let mut log = Log::default();
    let mut starts = Vec::new();
    for record in records.iter().cloned() {
        match record {
            Record::Meta { log_id } => log = Log::new(log_id),
            Record::Entry {
                id,
                message,
                tombstone,
            } => assert_eq!(log.push(message, tombstone), id, "entries written in order"),
            Record::Tombstone { id } => log.tombstone(id),
            Record::Decided { upto } => log.set_decided(upto),
            Record::MasterStart {
                instance,
                recovered,
            } => {
                assert!(
                    recovered >= log.decided(),
                    "a start drops decided ids: {recovered} < {}",
                    log.decided()
                );
                log.truncate(recovered);
                starts.push((instance, recovered));
            }
        }
    }
    (log, starts)
}
