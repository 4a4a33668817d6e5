//! `master`: the replog master binary. See `replog_master::server` for how it is put together.

use replog_master::{config::Config, server};
use replog_node::config::{listen_or_exit, or_exit, parse_or_exit};

/// mimalloc instead of glibc malloc: the hot path allocates many small, short-lived objects
/// (requests, headers, batches); docs/bench/README.md has the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    replog_node::telemetry::init();
    replog_node::memory::no_huge_pages();
    let config: Config = parse_or_exit();
    or_exit(config.validate());
    config.runtime.build_or_exit().block_on(async {
        let listener = listen_or_exit(&config.host, config.http_port).await;
        let shutdown = replog_node::shutdown::on_signal();
        if let Err(e) = server::run(config, listener, shutdown).await {
            eprintln!("master failed: {e}");
            std::process::exit(1);
        }
    });
}
