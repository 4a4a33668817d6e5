//! A history of appends and of what the nodes showed, and the checker that judges it against
//! the contract (README's answer table, ARCHITECTURE.md's log):
//!
//! - every append answered 200 is on every node at the end, at its id, with its message (a `w=1`
//!   append acknowledged before the master lost its disk is excepted: it lived on that disk
//!   only);
//! - an append answered 500, 503, 429 or 4xx is never shown by any node, nor one whose
//!   connection could not be made;
//! - no id ever shows two messages, on one node or across nodes, and no message shows under two
//!   ids (nor one that was never sent);
//! - each node's list only grows: every list it shows starts with the one it showed before
//!   (a node whose disk was wiped starts over, in a new *epoch*);
//! - real time: an append acknowledged before another was sent has the smaller id;
//! - every node shows the same list at the end.
//!
//! 504 (outcome unknown) and transport errors allow either outcome. Any other answer breaks the
//! answer table and is a violation too.
//!
//! Lists are checked as they are recorded ([`History::record_list`]), so a long run keeps only
//! each node's latest list, not every list it showed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

/// A node's visible log: `(id, message)` in id order.
pub type List = Vec<(u64, String)>;

/// A node's name and its list at the end (`None` if it did not answer).
pub type Final = (String, Option<List>);

/// What an append got back, as the answer table classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with this id: committed.
    Committed(u64),
    /// 500, 503, 429 or another 4xx: nothing appended.
    Refused(u16),
    /// The connection could not be made: the request never reached a node.
    NotSent,
    /// 504, or no answer (the connection failed or timed out): it may or may not be appended.
    Unknown,
    /// Any other answer, or a 200 without an id: not in the answer table.
    Unexpected(String),
}

impl Outcome {
    /// Classifies an HTTP answer: `status` and, for a 200, the `id` in its body.
    pub fn of_answer(status: u16, id: Option<u64>) -> Outcome {
        match (status, id) {
            (200, Some(id)) => Outcome::Committed(id),
            (200, None) => Outcome::Unexpected("200 without an id".into()),
            (500 | 503 | 429, _) | (400..=499, _) => Outcome::Refused(status),
            (504, _) => Outcome::Unknown,
            (other, _) => Outcome::Unexpected(format!("status {other}")),
        }
    }
}

/// One append: who sent what where, when (time since the run started), and what came back.
#[derive(Debug, Clone)]
pub struct Append {
    pub client: usize,
    /// The node it was sent to.
    pub node: String,
    pub message: String,
    pub w: u64,
    pub sent: Duration,
    pub answered: Duration,
    pub outcome: Outcome,
}

/// One broken rule, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where and when a pair `(id, message)` was first seen.
#[derive(Debug, Clone)]
struct Sighting {
    node: String,
    at: Duration,
}

/// Everything recorded in one run.
#[derive(Debug, Default)]
pub struct History {
    appends: Vec<Append>,
    /// Each node's epoch and latest list.
    latest: HashMap<String, (u64, Duration, List)>,
    /// Every id shown anywhere, with the first message seen under it.
    by_id: BTreeMap<u64, (String, Sighting)>,
    /// Every message shown anywhere, with the first id seen for it.
    by_message: HashMap<String, u64>,
    /// Ids and messages already reported as shown twice: each is reported once.
    conflicts: std::collections::HashSet<(u64, String)>,
    /// Times the master started over with an empty data directory.
    master_wipes: Vec<Duration>,
    /// Violations found while recording.
    found: Vec<Violation>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn record_append(&mut self, append: Append) {
        self.appends.push(append);
    }

    /// The master lost its data directory at `at`.
    pub fn record_master_wipe(&mut self, at: Duration) {
        self.master_wipes.push(at);
    }

    /// A list `node` showed at `at`, in its `epoch` (a node's epoch grows each time its disk is
    /// wiped). Lists of an epoch older than one already recorded for the node are ignored.
    pub fn record_list(&mut self, node: &str, epoch: u64, at: Duration, list: Vec<(u64, String)>) {
        for pair in list.windows(2) {
            if pair[0].0 >= pair[1].0 {
                self.violation(format!(
                    "{node} at {at:?} lists id {} after id {}",
                    pair[1].0, pair[0].0
                ));
            }
        }
        for (id, message) in &list {
            self.sighting(node, at, *id, message);
        }
        match self.latest.get(node) {
            Some((latest_epoch, _, _)) if *latest_epoch > epoch => return,
            Some((latest_epoch, then, before)) if *latest_epoch == epoch => {
                if let Some(i) = before.iter().zip(&list).position(|(a, b)| a != b) {
                    self.violation(format!(
                        "{node} showed {:?} at position {i} at {then:?}, then {:?} at {at:?}",
                        before[i], list[i]
                    ));
                } else if list.len() < before.len() {
                    self.violation(format!(
                        "{node} showed {} entries at {then:?}, then only {} at {at:?} (last before: {:?})",
                        before.len(),
                        list.len(),
                        before.last()
                    ));
                }
            }
            _ => {}
        }
        self.latest.insert(node.to_owned(), (epoch, at, list));
    }

    fn sighting(&mut self, node: &str, at: Duration, id: u64, message: &str) {
        let seen = Sighting {
            node: node.to_owned(),
            at,
        };
        match self.by_id.get(&id) {
            Some((first, _)) if first == message => {}
            Some(_) if !self.conflicts.insert((id, String::new())) => {}
            Some((first, first_seen)) => {
                let text = format!(
                    "id {id} shows {first:?} ({} at {:?}) and {message:?} ({node} at {at:?})",
                    first_seen.node, first_seen.at
                );
                self.violation(text);
            }
            None => {
                self.by_id.insert(id, (message.to_owned(), seen));
            }
        }
        match self.by_message.get(message) {
            Some(first) if *first != id && self.conflicts.insert((0, message.to_owned())) => {
                let text =
                    format!("{message:?} shows under ids {first} and {id} ({node} at {at:?})");
                self.violation(text);
            }
            Some(_) => {}
            None => {
                self.by_message.insert(message.to_owned(), id);
            }
        }
    }

    fn violation(&mut self, text: String) {
        // One broken rule tends to show in every later list: keep the first few of each.
        if self.found.len() < 1000 && !self.found.iter().any(|v| v.0 == text) {
            self.found.push(Violation(text));
        }
    }

    /// Checks the whole history, given every node's final list (after the cluster healed and
    /// converged; `None` for a node that did not answer). Returns every violation found.
    pub fn check(mut self, finals: &[Final]) -> Vec<Violation> {
        let end = self
            .appends
            .iter()
            .map(|a| a.answered)
            .chain(self.latest.values().map(|(_, at, _)| *at))
            .max()
            .unwrap_or_default()
            + Duration::from_millis(1);
        for (node, list) in finals {
            match list {
                Some(list) => {
                    let epoch = self.latest.get(node).map_or(0, |(e, _, _)| *e);
                    self.record_list(node, epoch, end, list.clone());
                }
                None => self.violation(format!("{node} did not answer at the end")),
            }
        }
        self.check_answers();
        self.check_final(finals);
        self.check_real_time();
        self.found
    }

    /// Whether a `w=1` acknowledgement could have lived only on a master disk wiped later.
    fn lost_with_master_disk(&self, append: &Append) -> bool {
        append.w == 1 && self.master_wipes.iter().any(|wipe| *wipe > append.sent)
    }

    fn check_answers(&mut self) {
        let mut ids: HashMap<u64, &Append> = HashMap::new();
        let mut texts: HashMap<&str, &Append> = HashMap::new();
        let mut found = Vec::new();
        for append in &self.appends {
            if let Some(other) = texts.insert(&append.message, append) {
                found.push(format!(
                    "the history sent {:?} twice (clients {} and {}): messages must be unique",
                    append.message, other.client, append.client
                ));
            }
            let shown = self.by_message.get(&append.message);
            match &append.outcome {
                Outcome::Committed(id) => {
                    let lost = self.lost_with_master_disk(append);
                    if let Some(other) = ids.insert(*id, append) {
                        if !lost && !self.lost_with_master_disk(other) {
                            found.push(format!(
                                "id {id} was answered 200 for both {:?} and {:?}",
                                other.message, append.message
                            ));
                        }
                    }
                    if let Some(shown) = shown.filter(|shown| *shown != id) {
                        found.push(format!(
                            "{:?} was answered 200 with id {id} but shows at id {shown}",
                            append.message
                        ));
                    }
                }
                Outcome::Refused(status) => {
                    if let Some(id) = shown {
                        found.push(format!(
                            "{:?} (w={}, via {}) was answered {status} at {:?}, yet shows at id {id}",
                            append.message, append.w, append.node, append.answered
                        ));
                    }
                }
                Outcome::NotSent => {
                    if let Some(id) = shown {
                        found.push(format!(
                            "{:?} (w={}, via {}) could not connect at {:?}, yet shows at id {id}",
                            append.message, append.w, append.node, append.sent
                        ));
                    }
                }
                Outcome::Unknown => {}
                Outcome::Unexpected(what) => found.push(format!(
                    "{:?} (w={}, via {}) got an answer outside the answer table: {what}",
                    append.message, append.w, append.node
                )),
            }
        }
        let sent: std::collections::HashSet<&str> =
            self.appends.iter().map(|a| a.message.as_str()).collect();
        for (id, (message, seen)) in &self.by_id {
            if !sent.contains(message.as_str()) {
                found.push(format!(
                    "id {id} shows {message:?}, which was never sent ({} at {:?})",
                    seen.node, seen.at
                ));
            }
        }
        for text in found {
            self.violation(text);
        }
    }

    fn check_final(&mut self, finals: &[Final]) {
        let mut found = Vec::new();
        let answered: Vec<&Final> = finals.iter().filter(|(_, l)| l.is_some()).collect();
        if let Some((first, Some(reference))) = answered.first() {
            for (node, list) in &answered[1..] {
                let list = list.as_deref().unwrap_or_default();
                if list != reference.as_slice() {
                    let at = list
                        .iter()
                        .zip(reference)
                        .position(|(a, b)| a != b)
                        .unwrap_or(list.len().min(reference.len()));
                    found.push(format!(
                        "the nodes did not converge: {first} lists {} entries, {node} {}; first difference at position {at}: {:?} against {:?}",
                        reference.len(),
                        list.len(),
                        reference.get(at),
                        list.get(at)
                    ));
                }
            }
        }
        for (node, list) in finals {
            let Some(list) = list else { continue };
            let shown: HashMap<u64, &str> = list.iter().map(|(i, m)| (*i, m.as_str())).collect();
            for append in &self.appends {
                let Outcome::Committed(id) = append.outcome else {
                    continue;
                };
                if self.lost_with_master_disk(append) {
                    continue;
                }
                match shown.get(&id) {
                    Some(message) if *message == append.message => {}
                    Some(message) => found.push(format!(
                        "{node} shows {message:?} at id {id}, which was acknowledged for {:?} (w={})",
                        append.message, append.w
                    )),
                    None => found.push(format!(
                        "{node} lost {:?} (id {id}, w={}, via {}, acknowledged at {:?})",
                        append.message, append.w, append.node, append.answered
                    )),
                }
            }
        }
        for text in found {
            self.violation(text);
        }
    }

    /// An append acknowledged before another was sent has the smaller id.
    fn check_real_time(&mut self) {
        let mut acked: Vec<(&Append, u64)> = self
            .appends
            .iter()
            .filter(|a| !self.lost_with_master_disk(a))
            .filter_map(|a| match a.outcome {
                Outcome::Committed(id) => Some((a, id)),
                _ => None,
            })
            .collect();
        // By the time of the answer; the highest id answered so far at each point.
        acked.sort_by_key(|(a, _)| a.answered);
        let mut highest: Vec<(u64, &Append)> = Vec::with_capacity(acked.len());
        for (append, id) in &acked {
            let top = match highest.last() {
                Some(&(top, earlier)) if top >= *id => (top, earlier),
                _ => (*id, *append),
            };
            highest.push(top);
        }
        let mut found = Vec::new();
        for (later, id) in &acked {
            // Appends answered strictly before `later` was sent.
            let before = acked.partition_point(|(a, _)| a.answered < later.sent);
            if before == 0 {
                continue;
            }
            let (top, earlier) = highest[before - 1];
            if top >= *id {
                found.push(format!(
                    "{:?} was acknowledged with id {top} at {:?}, before {:?} was sent at {:?}, which got the smaller id {id}",
                    earlier.message, earlier.answered, later.message, later.sent
                ));
            }
        }
        for text in found {
            self.violation(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn append(message: &str, w: u64, sent: u64, answered: u64, outcome: Outcome) -> Append {
        Append {
            client: 0,
            node: "master".into(),
            message: message.into(),
            w,
            sent: ms(sent),
            answered: ms(answered),
            outcome,
        }
    }

    fn list(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
        pairs.iter().map(|(i, m)| (*i, (*m).to_owned())).collect()
    }

    fn all(pairs: &[(u64, &str)]) -> Vec<Final> {
        ["master", "secondary-1", "secondary-2"]
            .iter()
            .map(|n| ((*n).to_owned(), Some(list(pairs))))
            .collect()
    }

    /// A history with three committed appends, one refused, one unknown, checked against
    /// `finals`.
    fn base() -> History {
        let mut h = History::new();
        h.record_append(append("a", 3, 0, 10, Outcome::Committed(1)));
        h.record_append(append("b", 2, 20, 30, Outcome::Committed(2)));
        h.record_append(append("c", 1, 20, 25, Outcome::Committed(3)));
        h.record_append(append("x", 3, 40, 50, Outcome::Refused(500)));
        h.record_append(append("u", 2, 40, 60, Outcome::Unknown));
        h.record_append(append("n", 2, 40, 41, Outcome::NotSent));
        h
    }

    fn texts(violations: &[Violation]) -> String {
        violations
            .iter()
            .map(|v| v.0.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_clean_history_passes() {
        let mut h = base();
        h.record_list("master", 0, ms(5), list(&[(1, "a")]));
        h.record_list("master", 0, ms(35), list(&[(1, "a"), (2, "b"), (3, "c")]));
        let v = h.check(&all(&[(1, "a"), (2, "b"), (3, "c")]));
        assert!(v.is_empty(), "{}", texts(&v));
        // The unknown one may show, too (the refused one's id became a tombstone).
        let v = base().check(&all(&[(1, "a"), (2, "b"), (3, "c"), (5, "u")]));
        assert!(v.is_empty(), "{}", texts(&v));
    }

    #[test]
    fn a_lost_acknowledged_append_is_found() {
        let v = base().check(&all(&[(1, "a"), (3, "c")]));
        assert_eq!(v.len(), 3, "{}", texts(&v));
        assert!(v[0].0.contains("lost \"b\""), "{}", texts(&v));
    }

    #[test]
    fn a_refused_append_shown_anywhere_is_found() {
        let mut h = base();
        h.record_list(
            "secondary-2",
            0,
            ms(70),
            list(&[(1, "a"), (2, "b"), (3, "c"), (4, "x")]),
        );
        let v = h.check(&all(&[(1, "a"), (2, "b"), (3, "c")]));
        let all = texts(&v);
        assert!(
            all.contains("\"x\" (w=3, via master) was answered 500"),
            "{all}"
        );
        // secondary-2 showed id 4 and then no longer did.
        assert!(all.contains("secondary-2 showed 4 entries"), "{all}");
    }

    #[test]
    fn an_append_that_never_connected_shown_anywhere_is_found() {
        let all = texts(&base().check(&all(&[(1, "a"), (2, "b"), (3, "c"), (4, "n")])));
        assert!(
            all.contains("\"n\" (w=2, via master) could not connect"),
            "{all}"
        );
    }

    #[test]
    fn two_messages_under_one_id_are_found() {
        let mut h = base();
        h.record_list("master", 0, ms(40), list(&[(1, "a"), (2, "b"), (3, "c")]));
        let mut finals = all(&[(1, "a"), (2, "b"), (3, "c")]);
        finals[2].1 = Some(list(&[(1, "a"), (2, "b"), (3, "u")]));
        let all = texts(&h.check(&finals));
        assert!(all.contains("id 3 shows \"c\""), "{all}");
        assert!(all.contains("did not converge"), "{all}");
        assert!(all.contains("secondary-2 shows \"u\" at id 3"), "{all}");
    }

    #[test]
    fn one_message_under_two_ids_is_found() {
        let mut h = base();
        h.record_list(
            "secondary-1",
            0,
            ms(40),
            list(&[(1, "a"), (2, "b"), (3, "c"), (4, "u"), (5, "u")]),
        );
        let all = texts(&h.check(&all(&[(1, "a"), (2, "b"), (3, "c")])));
        assert!(all.contains("\"u\" shows under ids 4 and 5"), "{all}");
    }

    #[test]
    fn a_message_never_sent_is_found() {
        let all = texts(&base().check(&all(&[(1, "a"), (2, "b"), (3, "c"), (4, "zz")])));
        assert!(all.contains("\"zz\", which was never sent"), "{all}");
    }

    #[test]
    fn a_list_that_shrinks_or_changes_is_found_but_a_wipe_starts_over() {
        let mut h = base();
        h.record_list("secondary-1", 0, ms(30), list(&[(1, "a"), (2, "b")]));
        h.record_list("secondary-1", 0, ms(40), list(&[(1, "a")]));
        let v = h.check(&all(&[(1, "a"), (2, "b"), (3, "c")]));
        assert_eq!(v.len(), 1, "{}", texts(&v));
        assert!(
            v[0].0.contains("secondary-1 showed 2 entries"),
            "{}",
            texts(&v)
        );

        let mut h = base();
        h.record_list("secondary-1", 0, ms(30), list(&[(1, "a"), (2, "b")]));
        h.record_list("secondary-1", 1, ms(40), list(&[]));
        // A list from before the wipe, answered late, belongs to the old epoch: ignored.
        h.record_list("secondary-1", 0, ms(45), list(&[(1, "a"), (2, "b")]));
        h.record_list("secondary-1", 1, ms(50), list(&[(1, "a")]));
        let v = h.check(&all(&[(1, "a"), (2, "b"), (3, "c")]));
        assert!(v.is_empty(), "{}", texts(&v));

        let mut h = base();
        h.record_list("master", 0, ms(30), list(&[(1, "a"), (3, "c")]));
        let all = texts(&h.check(&all(&[(1, "a"), (2, "b"), (3, "c")])));
        assert!(
            all.contains("master showed (3, \"c\") at position 1"),
            "{all}"
        );
    }

    #[test]
    fn real_time_order_is_checked() {
        let mut h = History::new();
        h.record_append(append("a", 3, 0, 10, Outcome::Committed(2)));
        h.record_append(append("b", 3, 11, 20, Outcome::Committed(1)));
        // Concurrent with "a": either order is fine.
        h.record_append(append("c", 3, 5, 30, Outcome::Committed(3)));
        let all_texts = texts(&h.check(&all(&[(1, "b"), (2, "a"), (3, "c")])));
        assert!(
            all_texts.contains("\"a\" was acknowledged with id 2")
                && all_texts.contains("\"b\" was sent"),
            "{all_texts}"
        );
        assert_eq!(all_texts.lines().count(), 1, "{all_texts}");
    }

    #[test]
    fn w1_acknowledged_before_a_master_wipe_may_be_lost() {
        let mut h = History::new();
        h.record_append(append("a", 2, 0, 10, Outcome::Committed(1)));
        h.record_append(append("b", 1, 20, 30, Outcome::Committed(2)));
        h.record_master_wipe(ms(40));
        // "b" lived on the wiped disk only: its id may go to "c".
        h.record_append(append("c", 2, 50, 60, Outcome::Committed(2)));
        let v = h.check(&all(&[(1, "a"), (2, "c")]));
        assert!(v.is_empty(), "{}", texts(&v));
        // A w=2 acknowledgement survives the master's disk.
        let mut h = History::new();
        h.record_append(append("a", 2, 0, 10, Outcome::Committed(1)));
        h.record_master_wipe(ms(40));
        h.record_append(append("c", 2, 50, 60, Outcome::Committed(1)));
        let all = texts(&h.check(&all(&[(1, "c")])));
        assert!(all.contains("id 1 was answered 200 for both"), "{all}");
        assert!(
            all.contains("shows \"c\" at id 1, which was acknowledged for \"a\""),
            "{all}"
        );
    }

    #[test]
    fn answers_are_classified_by_the_answer_table() {
        assert_eq!(Outcome::of_answer(200, Some(4)), Outcome::Committed(4));
        assert_eq!(Outcome::of_answer(503, None), Outcome::Refused(503));
        assert_eq!(Outcome::of_answer(422, None), Outcome::Refused(422));
        assert_eq!(Outcome::of_answer(504, None), Outcome::Unknown);
        assert!(matches!(
            Outcome::of_answer(502, None),
            Outcome::Unexpected(_)
        ));
        assert!(matches!(
            Outcome::of_answer(200, None),
            Outcome::Unexpected(_)
        ));
        let mut h = History::new();
        h.record_append(append("a", 3, 0, 10, Outcome::of_answer(502, None)));
        let all = texts(&h.check(&all(&[])));
        assert!(
            all.contains("outside the answer table: status 502"),
            "{all}"
        );
    }
}
