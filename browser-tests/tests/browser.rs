//! End to end in a real browser: headless Chromium (through chromedriver) opens the page
//! through nginx, finds the columns `/nodes.json` lists with each node's role badge, appends
//! through the master and through the secondaries, sees each message show up in all three
//! columns live (the page's Watch streams), sees an error in words, sees a killed secondary go
//! down and come back, and saves a screenshot to `target/screenshots/replog.png`. A second
//! nginx listing other nodes in another order (`NODES_JSON`) shows just those columns, in that
//! order. A failover cluster's page (etcd, three `replog` nodes, `nginx/nginx-failover.conf`)
//! shows who leads in every column and follows the master when it is killed. An append whose
//! outcome cannot be known shows as "Outcome unknown", and appending it again does not append
//! it twice.
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
    browser_tools, chromium_args, chromium_tools, run_tag, target_dir, BrowserTools, Chromedriver,
    Nginx,
};
use cluster_tests::compose::{base_url, running_stack, Compose, BASE_URL_ENV};
use cluster_tests::failover::FailoverCluster;
use cluster_tests::{
    steady_health, wait_until, Cluster, SecondaryOpts, PROMPTLY, REPLICATION_FAILED,
};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::json;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// Generous: CI machines are small and the first page load compiles the wasm.
const DEADLINE: Duration = Duration::from_secs(20);
const COLUMNS: [&str; 3] = ["master", "secondary-1", "secondary-2"];
/// The columns' titles and the roles their nodes' health says, in `COLUMNS` order.
const TITLES: [&str; 3] = ["Master", "Secondary 1", "Secondary 2"];
const ROLES: [&str; 3] = ["master", "secondary", "secondary"];

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

/// Opens the page and waits until the client runs, checks that its columns are the ones
/// `/nodes.json` lists, and waits until every column is up with its Watch open, its role badge
/// says what its node is, and the cluster summary says up with the master named.
async fn open_page(browser: &Client, url: &str) {
    browser.goto(url).await.expect("open the page");
    wait_css(
        browser,
        "body[data-ready='true']",
        "the wasm client to start",
    )
    .await;
    columns_from_nodes_json(browser, &COLUMNS, &TITLES).await;
    for (column, role) in COLUMNS.iter().zip(ROLES) {
        wait_css(
            browser,
            &format!("#col-{column}[data-status='up'][data-watch='open']"),
            &format!("the {column} column to be up with its Watch open"),
        )
        .await;
        let badge = wait_css(
            browser,
            &format!("#role-{column}[data-role='{role}']:not([hidden])"),
            &format!("the {column} column's role badge to say {role}"),
        )
        .await;
        assert_eq!(badge.text().await.expect("the role badge's text"), role);
        // Static nodes have no leadership: the line stays hidden.
        let leadership = browser
            .find(Locator::Id(&format!("leadership-{column}")))
            .await
            .expect("the column's leadership line");
        assert!(
            leadership.attr("hidden").await.expect("hidden").is_some(),
            "{column}: a static node's column shows a leadership line: {:?}",
            leadership.text().await
        );
    }
    wait_css(
        browser,
        "#cluster[data-state='up'][data-master='master']",
        "the cluster summary to say up with master as the master",
    )
    .await;
}

/// The page built its columns from `/nodes.json` (not the built-in list): exactly `names`, in
/// that order, titled `titles`, and the append form offers exactly those nodes and w = 1..=n.
async fn columns_from_nodes_json(browser: &Client, names: &[&str], titles: &[&str]) {
    wait_css(
        browser,
        "#columns[data-source='nodes.json']",
        "the columns to come from /nodes.json",
    )
    .await;
    let mut shown = Vec::new();
    for section in browser
        .find_all(Locator::Css("#columns > section.column"))
        .await
        .expect("the columns")
    {
        let id = section.attr("id").await.expect("id").unwrap_or_default();
        let node = section
            .attr("data-node")
            .await
            .expect("data-node")
            .unwrap_or_default();
        let title = section
            .find(Locator::Css("h2 .title"))
            .await
            .expect("the column's title")
            .text()
            .await
            .expect("the title's text");
        shown.push((id, node, title));
    }
    let expected: Vec<(String, String, String)> = names
        .iter()
        .zip(titles)
        .map(|(name, title)| {
            (
                format!("col-{name}"),
                (*name).to_owned(),
                (*title).to_owned(),
            )
        })
        .collect();
    assert_eq!(shown, expected, "the page's columns (id, data-node, title)");
    let values = |select: &'static str| async move {
        let mut values = Vec::new();
        for option in browser
            .find_all(Locator::Css(&format!("#{select} option")))
            .await
            .expect("the options")
        {
            values.push(
                option
                    .attr("value")
                    .await
                    .expect("value")
                    .unwrap_or_default(),
            );
        }
        values
    };
    assert_eq!(
        values("node").await,
        names,
        "the nodes the form appends through"
    );
    let w: Vec<String> = (1..=names.len()).map(|w| w.to_string()).collect();
    assert_eq!(values("w").await, w, "the write concerns the form offers");
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

    let outcome = drive(&browser, &mut stack, &nginx, &tools).await;
    let _ = browser.close().await;
    drop(nginx);
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// The scenario, run so that the browser session is closed whatever happens.
async fn drive(
    browser: &Client,
    stack: &mut Cluster,
    nginx: &Nginx,
    tools: &BrowserTools,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    AssertUnwindSafe(async {
        scenario(browser, stack, nginx).await;
        other_nodes_json(browser, stack, tools).await;
    })
    .catch_unwind()
    .await
}

/// Another nginx in front of the same cluster whose `/nodes.json` lists secondary-2 and the
/// master, in that order: the page shows those two columns only, in that order (the master's
/// view of secondary-2 still in secondary-2's column), and an append through secondary-2 shows
/// in both.
async fn other_nodes_json(browser: &Client, stack: &Cluster, tools: &BrowserTools) {
    let nginx = Nginx::start_with(
        &tools.nginx_tools(),
        stack,
        &stack.dir.join("nginx-two-columns"),
        Some(r#"["secondary-2","master"]"#),
    )
    .await;
    let listed = ["secondary-2", "master"];
    browser
        .goto(&nginx.url("/"))
        .await
        .expect("open the two-column page");
    wait_css(
        browser,
        "body[data-ready='true']",
        "the wasm client to start",
    )
    .await;
    columns_from_nodes_json(browser, &listed, &["Secondary 2", "Master"]).await;
    for (column, role) in listed.iter().zip(["secondary", "master"]) {
        wait_css(
            browser,
            &format!("#col-{column}[data-status='up'][data-watch='open']"),
            &format!("the {column} column to be up with its Watch open"),
        )
        .await;
        wait_css(
            browser,
            &format!("#role-{column}[data-role='{role}']"),
            &format!("the {column} column's role badge to say {role}"),
        )
        .await;
    }
    wait_css(
        browser,
        "#cluster[data-state='up'][data-master='master']",
        "the cluster summary to say up with master as the master",
    )
    .await;
    wait_css(
        browser,
        "#master-view-secondary-2[data-status='healthy']",
        "the master's view of secondary-2 in its column",
    )
    .await;
    let message = "through secondary-2 on the two-column page";
    let clicked = append(browser, "secondary-2", 2, message).await;
    let (id, _, _) = appended_and_shown(browser, clicked, message, &listed).await;
    println!("two-column page (/nodes.json {listed:?}): append #{id} shown in both columns");
    screenshot(browser, "replog-two-columns.png").await;
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

/// The page of a failover cluster (a real etcd and three `replog` nodes behind
/// `nginx/nginx-failover.conf`, as the failover compose stack runs them): the columns are the
/// nodes `/nodes.json` lists, titled by the nodes' own names; every column's role badge and
/// leadership line say who is master in which term; an append through a secondary shows in every
/// column. When the master is killed, the page follows the next one: its column's badge turns
/// master, every live column's leadership line names it with the later term, the summary names
/// it; an append still shows in the live columns; the old master comes back as a secondary and
/// catches up. Saves `target/screenshots/replog-failover.png`.
#[tokio::test]
async fn failover_page_follows_the_master() {
    if base_url().is_some() {
        eprintln!("SKIPPED: {BASE_URL_ENV} is set, so page_on_a_running_stack drives that stack");
        return;
    }
    let Some(tools) = browser_tools() else {
        return;
    };
    let mut cluster = FailoverCluster::start(3, &[]).await;
    let nginx =
        Nginx::start_failover(&tools.nginx_tools(), &cluster, &cluster.dir.join("nginx")).await;
    let driver = Chromedriver::start(&tools.chromedriver, &cluster.dir, &cluster.client).await;
    let profile = tempfile::tempdir().expect("a fresh Chromium profile");
    let browser = open_browser(&tools.chromium, &driver, profile.path()).await;

    let outcome = AssertUnwindSafe(failover_scenario(&browser, &mut cluster, &nginx))
        .catch_unwind()
        .await;
    let _ = browser.close().await;
    drop(nginx);
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

async fn failover_scenario(browser: &Client, cluster: &mut FailoverCluster, nginx: &Nginx) {
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let listed: Vec<&str> = names.iter().map(String::as_str).collect();
    browser.goto(&nginx.url("/")).await.expect("open the page");
    wait_css(
        browser,
        "body[data-ready='true']",
        "the wasm client to start",
    )
    .await;
    // A node's label is its name, and a failover node's title the name it gives itself.
    columns_from_nodes_json(browser, &listed, &listed).await;
    let (master, term) = cluster.wait_master(FAILOVER_WAIT, None).await;
    println!("{} is master in term {term}", names[master]);
    shows_master(browser, &listed, master, term, None).await;

    let via = (master + 1) % names.len();
    let message = format!("through {} while {} leads", names[via], names[master]);
    let clicked = append(browser, &names[via], 3, &message).await;
    let (id, page_ms, _) = appended_and_shown(browser, clicked, &message, &listed).await;
    println!(
        "append #{id} via {} (a secondary): in all three columns {} after the click",
        names[via],
        page_ms.map_or("?".to_owned(), |ms| format!("{ms:.0} ms"))
    );

    // The master goes: another node takes over, and the page follows.
    cluster.nodes[master].kill();
    let killed = Instant::now();
    let (next, next_term) = cluster.wait_master(FAILOVER_WAIT, Some(master)).await;
    assert_ne!(next, master, "a killed node cannot lead");
    assert!(next_term > term, "term {next_term} after term {term}");
    wait_css(
        browser,
        &format!("#col-{}[data-status='down']", names[master]),
        "the killed master's column to show down",
    )
    .await;
    shows_master(browser, &listed, next, next_term, Some(master)).await;
    // The dead master's column keeps what it said last, marked as no longer so.
    let badge = wait_css(
        browser,
        &format!("#role-{}[data-stale='true']", names[master]),
        "the killed master's role badge to be marked stale",
    )
    .await;
    assert_eq!(badge.text().await.expect("the badge's text"), "was master");
    let line = wait_css(
        browser,
        &format!("#leadership-{}[data-stale='true']", names[master]),
        "the killed master's leadership line to be marked stale",
    )
    .await;
    let text = line.text().await.expect("the line's text");
    assert!(text.starts_with("last heard: master: "), "{text:?}");
    println!(
        "{} killed: the page shows {} as master in term {next_term} {:.1} s later",
        names[master],
        names[next],
        killed.elapsed().as_secs_f64()
    );
    let live: Vec<&str> = (0..names.len())
        .filter(|&i| i != master)
        .map(|i| listed[i])
        .collect();
    let via = (0..names.len())
        .find(|&i| i != master && i != next)
        .expect("a third node");
    let message = format!("through {} after the failover", names[via]);
    let clicked = append(browser, &names[via], 2, &message).await;
    let (id, _, _) = appended_and_shown(browser, clicked, &message, &live).await;
    screenshot(browser, "replog-failover.png").await;

    // The old master comes back as a secondary and catches up.
    cluster.nodes[master].start();
    shows_master(browser, &listed, next, next_term, None).await;
    wait_css(
        browser,
        &format!("#log-{} li[data-id='{id}']", names[master]),
        "the old master to catch up as a secondary",
    )
    .await;
}

/// How long a test waits for a master every running node names (a lease of
/// `failover::TEST_TTL_MS` to expire, an election, recovery).
const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// Every column but `down`'s is up with its Watch open, titled with its node's name, its role
/// badge master for `master` and secondary for the others, its leadership line naming `master`
/// in `term`; the master's view of each other live node is in that node's column; the summary
/// says up and names `master`.
async fn shows_master(
    browser: &Client,
    names: &[&str],
    master: usize,
    term: u64,
    down: Option<usize>,
) {
    let leader = names[master];
    for (i, name) in names.iter().enumerate() {
        if Some(i) == down {
            continue;
        }
        let role = if i == master { "master" } else { "secondary" };
        wait_css(
            browser,
            &format!("#col-{name}[data-status='up'][data-watch='open'][data-role='{role}']"),
            &format!("the {name} column to be up as {role} with its Watch open"),
        )
        .await;
        wait_css(
            browser,
            &format!("#role-{name}[data-role='{role}'][data-stale='false']:not([hidden])"),
            &format!("the {name} column's role badge to say {role}"),
        )
        .await;
        let line = wait_css(
            browser,
            &format!(
                "#leadership-{name}[data-master='{leader}'][data-term='{term}']:not([hidden])"
            ),
            &format!("the {name} column's leadership line to name {leader} in term {term}"),
        )
        .await;
        let text = line.text().await.expect("the leadership line's text");
        let expected = format!("master: {leader} · term {term} · since ");
        assert!(
            text.starts_with(&expected) && text.len() > expected.len(),
            "{name}: leadership line {text:?}, expected {expected:?} and a time"
        );
        let title = browser
            .find(Locator::Id(&format!("title-{name}")))
            .await
            .expect("the column's title")
            .text()
            .await
            .expect("the title's text");
        assert_eq!(
            title, *name,
            "a failover node's column is titled by its name"
        );
        if i == master {
            wait_css(
                browser,
                &format!("#master-view-{name}[hidden]"),
                "the master's column to show no master's view",
            )
            .await;
        } else {
            wait_css(
                browser,
                &format!("#master-view-{name}[data-status='healthy']:not([hidden])"),
                &format!("the master's view of {name} to be healthy in its column"),
            )
            .await;
        }
    }
    wait_css(
        browser,
        &format!("#cluster[data-state='up'][data-master='{leader}']"),
        &format!("the summary to say up with {leader} as master"),
    )
    .await;
}

/// An append through the page whose outcome cannot be known says so, and appending the same
/// message again does not append it twice. Injected: secondary-2 paused; a w=3 append through
/// the page via secondary-1 (grace 1 s), forwarded to the master, which shows it pending while
/// secondary-1 holds it; the master paused (SIGSTOP), so its answer cannot come; SIGTERM of
/// secondary-1, which answers `UNKNOWN` once its grace period ends. Then the master and
/// secondary-2 resume, secondary-1 starts again, and the page appends the same message again
/// (via the master).
/// Checked: the page shows the first attempt as "Outcome unknown" (`data-state='unknown'`), not
/// as an error; the second attempt (the page reuses the first one's key) answers the id the
/// first attempt got, and that message is in the log once, on every node and in every column.
#[tokio::test]
async fn page_shows_an_unknown_outcome_and_its_retry_does_not_append_twice() {
    if base_url().is_some() {
        eprintln!("SKIPPED: {BASE_URL_ENV} is set, so page_on_a_running_stack drives that stack");
        return;
    }
    let Some(tools) = browser_tools() else {
        return;
    };
    // Appends wait for their write concern without limit, so that the first attempt is still
    // undecided when its answer is lost.
    let mut stack = Cluster::start(
        vec![
            SecondaryOpts::new().env("SHUTDOWN_GRACE_SECONDS", "1"),
            SecondaryOpts::new(),
        ],
        &steady_health(&[("REPLICATION_TIMEOUT_SECONDS", "0")]),
    )
    .await;
    let nginx = Nginx::start(&tools.nginx_tools(), &stack, &stack.dir).await;
    let driver = Chromedriver::start(&tools.chromedriver, &stack.dir, &stack.client).await;
    let profile = tempfile::tempdir().expect("a fresh Chromium profile");
    let browser = open_browser(&tools.chromium, &driver, profile.path()).await;

    let outcome = AssertUnwindSafe(unknown_outcome_scenario(&browser, &mut stack, &nginx))
        .catch_unwind()
        .await;
    let _ = browser.close().await;
    drop(nginx);
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

async fn unknown_outcome_scenario(browser: &Client, stack: &mut Cluster, nginx: &Nginx) {
    const MESSAGE: &str = "fate unknown on the page";
    open_page(browser, &nginx.url("/")).await;

    stack.secondaries[1].stop();
    append(browser, "secondary-1", 3, MESSAGE).await;
    wait_until(PROMPTLY, "the master shows the append pending", || async {
        stack
            .try_health(&stack.master)
            .await
            .is_some_and(|h| h["pending"].as_u64().is_some_and(|p| p >= 1))
    })
    .await;
    wait_until(PROMPTLY, "secondary-1 holds the append", || async {
        stack.held(&stack.secondaries[0]).await >= 1
    })
    .await;
    stack.master.stop();
    // SIGTERM; secondary-1 answers its waiting forward once its 1 s grace period ends.
    let exit = stack.secondaries[0].terminate(Duration::from_secs(1) + PROMPTLY);
    assert_eq!(exit.code(), Some(0), "secondary-1 after SIGTERM: {exit}");

    let result = wait_css(
        browser,
        "#result[data-state='unknown']",
        "the append's outcome to show as unknown",
    )
    .await;
    let text = result.text().await.expect("the result's text");
    assert!(
        text.contains("Outcome unknown") && text.contains("UNKNOWN"),
        "an unknown outcome in words: {text:?}"
    );
    assert!(
        result.attr("data-id").await.expect("data-id").is_none(),
        "an unknown outcome names no id: {text:?}"
    );
    screenshot(browser, "replog-unknown-outcome.png").await;

    stack.master.cont();
    stack.secondaries[1].cont();
    stack.secondaries[0].start();
    stack.wait_ready().await;
    for column in COLUMNS {
        wait_css(
            browser,
            &format!("#col-{column}[data-status='up'][data-watch='open']"),
            &format!("the {column} column to be up again with its Watch open"),
        )
        .await;
    }

    let clicked = append(browser, "master", 3, MESSAGE).await;
    let (id, _, _) = appended_and_shown(browser, clicked, MESSAGE, &COLUMNS).await;
    println!("the retry of the unknown append answered #{id}");
    wait_until(
        Duration::from_secs(10),
        "every node lists the same log",
        || async {
            let lists = stack.all_messages().await;
            lists.iter().all(|(_, list)| *list == lists[0].1)
        },
    )
    .await;
    for (node, list) in stack.all_messages().await {
        let shown: Vec<u64> = list
            .iter()
            .filter(|(_, m)| m == MESSAGE)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(
            shown,
            [id],
            "{node} lists {MESSAGE:?} at {shown:?}: {list:?}"
        );
    }
    for column in COLUMNS {
        let mut shown = 0;
        for entry in browser
            .find_all(Locator::Css(&format!("#log-{column} li")))
            .await
            .expect("the column's entries")
        {
            if entry
                .text()
                .await
                .expect("an entry's text")
                .contains(MESSAGE)
            {
                shown += 1;
            }
        }
        assert_eq!(
            shown, 1,
            "the {column} column shows {MESSAGE:?} {shown} times"
        );
    }
}
