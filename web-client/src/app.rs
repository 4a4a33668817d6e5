//! The page in the browser: reads which nodes to show from `/nodes.json` (the static three
//! when it is missing or bad), builds a column per node into the skeleton of `index.html`, and
//! wires them to the nodes.
//!
//! Per node, two loops run for as long as the page is open:
//! - the Watch loop keeps a `Watch` stream open and appends each entry to the node's column as
//!   it arrives; when the stream breaks it marks the column and reconnects with backoff, from
//!   the entry after the last one shown;
//! - the Health loop asks `Health` every second (with a timeout, so a hung node reads as down).
//!   Each answer also says the node's role and, in failover mode, who is master: the master's
//!   column is worked out again from every answer, so the page follows a failover.
//!
//! Everything runs on the browser's one thread, so state is `Rc<RefCell<..>>`.

use crate::model::{self, Node};
use futures_util::future::{select, Either};
use replog_proto::v1::log_client::LogClient;
use replog_proto::v1::{AppendRequest, HealthReply, HealthRequest, LogEntry, WatchRequest};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{Document, Element, HtmlInputElement, HtmlSelectElement};

type Client = LogClient<tonic_web_wasm_client::Client>;

/// How often each node's health is asked.
const HEALTH_EVERY_MS: u32 = 1_000;
/// A `Health` call that takes longer than this counts as a node that is down (or hung).
const HEALTH_TIMEOUT_MS: u32 = 2_500;
/// Entries kept in a column; older ones scroll out (the log itself keeps them all).
const MAX_SHOWN: u32 = 500;
/// Results of earlier appends listed under the form.
const HISTORY: u32 = 6;
/// Where the page learns which nodes to show.
const NODES_PATH: &str = "/nodes.json";

#[derive(Default)]
struct Column {
    /// Highest id shown in this column.
    shown: u64,
    /// The log identity the column shows; a node that returns with another log starts over.
    log_id: String,
    /// Bumped when the column starts over, so that an older Watch stream stops adding to it.
    epoch: u64,
    watch_open: bool,
    watch_error: Option<String>,
    health: Option<HealthReply>,
    health_error: Option<String>,
}

/// The latest append, until its entry shows in every column.
struct Awaiting {
    id: u64,
    started_ms: f64,
}

struct App {
    doc: Document,
    origin: String,
    /// The nodes shown, in column order.
    nodes: Vec<Node>,
    columns: Vec<RefCell<Column>>,
    /// The master's column, as the latest health answers say.
    master: Cell<Option<usize>>,
    awaiting: RefCell<Option<Awaiting>>,
    append_seq: RefCell<u64>,
    /// When the page started, in ms since the epoch: part of every append's key.
    started_ms: f64,
    /// The message and key of the last append whose outcome was unknown: appending the same
    /// message again reuses its key, so the retry cannot append it twice.
    unknown: RefCell<Option<(String, String)>>,
}

pub fn start() {
    console_log("replog web client starting");
    spawn_local(run());
}

async fn run() {
    let window = web_sys::window().expect("a window");
    let doc = window.document().expect("a document");
    let origin = window.location().origin().expect("the page's origin");
    let started_ms = js_sys::Date::now();
    let (nodes, source) = match load_nodes(&origin).await {
        Ok(nodes) => (nodes, "nodes.json"),
        Err(why) => {
            console_log(&format!(
                "{NODES_PATH}: {why}; showing the built-in nodes {:?}",
                model::DEFAULT_NODES
            ));
            (model::default_nodes(), "built-in")
        }
    };
    let master = nodes.iter().position(|n| n.name == "master");
    let app = Rc::new(App {
        doc,
        origin,
        columns: nodes.iter().map(|_| RefCell::default()).collect(),
        nodes,
        master: Cell::new(master),
        awaiting: RefCell::new(None),
        append_seq: RefCell::new(0),
        started_ms,
        unknown: RefCell::new(None),
    });
    app.build_columns(source);
    app.fill_form();
    app.wire_form();
    for index in 0..app.nodes.len() {
        app.render_status(index);
        app.render_master_view(index);
        spawn_local(watch_loop(app.clone(), index));
        spawn_local(health_loop(app.clone(), index));
    }
    app.render_cluster_summary();
    if let Some(body) = app.doc.body() {
        let _ = body.set_attribute("data-ready", "true");
    }
}

/// The nodes `/nodes.json` lists, or why it cannot be used (missing, not JSON, bad names).
async fn load_nodes(origin: &str) -> Result<Vec<Node>, String> {
    let url = format!("{origin}{NODES_PATH}");
    let fetch = Box::pin(async move {
        let response = gloo_net::http::Request::get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.ok() {
            return Err(format!(
                "HTTP {} {}",
                response.status(),
                response.status_text()
            ));
        }
        response.text().await.map_err(|e| e.to_string())
    });
    let text = match select(fetch, Box::pin(sleep(HEALTH_TIMEOUT_MS))).await {
        Either::Left((text, _)) => text?,
        Either::Right(_) => return Err(format!("no answer within {HEALTH_TIMEOUT_MS} ms")),
    };
    let value = js_sys::JSON::parse(&text).map_err(|_| model::NodesError::NotAList.to_string())?;
    if !js_sys::Array::is_array(&value) {
        return Err(model::NodesError::NotAList.to_string());
    }
    let names = js_sys::Array::from(&value)
        .iter()
        .map(|v| v.as_string().ok_or(model::NodesError::NotAList))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| e.to_string())?;
    model::parse_nodes(&names).map_err(|e| e.to_string())
}

impl App {
    fn client(&self, index: usize) -> Client {
        let base = format!("{}{}", self.origin, self.nodes[index].base_path());
        LogClient::new(tonic_web_wasm_client::Client::new(base))
    }

    fn by_id(&self, id: &str) -> Element {
        self.doc
            .get_element_by_id(id)
            .unwrap_or_else(|| panic!("index.html has no #{id}"))
    }

    fn element(&self, tag: &str, class: &str, text: &str) -> Element {
        let element = self.doc.create_element(tag).expect("create element");
        if !class.is_empty() {
            element.set_class_name(class);
        }
        if !text.is_empty() {
            element.set_text_content(Some(text));
        }
        element
    }

    /// One column per node, in the list's order. Every element a test or the code finds
    /// carries the node's name in its id (`col-<name>`, `log-<name>`, ...).
    fn build_columns(&self, source: &str) {
        let columns = self.by_id("columns");
        let _ = columns.set_attribute("data-source", source);
        let _ = columns.set_attribute("data-count", &self.nodes.len().to_string());
        for node in &self.nodes {
            let name = &node.name;
            let section = self.element("section", "column", "");
            let _ = section.set_attribute("id", &format!("col-{name}"));
            let _ = section.set_attribute("data-node", name);
            let _ = section.set_attribute("data-status", "connecting");
            let heading = self.element("h2", "", "");
            let title = self.element("span", "title", &node.label);
            let _ = title.set_attribute("id", &format!("title-{name}"));
            let role = self.element("span", "role", "");
            let _ = role.set_attribute("id", &format!("role-{name}"));
            let _ = role.set_attribute("hidden", "");
            let badge = self.element("span", "badge", "connecting…");
            let _ = badge.set_attribute("id", &format!("badge-{name}"));
            for part in [&title, &role, &badge] {
                let _ = heading.append_child(part);
            }
            let _ = section.append_child(&heading);
            for (tag, class, prefix, text) in [
                ("p", "leadership", "leadership", ""),
                ("dl", "health", "health", ""),
                ("p", "master-view", "master-view", ""),
                ("p", "conn", "conn", ""),
                ("p", "count", "count", "empty"),
                ("ol", "log", "log", ""),
            ] {
                let part = self.element(tag, class, text);
                let _ = part.set_attribute("id", &format!("{prefix}-{name}"));
                let _ = section.append_child(&part);
            }
            let _ = columns.append_child(&section);
        }
    }

    fn fill_form(&self) {
        let node = self.by_id("node");
        for n in &self.nodes {
            let option = self.element("option", "", &n.label);
            let _ = option.set_attribute("value", &n.name);
            let _ = node.append_child(&option);
        }
        let w = self.by_id("w");
        let choices = model::w_choices(self.nodes.len());
        let most = choices.last().copied();
        for choice in choices {
            let option = self.element("option", "", &choice.to_string());
            let _ = option.set_attribute("value", &choice.to_string());
            if Some(choice) == most {
                let _ = option.set_attribute("selected", "");
            }
            let _ = w.append_child(&option);
        }
    }

    /// What the page calls the node of column `index` now.
    fn title(&self, index: usize) -> String {
        let column = self.columns[index].borrow();
        model::title(&self.nodes[index], column.health.as_ref())
    }

    fn wire_form(self: &Rc<Self>) {
        let app = self.clone();
        let on_submit = Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
            event.prevent_default();
            app.submit();
        });
        self.by_id("append-form")
            .add_event_listener_with_callback("submit", on_submit.as_ref().unchecked_ref())
            .expect("listen to submit");
        // The listener lives as long as the page.
        on_submit.forget();
    }

    fn submit(self: &Rc<Self>) {
        let node_name = self
            .by_id("node")
            .dyn_into::<HtmlSelectElement>()
            .map(|s| s.value())
            .unwrap_or_default();
        let index = self
            .nodes
            .iter()
            .position(|n| n.name == node_name)
            .unwrap_or(0);
        let w: u32 = self
            .by_id("w")
            .dyn_into::<HtmlSelectElement>()
            .ok()
            .and_then(|s| s.value().parse().ok())
            .unwrap_or(self.nodes.len() as u32);
        let input = self
            .by_id("message")
            .dyn_into::<HtmlInputElement>()
            .expect("#message is an input");
        let message = input.value();
        let seq = {
            let mut seq = self.append_seq.borrow_mut();
            *seq += 1;
            *seq
        };
        let key = match &*self.unknown.borrow() {
            Some((unknown, key)) if *unknown == message => key.clone(),
            _ => model::append_key(self.started_ms, seq),
        };
        let label = self.title(index);
        self.show_result(
            "pending",
            &format!("Appending via {label} with w={w}…"),
            None,
        );
        let started_ms = now_ms();
        let app = self.clone();
        spawn_local(async move {
            let reply = app
                .client(index)
                .append(AppendRequest {
                    message: message.clone(),
                    w: Some(w),
                    key: Some(key.clone()),
                })
                .await;
            let took = now_ms() - started_ms;
            let latest = *app.append_seq.borrow() == seq;
            {
                let mut unknown = app.unknown.borrow_mut();
                match &reply {
                    Err(status) if model::outcome_unknown(i32::from(status.code())) => {
                        *unknown = Some((message.clone(), key));
                    }
                    _ if unknown.as_ref().is_some_and(|(_, k)| *k == key) => *unknown = None,
                    _ => {}
                }
            }
            match reply {
                Ok(reply) => {
                    let id = reply.into_inner().id;
                    let text =
                        format!("Appended #{id} via {label} (w={w}), answered in {took:.0} ms");
                    app.add_history("ok", &format!("#{id} “{message}” via {label}, w={w}"));
                    if latest {
                        if input.value() == message {
                            input.set_value("");
                        }
                        app.show_result("ok", &text, Some(id));
                        *app.awaiting.borrow_mut() = Some(Awaiting { id, started_ms });
                        app.check_everywhere();
                    }
                }
                Err(status) => {
                    let code = i32::from(status.code());
                    let text = model::describe_append_error(code, status.message());
                    let state = if model::outcome_unknown(code) {
                        "unknown"
                    } else {
                        "error"
                    };
                    app.add_history(state, &format!("{text} (via {label}, w={w})"));
                    if latest {
                        app.show_result(state, &text, None);
                    }
                }
            }
        });
    }

    fn show_result(&self, state: &str, text: &str, id: Option<u64>) {
        let result = self.by_id("result");
        let _ = result.set_attribute("data-state", state);
        match id {
            Some(id) => {
                let _ = result.set_attribute("data-id", &id.to_string());
            }
            None => {
                let _ = result.remove_attribute("data-id");
            }
        }
        let _ = result.remove_attribute("data-all-visible-ms");
        self.by_id("result-text").set_text_content(Some(text));
        self.by_id("result-visible").set_text_content(None);
    }

    fn add_history(&self, state: &str, text: &str) {
        let history = self.by_id("history");
        let item = self.element("li", "", text);
        let _ = item.set_attribute("data-state", state);
        let _ = history.insert_before(&item, history.first_child().as_ref());
        while history.child_element_count() > HISTORY {
            if let Some(last) = history.last_element_child() {
                last.remove();
            }
        }
    }

    /// When the latest append's entry shows in every column, says how long that took from
    /// the click (also as `data-all-visible-ms`, which the browser test reads).
    fn check_everywhere(&self) {
        let Some(awaiting) = self
            .awaiting
            .borrow()
            .as_ref()
            .map(|a| (a.id, a.started_ms))
        else {
            return;
        };
        let (id, started_ms) = awaiting;
        if self.columns.iter().all(|c| c.borrow().shown >= id) {
            let took = now_ms() - started_ms;
            let result = self.by_id("result");
            if result.get_attribute("data-id").as_deref() == Some(id.to_string().as_str()) {
                let _ = result.set_attribute("data-all-visible-ms", &format!("{took:.0}"));
                self.by_id("result-visible").set_text_content(Some(&format!(
                    "Shown on all {} nodes {took:.0} ms after the click.",
                    self.nodes.len()
                )));
            }
            *self.awaiting.borrow_mut() = None;
        }
    }

    fn add_entry(&self, index: usize, entry: LogEntry) {
        {
            let mut column = self.columns[index].borrow_mut();
            if entry.id <= column.shown {
                return;
            }
            column.shown = entry.id;
        }
        let name = &self.nodes[index].name;
        let list = self.by_id(&format!("log-{name}"));
        let item = self.element("li", "", "");
        let _ = item.set_attribute("data-id", &entry.id.to_string());
        let _ = item.append_child(&self.element("span", "entry-id", &entry.id.to_string()));
        let _ = item.append_child(&self.element("span", "entry-message", &entry.message));
        let _ = list.append_child(&item);
        while list.child_element_count() > MAX_SHOWN {
            if let Some(first) = list.first_element_child() {
                first.remove();
            }
        }
        // Keep the newest entry in view.
        list.set_scroll_top(list.scroll_height());
        self.render_count(index);
        self.check_everywhere();
    }

    fn render_count(&self, index: usize) {
        let name = &self.nodes[index].name;
        let shown = self.by_id(&format!("log-{name}")).child_element_count();
        let last = self.columns[index].borrow().shown;
        let text = match last {
            0 => "empty".to_owned(),
            last if u64::from(shown) < last => format!("{shown} entries, last #{last}"),
            last => format!("{last} entries"),
        };
        self.by_id(&format!("count-{name}"))
            .set_text_content(Some(&text));
    }

    /// Starts the column over (the node came back with another log identity).
    fn reset_column(&self, index: usize) {
        {
            let mut column = self.columns[index].borrow_mut();
            column.shown = 0;
            column.epoch += 1;
        }
        let name = &self.nodes[index].name;
        self.by_id(&format!("log-{name}")).set_inner_html("");
        self.render_count(index);
    }

    fn set_watch(&self, index: usize, open: bool, error: Option<String>) {
        {
            let mut column = self.columns[index].borrow_mut();
            column.watch_open = open;
            column.watch_error = error;
        }
        self.render_status(index);
    }

    fn set_health(&self, index: usize, health: Result<HealthReply, String>) {
        match health {
            Ok(health) => {
                let reset = {
                    let mut column = self.columns[index].borrow_mut();
                    let reset = !column.log_id.is_empty() && column.log_id != health.log_id;
                    column.log_id = health.log_id.clone();
                    column.health = Some(health);
                    column.health_error = None;
                    reset
                };
                if reset {
                    self.reset_column(index);
                }
            }
            Err(error) => {
                let mut column = self.columns[index].borrow_mut();
                column.health_error = Some(error);
            }
        }
        self.render_status(index);
        let previous = self.master.get();
        let master = {
            let columns: Vec<_> = self.columns.iter().map(|c| c.borrow()).collect();
            let live: Vec<Option<&HealthReply>> = columns
                .iter()
                .map(|c| c.health.as_ref().filter(|_| c.health_error.is_none()))
                .collect();
            model::master_index(&self.nodes, &live, previous)
        };
        self.master.set(master);
        // The master's view of each other node shows in that node's column.
        for other in 0..self.nodes.len() {
            self.render_master_view(other);
        }
        self.render_cluster_summary();
    }

    /// The master's latest health, if a column is the master's and its last call answered.
    fn master_health(&self) -> Option<(usize, std::cell::Ref<'_, HealthReply>)> {
        let master = self.master.get()?;
        let column = self.columns[master].borrow();
        if column.health_error.is_some() {
            return None;
        }
        std::cell::Ref::filter_map(column, |c| c.health.as_ref())
            .ok()
            .map(|h| (master, h))
    }

    fn render_master_view(&self, index: usize) {
        let name = &self.nodes[index].name;
        let Some(view) = self.doc.get_element_by_id(&format!("master-view-{name}")) else {
            return;
        };
        if self.master.get() == Some(index) {
            let _ = view.set_attribute("hidden", "");
            let _ = view.set_attribute("data-status", "self");
            view.set_text_content(None);
            return;
        }
        let _ = view.remove_attribute("hidden");
        let (status, title, text) = match self.master_health() {
            Some((master, health)) => {
                match model::secondary_of(&self.nodes, master, index, &health) {
                    Some(s) => (
                        s.status.clone(),
                        s.address.clone(),
                        format!("Master sees: {}", model::master_view(s)),
                    ),
                    None => (
                        "unknown".to_owned(),
                        String::new(),
                        "Master sees: (not among its secondaries)".to_owned(),
                    ),
                }
            }
            None if self.columns.iter().all(|c| c.borrow().health.is_none()) => (
                "unknown".to_owned(),
                String::new(),
                "Master sees: (connecting…)".to_owned(),
            ),
            None if self.master.get().is_none() && self.failover_mode() => (
                "unknown".to_owned(),
                String::new(),
                "Master sees: (no master)".to_owned(),
            ),
            None => (
                "unknown".to_owned(),
                String::new(),
                "Master sees: (master not reachable)".to_owned(),
            ),
        };
        let _ = view.set_attribute("data-status", &status);
        let _ = view.set_attribute("title", &title);
        view.set_text_content(Some(&text));
    }

    /// Whether any node answered as a failover node.
    fn failover_mode(&self) -> bool {
        self.columns.iter().any(|c| {
            c.borrow()
                .health
                .as_ref()
                .is_some_and(|h| h.leadership.is_some())
        })
    }

    fn render_status(&self, index: usize) {
        let node = &self.nodes[index];
        let name = &node.name;
        let column = self.columns[index].borrow();
        let (status, badge_text) = match (&column.health_error, &column.health) {
            (Some(_), _) => ("down", "down".to_owned()),
            (None, None) => ("connecting", "connecting…".to_owned()),
            (None, Some(health)) => {
                let badge = model::badge(health);
                if column.watch_open || badge.status == "read-only" {
                    (badge.status, badge.text)
                } else {
                    ("connecting", "reconnecting…".to_owned())
                }
            }
        };
        let section = self.by_id(&format!("col-{name}"));
        let _ = section.set_attribute("data-status", status);
        let _ = section.set_attribute(
            "data-watch",
            if column.watch_open { "open" } else { "closed" },
        );
        if let Some(health) = &column.health {
            let _ = section.set_attribute("data-role", &health.role);
            let _ = section.set_attribute(
                "data-read-only",
                if health.read_only { "true" } else { "false" },
            );
        }
        let badge = self.by_id(&format!("badge-{name}"));
        badge.set_text_content(Some(&badge_text));
        let _ = badge.set_attribute("data-status", status);

        self.by_id(&format!("title-{name}"))
            .set_text_content(Some(&model::title(node, column.health.as_ref())));
        // A node that stopped answering shows what it said last, marked as such: a dead master
        // must not read as the master next to the one that took over.
        let stale = if column.health_error.is_some() {
            "true"
        } else {
            "false"
        };
        let role = self.by_id(&format!("role-{name}"));
        match &column.health {
            Some(health) => {
                let text = model::role(health);
                let shown = model::role_badge(health, column.health_error.is_none());
                role.set_text_content(Some(&shown));
                let _ = role.set_attribute("data-role", text);
                let _ = role.set_attribute("data-stale", stale);
                let _ = role.remove_attribute("hidden");
            }
            None => {
                let _ = role.set_attribute("hidden", "");
            }
        }
        let leadership = self.by_id(&format!("leadership-{name}"));
        match column.health.as_ref().and_then(|h| h.leadership.as_ref()) {
            Some(l) => {
                let mut line = model::leadership_line(l, local_time);
                if column.health_error.is_some() {
                    line = format!("last heard: {line}");
                }
                leadership.set_text_content(Some(&line));
                let _ = leadership.set_attribute("data-stale", stale);
                let _ = leadership.set_attribute("data-master", &l.master);
                let _ = leadership.set_attribute("data-term", &l.term.to_string());
                let _ = leadership.remove_attribute("hidden");
            }
            None => {
                leadership.set_text_content(None);
                let _ = leadership.remove_attribute("data-master");
                let _ = leadership.remove_attribute("data-term");
                let _ = leadership.set_attribute("hidden", "");
            }
        }

        let facts = self.by_id(&format!("health-{name}"));
        facts.set_inner_html("");
        if let Some(health) = &column.health {
            for fact in model::facts(health) {
                let row = self.element("div", "fact", "");
                let _ = row.set_attribute("data-key", fact.key);
                let _ = row.append_child(&self.element("dt", "", fact.label));
                let _ = row.append_child(&self.element("dd", "", &fact.value));
                let _ = facts.append_child(&row);
            }
        }
        let connection = self.by_id(&format!("conn-{name}"));
        let text = match (&column.health_error, &column.watch_error, column.watch_open) {
            (Some(error), _, _) => format!("Unreachable: {error}. Retrying…"),
            (None, _, true) => "Live: Watch stream open.".to_owned(),
            (None, Some(error), false) => format!("Watch: {error}. Reconnecting…"),
            (None, None, false) => "Opening the Watch stream…".to_owned(),
        };
        connection.set_text_content(Some(&text));
    }

    /// One line over the columns: is the cluster taking appends, and which node is master.
    fn render_cluster_summary(&self) {
        let summary = self.by_id("cluster");
        let master = self.master.get();
        let title = master.map(|m| self.title(m));
        let health = self.master_health();
        let answered = self.columns.iter().any(|c| c.borrow().health.is_some());
        let (state, text) = model::summary(
            title
                .as_deref()
                .map(|t| (t, health.as_ref().map(|(_, h)| &**h))),
            self.failover_mode(),
            answered,
        );
        let _ = summary.set_attribute("data-state", state);
        match master {
            Some(m) => {
                let _ = summary.set_attribute("data-master", &self.nodes[m].name);
            }
            None => {
                let _ = summary.remove_attribute("data-master");
            }
        }
        summary.set_text_content(Some(&text));
    }
}

async fn watch_loop(app: Rc<App>, index: usize) {
    let mut attempt = 0u32;
    loop {
        let (from_id, epoch) = {
            let column = app.columns[index].borrow();
            (model::watch_from(column.shown), column.epoch)
        };
        let error = match app.client(index).watch(WatchRequest { from_id }).await {
            Ok(response) => {
                attempt = 0;
                app.set_watch(index, true, None);
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(entry)) => {
                            if app.columns[index].borrow().epoch != epoch {
                                break "the node's log changed; reloading it".to_owned();
                            }
                            app.add_entry(index, entry);
                        }
                        Ok(None) => break "the stream ended".to_owned(),
                        Err(status) => {
                            break watch_failed(&app, index, status.code().into(), status.message())
                        }
                    }
                }
            }
            Err(status) => watch_failed(&app, index, status.code().into(), status.message()),
        };
        let delay = model::backoff_ms(attempt);
        attempt += 1;
        app.set_watch(index, false, Some(error));
        sleep(delay).await;
    }
}

/// A failed `Watch`, in words. A start below the node's first retained id (its retention
/// removed what the column would show next) starts the column over from what it keeps.
fn watch_failed(app: &App, index: usize, code: i32, message: &str) -> String {
    if model::behind_retention(code) {
        app.reset_column(index);
    }
    model::describe_error(code, message)
}

async fn health_loop(app: Rc<App>, index: usize) {
    loop {
        let mut client = app.client(index);
        let call = Box::pin(async move { client.health(HealthRequest {}).await });
        let result = match select(call, Box::pin(sleep(HEALTH_TIMEOUT_MS))).await {
            Either::Left((Ok(reply), _)) => Ok(reply.into_inner()),
            Either::Left((Err(status), _)) => Err(model::describe_error(
                i32::from(status.code()),
                status.message(),
            )),
            Either::Right(_) => Err(format!("no answer within {HEALTH_TIMEOUT_MS} ms")),
        };
        let result = match result {
            Ok(reply) => Ok(reply),
            Err(error) => Err(explain_failure(&app, index, error).await),
        };
        app.set_health(index, result);
        sleep(HEALTH_EVERY_MS).await;
    }
}

/// A failed `Health` call, in words: asks the node's plain-HTTP liveness route (`GET
/// /health`) to tell "the node is gone" (nginx answers 502) from "gRPC-Web failed on a live node".
async fn explain_failure(app: &App, index: usize, grpc_error: String) -> String {
    let url = format!("{}{}/health", app.origin, app.nodes[index].base_path());
    let probe = Box::pin(gloo_net::http::Request::get(&url).send());
    match select(probe, Box::pin(sleep(HEALTH_TIMEOUT_MS))).await {
        Either::Left((Ok(response), _)) if response.ok() => {
            format!("gRPC-Web failed on a live node ({grpc_error})")
        }
        Either::Left((Ok(response), _)) if response.status() == 502 || response.status() == 504 => {
            "the node does not answer (nginx: bad gateway)".to_owned()
        }
        Either::Left((Ok(response), _)) => {
            format!("HTTP {} {}", response.status(), response.status_text())
        }
        Either::Left((Err(_), _)) => "the page's server (nginx) cannot be reached".to_owned(),
        Either::Right(_) => grpc_error,
    }
}

async fn sleep(ms: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let window = web_sys::window().expect("a window");
        let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms as i32);
    });
    let _ = JsFuture::from(promise).await;
}

/// A Unix time in ms on the reader's clock (see [`model::local_time`]).
fn local_time(unix_ms: u64) -> String {
    let offset = js_sys::Date::new(&JsValue::from_f64(unix_ms as f64)).get_timezone_offset();
    model::local_time(unix_ms, js_sys::Date::now() as u64, offset as i64)
}

fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or_default()
}

fn console_log(text: &str) {
    web_sys::console::log_1(&JsValue::from_str(text));
}
