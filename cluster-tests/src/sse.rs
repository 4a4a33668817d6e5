//! Reading the live tail (`GET /api/messages/stream`, Server-Sent Events) the way its clients
//! do: bytes in as they arrive, events out, each with its `id:` and `data:`. Whatever HTTP
//! client reads the stream (reqwest in the tests, hyper in the benchmark) feeds its chunks to
//! [`Blocks`], so both check the stream with the same rules.
//!
//! The rules are those of what a node sends (`node/src/api/stream.rs`), stricter than the
//! format allows: blocks end with a blank line (`\n\n`), an event has exactly one numeric
//! `id:` and JSON `data:`, and besides those only comments (`:`) and the first block's
//! `retry:` appear. Anything else is an error, so a test notices a stream that changed shape.

use replog_node::api::stream::RETRY;

/// One event of the stream: its `id:` and its `data:` as sent (the message as JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub data: String,
}

/// The bytes of one stream not parsed yet.
#[derive(Debug, Default)]
pub struct Blocks {
    buffer: Vec<u8>,
    /// Where the unparsed bytes start: parsed blocks are dropped in bulk, not one by one, so a
    /// chunk holding many events costs one move of its bytes, not one per event.
    start: usize,
}

impl Blocks {
    pub fn new() -> Blocks {
        Blocks::default()
    }

    /// Adds what arrived.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > 0 && self.start >= self.buffer.len() / 2 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(chunk);
    }

    /// Forgets a partial block, as a client does when the stream ends and it reconnects (the
    /// format drops an event that was not complete).
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.start = 0;
    }

    /// The next complete block, up to and including its blank line; `None` until more comes.
    pub fn next_block(&mut self) -> Option<Result<&str, String>> {
        let rest = &self.buffer[self.start..];
        let end = rest.windows(2).position(|w| w == b"\n\n")? + 2;
        let block = &self.buffer[self.start..self.start + end];
        self.start += end;
        Some(std::str::from_utf8(block).map_err(|_| "the stream is not UTF-8".to_owned()))
    }

    /// The next event among the complete blocks, past any comment; `Ok(None)` until more comes,
    /// `Err` for a block a node does not send.
    pub fn next_event(&mut self) -> Result<Option<Event>, String> {
        while let Some(block) = self.next_block() {
            if let Some(event) = parse(block?)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }
}

/// One block: `Ok(Some(event))`, `Ok(None)` for a block of comments (and `retry:`), `Err` for a
/// line a node does not send or an event without its id.
pub fn parse(block: &str) -> Result<Option<Event>, String> {
    let retry = format!("retry: {}", RETRY.as_millis());
    let (mut id, mut data) = (None, None::<String>);
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("id: ") {
            let value = value
                .parse::<u64>()
                .map_err(|_| format!("a non-numeric id in {block:?}"))?;
            if id.replace(value).is_some() {
                return Err(format!("two ids in {block:?}"));
            }
        } else if let Some(value) = line.strip_prefix("data: ") {
            // Several `data:` lines are one value, joined by newlines.
            match data.as_mut() {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        } else if !(line.is_empty() || line.starts_with(':') || line == retry) {
            return Err(format!("unexpected line {line:?} in {block:?}"));
        }
    }
    match (id, data) {
        (Some(id), Some(data)) => Ok(Some(Event { id, data })),
        (None, None) => Ok(None),
        _ => Err(format!("an event without its id or data: {block:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{Blocks, Event};

    #[test]
    fn events_come_out_whole_however_the_bytes_are_cut() {
        let stream = ": replog stream from id 1\nretry: 1000\n\n\
                      id: 1\ndata: {\"id\":1,\"message\":\"a\"}\n\n\
                      : keep-alive\n\n\
                      id: 2\ndata: {\"id\":2,\"message\":\"b\"}\n\n";
        let want = vec![
            Event {
                id: 1,
                data: r#"{"id":1,"message":"a"}"#.to_owned(),
            },
            Event {
                id: 2,
                data: r#"{"id":2,"message":"b"}"#.to_owned(),
            },
        ];
        for cut in 1..stream.len() {
            let mut blocks = Blocks::new();
            let mut got = Vec::new();
            for chunk in stream.as_bytes().chunks(cut) {
                blocks.push(chunk);
                while let Some(event) = blocks.next_event().expect("a good stream") {
                    got.push(event);
                }
            }
            assert_eq!(got, want, "chunks of {cut} bytes");
        }
    }

    #[test]
    fn what_a_node_does_not_send_is_an_error() {
        for block in [
            "id: x\ndata: {}\n\n",
            "id: 1\n\n",
            "data: {}\n\n",
            "id: 1\nid: 2\ndata: {}\n\n",
            "event: other\nid: 1\ndata: {}\n\n",
            "retry: 5\n\n",
        ] {
            let mut blocks = Blocks::new();
            blocks.push(block.as_bytes());
            assert!(blocks.next_event().is_err(), "{block:?}");
        }
    }
}
