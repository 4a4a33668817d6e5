//! End to end in a real browser: headless Chromium (through chromedriver) opens the page
//! through nginx, appends through the master and through the secondaries, sees each message
//! show up in all three columns live (the page's Watch streams), sees an error in words, sees a
//! killed secondary go down and come back, and saves a screenshot to
//! `target/screenshots/replog.png`.
//!
//! Needs nginx, chromium, chromedriver and the built client (`scripts/install-web-tools`,
//! `scripts/build-web`); skips without them unless `REPLOG_REQUIRE_BROWSER` is set.
//!
//! With `REPLOG_BASE_URL` set (e.g. `http://127.0.0.1:8080`, the docker-compose stack through
//! nginx; `scripts/test-docker` does this), the same scenario instead drives the page of that
//! already running stack, stopping and starting secondary-2 with the compose command in
//! `REPLOG_COMPOSE`; it then needs only chromium and chromedriver, and the screenshot is
//! `target/screenshots/replog-compose.png`. Without `REPLOG_BASE_URL` that test skips.

use browser_tests::{
    base_url, browser_tools, chromium_args, chromium_tools, run_tag, running_stack, target_dir,
    Chromedriver, Compose, Nginx, BASE_URL_ENV,
};
use cluster_tests::{Cluster, SecondaryOpts, REPLICATION_FAILED};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::json;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// Generous: CI machines are small and the first page load compiles the wasm.
const DEADLINE: Duration = Duration::from_secs(20);
const COLUMNS: [&str; 3] = ["master", "secondary-1", "secondary-2"];

async fn wait_css(browser: &Client, css: &str, what: &str) -> Element {
    browser
        .wait()
        .at_most(DEADLINE)
        .every(Duration::from_millis(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("waited {DEADLINE:?} for {what} ({css}): {e}"))
}

/// Types `message` and appends it through `node` with write concern `w`; returns the instant
/// of the click.
async fn append(browser: &Client, node: &str, w: u32, message: &str) -> Instant {
    browser
        .find(Locator::Id("node"))
        .await
        .expect("#node")
        .select_by_value(node)
        .await
        .expect("pick the node");
    browser
        .find(Locator::Id("w"))
        .await
        .expect("#w")
        .select_by_value(&w.to_string())
        .await
        .expect("pick w");
    let input = browser
        .find(Locator::Id("message"))
        .await
        .expect("#message");
    input.clear().await.expect("clear #message");
    input.send_keys(message).await.expect("type the message");
    let button = browser.find(Locator::Id("append")).await.expect("#append");
    let clicked = Instant::now();
    button.click().await.expect("click Append");
    clicked
}

/// Waits until the append's result names its id, then until the entry shows in every listed
/// column with its text. Returns the id, the page's own click-to-all-columns time (ms) and the
/// time the test saw it (an upper bound: it includes WebDriver round trips).
async fn appended_and_shown(
    browser: &Client,
    clicked: Instant,
    message: &str,
    columns: &[&str],
) -> (u64, Option<f64>, Duration) {
    let result = wait_css(
        browser,
        "#result[data-state='ok'][data-id]",
        "an ok append result",
    )
    .await;
    let id: u64 = result
        .attr("data-id")
        .await
        .expect("data-id")
        .and_then(|id| id.parse().ok())
        .expect("a numeric data-id");
    for column in columns {
        let entry = wait_css(
            browser,
            &format!("#log-{column} li[data-id='{id}']"),
            &format!("entry #{id} in the {column} column"),
        )
        .await;
        let text = entry.text().await.expect("the entry's text");
        assert!(
            text.contains(message),
            "{column} shows {text:?} as #{id}, expected {message:?}"
        );
    }
    let seen = clicked.elapsed();
    let page_ms = if columns.len() == COLUMNS.len() {
        let result = wait_css(
            browser,
            &format!("#result[data-id='{id}'][data-all-visible-ms]"),
            "the page's all-columns time",
        )
        .await;
        result
            .attr("data-all-visible-ms")
            .await
            .expect("data-all-visible-ms")
            .and_then(|ms| ms.parse().ok())
    } else {
        None
    };
    (id, page_ms, seen)
}

/// A Chromium session through chromedriver, with a fresh profile (kept alive by the caller).
async fn open_browser(
    chromium: &std::path::Path,
    driver: &Chromedriver,
    profile: &std::path::Path,
) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": chromium_args(profile),
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url())
        .await
        .expect("a Chromium session through chromedriver")
}

/// Opens the page and waits until the client runs, every column is up with its Watch open and
/// the cluster summary says up.
async fn open_page(browser: &Client, url: &str) {
    browser.goto(url).await.expect("open the page");
    wait_css(
        browser,
        "body[data-ready='true']",
        "the wasm client to start",
    )
    .await;
    for column in COLUMNS {
        wait_css(
            browser,
            &format!("#col-{column}[data-status='up'][data-watch='open']"),
            &format!("the {column} column to be up with its Watch open"),
        )
        .await;
    }
    wait_css(
        browser,
        "#cluster[data-state='up']",
        "the cluster summary to say up",
    )
    .await;
}

/// Saves the page as `target/screenshots/<name>`.
async fn screenshot(browser: &Client, name: &str) {
    let screenshots = target_dir().join("screenshots");
    std::fs::create_dir_all(&screenshots).expect("target/screenshots");
    let png = browser.screenshot().await.expect("a screenshot");
    let path = screenshots.join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    println!("screenshot: {}", path.display());
}

#[tokio::test]
async fn page_appends_through_any_node_and_shows_every_log_live() {
    if base_url().is_some() {
        eprintln!(
            "SKIPPED: {BASE_URL_ENV} is set, so page_on_a_running_stack drives that stack instead"
        );
        return;
    }
    let Some(tools) = browser_tools() else {
        return;
    };
    // Quick heartbeats so that the master's view of a killed secondary changes within seconds.
    let mut stack = Cluster::start(
        vec![SecondaryOpts::new(); 2],
        &[
            ("HEARTBEAT_INTERVAL_MS", "200"),
            ("SUSPECT_AFTER_MS", "600"),
            ("UNHEALTHY_AFTER_MS", "1500"),
            ("REPLICATION_TIMEOUT_SECONDS", "2"),
        ],
    )
    .await;
    let nginx = Nginx::start(&tools.nginx_tools(), &stack, &stack.dir).await;
    let driver = Chromedriver::start(&tools.chromedriver, &stack.dir, &stack.client).await;
    let profile = tempfile::tempdir().expect("a fresh Chromium profile");
    let browser = open_browser(&tools.chromium, &driver, profile.path()).await;

    let outcome = drive(&browser, &mut stack, &nginx).await;
    let _ = browser.close().await;
    drop(nginx);
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// The scenario, run so that the browser session is closed whatever happens.
async fn drive(
    browser: &Client,
    stack: &mut Cluster,
    nginx: &Nginx,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    AssertUnwindSafe(scenario(browser, stack, nginx))
        .catch_unwind()
        .await
}

async fn scenario(browser: &Client, stack: &mut Cluster, nginx: &Nginx) {
    open_page(browser, &nginx.url("/")).await;

    let mut timings = Vec::new();
    for (node, w, message) in [
        ("master", 3, "hello through the master"),
        ("secondary-1", 3, "hello through secondary-1"),
        ("secondary-2", 2, "hello through secondary-2"),
    ] {
        let clicked = append(browser, node, w, message).await;
        let (id, page_ms, seen) = appended_and_shown(browser, clicked, message, &COLUMNS).await;
        println!(
            "append #{id} via {node} (w={w}): in all three columns {} after the click \
             (page's own measure); test saw it after {:.0} ms",
            page_ms.map_or("?".to_owned(), |ms| format!("{ms:.0} ms")),
            seen.as_secs_f64() * 1000.0
        );
        timings.push(page_ms.expect("the page measures the time to all columns"));
    }
    let best = timings.iter().cloned().fold(f64::INFINITY, f64::min);
    let worst = timings.iter().cloned().fold(0.0, f64::max);
    println!(
        "APPEND_TO_ALL_COLUMNS_MS min={best:.0} max={worst:.0} n={}",
        timings.len()
    );

    // A secondary goes away: its column says so, and the master's view of it changes.
    stack.secondaries[1].kill();
    secondary_2_shows_down(browser).await;

    // w=3 cannot be met with a secondary down: the error shows in words.
    append(browser, "secondary-1", 3, "needs all three").await;
    let error = wait_css(
        browser,
        "#result[data-state='error']",
        "the w=3 append to fail in words",
    )
    .await;
    let text = error.text().await.expect("the error text");
    assert!(
        text.contains("ABORTED") && text.contains(REPLICATION_FAILED),
        "error in words: {text:?}"
    );
    // w=2 still works and shows on the two live nodes.
    let clicked = append(browser, "master", 2, "two of three is enough").await;
    appended_and_shown(
        browser,
        clicked,
        "two of three is enough",
        &["master", "secondary-1"],
    )
    .await;

    screenshot(browser, "replog.png").await;

    // It comes back: the page reconnects by itself and catches the column up.
    stack.secondaries[1].start();
    wait_css(
        browser,
        "#col-secondary-2[data-status='up'][data-watch='open']",
        "secondary-2 to come back up with its Watch reopened",
    )
    .await;
    let last = browser
        .find(Locator::Css("#log-master li:last-child"))
        .await
        .expect("the master's last entry")
        .attr("data-id")
        .await
        .expect("data-id")
        .expect("an id");
    wait_css(
        browser,
        &format!("#log-secondary-2 li[data-id='{last}']"),
        "secondary-2 to catch up with the master",
    )
    .await;
}

/// Starts secondary-2 again if the test ends (passes or fails) while it is stopped, so that the
/// stack is left as it was found.
struct StartOnDrop<'a> {
    compose: &'a Compose,
    stopped: bool,
}

impl Drop for StartOnDrop<'_> {
    fn drop(&mut self) {
        if self.stopped {
            eprintln!("starting secondary-2 again on the way out");
            self.compose.run_blocking(&["start", "secondary-2"]);
        }
    }
}

/// The page of an already running stack (`REPLOG_BASE_URL`, e.g. the docker-compose stack
/// through nginx): appends through the master and the secondaries show in all three columns
/// live; secondary-2 stopped with `$REPLOG_COMPOSE stop secondary-2` goes down in its column and
/// in the master's view, a w=2 append still works, and after `start` the column comes back and
/// catches up. Messages carry a unique tag, since the stack's log is not empty.
#[tokio::test]
async fn page_on_a_running_stack() {
    let Some((base, compose)) = running_stack("page_on_a_running_stack") else {
        return;
    };
    let Some(tools) = chromium_tools() else {
        return;
    };
    let dir = target_dir().join("browser-tests/page_on_a_running_stack");
    std::fs::create_dir_all(&dir).expect("the test's log directory");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let page = format!("{base}/");
    let answer = http
        .get(&page)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {page}: {e} (is the stack up?)"));
    assert!(
        answer.status().is_success(),
        "GET {page}: {}",
        answer.status()
    );
    let driver = Chromedriver::start(&tools.chromedriver, &dir, &http).await;
    let profile = tempfile::tempdir().expect("a fresh Chromium profile");
    let browser = open_browser(&tools.chromium, &driver, profile.path()).await;

    let mut guard = StartOnDrop {
        compose: &compose,
        stopped: false,
    };
    let outcome = AssertUnwindSafe(stack_scenario(&browser, &page, &compose, &mut guard))
        .catch_unwind()
        .await;
    let _ = browser.close().await;
    drop(guard);
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

async fn stack_scenario(
    browser: &Client,
    page: &str,
    compose: &Compose,
    guard: &mut StartOnDrop<'_>,
) {
    let tag = run_tag();
    println!("driving {page} (messages tagged {tag})");
    open_page(browser, page).await;
    for secondary in ["secondary-1", "secondary-2"] {
        wait_css(
            browser,
            &format!("#master-view-{secondary}[data-status='healthy']"),
            &format!("the master's view of {secondary} to be healthy"),
        )
        .await;
    }

    for (node, w) in [("master", 3), ("secondary-1", 3), ("secondary-2", 2)] {
        let message = format!("browser via {node} w={w} [{tag}]");
        let clicked = append(browser, node, w, &message).await;
        let (id, page_ms, seen) = appended_and_shown(browser, clicked, &message, &COLUMNS).await;
        println!(
            "append #{id} via {node} (w={w}): in all three columns {} after the click \
             (page's own measure); test saw it after {:.0} ms",
            page_ms.map_or("?".to_owned(), |ms| format!("{ms:.0} ms")),
            seen.as_secs_f64() * 1000.0
        );
    }

    // secondary-2's container stops: its column goes down, the master's view of it changes.
    let stopping = Instant::now();
    guard.stopped = true;
    compose.run(&["stop", "secondary-2"]).await;
    println!(
        "stopped secondary-2 in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    secondary_2_shows_down(browser).await;
    // w=2 still works and shows on the two live nodes.
    let message = format!("browser w=2 while secondary-2 is stopped [{tag}]");
    let clicked = append(browser, "master", 2, &message).await;
    let (missed, _, _) =
        appended_and_shown(browser, clicked, &message, &["master", "secondary-1"]).await;
    screenshot(browser, "replog-compose.png").await;

    // It comes back: the page reconnects by itself, and the column catches up.
    let starting = Instant::now();
    compose.run(&["start", "secondary-2"]).await;
    guard.stopped = false;
    wait_css(
        browser,
        "#col-secondary-2[data-status='up'][data-watch='open']",
        "secondary-2 to come back up with its Watch reopened",
    )
    .await;
    let entry = wait_css(
        browser,
        &format!("#log-secondary-2 li[data-id='{missed}']"),
        "secondary-2 to catch up with the append it missed",
    )
    .await;
    let text = entry.text().await.expect("the entry's text");
    assert!(
        text.contains(&message),
        "secondary-2 shows {text:?} as #{missed}, expected {message:?}"
    );
    wait_css(
        browser,
        "#master-view-secondary-2[data-status='healthy']",
        "the master's view of secondary-2 to be healthy again",
    )
    .await;
    println!(
        "secondary-2 back up and caught up {:.1} s after start",
        starting.elapsed().as_secs_f64()
    );
}

/// After secondary-2 went away: its column shows down, the master's view of it leaves healthy,
/// and the other two columns stay up.
async fn secondary_2_shows_down(browser: &Client) {
    wait_css(
        browser,
        "#col-secondary-2[data-status='down']",
        "the secondary-2 column to show down",
    )
    .await;
    wait_css(
        browser,
        "#master-view-secondary-2:not([data-status='healthy']):not([data-status='unknown'])",
        "the master's view of secondary-2 to leave healthy",
    )
    .await;
    for column in ["master", "secondary-1"] {
        let status = browser
            .find(Locator::Id(&format!("col-{column}")))
            .await
            .expect("column")
            .attr("data-status")
            .await
            .expect("data-status");
        assert_eq!(status.as_deref(), Some("up"), "{column} stays up");
    }
}
