//! Fuzzes the upstream response reader of the lean HTTP/1.1 client (`proxy::h1`): the
//! head parser, the framing rules and the chunked decoder. Never a panic; the same
//! outcome (head, body bytes, what follows the body, or the error) however the bytes are
//! split as they arrive; a `Content-Length` body never longer than its length; no empty
//! data frame; after `Transfer-Encoding`, no `Content-Length` left to pass on; no
//! hop-by-hop field and no `Set-Cookie` for Portcullis's own cookies among the fields.
//!
//! Input: 1 byte picks `GET` or `HEAD`, 1 byte the size of the pieces the rest is fed in
//! (0: all at once), then the bytes the upstream sends.
#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use portcullis::proxy::h1::{framing, parse_head, Decoded, Framing};

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Status, headers as text, body, bytes after the body.
    Read(u16, String, Vec<u8>, Vec<u8>),
    /// The bytes ran out before the end (of the head or the body).
    Incomplete,
    Malformed(String),
}

fn read(wire: &[u8], method: &Method, piece: usize) -> Outcome {
    let mut fed = 0;
    let mut buf = BytesMut::new();
    let mut feed = |buf: &mut BytesMut| {
        if fed == wire.len() {
            return false;
        }
        let next = (fed + piece).min(wire.len());
        buf.extend_from_slice(&wire[fed..next]);
        fed = next;
        true
    };
    let mut head = loop {
        match parse_head(&mut buf) {
            Ok(Some(head)) if head.status.is_informational() && head.status != 101 => {}
            Ok(Some(head)) => break head,
            Ok(None) if feed(&mut buf) => {}
            Ok(None) => return Outcome::Incomplete,
            Err(e) => return Outcome::Malformed(e.to_string()),
        }
    };
    let framing = match framing(&mut head, method) {
        Ok(f) => f,
        Err(e) => return Outcome::Malformed(e.to_string()),
    };
    if head.transfer_encoding.is_some() {
        assert!(!head.headers.contains_key(http::header::CONTENT_LENGTH));
    }
    // Nothing hop-by-hop and no cookie of ours is passed on.
    assert!(!head.headers.keys().any(portcullis::proxy::headers::is_hop_by_hop));
    assert!(!head
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .any(portcullis::web::cookies::is_own_set_cookie));
    let headers = format!("{:?}", head.headers);
    let mut body = Vec::new();
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            while (body.len() as u64) < n {
                if buf.is_empty() && !feed(&mut buf) {
                    return Outcome::Incomplete;
                }
                let take = buf
                    .len()
                    .min((n - body.len() as u64).try_into().unwrap_or(usize::MAX));
                body.extend_from_slice(&buf.split_to(take));
            }
        }
        Framing::Chunked(mut decoder) => loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(data)) => {
                    assert!(!data.is_empty(), "an empty data frame");
                    body.extend_from_slice(&data);
                }
                Ok(Decoded::Done) => break,
                Ok(Decoded::NeedMore) if feed(&mut buf) => {}
                Ok(Decoded::NeedMore) => return Outcome::Incomplete,
                Err(e) => return Outcome::Malformed(e.to_string()),
            }
        },
        Framing::UntilClose => {
            while feed(&mut buf) {}
            body.extend_from_slice(&buf.split());
        }
    }
    let mut rest = buf.to_vec();
    rest.extend_from_slice(&wire[fed..]);
    Outcome::Read(head.status.as_u16(), headers, body, rest)
}

fuzz_target!(|input: &[u8]| {
    let [pick, piece, wire @ ..] = input else {
        return;
    };
    let method = if pick % 2 == 0 {
        Method::GET
    } else {
        Method::HEAD
    };
    let whole = read(wire, &method, wire.len().max(1));
    let piece = if *piece == 0 {
        wire.len().max(1)
    } else {
        usize::from(*piece)
    };
    assert_eq!(
        read(wire, &method, piece),
        whole,
        "fed {piece} bytes at a time"
    );
    assert_eq!(read(wire, &method, 1), whole, "fed a byte at a time");
});
