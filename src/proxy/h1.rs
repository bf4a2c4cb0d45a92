//! A lean HTTP/1.1 client for the upstream side of what most traffic is: `GET` and `HEAD`
//! without a body and without a protocol upgrade. Everything else (requests with a body,
//! WebSocket) goes through hyper's client in [`super::pool`].
//!
//! hyper's client runs each upstream connection as a task of its own and passes every
//! request, response and body chunk over channels between that task and the client's.
//! For a proxied `GET` that connection task was 15,700 of the 37,500 user-space
//! instructions of the whole request (`bench/instructions.sh` under callgrind), and the
//! hand-overs were three of its five task wake-ups. Here the request's own task writes
//! the request head and reads the response from the upstream socket, and the response
//! body goes on reading from it as the client takes it.
//!
//! Response framing is RFC 9112 §6.3 as hyper's client reads it, and stricter where an
//! intermediary must be:
//! - informational (1xx) heads are skipped; `101` to a request that asked for no upgrade
//!   is an error;
//! - a response to `HEAD`, and `204` / `304`, has no body;
//! - with `Transfer-Encoding`, the body is chunked when `chunked` is the last coding and
//!   otherwise runs until the upstream closes; the `Content-Length` beside it is removed
//!   before the response goes on (§6.3 ¶3: an intermediary forwarding it MUST);
//!   `Transfer-Encoding` in an HTTP/1.0 response is an error (§6.1);
//! - every `Content-Length` value must be the same number;
//! - with neither, the body runs until the upstream closes.
//!
//! Whatever does not parse is an error: a 502 for the client and the connection closed.
//! A connection goes back to the pool only when its response was read to its exact end,
//! the upstream did not ask to close (HTTP/1.1, no `Connection: close`), and nothing
//! followed the response on the wire — bytes nobody asked for mean the two sides no
//! longer agree where a response ends, and the next request must not read them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
// tokio's clock, so that tests with paused time see connections age.
use tokio::time::{Instant, Sleep};

use crate::web::{Body, BoxError};

/// The most header fields a response head may have (hyper's client allows as many).
const MAX_HEADERS: usize = 100;
/// The longest response head accepted. nginx's default for proxied responses is 4 or
/// 8 KiB; cookies and security policies can be long, so more room than that.
pub const MAX_HEAD: usize = 64 * 1024;
/// How much room a read asks for: hyper's size, and the size the binary's allocator
/// keeps a stock of (`crate::allocator`).
const READ_BUF: usize = 8 * 1024;
/// The most chunk extension and trailer bytes one chunked body may carry: both are read
/// and dropped, and without a bound an upstream could keep us reading them for ever.
const MAX_CHUNK_METADATA: usize = 16 * 1024;

/// Requests this client carries: the rest go through hyper's.
pub fn takes(req: &Request<Body>) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD) && req.body().is_end_stream()
}

/// Why a response could not be read.
#[derive(Debug)]
pub enum Failure {
    /// Nothing of a response arrived before the connection broke: a pooled connection the
    /// upstream closed as the request went out. The request (GET or HEAD, no body) may
    /// be sent once more on a new connection.
    NothingReceived(io::Error),
    /// The response was cut off or did not parse.
    Broken(String),
}

impl Failure {
    pub fn into_message(self) -> String {
        match self {
            Failure::NothingReceived(e) => format!("the connection closed: {e}"),
            Failure::Broken(why) => why,
        }
    }
}

/// A response the upstream sent that cannot be passed on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid status code {0}")]
    Status(u16),
    /// `101 Switching Protocols` without an upgrade asked for.
    #[error("101 Switching Protocols nobody asked for")]
    UnexpectedUpgrade,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
}

/// Writes the head of a bodiless request: origin form, HTTP/1.1, the fields as they are
/// but the framing ones — with no body there is nothing to frame, and a
/// `Content-Length` or `Transfer-Encoding` would make the upstream wait for one.
pub fn encode_head(req: &Request<Body>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    // The path the gate judged (`Uri::path` reads an empty one as `/`), then the query:
    // an HTTP/2 `:path` such as `?x` is checked as `/` and must reach the upstream so.
    out.extend_from_slice(req.uri().path().as_bytes());
    if let Some(query) = req.uri().query() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// One response head, taken off the front of the read buffer.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// The reason phrase when it is not the status code's usual one (hyper's client keeps
    /// it the same way, and hyper's server sends it on).
    pub reason: Option<hyper::ext::ReasonPhrase>,
    /// The fields to pass on: hop-by-hop fields (RFC 9110 §7.6.1) and `Set-Cookie`s for
    /// Portcullis's own cookies are left out as the head is read, which is cheaper than
    /// adding them and taking them out again. Fields that `Connection` names are still
    /// here: [`framing`] reads the head as it came, and [`exchange`] removes them after.
    pub headers: HeaderMap,
    /// The last `Transfer-Encoding` line, which decides the framing; hop-by-hop, so not
    /// among `headers`.
    pub transfer_encoding: Option<HeaderValue>,
    /// Fields `Connection` names beyond the standard hop-by-hop ones.
    pub named_in_connection: Vec<HeaderName>,
    /// The upstream is willing to take another request on this connection.
    pub keep_alive: bool,
}

/// Parses a response head from the front of `buf` and removes it from there.
/// `Ok(None)`: the head is not complete yet.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Malformed> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    // Where each name and value lies in the head, so that the values can share the
    // head's bytes instead of each being copied.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, code, minor, reason, count) = {
        let mut res = httparse::Response::new(&mut []);
        let bytes: &[u8] = buf;
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, bytes, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD => {
                return Err(Malformed::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Malformed::Head(e)),
        };
        if len > MAX_HEAD {
            return Err(Malformed::HeadTooLarge);
        }
        let base = bytes.as_ptr() as usize;
        // httparse hands back slices of `bytes`, except a static `""` for a reason phrase
        // that is missing or not ASCII: an empty slice may lie anywhere, so it gets an
        // empty span. Offsets are below MAX_HEAD, so they fit.
        let span = |s: &[u8]| {
            if s.is_empty() {
                return (0, 0);
            }
            let start = (s.as_ptr() as usize - base) as u32;
            (start, start + s.len() as u32)
        };
        for (slot, h) in spans.iter_mut().zip(res.headers.iter()) {
            let (n0, n1) = span(h.name.as_bytes());
            let (v0, v1) = span(h.value);
            *slot = (n0, n1, v0, v1);
        }
        let reason = res.reason.map(|r| span(r.as_bytes()));
        (
            len,
            res.code.unwrap_or_default(),
            res.version.unwrap_or_default(),
            reason,
            res.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Malformed::Status(code))?;
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // As hyper's client: an empty reason is no reason, and the usual one is sent anyway.
    let reason = reason
        .map(|(r0, r1)| &head[r0 as usize..r1 as usize])
        .filter(|r| !r.is_empty() && Some(*r) != status.canonical_reason().map(str::as_bytes))
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok());

    let mut headers = HeaderMap::with_capacity(count);
    let mut transfer_encoding = None;
    let mut named_in_connection = Vec::new();
    let mut keep_alive = version == Version::HTTP_11;
    let mut asked_to_close = false;
    for &(n0, n1, v0, v1) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
            .map_err(|_| Malformed::Head(httparse::Error::HeaderName))?;
        // SAFETY: httparse let through only the bytes a `HeaderValue` may hold (HTAB, SP
        // to `~`, and 0x80 to 0xFF: its `HEADER_VALUE_MAP` and SIMD paths are http's
        // `is_valid` byte for byte), so a second check of every byte is not needed;
        // hyper's client reads heads the same way. http documents "valid UTF-8" as the
        // precondition, which obs-text bytes are not; what its code relies on is
        // `is_valid` (its own unsafe `to_str` runs only on visible ASCII). Debug builds,
        // the tests' among them, check every byte all the same.
        let value = unsafe {
            HeaderValue::from_maybe_shared_unchecked(head.slice(v0 as usize..v1 as usize))
        };
        if name == header::CONNECTION {
            // Once any `Connection` line asks to close, a later `keep-alive` cannot undo it.
            if asked_to_close || has_token(&value, "close") {
                asked_to_close = true;
                keep_alive = false;
            } else if !keep_alive {
                // HTTP/1.0, which closes unless asked not to.
                keep_alive = has_token(&value, "keep-alive");
            }
            super::headers::named_in_connection(&value, &mut named_in_connection);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = Some(value);
        } else if super::headers::is_hop_by_hop(&name)
            || (name == header::SET_COOKIE && crate::web::cookies::is_own_set_cookie(&value))
        {
            // Not passed on (see `Head::headers`).
        } else {
            headers.append(name, value);
        }
    }
    Ok(Some(Head {
        status,
        version,
        reason,
        headers,
        transfer_encoding,
        named_in_connection,
        keep_alive,
    }))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// How the body of a response is delimited.
#[derive(Debug)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// RFC 9112 §6.3 for a response to a request without an upgrade. Removes the
/// `Content-Length` that `Transfer-Encoding` overrides.
pub fn framing(head: &mut Head, method: &Method) -> Result<Framing, Malformed> {
    let status = head.status.as_u16();
    if status == 101 {
        return Err(Malformed::UnexpectedUpgrade);
    }
    let transfer_encoded = head.transfer_encoding.is_some();
    if transfer_encoded
        && (head.headers.contains_key(header::CONTENT_LENGTH) || head.version == Version::HTTP_10)
    {
        // The upstream framed this message two ways, or in a way its version does not
        // have: where its next response starts is in doubt, so none is read here
        // (RFC 9112 §6.1 and §6.3 ¶3: the connection MUST be closed after it).
        head.keep_alive = false;
    }
    if status == 204 || status == 304 || method == Method::HEAD {
        // No body follows, but the fields still describe one to whoever reads them next.
        if transfer_encoded {
            head.headers.remove(header::CONTENT_LENGTH);
        }
        return Ok(Framing::Empty);
    }
    if let Some(last) = &head.transfer_encoding {
        if head.version == Version::HTTP_10 {
            return Err(Malformed::TransferEncodingInHttp10);
        }
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        head.headers.remove(header::CONTENT_LENGTH);
        return Ok(if chunked {
            Framing::Chunked(Chunked::default())
        } else {
            Framing::UntilClose
        });
    }
    match content_length(&head.headers)? {
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::UntilClose),
    }
}

/// The one length every `Content-Length` value (and every item of a list in one) gives;
/// `None` when there is no such field.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Malformed> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let digits = item.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(Malformed::ContentLength);
            }
            let n = digits.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            match (n, length) {
                (None, _) => return Err(Malformed::ContentLength),
                (Some(n), Some(seen)) if n != seen => return Err(Malformed::ContentLength),
                (Some(n), _) => length = Some(n),
            }
        }
    }
    Ok(length)
}

/// A chunked body's decoder (RFC 9112 §7.1), fed from the connection's read buffer.
/// Chunk extensions and trailer fields are read and dropped: nothing downstream of a
/// proxy may rely on them (§7.1.1, §7.1.2).
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// What is left of the chunk being read, or the size being parsed.
    size: u64,
    metadata: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// The first digit of a chunk size.
    #[default]
    Start,
    Size,
    /// Whitespace after the size (hyper's client allows it before an extension).
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: a trailer field or the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// What the decoder made of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no more data; read more.
    NeedMore,
    /// The body has ended; the buffer holds what follows it.
    Done,
}

impl Chunked {
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::Done),
                ChunkState::Data if buf.is_empty() => return Ok(Decoded::NeedMore),
                ChunkState::Data => {
                    let take = usize::try_from(self.size).map_or(buf.len(), |s| s.min(buf.len()));
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                _ => {}
            }
            // The framing bytes up to the next data, the end, or the end of the buffer.
            let mut used = 0;
            let stepped = loop {
                let Some(&b) = buf.get(used) else {
                    break Ok(false);
                };
                used += 1;
                if let Err(e) = self.step(b) {
                    break Err(e);
                }
                if matches!(self.state, ChunkState::Data | ChunkState::Done) {
                    break Ok(true);
                }
            };
            bytes::Buf::advance(buf, used);
            if !stepped? {
                return Ok(Decoded::NeedMore);
            }
        }
    }

    /// One framing byte. The grammar (§7.1) with hyper's leniency kept (whitespace after
    /// the size) and none added: CRLF everywhere, never a bare LF.
    fn step(&mut self, b: u8) -> Result<(), Malformed> {
        use ChunkState as S;
        self.state = match (self.state, b) {
            (S::Start | S::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    _ => (b | 0x20) - b'a' + 10,
                };
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(digit)))
                    .ok_or(Malformed::Chunk("chunk size too large"))?;
                S::Size
            }
            (S::Start, _) => return Err(Malformed::Chunk("chunk size missing")),
            (S::Size | S::SizeSpace, b' ' | b'\t') => S::SizeSpace,
            (S::Size | S::SizeSpace, b';') => S::Extension,
            (S::Size | S::SizeSpace | S::Extension, b'\r') => S::SizeLf,
            (S::Size | S::SizeSpace, _) => return Err(Malformed::Chunk("invalid chunk size")),
            (S::Extension, b'\n') => {
                return Err(Malformed::Chunk("line feed in a chunk extension"))
            }
            (S::Extension, _) => {
                self.count_metadata()?;
                S::Extension
            }
            (S::SizeLf, b'\n') if self.size == 0 => S::TrailerStart,
            (S::SizeLf, b'\n') => S::Data,
            (S::DataCr, b'\r') => S::DataLf,
            (S::DataLf, b'\n') => S::Start,
            (S::TrailerStart, b'\r') => S::EndLf,
            (S::TrailerStart | S::Trailer, b'\n') => {
                return Err(Malformed::Chunk("bare line feed in the trailer"))
            }
            (S::Trailer, b'\r') => S::TrailerLf,
            (S::TrailerStart | S::Trailer, _) => {
                self.count_metadata()?;
                S::Trailer
            }
            (S::TrailerLf, b'\n') => S::TrailerStart,
            (S::EndLf, b'\n') => S::Done,
            (S::SizeLf | S::DataCr | S::DataLf | S::TrailerLf | S::EndLf, _) => {
                return Err(Malformed::Chunk("expected CRLF"))
            }
            (S::Data | S::Done, _) => {
                return Err(Malformed::Chunk("no framing byte expected here"))
            }
        };
        Ok(())
    }

    fn count_metadata(&mut self) -> Result<(), Malformed> {
        self.metadata += 1;
        if self.metadata > MAX_CHUNK_METADATA {
            return Err(Malformed::Chunk("too many extension or trailer bytes"));
        }
        Ok(())
    }
}

/// An upstream connection this client drives, idle between requests.
pub struct Conn {
    wire: Wire,
    /// Bounds the wait for each response head on this connection; see [`Conn::deadline`].
    answer_by: Pin<Box<Sleep>>,
    /// The last response had no body to read though its fields may describe one (to
    /// `HEAD`, a `204` / `304`, or `Content-Length: 0`): a backend that writes a body all
    /// the same is a known fault, so the socket itself is asked before the connection is
    /// used again.
    after_bodiless: bool,
}

/// The socket and its buffers.
struct Wire {
    io: TcpStream,
    /// Read from the upstream, not used yet.
    buf: BytesMut,
    /// The head of the request being sent; kept for its allocation.
    out: Vec<u8>,
    /// `buf` has been given more room than [`KEPT_BUFFER`] since the connection last went
    /// idle. Its `capacity()` cannot tell: after a head is split off, it counts only the
    /// rest of an allocation the rest keeps whole.
    grown: bool,
}

impl Conn {
    pub fn new(io: TcpStream, response_timeout: Duration) -> Self {
        Self {
            wire: Wire {
                io,
                buf: BytesMut::new(),
                out: Vec::new(),
                grown: false,
            },
            answer_by: Box::pin(tokio::time::sleep(response_timeout)),
            after_bodiless: false,
        }
    }

    /// The connection's response timer, which lives as long as it does and is moved only
    /// when a request needs a later deadline (as `pool::Conn`'s, for the same reason: a
    /// timer per request cost its registration and removal every time).
    pub fn deadline(&mut self) -> Pin<&mut Sleep> {
        self.answer_by.as_mut()
    }

    /// Whether the upstream has neither closed the connection nor sent anything since the
    /// last response. Mostly as far as the runtime has seen, without a system call unless
    /// the socket reported something: the runtime learns of bytes that arrive after a
    /// short read only at its next look at the sockets, which under load can come after
    /// the connection was taken again. After a bodiless response, where a stray body is
    /// a known backend fault, the kernel is asked instead. Bytes still on their way when
    /// it is asked are missed either way, as they are by hyper's client and nginx.
    fn looks_open(&mut self) -> bool {
        let io = &self.wire.io;
        if self.after_bodiless {
            return nothing_waiting(io);
        }
        let mut cx = Context::from_waker(Waker::noop());
        match io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // The end of the stream, or bytes nobody asked for: either way, unusable.
            Poll::Ready(Ok(())) => matches!(
                io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }
}

/// Asks the kernel whether the upstream closed `io` or sent anything on it.
fn nothing_waiting(io: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: one byte into a local, from a descriptor `io` keeps open; MSG_PEEK leaves
    // it in the socket and MSG_DONTWAIT keeps the call from blocking.
    let n = unsafe {
        libc::recv(
            io.as_raw_fd(),
            std::ptr::addr_of_mut!(byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// Buffers that grew past this for one unusually large head are let go when their
/// connection goes idle, so that idle connections do not each keep that much.
const KEPT_BUFFER: usize = 16 * 1024;

impl Wire {
    /// Lets go of buffers a large head made big. Called when the connection goes idle,
    /// with nothing unread in `buf`.
    fn trim(&mut self) {
        if self.out.capacity() > KEPT_BUFFER {
            self.out = Vec::new();
        }
        if self.grown {
            self.buf = BytesMut::new();
            self.grown = false;
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_BUF / 4 {
            self.buf.reserve(READ_BUF);
            self.grown |= self.buf.capacity() > KEPT_BUFFER;
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Sends `req` (one [`takes`]) and reads the response head.
    async fn send_and_read_head(
        &mut self,
        req: &Request<Body>,
    ) -> Result<(Head, Framing), Failure> {
        self.out.clear();
        encode_head(req, &mut self.out);
        if let Err(e) = self.io.write_all(&self.out).await {
            return Err(Failure::NothingReceived(e));
        }
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf) {
                    Ok(Some(head)) if head.status.is_informational() && head.status != 101 => {
                        continue
                    }
                    Ok(Some(mut head)) => {
                        return match framing(&mut head, req.method()) {
                            Ok(framing) => Ok((head, framing)),
                            Err(e) => Err(Failure::Broken(e.to_string())),
                        };
                    }
                    Ok(None) => {}
                    Err(e) => return Err(Failure::Broken(e.to_string())),
                }
            }
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) | Err(_) if !received => {
                    return Err(Failure::NothingReceived(
                        io::ErrorKind::UnexpectedEof.into(),
                    ))
                }
                Ok(0) => {
                    return Err(Failure::Broken(
                        "the upstream closed the connection before the end of the response head"
                            .into(),
                    ))
                }
                Ok(_) => received = true,
                Err(e) => return Err(Failure::Broken(e.to_string())),
            }
        }
    }
}

/// Idle connections to one upstream, the most recently used last.
#[derive(Default)]
pub struct Idle(Mutex<Vec<(Conn, Instant)>>);

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Conn, Instant)>> {
        // Only pushes and pops happen under the lock; a panic cannot leave it half-done.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used connection that is still open, with how long it was idle.
    pub fn take(&self, max_idle: Duration) -> Option<(Conn, Duration)> {
        loop {
            let (mut conn, since) = self.lock().pop()?;
            let idle_for = since.elapsed();
            if idle_for < max_idle && conn.looks_open() {
                return Some((conn, idle_for));
            }
        }
    }

    fn give_back(&self, conn: Conn, max_idle_count: usize) {
        let mut idle = self.lock();
        if idle.len() < max_idle_count {
            idle.push((conn, Instant::now()));
        }
    }

    /// Drops connections idle for `max_idle` or longer.
    pub fn prune(&self, max_idle: Duration) {
        self.lock().retain(|(_, since)| since.elapsed() < max_idle);
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

/// Where a connection goes when its response has been read to the end.
#[derive(Clone)]
pub struct Home {
    pub idle: Arc<Idle>,
    pub max_idle_count: usize,
}

/// Sends `req` (one [`takes`]) on `conn` and returns the response, whose body reads on
/// from the connection and hands it to `home` at its end. `None`: no response head by the
/// connection's deadline ([`Conn::deadline`], which the caller sets). The response has
/// neither hop-by-hop fields nor `Set-Cookie`s for Portcullis's own cookies.
pub async fn exchange(
    mut conn: Conn,
    req: &Request<Body>,
    home: Option<Home>,
) -> Option<Result<Response<Body>, Failure>> {
    let answered = {
        let Conn {
            wire, answer_by, ..
        } = &mut conn;
        let mut answer = std::pin::pin!(wire.send_and_read_head(req));
        std::future::poll_fn(|cx| match answer.as_mut().poll(cx) {
            Poll::Ready(answer) => Poll::Ready(Some(answer)),
            Poll::Pending => answer_by.as_mut().poll(cx).map(|()| None),
        })
        .await
    };
    let (mut head, framing) = match answered? {
        Ok(answer) => answer,
        Err(e) => return Some(Err(e)),
    };
    // Framed by the head as it came; what goes on has no field `Connection` named either.
    for name in &head.named_in_connection {
        head.headers.remove(name);
    }
    let mut res = Response::new(crate::web::empty());
    *res.status_mut() = head.status;
    *res.version_mut() = head.version;
    *res.headers_mut() = head.headers;
    if let Some(reason) = head.reason {
        res.extensions_mut().insert(reason);
    }
    conn.after_bodiless = matches!(framing, Framing::Empty | Framing::Length(0));
    let mut body = ResponseBody {
        conn: Some(conn),
        framing,
        keep_alive: head.keep_alive,
        home,
    };
    match body.framing {
        Framing::Empty | Framing::Length(0) => body.end(),
        _ => *res.body_mut() = http_body_util::BodyExt::boxed(body),
    }
    Some(Ok(res))
}

/// A response body read from the upstream connection as the client takes it. Dropped
/// before its end (the client went away), it closes the connection: the rest of the
/// response is still on the wire.
pub struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    home: Option<Home>,
}

impl ResponseBody {
    /// The body has been read to its end: the connection goes back to the pool if the
    /// upstream can take another request on it and nothing follows the response.
    fn end(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if let (true, true, Some(home)) = (self.keep_alive, conn.wire.buf.is_empty(), &self.home) {
            conn.wire.trim();
            home.idle.give_back(conn, home.max_idle_count);
        }
    }

    fn broken(&mut self, why: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(why.into())))
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(Conn { wire, .. }) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match &mut this.framing {
                Framing::Empty => None,
                Framing::Length(remaining) => (!wire.buf.is_empty()).then(|| {
                    let take = usize::try_from(*remaining)
                        .map_or(wire.buf.len(), |r| r.min(wire.buf.len()));
                    *remaining -= take as u64;
                    wire.buf.split_to(take).freeze()
                }),
                Framing::Chunked(decoder) => match decoder.decode(&mut wire.buf) {
                    Ok(Decoded::Data(data)) => Some(data),
                    Ok(Decoded::NeedMore) => None,
                    Ok(Decoded::Done) => {
                        this.end();
                        return Poll::Ready(None);
                    }
                    Err(e) => return this.broken(e),
                },
                Framing::UntilClose => (!wire.buf.is_empty()).then(|| wire.buf.split().freeze()),
            };
            if let Some(data) = data {
                if matches!(this.framing, Framing::Length(0)) {
                    this.end();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if matches!(this.framing, Framing::Empty | Framing::Length(0)) {
                this.end();
                return Poll::Ready(None);
            }
            match ready!(wire.poll_fill(cx)) {
                Ok(0) if matches!(this.framing, Framing::UntilClose) => {
                    // The end of this body, and of the connection.
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this
                        .broken("the upstream closed the connection before the end of the body")
                }
                Ok(_) => {}
                Err(e) => return this.broken(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.framing) {
            (None, _) | (_, Framing::Empty) => SizeHint::with_exact(0),
            (_, Framing::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn head_of(raw: &str) -> Head {
        let mut buf = BytesMut::from(raw);
        parse_head(&mut buf).unwrap().expect("a complete head")
    }

    fn framing_of(raw: &str, method: &Method) -> (Head, Result<Framing, Malformed>) {
        let mut head = head_of(raw);
        let framing = framing(&mut head, method);
        (head, framing)
    }

    fn request(method: Method, target: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, "backend.test")
            .body(crate::web::empty())
            .unwrap()
    }

    /// Decodes `wire` fed to the decoder `step` bytes at a time; the body and what
    /// followed it, or the first error.
    fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), Malformed> {
        let mut decoder = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => {
                    assert!(!data.is_empty(), "an empty data frame");
                    body.extend_from_slice(&data);
                }
                Decoded::Done => {
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&wire[fed..]);
                    return Ok((body, rest));
                }
                Decoded::NeedMore if fed == wire.len() => {
                    return Err(Malformed::Chunk("input ended"))
                }
                Decoded::NeedMore => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    fn dechunk_every_way(wire: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Malformed> {
        let whole = dechunk(wire, wire.len().max(1));
        for step in [1, 2, 3, 7] {
            assert_eq!(dechunk(wire, step), whole, "fed {step} bytes at a time");
        }
        whole
    }

    #[test]
    fn a_chunked_body_decodes_however_it_is_split() {
        let wire = b"5\r\nhello\r\n1;name=value\r\n \r\nA \t;x\r\n0123456789\r\n0\r\n\r\nNEXT";
        let (body, rest) = dechunk_every_way(wire).unwrap();
        assert_eq!(body, b"hello 0123456789");
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn trailer_fields_are_read_and_dropped() {
        let wire = b"3\r\nabc\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n";
        assert_eq!(dechunk_every_way(wire).unwrap(), (b"abc".to_vec(), vec![]));
    }

    #[test]
    fn upper_and_lower_case_sizes_and_leading_zeros_are_read() {
        let body = vec![b'x'; 0x1f];
        let mut wire = b"001F\r\n".to_vec();
        wire.extend_from_slice(&body);
        wire.extend_from_slice(b"\r\n0000\r\n\r\n");
        assert_eq!(dechunk_every_way(&wire).unwrap().0, body);
        let mut wire = b"1f\r\n".to_vec();
        wire.extend_from_slice(&body);
        wire.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(dechunk_every_way(&wire).unwrap().0, body);
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"\r\nhello\r\n0\r\n\r\n", "chunk size missing"),
            (b";ext\r\n", "chunk size missing"),
            (b"-5\r\nhello\r\n0\r\n\r\n", "chunk size missing"),
            (b"5\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"5x\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"5 5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"5\rhello\r\n0\r\n\r\n", "expected CRLF"),
            (b"5\r\nhelloX\r\n0\r\n\r\n", "expected CRLF"),
            (b"5\r\nhello\rX0\r\n\r\n", "expected CRLF"),
            (b"5\r\nhello\n0\r\n\r\n", "expected CRLF"),
            (
                b"5;a\nb\r\nhello\r\n0\r\n\r\n",
                "line feed in a chunk extension",
            ),
            (
                b"0\r\nX-A: 1\nX-B: 2\r\n\r\n",
                "bare line feed in the trailer",
            ),
            (b"0\r\n\n", "bare line feed in the trailer"),
            (b"0\r\nX: 1\rZ\r\n\r\n", "expected CRLF"),
            (b"0\r\n\rX", "expected CRLF"),
            (b"10000000000000000\r\n", "chunk size too large"),
        ];
        for &(wire, why) in cases {
            assert_eq!(
                dechunk_every_way(wire),
                Err(Malformed::Chunk(why)),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn the_largest_chunk_size_parses_and_one_digit_more_does_not() {
        let mut decoder = Chunked::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"ab")))
        );
        assert_eq!(decoder.size, u64::MAX - 2);
        let mut buf = BytesMut::from(&b"1ffffffffffffffff\r\n"[..]);
        assert_eq!(
            Chunked::default().decode(&mut buf),
            Err(Malformed::Chunk("chunk size too large"))
        );
    }

    #[test]
    fn extension_and_trailer_bytes_are_bounded() {
        let too_many = Some(Malformed::Chunk("too many extension or trailer bytes"));
        // The bytes after `;`, and the bytes of trailer lines without their CRLFs.
        let extension = |n: usize| {
            let mut wire = b"1;".to_vec();
            wire.extend(std::iter::repeat_n(b'e', n));
            wire.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
            wire
        };
        assert_eq!(
            dechunk(&extension(MAX_CHUNK_METADATA), 4096).unwrap().0,
            b"x"
        );
        assert_eq!(
            dechunk(&extension(MAX_CHUNK_METADATA + 1), 4096).err(),
            too_many
        );

        // Spread over many chunks and trailer lines, the bytes add up.
        let mut wire = Vec::new();
        for _ in 0..MAX_CHUNK_METADATA / 2 + 1 {
            wire.extend_from_slice(b"1;ab\r\nx\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(dechunk(&wire, 4096).err(), too_many);
        let mut wire = b"0\r\n".to_vec();
        for _ in 0..MAX_CHUNK_METADATA / 6 + 1 {
            wire.extend_from_slice(b"X-A: 1\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        assert_eq!(dechunk(&wire, 4096).err(), too_many);
    }

    fn lengths(values: &[&str]) -> Result<Option<u64>, Malformed> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
        }
        content_length(&headers)
    }

    #[test]
    fn content_length_must_be_one_number() {
        assert_eq!(lengths(&[]), Ok(None));
        assert_eq!(lengths(&["0"]), Ok(Some(0)));
        assert_eq!(lengths(&["42"]), Ok(Some(42)));
        assert_eq!(lengths(&["42", "42"]), Ok(Some(42)));
        assert_eq!(lengths(&["42, 42"]), Ok(Some(42)));
        assert_eq!(lengths(&["18446744073709551615"]), Ok(Some(u64::MAX)));
        for bad in [
            &["42", "43"][..],
            &["42, 43"],
            &["-1"],
            &["+1"],
            &["4 2"],
            &["0x10"],
            &[""],
            &["42,"],
            &["18446744073709551616"],
        ] {
            assert_eq!(lengths(bad), Err(Malformed::ContentLength), "{bad:?}");
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let cases: &[(&str, &Method, &str)] = &[
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                &get,
                "Length(5)",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                &Method::HEAD,
                "Empty",
            ),
            (
                "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
                &get,
                "Empty",
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
                &get,
                "Empty",
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", &get, "UntilClose"),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                &get,
                "Chunked",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                &get,
                "Chunked",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: Chunked\r\n\r\n",
                &get,
                "Chunked",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                &get,
                "UntilClose",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n",
                &get,
                "UntilClose",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: xchunked\r\n\r\n",
                &get,
                "UntilClose",
            ),
        ];
        for &(raw, method, expected) in cases {
            let (_, framing) = framing_of(raw, method);
            let got = format!("{:?}", framing.unwrap());
            assert!(got.starts_with(expected), "{raw:?} {method}: {got}");
        }
    }

    #[test]
    fn transfer_encoding_removes_the_content_length_beside_it() {
        let (head, framing) = framing_of(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        assert!(matches!(framing, Ok(Framing::Chunked(_))));
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
        // A bodiless answer too: what it says about the body must not contradict itself
        // to whoever reads it after us (found by the h1 fuzz target).
        for (raw, method) in [
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                Method::HEAD,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET,
            ),
        ] {
            let (head, framing) = framing_of(raw, &method);
            assert!(matches!(framing, Ok(Framing::Empty)), "{raw:?}");
            assert!(!head.headers.contains_key(header::CONTENT_LENGTH), "{raw:?}");
        }
        let (head, _) = framing_of(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n",
            &Method::HEAD,
        );
        assert!(head.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn a_message_framed_two_ways_or_chunked_in_http_10_ends_its_connection() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 200\r\n\r\n",
                Method::GET,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::HEAD,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n",
                Method::GET,
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::HEAD,
            ),
            (
                "HTTP/1.0 204 No Content\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET,
            ),
        ];
        for (raw, method) in cases {
            let (head, _) = framing_of(raw, &method);
            assert!(!head.keep_alive, "{raw:?} to {method}");
        }
        // One framing, in a version that has it: the connection may carry the next one.
        for raw in [
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\n",
        ] {
            let (head, framing) = framing_of(raw, &Method::GET);
            assert!(framing.is_ok() && head.keep_alive, "{raw:?}");
        }
    }

    #[test]
    fn the_upstream_gets_the_path_the_gate_judged() {
        // An HTTP/2 client may send `:path: ?x`; `Uri::path` (what the gate checks) reads
        // it as `/`, and `/` is what the upstream must see.
        let uri = http::Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("?x=1"));
            parts
        })
        .unwrap();
        assert_eq!(uri.path(), "/");
        let mut req = request(Method::GET, "/");
        *req.uri_mut() = uri;
        let mut out = Vec::new();
        encode_head(&req, &mut out);
        assert!(
            out.starts_with(b"GET /?x=1 HTTP/1.1\r\n"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn responses_that_cannot_be_framed_are_errors() {
        let cases: &[(&str, Malformed)] = &[
            (
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
                Malformed::UnexpectedUpgrade,
            ),
            (
                "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Malformed::TransferEncodingInHttp10,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                Malformed::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
                Malformed::ContentLength,
            ),
        ];
        for (raw, expected) in cases {
            let (_, framing) = framing_of(raw, &Method::GET);
            assert_eq!(framing.err().as_ref(), Some(expected), "{raw:?}");
        }
    }

    #[test]
    fn a_request_head_is_written_in_origin_form_without_framing_fields() {
        let mut req = request(Method::GET, "/a/b?c=d&e");
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        req.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        req.headers_mut()
            .append("x-many", HeaderValue::from_static("1"));
        req.headers_mut()
            .append("x-many", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_head(&req, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a/b?c=d&e HTTP/1.1\r\nhost: backend.test\r\nx-many: 1\r\nx-many: 2\r\n\r\n"
        );

        let mut out = Vec::new();
        encode_head(&request(Method::HEAD, "http://backend.test"), &mut out);
        assert!(out.starts_with(b"HEAD / HTTP/1.1\r\n"), "{out:?}");
    }

    #[test]
    fn only_bodiless_gets_and_heads_are_taken() {
        assert!(takes(&request(Method::GET, "/")));
        assert!(takes(&request(Method::HEAD, "/")));
        assert!(!takes(&request(Method::DELETE, "/")));
        assert!(!takes(&request(Method::POST, "/")));
        let mut with_body = request(Method::GET, "/");
        *with_body.body_mut() = crate::web::full("a body");
        assert!(!takes(&with_body));
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_only_when_complete() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";
        for cut in 0..raw.len() - 2 {
            let mut buf = BytesMut::from(&raw[..cut]);
            assert!(parse_head(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(&raw[..]);
        let head = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers[header::CONTENT_LENGTH], "2");
        assert_eq!(&buf[..], b"hi");
    }

    #[test]
    fn a_head_too_large_or_malformed_is_an_error() {
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() <= MAX_HEAD {
            // Long lines, so that the size bound and not the field count is reached.
            huge.extend_from_slice(b"x-filler: ");
            huge.extend(std::iter::repeat_n(b'v', 1000));
            huge.extend_from_slice(b"\r\n");
        }
        let mut buf = BytesMut::from(&huge[..]);
        assert_eq!(parse_head(&mut buf).err(), Some(Malformed::HeadTooLarge));
        huge.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&huge[..]);
        assert_eq!(parse_head(&mut buf).err(), Some(Malformed::HeadTooLarge));

        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&many[..]);
        assert!(matches!(parse_head(&mut buf), Err(Malformed::Head(_))));

        for bad in [
            "HTTP/1.1 200 OK\r\nbad header: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "SMTP ready\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(parse_head(&mut buf).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_fields_and_our_cookies_are_left_out_as_the_head_is_read() {
        let head = head_of(
            "HTTP/1.1 200 OK\r\n\
             connection: keep-alive, X-Secret\r\n\
             keep-alive: timeout=5\r\n\
             proxy-connection: keep-alive\r\n\
             te: trailers\r\n\
             trailer: x-sum\r\n\
             upgrade: h2c\r\n\
             proxy-authenticate: Basic\r\n\
             proxy-authorization: Basic eDp5\r\n\
             transfer-encoding: gzip\r\n\
             transfer-encoding: chunked\r\n\
             set-cookie: theme=dark\r\n\
             set-cookie: portcullis-app=planted; Path=/\r\n\
             set-cookie: __Host-Portcullis-Session=x\r\n\
             set-cookie: =portcullis-app=planted\r\n\
             set-cookie: lang=en\r\n\
             x-secret: 1\r\n\
             x-kept: 2\r\n\r\n",
        );
        let names: Vec<&str> = head.headers.keys().map(|n| n.as_str()).collect();
        // Named in `Connection`: still here for the framing, removed by `exchange`.
        assert_eq!(names, ["set-cookie", "x-secret", "x-kept"]);
        let cookies: Vec<_> = head.headers.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["theme=dark", "lang=en"]);
        assert_eq!(head.named_in_connection, ["x-secret"]);
        assert_eq!(head.transfer_encoding.unwrap(), "chunked", "the last line");
        assert!(head.keep_alive);
    }

    #[tokio::test]
    async fn a_field_named_in_connection_is_not_passed_on() {
        let (io, _heads) = scripted(vec![
            b"HTTP/1.1 200 OK\r\nx-hop: 1\r\nconnection: X-Hop, content-length\r\ncontent-length: 2\r\nx-kept: 2\r\n\r\nok",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let home = home();
        let (res, body) = ask(Conn::new(io, Duration::from_secs(5)), &home)
            .await
            .unwrap();
        // Framed by the length it was given all the same, and kept alive.
        assert_eq!(body.unwrap(), b"ok");
        assert_eq!(home.idle.count(), 1);
        let names: Vec<&str> = res.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_field() {
        let cases = [
            ("HTTP/1.1 200 OK\r\n\r\n", true),
            ("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", false),
            (
                "HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\n\r\n",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\n\r\n",
                false,
            ),
            ("HTTP/1.0 200 OK\r\n\r\n", false),
            ("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n", true),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nconnection: close\r\n\r\n",
                false,
            ),
        ];
        for (raw, keep_alive) in cases {
            assert_eq!(head_of(raw).keep_alive, keep_alive, "{raw:?}");
        }
    }

    #[test]
    fn an_unusual_reason_phrase_is_kept_and_the_usual_one_is_not() {
        assert!(head_of("HTTP/1.1 200 OK\r\n\r\n").reason.is_none());
        let head = head_of("HTTP/1.1 200 Fine Thanks\r\n\r\n");
        assert_eq!(head.reason.unwrap().as_bytes(), b"Fine Thanks");
        let head = head_of("HTTP/1.1 599 Custom\r\n\r\n");
        assert_eq!(head.status.as_u16(), 599);
        assert_eq!(head.reason.unwrap().as_bytes(), b"Custom");
    }

    /// httparse gives a static `""` (not a slice of the buffer) for a missing reason or one
    /// with bytes outside ASCII; found by the `h1` fuzz target, where working out its
    /// offset in the buffer overflowed.
    #[test]
    fn a_missing_or_non_ascii_reason_phrase_leaves_the_usual_one() {
        for raw in [
            b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n".as_slice(),
            b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 404 Nicht gefunden \xfc\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 100 \xff\xffkeep-alive\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw);
            let head = parse_head(&mut buf).unwrap().expect("a complete head");
            assert!(head.reason.is_none(), "{raw:?}");
            assert!(buf.is_empty(), "{raw:?}");
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200\r\n\r\n"[..]);
        assert_eq!(parse_head(&mut buf).unwrap().unwrap().status, 200);
    }

    // ---- Over a real socket: `exchange` and the body's return to the pool. ----

    /// An upstream that accepts one connection, reads each request head and answers it
    /// with the next of `replies` (raw bytes); sends the request heads it saw back over
    /// the channel, and closes when the replies run out.
    async fn scripted(
        replies: Vec<&'static [u8]>,
    ) -> (TcpStream, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, heads) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut pending = Vec::new();
            let mut buf = [0u8; 4096];
            for reply in replies {
                let head = loop {
                    if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        break pending.drain(..end + 4).collect::<Vec<u8>>();
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                };
                let _ = seen.send(String::from_utf8(head).unwrap());
                if s.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
        (TcpStream::connect(addr).await.unwrap(), heads)
    }

    fn home() -> Home {
        Home {
            idle: Arc::new(Idle::default()),
            max_idle_count: 8,
        }
    }

    async fn ask(
        conn: Conn,
        home: &Home,
    ) -> Result<(Response<()>, Result<Vec<u8>, String>), String> {
        let res = exchange(conn, &request(Method::GET, "/x"), Some(home.clone()))
            .await
            .expect("an answer before the deadline")
            .map_err(Failure::into_message)?;
        let (parts, body) = res.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .map(|b| b.to_bytes().to_vec())
            .map_err(|e| e.to_string());
        Ok((Response::from_parts(parts, ()), body))
    }

    fn second_conn(home: &Home) -> Conn {
        home.idle
            .take(Duration::from_secs(60))
            .expect("the connection back in the pool")
            .0
    }

    #[tokio::test]
    async fn a_kept_alive_connection_carries_request_after_request() {
        let (io, mut heads) = scripted(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nsecond\r\n0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nthird",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let home = home();
        let (res, body) = ask(Conn::new(io, Duration::from_secs(5)), &home)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body.unwrap(), b"first");
        let head = heads.recv().await.unwrap();
        assert!(
            head.starts_with("GET /x HTTP/1.1\r\nhost: backend.test\r\n"),
            "{head}"
        );

        let (_, body) = ask(second_conn(&home), &home).await.unwrap();
        assert_eq!(body.unwrap(), b"second");
        let (res, body) = ask(second_conn(&home), &home).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "informational heads skipped");
        assert_eq!(body.unwrap(), b"third");
        let (res, body) = ask(second_conn(&home), &home).await.unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(body.unwrap(), b"");
        assert_eq!(home.idle.count(), 1);
    }

    #[tokio::test]
    async fn a_connection_is_not_returned_when_it_must_not_be_used_again() {
        let cases: [(&'static [u8], &[u8]); 5] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                b"ok",
            ),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", b"ok"),
            // Bytes after the response: the two sides disagree where it ended.
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
                b"ok",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nX",
                b"ok",
            ),
            // Read until the upstream closed: the end of the connection too.
            (b"HTTP/1.1 200 OK\r\n\r\nok", b"ok"),
        ];
        for (reply, expected) in cases {
            let (io, _heads) = scripted(vec![reply]).await;
            let home = home();
            let (_, body) = ask(Conn::new(io, Duration::from_secs(5)), &home)
                .await
                .unwrap();
            assert_eq!(
                body.unwrap(),
                expected,
                "{}",
                String::from_utf8_lossy(reply)
            );
            assert_eq!(home.idle.count(), 0, "{}", String::from_utf8_lossy(reply));
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_the_connection_is_dropped() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nshort\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nshortX",
        ] {
            let (io, _heads) = scripted(vec![reply]).await;
            let home = home();
            let (res, body) = ask(Conn::new(io, Duration::from_secs(5)), &home)
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert!(body.is_err(), "{}", String::from_utf8_lossy(reply));
            assert_eq!(home.idle.count(), 0);
        }
    }

    #[tokio::test]
    async fn a_connection_closed_before_any_answer_may_be_retried_and_a_half_answer_may_not() {
        let (io, _heads) = scripted(vec![]).await;
        let failed = exchange(
            Conn::new(io, Duration::from_secs(5)),
            &request(Method::GET, "/"),
            None,
        )
        .await
        .unwrap();
        assert!(
            matches!(failed, Err(Failure::NothingReceived(_))),
            "{failed:?}"
        );

        let (io, _heads) = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-"]).await;
        let failed = exchange(
            Conn::new(io, Duration::from_secs(5)),
            &request(Method::GET, "/"),
            None,
        )
        .await
        .unwrap();
        assert!(matches!(failed, Err(Failure::Broken(_))), "{failed:?}");

        let (io, _heads) = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"]).await;
        let failed = exchange(
            Conn::new(io, Duration::from_secs(5)),
            &request(Method::GET, "/"),
            None,
        )
        .await
        .unwrap();
        assert!(matches!(failed, Err(Failure::Broken(_))), "{failed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_head_by_the_deadline_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let io = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let _silent = listener.accept().await.unwrap();
        let answered = exchange(
            Conn::new(io, Duration::from_secs(3)),
            &request(Method::GET, "/"),
            None,
        )
        .await;
        assert!(answered.is_none());
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_closes_its_connection() {
        let (io, _heads) =
            scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"]).await;
        let home = home();
        let res = exchange(
            Conn::new(io, Duration::from_secs(5)),
            &request(Method::GET, "/"),
            Some(home.clone()),
        )
        .await
        .unwrap()
        .unwrap();
        let mut body = res.into_body();
        let first = http_body_util::BodyExt::frame(&mut body)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "half");
        drop(body);
        assert_eq!(home.idle.count(), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_or_wrote_to_is_not_taken() {
        let (io, _heads) = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        let home = home();
        let (_, body) = ask(Conn::new(io, Duration::from_secs(5)), &home)
            .await
            .unwrap();
        assert_eq!(body.unwrap(), b"ok");
        assert_eq!(home.idle.count(), 1);
        // The scripted upstream closes once its replies run out.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(home.idle.take(Duration::from_secs(60)).is_none());

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let io = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut upstream, _) = listener.accept().await.unwrap();
        home.idle
            .give_back(Conn::new(io, Duration::from_secs(5)), 8);
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(home.idle.take(Duration::from_secs(60)).is_none());
        assert_eq!(home.idle.count(), 0);
    }

    /// A backend that writes a body after a bodiless answer (to `HEAD`, or with
    /// `Content-Length: 0`), in a second write. Between the two the runtime does not look
    /// at its sockets (the test blocks its only thread), as under load it may not before
    /// the connection is wanted again: the runtime then still believes the socket empty,
    /// and only the kernel knows.
    #[tokio::test]
    async fn a_body_written_after_a_bodiless_answer_keeps_its_connection_out_of_use() {
        for (method, answer) in [
            (
                Method::HEAD,
                &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"[..],
            ),
            (Method::GET, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            (Method::GET, b"HTTP/1.1 204 No Content\r\n\r\n"),
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let upstream = std::thread::spawn(move || {
                use std::io::{Read, Write};
                let (mut s, _) = listener.accept().unwrap();
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    seen.extend_from_slice(&buf[..n]);
                }
                s.write_all(answer).unwrap();
                std::thread::sleep(Duration::from_millis(30));
                s.write_all(b"hello").unwrap();
                // Held open: refused for what was sent, not for a close.
                std::thread::sleep(Duration::from_millis(300));
            });
            let home = home();
            let io = TcpStream::connect(addr).await.unwrap();
            let res = exchange(
                Conn::new(io, Duration::from_secs(5)),
                &request(method.clone(), "/x"),
                Some(home.clone()),
            )
            .await
            .unwrap()
            .unwrap();
            assert!(res.status().is_success());
            assert!(res.body().is_end_stream());
            assert_eq!(home.idle.count(), 1, "a bodiless answer ends at once");
            std::thread::sleep(Duration::from_millis(150));
            assert!(
                home.idle.take(Duration::from_secs(60)).is_none(),
                "{method} {:?}: the stray body would be read as the next answer",
                String::from_utf8_lossy(answer)
            );
            upstream.join().unwrap();
        }
    }

    #[tokio::test]
    async fn buffers_grown_for_a_large_head_are_let_go_when_the_connection_idles() {
        let big_answer: &'static [u8] = Vec::leak(
            format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
                "a".repeat(3 * KEPT_BUFFER)
            )
            .into_bytes(),
        );
        // A second reply keeps the upstream waiting, so the connection stays open.
        let (io, _heads) = scripted(vec![big_answer, b"HTTP/1.1 204 No Content\r\n\r\n"]).await;
        let home = home();
        let mut req = request(Method::GET, "/x");
        req.headers_mut().insert(
            "x-big",
            HeaderValue::from_str(&"b".repeat(3 * KEPT_BUFFER)).unwrap(),
        );
        let res = exchange(
            Conn::new(io, Duration::from_secs(5)),
            &req,
            Some(home.clone()),
        )
        .await
        .unwrap()
        .unwrap();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"ok");
        let conn = second_conn(&home);
        assert!(
            conn.wire.out.capacity() <= KEPT_BUFFER,
            "{}",
            conn.wire.out.capacity()
        );
        // Let go whole: what is left after a large head is split off can look small.
        assert_eq!(conn.wire.buf.capacity(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_idle_too_long_are_neither_taken_nor_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let home = home();
        let mut upstreams = Vec::new();
        for _ in 0..3 {
            let io = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            upstreams.push(listener.accept().await.unwrap());
            home.idle
                .give_back(Conn::new(io, Duration::from_secs(5)), 2);
        }
        assert_eq!(home.idle.count(), 2, "no more than the most idle count");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(home.idle.take(Duration::from_secs(5)).is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        home.idle.prune(Duration::from_secs(5));
        assert_eq!(home.idle.count(), 0);
    }
}
