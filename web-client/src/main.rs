//! The replog browser client. `trunk build` compiles it to wasm and serves it with
//! `index.html`; see `scripts/build-web`.
//!
//! On the host (workspace builds, clippy, unit tests) only the browser-free model compiles,
//! and the binary just says how to build the real thing.

#[cfg(target_arch = "wasm32")]
mod app;
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod model;

#[cfg(target_arch = "wasm32")]
fn main() {
    app::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!(
        "replog-web-client runs in a browser: build it with `scripts/build-web` \
         (trunk build --release --offline) and serve web-client/dist, e.g. with `scripts/run`."
    );
    std::process::exit(2);
}
