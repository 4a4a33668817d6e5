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
            let max_bytes = usize::try_from(request.max_bytes).unwrap_or(usize::MAX);
            // Entries not cached are read from the files; if that fails (a damaged segment),
            // none are sent and the master asks again or another node.
            // Below what retention kept: from the first retained id (see FetchRequest).
            let from_id = request.from_id.max(log.first_id());
            let read = log
                .entries(from_id, request.max_entries as usize, max_bytes)
                .unwrap_or_else(|error| {
                    tracing::error!(%error, from = from_id, "cannot read entries for a fetch from the log's files");
                    Vec::new()
                });
            entries = read
                .into_iter()
                .map(|e| Entry {
                    id: e.id,
                    tombstone: e.tombstone,
                    message: e.message,
                })
                .collect();
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
