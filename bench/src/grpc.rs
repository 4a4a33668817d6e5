//! The closed loop's gRPC appends: `replog.v1.Log/Append` calls multiplexed on HTTP/2
//! connections shared by up to [`CLIENTS_PER_CONNECTION`] clients, as a gRPC channel is
//! shared by its callers.
//!
//! Why not a client library (tonic's `Channel`, or the `h2` crate): both run a connection's I/O
//! in a task of its own, and every call crosses from the caller's task to it and back, under a
//! lock on the connection's streams. At 64 clients that cost the load generator 14-18 µs of CPU
//! per append with `h2` (22 µs with tonic), against 10 µs for an HTTP append through
//! [`crate::wire`]. On a 2-CPU machine the client shares the CPUs with the servers, so that
//! overhead lands on replog's gRPC figures and on nothing else: the master's own CPU per append
//! is the same for gRPC and HTTP.
//!
//! Here one task owns a connection and all its clients ([`Connection`], a [`Driver`]): it
//! writes every request that is due in one `write`, reads whatever answers have arrived in one
//! `read`, and sends each answered client's next request at once. The HTTP/2 it speaks is the
//! little a unary call needs, done by the book: the connection preface and settings, HPACK
//! header blocks (the request's headers enter the server's table with the first call and are
//! named by index after, as `h2` does), flow control both ways, `PING` answered, `GOAWAY` and
//! `RST_STREAM` honoured, messages framed by [`replog_proto::framing`]. The server sees what a
//! gRPC client library would send: the same connections, and a whole gRPC call per append
//! (`HEADERS` + `DATA`, answered with `HEADERS`, `DATA` and trailers).

use crate::load::{Driver, Tally, Window, CALL_TIMEOUT};
use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use replog_proto::framing::{self, Decoder};
use replog_proto::v1::{AppendReply, AppendRequest};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATH: &str = "/replog.v1.Log/Append";
/// Clients per HTTP/2 connection.
pub const CLIENTS_PER_CONNECTION: usize = 32;
/// HTTP/2 connections at most, whatever the number of clients.
pub const MAX_CONNECTIONS: usize = 8;

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest flow-control window HTTP/2 allows; every window starts at 65,535.
const MAX_WINDOW: u32 = (1 << 31) - 1;
const DEFAULT_WINDOW: u32 = 65_535;
/// A frame's header: length (24 bits), type, flags, stream id.
const FRAME_HEADER: usize = 9;

/// Frame types (RFC 9113, 6).
mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Settings (RFC 9113, 6.5.2).
mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
}

/// `clients` appenders of `message` with write concern `w`, on as many connections as
/// [`CLIENTS_PER_CONNECTION`] and [`MAX_CONNECTIONS`] give; returns the connections.
pub async fn connections(
    addr: SocketAddr,
    clients: usize,
    message: String,
    w: u32,
) -> Result<Vec<Connection>> {
    let request = AppendRequest {
        message,
        w: Some(w),
        key: None,
    };
    let body = framing::encode(&request)?;
    let (first, indexed) = request_headers(&addr.to_string());

    let count = clients
        .div_ceil(CLIENTS_PER_CONNECTION)
        .min(MAX_CONNECTIONS);
    let mut connections = Vec::with_capacity(count);
    for i in 0..count {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("gRPC connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        // Clients spread evenly: the first `clients % count` connections take one more.
        let share = clients / count + usize::from(i < clients % count);
        connections.push(Connection::new(
            tcp,
            share,
            body.clone(),
            first.clone(),
            indexed.clone(),
        ));
    }
    Ok(connections)
}

/// The request's two header blocks: the first call's, which adds its headers to the server's
/// HPACK table ("literal with incremental indexing"), and every later call's, which names the
/// same headers by their index in that table.
fn request_headers(authority: &str) -> (Bytes, Bytes) {
    // Static table (RFC 7541, appendix A): 2 `:method: GET`, 3 `:method: POST`,
    // 6 `:scheme: http`; names 1 `:authority`, 4 `:path`, 31 `content-type`.
    const METHOD_POST: u8 = 0x80 | 3;
    const SCHEME_HTTP: u8 = 0x80 | 6;
    let mut first = BytesMut::new();
    first.put_u8(METHOD_POST);
    first.put_u8(SCHEME_HTTP);
    // Each entered header becomes index 62, pushing the earlier ones up by one.
    let entered: [(Option<usize>, &str, &str); 4] = [
        (Some(4), ":path", PATH),
        (Some(1), ":authority", authority),
        (Some(31), "content-type", "application/grpc"),
        (None, "te", "trailers"),
    ];
    for (name_index, name, value) in entered {
        match name_index {
            Some(index) => hpack_integer(&mut first, 0x40, 6, index),
            None => {
                first.put_u8(0x40);
                hpack_string(&mut first, name);
            }
        }
        hpack_string(&mut first, value);
    }
    let mut indexed = BytesMut::new();
    indexed.put_u8(METHOD_POST);
    indexed.put_u8(SCHEME_HTTP);
    for age in (0..entered.len()).rev() {
        hpack_integer(&mut indexed, 0x80, 7, 62 + age);
    }
    (first.freeze(), indexed.freeze())
}

/// An HPACK integer with an `n`-bit prefix after the bits in `pattern` (RFC 7541, 5.1).
fn hpack_integer(out: &mut BytesMut, pattern: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.put_u8(pattern | value as u8);
        return;
    }
    out.put_u8(pattern | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.put_u8(rest as u8);
}

/// An HPACK string literal, not Huffman-coded (RFC 7541, 5.2).
fn hpack_string(out: &mut BytesMut, s: &str) {
    hpack_integer(out, 0, 7, s.len());
    out.put_slice(s.as_bytes());
}

/// One HTTP/2 connection and the clients that share it, all driven by one task.
pub struct Connection {
    tcp: TcpStream,
    /// Clients on this connection.
    clients: usize,
    /// The request message, framed (prefix and protobuf), shared by every call.
    body: Bytes,
    /// The first call's header block, until it is sent.
    first_headers: Option<Bytes>,
    /// Every later call's header block.
    headers: Bytes,
    input: BytesMut,
    output: BytesMut,
    hpack: loona_hpack::Decoder<'static>,
    /// A header block that continues in `CONTINUATION` frames: its stream, whether it ends
    /// the stream, and its fragments so far.
    partial: Option<(u32, bool, BytesMut)>,
    next_stream: u32,
    calls: Vec<Call>,
    /// Clients whose next request waits for the server's flow-control window.
    blocked: usize,
    /// What the server lets us send: on the connection, and on a new stream.
    send_window: i64,
    stream_window: i64,
    /// `DATA` bytes received since the last `WINDOW_UPDATE` we sent.
    unacknowledged: u32,
}

/// A call in flight: its stream and what its answer has said so far.
struct Call {
    stream: u32,
    started: Instant,
    status: Option<u16>,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
    reply: BytesMut,
}

impl Call {
    /// The call's verdict once its stream has ended: success is HTTP 200, `grpc-status: 0`
    /// and one `AppendReply`.
    fn verdict(&mut self) -> Result<()> {
        match self.status {
            Some(200) => {}
            Some(status) => bail!("HTTP {status}"),
            None => bail!("an answer without :status"),
        }
        match self.grpc_status {
            Some(0) => {}
            Some(code) => bail!(
                "{:?}: {}",
                tonic::Code::from(code as i32),
                self.grpc_message.as_deref().unwrap_or("")
            ),
            None => bail!("an answer without grpc-status"),
        }
        Decoder::grpc()
            .next_message::<AppendReply>(&mut self.reply)?
            .context("an answer without a whole reply message")?;
        Ok(())
    }
}

impl Driver for Connection {
    async fn drive(mut self, window: Window) -> Tally {
        let mut tally = Tally::default();
        if let Err(error) = self.run(&window, &mut tally).await {
            // The connection is lost, and with it every call in flight and every later call
            // of its clients.
            let calls = self.calls.len() + self.blocked;
            tally.error(format!("{error:#} ({calls} calls in flight)"));
        }
        tally
    }
}

impl Connection {
    fn new(tcp: TcpStream, clients: usize, body: Bytes, first: Bytes, indexed: Bytes) -> Self {
        Connection {
            tcp,
            clients,
            body,
            first_headers: Some(first),
            headers: indexed,
            input: BytesMut::with_capacity(64 * 1024),
            output: BytesMut::with_capacity(16 * 1024),
            hpack: loona_hpack::Decoder::new(),
            partial: None,
            next_stream: 1,
            calls: Vec::with_capacity(clients),
            blocked: 0,
            send_window: i64::from(DEFAULT_WINDOW),
            stream_window: i64::from(DEFAULT_WINDOW),
            unacknowledged: 0,
        }
    }

    async fn run(&mut self, window: &Window, tally: &mut Tally) -> Result<()> {
        self.output.put_slice(PREFACE);
        // No pushes; our streams' windows as large as allowed, and the connection's too, so
        // the server never waits for us and we send a `WINDOW_UPDATE` once per gigabyte.
        frame(&mut self.output, kind::SETTINGS, 0, 0, 12);
        for (id, value) in [
            (setting::ENABLE_PUSH, 0),
            (setting::INITIAL_WINDOW_SIZE, MAX_WINDOW),
        ] {
            self.output.put_u16(id);
            self.output.put_u32(value);
        }
        frame(&mut self.output, kind::WINDOW_UPDATE, 0, 0, 4);
        self.output.put_u32(MAX_WINDOW - DEFAULT_WINDOW);
        self.blocked = self.clients;
        self.start_blocked()?;
        // Clients still waiting for the server's window when the window ends have no call
        // left to make.
        while !self.calls.is_empty() || (self.blocked > 0 && Instant::now() < window.end) {
            if !self.output.is_empty() {
                // A few hundred bytes per client: the socket's buffer takes them at once.
                self.tcp.write_all(&self.output).await?;
                self.output.clear();
            }
            let read = tokio::time::timeout(CALL_TIMEOUT, self.tcp.read_buf(&mut self.input))
                .await
                .with_context(|| format!("no frame within {CALL_TIMEOUT:?}"))??;
            if read == 0 {
                bail!("the server closed the gRPC connection");
            }
            while let Some((header, payload)) = next_frame(&mut self.input)? {
                self.on_frame(header, payload, window, tally)?;
            }
        }
        Ok(())
    }

    /// Sends the next call of every blocked client the server's windows let through.
    fn start_blocked(&mut self) -> Result<()> {
        let size = self.body.len() as i64;
        if size > self.stream_window {
            bail!(
                "the server's stream window ({} bytes) is smaller than one request",
                self.stream_window
            );
        }
        while self.blocked > 0 && self.send_window >= size {
            self.blocked -= 1;
            self.send_window -= size;
            let stream = self.next_stream;
            self.next_stream = stream
                .checked_add(2)
                .filter(|&next| next <= MAX_WINDOW)
                .context("stream ids used up")?;
            let headers = self.first_headers.take().unwrap_or(self.headers.clone());
            frame(
                &mut self.output,
                kind::HEADERS,
                flag::END_HEADERS,
                stream,
                headers.len(),
            );
            self.output.put_slice(&headers);
            frame(
                &mut self.output,
                kind::DATA,
                flag::END_STREAM,
                stream,
                self.body.len(),
            );
            self.output.put_slice(&self.body);
            self.calls.push(Call {
                stream,
                started: Instant::now(),
                status: None,
                grpc_status: None,
                grpc_message: None,
                reply: BytesMut::new(),
            });
        }
        Ok(())
    }

    fn on_frame(
        &mut self,
        header: FrameHeader,
        payload: Bytes,
        window: &Window,
        tally: &mut Tally,
    ) -> Result<()> {
        if self.partial.is_some() && header.kind != kind::CONTINUATION {
            bail!(
                "a header block broken off by a frame of type {}",
                header.kind
            );
        }
        match header.kind {
            kind::DATA => {
                self.unacknowledged += header.length;
                if self.unacknowledged > MAX_WINDOW / 2 {
                    frame(&mut self.output, kind::WINDOW_UPDATE, 0, 0, 4);
                    self.output.put_u32(self.unacknowledged);
                    self.unacknowledged = 0;
                }
                let data = unpad(&payload, header.flags)?;
                if let Some(call) = self.call(header.stream) {
                    call.reply.extend_from_slice(&data);
                }
                if header.flags & flag::END_STREAM != 0 {
                    self.end(header.stream, None, window, tally)?;
                }
            }
            kind::HEADERS => {
                let mut block = unpad(&payload, header.flags)?;
                if header.flags & flag::PRIORITY != 0 {
                    if block.len() < 5 {
                        bail!("a HEADERS frame too short for its priority");
                    }
                    block.advance(5);
                }
                let ends = header.flags & flag::END_STREAM != 0;
                if header.flags & flag::END_HEADERS != 0 {
                    self.on_headers(header.stream, ends, &block, window, tally)?;
                } else {
                    self.partial = Some((header.stream, ends, BytesMut::from(&block[..])));
                }
            }
            kind::CONTINUATION => {
                let Some((stream, ends, mut block)) = self.partial.take() else {
                    bail!("a CONTINUATION frame with no header block before it");
                };
                if stream != header.stream {
                    bail!("a CONTINUATION frame on another stream");
                }
                block.extend_from_slice(&payload);
                if header.flags & flag::END_HEADERS != 0 {
                    self.on_headers(stream, ends, &block, window, tally)?;
                } else {
                    self.partial = Some((stream, ends, block));
                }
            }
            kind::RST_STREAM => {
                let code = payload.get(..4).map(|mut b| b.get_u32());
                let error = anyhow::anyhow!("the server reset the stream (code {code:?})");
                self.end(header.stream, Some(error), window, tally)?;
            }
            kind::SETTINGS if header.flags & flag::ACK == 0 => {
                self.on_settings(&payload)?;
                frame(&mut self.output, kind::SETTINGS, flag::ACK, 0, 0);
            }
            kind::PING if header.flags & flag::ACK == 0 => {
                frame(&mut self.output, kind::PING, flag::ACK, 0, payload.len());
                self.output.put_slice(&payload);
            }
            kind::GOAWAY => {
                let code = payload.get(4..8).map(|mut b| b.get_u32());
                bail!("the server sent GOAWAY (code {code:?})");
            }
            kind::WINDOW_UPDATE if header.stream == 0 => {
                let increment = payload
                    .get(..4)
                    .map(|mut b| b.get_u32())
                    .context("a short WINDOW_UPDATE")?
                    & MAX_WINDOW;
                self.send_window += i64::from(increment);
                self.start_blocked()?;
            }
            // Settings and ping acknowledgements, a stream's window (each of ours sends one
            // small DATA frame, well inside the initial window), priorities, unknown types.
            _ => {}
        }
        Ok(())
    }

    /// A whole header block: decoded in order whatever its stream (the HPACK table is the
    /// connection's), and read for the call's status.
    fn on_headers(
        &mut self,
        stream: u32,
        ends: bool,
        block: &[u8],
        window: &Window,
        tally: &mut Tally,
    ) -> Result<()> {
        let mut fields = (None, None, None);
        self.hpack
            .decode_with_cb(block, |name, value| match &*name {
                b":status" => fields.0 = number(&value),
                b"grpc-status" => fields.1 = number(&value),
                b"grpc-message" => {
                    fields.2 = Some(framing::percent_decode(&String::from_utf8_lossy(&value)));
                }
                _ => {}
            })
            .map_err(|e| anyhow::anyhow!("HPACK: {e:?}"))?;
        if let Some(call) = self.call(stream) {
            let (status, grpc_status, grpc_message) = fields;
            call.status = call.status.or(status);
            call.grpc_status = grpc_status.or(call.grpc_status);
            call.grpc_message = grpc_message.or(call.grpc_message.take());
        }
        if ends {
            self.end(stream, None, window, tally)?;
        }
        Ok(())
    }

    fn on_settings(&mut self, payload: &[u8]) -> Result<()> {
        for entry in payload.chunks(6) {
            let [a, b, c, d, e, f] = entry else {
                bail!("a SETTINGS frame of {} bytes", payload.len());
            };
            let value = u32::from_be_bytes([*c, *d, *e, *f]);
            match u16::from_be_bytes([*a, *b]) {
                setting::INITIAL_WINDOW_SIZE => {
                    // Applies to streams open now too, but ours have sent all they will.
                    self.stream_window = i64::from(value);
                }
                setting::MAX_CONCURRENT_STREAMS if (value as usize) < self.clients => bail!(
                    "the server takes {value} streams at a time, fewer than the {} clients of a connection",
                    self.clients
                ),
                // The four headers we enter into its table take 217 bytes.
                setting::HEADER_TABLE_SIZE if value < 256 => {
                    bail!("the server's HPACK table ({value} bytes) is too small")
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn call(&mut self, stream: u32) -> Option<&mut Call> {
        self.calls.iter_mut().find(|call| call.stream == stream)
    }

    /// A stream ended: its call is counted, and its client sends its next call unless the
    /// window is over.
    fn end(
        &mut self,
        stream: u32,
        error: Option<anyhow::Error>,
        window: &Window,
        tally: &mut Tally,
    ) -> Result<()> {
        let Some(position) = self.calls.iter().position(|call| call.stream == stream) else {
            // A stream of ours already ended (a reset after the end), or none of ours.
            return Ok(());
        };
        let mut call = self.calls.swap_remove(position);
        let ended = Instant::now();
        let result = match error {
            Some(error) => Err(error),
            None => call.verdict(),
        };
        tally.record(window, call.started, ended, result);
        if ended < window.end {
            self.blocked += 1;
            self.start_blocked()?;
        }
        Ok(())
    }
}

struct FrameHeader {
    length: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Appends a frame header to `out`; the payload follows it.
fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, length: usize) {
    let length = length as u32;
    out.put_slice(&length.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// The next whole frame in `input`, if one is there.
fn next_frame(input: &mut BytesMut) -> Result<Option<(FrameHeader, Bytes)>> {
    let Some(head) = input.get(..FRAME_HEADER) else {
        return Ok(None);
    };
    let header = FrameHeader {
        length: u32::from_be_bytes([0, head[0], head[1], head[2]]),
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & MAX_WINDOW,
    };
    // Our SETTINGS leave SETTINGS_MAX_FRAME_SIZE at its default.
    if header.length > 16_384 {
        bail!(
            "a frame of {} bytes, over the 16,384 allowed",
            header.length
        );
    }
    let whole = FRAME_HEADER + header.length as usize;
    if input.len() < whole {
        input.reserve(whole - input.len());
        return Ok(None);
    }
    let mut frame = input.split_to(whole);
    frame.advance(FRAME_HEADER);
    Ok(Some((header, frame.freeze())))
}

/// A header's value as a number, if it is one.
fn number<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A `DATA` or `HEADERS` payload without its padding.
fn unpad(payload: &Bytes, flags: u8) -> Result<Bytes> {
    if flags & flag::PADDED == 0 {
        return Ok(payload.clone());
    }
    let pad = *payload
        .first()
        .context("a padded frame without its pad length")? as usize;
    if 1 + pad > payload.len() {
        bail!("a frame's padding is longer than the frame");
    }
    Ok(payload.slice(1..payload.len() - pad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load, replog};
    use std::path::PathBuf;
    use std::time::Duration;

    /// The client against a real master and secondary (the debug builds `cargo build
    /// --workspace --bins` leaves, as the cluster tests use): committed calls count as
    /// successes and reach the log; a refused call (a write concern above the nodes) comes back
    /// as headers alone ("trailers-only") and counts as an error with the server's status.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_are_counted_by_what_the_server_answers() {
        let bin_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
        let scratch = tempfile::tempdir().unwrap();
        let cluster = replog::Cluster::start(&replog::Spec {
            bin_dir: &bin_dir,
            secondaries: 1,
            durable: false,
            tls: None,
            log_dir: scratch.path(),
            tmp_root: scratch.path(),
        })
        .await
        .unwrap();
        let addr = cluster.master_addr;
        let window = Duration::from_millis(500);

        // 40 clients: two connections, 20 streams at a time on each.
        let committed = connections(addr, 40, "hello".into(), 2).await.unwrap();
        assert_eq!(committed.len(), 2);
        let outcome = load::run(committed, Duration::ZERO, window, cluster.processes()).await;
        assert_eq!(outcome.errors, 0, "{:?}", outcome.first_error);
        assert!(outcome.ops() > 40, "{} calls answered", outcome.ops());
        // Every process worked in the window, and its CPU was counted.
        let spent = outcome.cpu.expect("CPU time of the window");
        assert!(
            spent.primary > 0.0 && spent.replicas > 0.0 && spent.client > 0.0,
            "{spent:?}"
        );
        let log = crate::http::get_json(addr, "/api/messages").await.unwrap();
        let entries = log["messages"].as_array().map_or(0, Vec::len) as u64;
        assert!(entries >= outcome.ops(), "{entries} entries in the log");

        let refused = connections(addr, 3, "hello".into(), 5).await.unwrap();
        let outcome = load::run(refused, Duration::ZERO, window, cluster.processes()).await;
        assert_eq!(outcome.ops(), 0);
        assert!(outcome.errors > 3, "{} calls refused", outcome.errors);
        let error = outcome.first_error.unwrap_or_default();
        assert!(error.starts_with("InvalidArgument: "), "{error}");
    }

    /// The request's header blocks, read back by an independent HPACK decoder in the order
    /// the server reads them: the first call's, then later calls' by index.
    #[test]
    fn request_headers_decode_to_a_grpc_call() {
        let (first, indexed) = request_headers("127.0.0.1:7000");
        let expected: Vec<(Vec<u8>, Vec<u8>)> = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", PATH),
            (":authority", "127.0.0.1:7000"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let mut decoder = loona_hpack::Decoder::new();
        assert_eq!(decoder.decode(&first).unwrap(), expected);
        assert_eq!(decoder.decode(&indexed).unwrap(), expected);
        assert_eq!(decoder.decode(&indexed).unwrap(), expected);
        assert!(indexed.len() < 8, "later calls name every header by index");
    }

    #[test]
    fn hpack_integers_past_the_prefix_continue() {
        // RFC 7541, C.1.2: 1337 with a 5-bit prefix.
        let mut out = BytesMut::new();
        hpack_integer(&mut out, 0, 5, 1337);
        assert_eq!(&out[..], [31, 154, 10]);
    }

    #[test]
    fn frames_split_at_their_length() {
        let mut input = BytesMut::new();
        frame(&mut input, kind::PING, 0, 0, 8);
        input.put_slice(&[1; 8]);
        frame(&mut input, kind::DATA, flag::END_STREAM, 3, 4);
        input.put_slice(&[2; 3]); // one byte short
        let (header, payload) = next_frame(&mut input).unwrap().unwrap();
        assert_eq!(
            (header.kind, header.length, &payload[..]),
            (kind::PING, 8, &[1; 8][..])
        );
        assert!(next_frame(&mut input).unwrap().is_none());
        input.put_u8(2);
        let (header, payload) = next_frame(&mut input).unwrap().unwrap();
        assert_eq!(
            (header.kind, header.stream, header.flags),
            (kind::DATA, 3, flag::END_STREAM)
        );
        assert_eq!(&payload[..], &[2; 4]);
    }
}
