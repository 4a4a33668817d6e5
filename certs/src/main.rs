//! `replog-certs`: makes a CA and a certificate per node into a directory, for a cluster's
//! first start with TLS when the operator brings no certificates of their own.
//!
//! A directory that already has its `ca.pem` is kept as it is: run again, it changes nothing,
//! so a restarted cluster keeps its keys.

use clap::Parser;
use replog_certs::{write, Authority, Validity};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Makes a CA and one certificate per node for replog's TLS")]
struct Args {
    /// Where the files go: ca.pem, and <node>.pem with <node>-key.pem per node.
    #[arg(long, env = "CERTS_DIR")]
    out: PathBuf,
    /// The nodes, each `name` or `name=host1,host2` (the names it is reached by; the name
    /// itself, localhost and 127.0.0.1 are always included).
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// Days the node certificates are valid.
    #[arg(long, default_value_t = 365)]
    days: i64,
}

fn main() {
    let args = Args::parse();
    if let Err(error) = run(&args) {
        eprintln!("replog-certs: {error}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&args.out)?;
    let ca_path = args.out.join("ca.pem");
    if ca_path.exists() {
        println!(
            "replog-certs: {} exists; keeping the certificates there",
            ca_path.display()
        );
        return Ok(());
    }
    let authority = Authority::new("replog CA")?;
    for node in &args.nodes {
        let (name, extra) = node.split_once('=').unwrap_or((node, ""));
        let mut hosts = vec![name, "localhost", "127.0.0.1"];
        hosts.extend(extra.split(',').filter(|h| !h.is_empty()));
        let issued = authority.issue(name, &hosts, Validity { days: args.days })?;
        let (cert, _) = issued.write(&args.out, name)?;
        println!("replog-certs: {}", cert.display());
    }
    // The CA last: its presence says the directory is complete.
    write(&ca_path, authority.pem(), false)?;
    println!("replog-certs: {}", ca_path.display());
    Ok(())
}
