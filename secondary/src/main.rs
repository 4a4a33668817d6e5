//! `secondary`: a replog secondary binary. See `server` for how it is put together.

mod config;
mod forward;
mod replica;
mod server;
mod service;
mod state;

use replog_node::config::{bind_addr, parse_or_exit};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    replog_node::telemetry::init();
    let config: config::Config = parse_or_exit();
    if let Err(line) = config.validate() {
        eprintln!("configuration error: {line}");
        std::process::exit(2);
    }
    let http_listener = listen(&config.host, config.http_port).await;
    let grpc_listener = listen(&config.host, config.grpc_port).await;
    let shutdown = replog_node::shutdown::on_signal();
    if let Err(e) = server::run(config, http_listener, grpc_listener, shutdown).await {
        eprintln!("secondary failed: {e}");
        std::process::exit(1);
    }
}

/// Binds a port on `HOST`, or exits with one line.
async fn listen(host: &str, port: u16) -> TcpListener {
    let address = match bind_addr(host, port) {
        Ok(address) => address,
        Err(line) => {
            eprintln!("configuration error: {line}");
            std::process::exit(2);
        }
    };
    match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {address}: {e}");
            std::process::exit(1);
        }
    }
}
