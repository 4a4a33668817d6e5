//! A recorded workload for fault tests: concurrent clients append unique messages through
//! random nodes with random write concerns, pollers list every node's log, and everything
//! goes into one [`History`] to be checked at the end.

use crate::history::{Append, History, Outcome, Violation};
use crate::Appender;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// A node the workload appends through and lists.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub appender: Appender,
    /// `GET` URL of its list (`.../api/messages`).
    pub list_url: String,
}

/// Clients and pollers running against the targets.
pub struct Workload {
    pub start: Instant,
    pub history: Arc<Mutex<History>>,
    /// Each target's epoch: one more at every wipe of its disk (see `History::record_list`).
    pub epochs: Arc<Vec<AtomicU64>>,
    stop_clients: Arc<AtomicBool>,
    stop_polls: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Append>>>,
    pollers: Vec<JoinHandle<usize>>,
}

impl Workload {
    /// Starts `clients` clients (client `c` appends `"c{c}-{n}"` through a random target with
    /// `w` drawn from `w`, each answer waited for at most `answer_timeout`) and one poller per
    /// target (every 300 ms). `seed` makes the choices repeatable.
    pub fn start(
        targets: &[Target],
        clients: usize,
        seed: u64,
        w: RangeInclusive<u64>,
        answer_timeout: Duration,
    ) -> Workload {
        let start = Instant::now();
        let history = Arc::new(Mutex::new(History::new()));
        let epochs: Arc<Vec<AtomicU64>> =
            Arc::new(targets.iter().map(|_| AtomicU64::new(0)).collect());
        let stop_clients = Arc::new(AtomicBool::new(false));
        let stop_polls = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|c| {
                let targets: Vec<(String, Appender)> = targets
                    .iter()
                    .map(|t| (t.name.clone(), t.appender.with_timeout(answer_timeout)))
                    .collect();
                tokio::spawn(client(
                    c,
                    seed,
                    targets,
                    w.clone(),
                    start,
                    stop_clients.clone(),
                ))
            })
            .collect();
        let pollers = targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                tokio::spawn(poller(
                    i,
                    t.name.clone(),
                    t.list_url.clone(),
                    epochs.clone(),
                    history.clone(),
                    start,
                    stop_polls.clone(),
                ))
            })
            .collect();
        Workload {
            start,
            history,
            epochs,
            stop_clients,
            stop_polls,
            clients,
            pollers,
        }
    }

    /// Stops the clients after their current append (each waits at most `timeout` more) and
    /// returns every append they made.
    pub async fn stop_clients(&mut self, timeout: Duration) -> Vec<Append> {
        self.stop_clients.store(true, Ordering::Relaxed);
        let mut appends = Vec::new();
        for task in self.clients.drain(..) {
            let done = tokio::time::timeout(timeout, task)
                .await
                .expect("every client's last append is answered or times out");
            appends.extend(done.expect("a client task"));
        }
        appends
    }

    /// Stops the pollers, records `appends` and checks the history against `finals` (each
    /// node's list at the end). Returns the violations, the answers counted by kind and how
    /// many lists were polled.
    pub async fn check(
        self,
        appends: Vec<Append>,
        finals: &[crate::history::Final],
    ) -> (Vec<Violation>, BTreeMap<String, usize>, usize) {
        self.stop_polls.store(true, Ordering::Relaxed);
        let mut polled = 0;
        for task in self.pollers {
            polled += task.await.expect("a poller task");
        }
        let counts = count(&appends);
        let mut history =
            std::mem::take(&mut *self.history.lock().unwrap_or_else(|p| p.into_inner()));
        for append in appends {
            history.record_append(append);
        }
        (history.check(finals), counts, polled)
    }
}

/// Appends counted by answer: "200", "500", "503", "unknown", "not sent", ...
pub fn count(appends: &[Append]) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for append in appends {
        let kind = match &append.outcome {
            Outcome::Committed(_) => "200".to_owned(),
            Outcome::Refused(status) => status.to_string(),
            Outcome::Unknown => "unknown".to_owned(),
            Outcome::NotSent => "not sent".to_owned(),
            Outcome::Unexpected(what) => what.clone(),
        };
        *count.entry(kind).or_insert(0) += 1;
    }
    count
}

/// One client: appends `"c{client}-{n}"` with a random `w` through a random target until told
/// to stop, recording every answer.
async fn client(
    client: usize,
    seed: u64,
    targets: Vec<(String, Appender)>,
    w: RangeInclusive<u64>,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Append> {
    let mut rng =
        StdRng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(client as u64 + 1)));
    let mut appends = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let (name, appender) = &targets[rng.random_range(0..targets.len())];
        let w = rng.random_range(w.clone());
        let message = format!("c{client}-{n}");
        n += 1;
        let sent = start.elapsed();
        let answer = appender.try_append(&message, Some(w)).await;
        let answered = start.elapsed();
        let outcome = match &answer {
            Ok((status, body)) => Outcome::of_answer(status.as_u16(), body["id"].as_u64()),
            Err(e) if e.is_connect() => Outcome::NotSent,
            Err(_) => Outcome::Unknown,
        };
        let definite = matches!(outcome, Outcome::Committed(_));
        appends.push(Append {
            client,
            node: name.clone(),
            message,
            w,
            sent,
            answered,
            outcome,
        });
        if !definite {
            // A node that is down answers at once; do not spin on it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    appends
}

/// Lists target `i`'s log every 300 ms into the history, with its epoch (a list whose request
/// straddled a wipe is dropped).
async fn poller(
    i: usize,
    name: String,
    url: String,
    epochs: Arc<Vec<AtomicU64>>,
    history: Arc<Mutex<History>>,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> usize {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let mut lists = 0;
    while !stop.load(Ordering::Relaxed) {
        let epoch = epochs[i].load(Ordering::SeqCst);
        if let Some(list) = list_of(&client, &url).await {
            if epochs[i].load(Ordering::SeqCst) == epoch {
                let at = start.elapsed();
                history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record_list(&name, epoch, at, list);
                lists += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    lists
}

/// `GET url` as a list of `(id, message)`, or `None` if it does not answer 200 with one.
pub async fn list_of(client: &reqwest::Client, url: &str) -> Option<Vec<(u64, String)>> {
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    body["messages"]
        .as_array()?
        .iter()
        .map(|m| Some((m["id"].as_u64()?, m["message"].as_str()?.to_owned())))
        .collect()
}
