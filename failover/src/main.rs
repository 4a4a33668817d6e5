//! `replog`: a replog node in failover mode. See `replog_failover::node` for how it works.

use replog_failover::config::Config;
use replog_failover::etcd::EtcdCoordinator;
use replog_node::config::{or_exit, parse_or_exit};

/// mimalloc instead of glibc malloc, as the `master` and `secondary` binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    replog_node::telemetry::init();
    replog_node::memory::no_huge_pages();
    let config: Config = parse_or_exit();
    or_exit(config.validate());
    let etcd_tls = or_exit(config.etcd_tls());
    config.master.runtime.build_or_exit().block_on(async {
        let shutdown = replog_node::shutdown::on_signal();
        let mut coordinator = EtcdCoordinator::new(
            &config.etcd_endpoints,
            &config.etcd_prefix,
            &config.node_name,
            replog_failover::etcd_timeout(config.failover_ttl_ms),
        );
        if let Some(tls) = etcd_tls {
            coordinator = coordinator.with_tls(tls);
        }
        if let Err(e) = replog_failover::node::run(config, coordinator, shutdown).await {
            eprintln!("replog failed: {e}");
            std::process::exit(1);
        }
    });
}
