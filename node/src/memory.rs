//! How a node's process takes memory from the kernel: in small pages, never in transparent
//! huge pages.
//!
//! mimalloc asks for huge pages on its large regions (`madvise(MADV_HUGEPAGE)`), so even where
//! the kernel gives them only on request (`transparent_hugepage=madvise`, the usual default) a
//! node got them. The first touch of such a page makes the kernel find and zero 2 MiB at once,
//! compacting memory first if it must, with the node's thread stopped meanwhile. As the log
//! grows that happens several times a second, and each time every append in flight waits: on
//! the benchmark machine the master stalled for 2-5 ms at a time (`perf`: half of its samples
//! in those stalls were `clear_page_erms`), which was the whole of its p99 above Redis's at 64
//! clients (3.2-3.6 ms against 1.6-2.1 ms without huge pages). Redis turns them off for the same
//! reason (`disable-thp yes`). Small pages cost a page fault per 4 KiB instead, spread evenly.

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`). Called at the
/// start of `main`, once logging is up; pages touched before keep their size. A kernel that refuses leaves
/// things as they were: slower tails, nothing wrong.
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(error) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(%error, "cannot turn transparent huge pages off");
    }
}
