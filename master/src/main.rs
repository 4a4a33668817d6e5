//! `master`: the replog master binary. See `server` for how it is put together.

mod config;
mod deadlines;
mod journal;
mod ledger;
mod replication;
mod server;
mod state;

use replog_node::config::{bind_addr, parse_or_exit};

#[tokio::main]
async fn main() {
    replog_node::telemetry::init();
    let config: config::Config = parse_or_exit();
    if let Err(line) = config.validate() {
        eprintln!("configuration error: {line}");
        std::process::exit(2);
    }
    let address = match bind_addr(&config.host, config.http_port) {
        Ok(address) => address,
        Err(line) => {
            eprintln!("configuration error: {line}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {address}: {e}");
            std::process::exit(1);
        }
    };
    let shutdown = replog_node::shutdown::on_signal();
    if let Err(e) = server::run(config, listener, shutdown).await {
        eprintln!("master failed: {e}");
        std::process::exit(1);
    }
}
