//! Reading what this secondary holds, for a master that recovers its log from the secondaries.
//!
//! A read changes nothing: unlike a replication request it names no master process, so a
//! secondary never drops its undecided suffix for a master that is only asking. The entries it
//! returns are the contiguous prefix it holds (tombstones included, marked), never the ones
//! buffered beyond a gap.

use crate::state::Secondary;
use replog_proto::v1::{Entry, FetchReply, FetchRequest};

impl Secondary {
    /// Our state, the entries from `request.from_id` on within its limits (at least one when any
    /// is there; none for `from_id` 0), and every tombstone if asked.
    pub fn fetch(&self, request: &FetchRequest) -> FetchReply {
        let store = self.store();
        let replica = &store.replica;
        let log = replica.log();
        let mut entries = Vec::new();
        if request.from_id > 0 {
            let mut bytes = 0u64;
            let max_entries = (request.max_entries as usize).max(1);
            for id in request.from_id..=log.last_id() {
                let message = log.get(id).cloned().unwrap_or_default();
                if !entries.is_empty()
                    && (entries.len() >= max_entries
                        || bytes + message.len() as u64 > request.max_bytes)
                {
                    break;
                }
                bytes += message.len() as u64;
                entries.push(Entry {
                    id,
                    tombstone: log.is_tombstone(id),
                    message,
                });
            }
        }
        let tombstones = match request.tombstones {
            true => log.tombstones_in(0, log.last_id()).collect(),
            false => Vec::new(),
        };
        FetchReply {
            state: Some(replica.state()),
            entries,
            tombstones,
        }
    }
}
