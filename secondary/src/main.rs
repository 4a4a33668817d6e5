//! `secondary`: a replog secondary binary. See `replog_secondary::server` for how it is put
//! together.

use replog_node::config::{listen_or_exit, or_exit, parse_or_exit};
use replog_secondary::{config::Config, server};

/// mimalloc instead of glibc malloc: the hot path allocates many small, short-lived objects
/// (requests, headers, batches), which glibc's malloc and free serve at a higher CPU cost
/// (see docs/bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    replog_node::telemetry::init();
    replog_node::memory::no_huge_pages();
    let config: Config = parse_or_exit();
    or_exit(config.validate());
    config.runtime.build_or_exit().block_on(async {
        let http_listener = listen_or_exit(&config.host, config.http_port).await;
        let grpc_listener = listen_or_exit(&config.host, config.grpc_port).await;
        let shutdown = replog_node::shutdown::on_signal();
        if let Err(e) = server::run(config, http_listener, grpc_listener, shutdown).await {
            eprintln!("secondary failed: {e}");
            std::process::exit(1);
        }
    });
}
