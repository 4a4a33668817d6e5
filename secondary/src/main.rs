//! `secondary`: a replog secondary binary. See `replog_secondary::server` for how it is put
//! together.

use replog_node::config::{listen_or_exit, or_exit, parse_or_exit};
use replog_secondary::{config::Config, server};

#[tokio::main]
async fn main() {
    replog_node::telemetry::init();
    let config: Config = parse_or_exit();
    or_exit(config.validate());
    let http_listener = listen_or_exit(&config.host, config.http_port).await;
    let grpc_listener = listen_or_exit(&config.host, config.grpc_port).await;
    let shutdown = replog_node::shutdown::on_signal();
    if let Err(e) = server::run(config, http_listener, grpc_listener, shutdown).await {
        eprintln!("secondary failed: {e}");
        std::process::exit(1);
    }
}
