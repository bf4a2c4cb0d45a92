//! Reading a posted form strictly: bounded size, the right content type, valid UTF-8,
//! bounded fields. Anything else is a clear 4xx, never a panic.

use std::collections::HashMap;
use std::time::Duration;

use http::request::Parts;
use http::{header, Request};
use http_body_util::BodyExt;

use crate::error::Refusal;
use crate::web::Body;

/// Sign-in forms are a few hundred bytes; 16 KiB leaves room and bounds memory.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// No field of ours is longer (passwords are capped at 1024 bytes, `rd` at 2048).
pub const MAX_FIELD_BYTES: usize = 4096;

pub struct Form(HashMap<String, String>);

impl Form {
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Reads and parses a posted form whose body must arrive `within` the client time limit:
/// the connection's idle limit does not run while a request is open, so without this a
/// client trickling a form body would hold its connection (and this task) for as long as
/// it liked.
pub async fn read(req: Request<Body>, within: Duration) -> Result<(Parts, Form), Refusal> {
    let (parts, body) = req.into_parts();
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !is_form {
        return Err(Refusal::BadRequest(
            "This page only accepts its own form. Go back and submit the form again.".into(),
        ));
    }
    let bytes = tokio::time::timeout(within, collect(body))
        .await
        .map_err(|_| Refusal::RequestTimeout)??;
    let form = parse(&bytes).map_err(Refusal::BadRequest)?;
    Ok((parts, form))
}

async fn collect(mut body: Body) -> Result<Vec<u8>, Refusal> {
    let mut bytes: Vec<u8> = Vec::new();
    // A manual loop rather than `Limited`: same bound, and it keeps the future's error
    // types simple enough for rustc to see that it is `Send`.
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Refusal::BadRequest(
                "The form did not arrive completely. Try again.".into(),
            ));
        };
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_FORM_BYTES {
                return Err(Refusal::PayloadTooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// `application/x-www-form-urlencoded` (WHATWG URL §5.1), strictly: malformed UTF-8
/// after decoding is refused rather than replaced, so nobody can smuggle bytes past a
/// check that reads the replaced text.
pub fn parse(bytes: &[u8]) -> Result<Form, String> {
    let mut fields = HashMap::new();
    for pair in bytes.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let mut it = pair.splitn(2, |b| *b == b'=');
        let name = decode(it.next().unwrap_or_default())?;
        let value = decode(it.next().unwrap_or_default())?;
        if value.len() > MAX_FIELD_BYTES || name.len() > 64 {
            return Err("One of the entries is far too long. Go back and try again.".into());
        }
        // The first occurrence wins; later duplicates are ignored.
        fields.entry(name).or_insert(value);
    }
    Ok(Form(fields))
}

fn decode(raw: &[u8]) -> Result<String, String> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    String::from_utf8(decoded)
        .map_err(|_| "The form contained characters that could not be read. Try again.".to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_with_plus_and_percent() {
        let f = parse(b"username=a+b&password=p%26%3D%C3%A9&x").unwrap();
        assert_eq!(f.get("username"), "a b");
        assert_eq!(f.get("password"), "p&=é");
        assert_eq!(f.get("x"), "");
        assert_eq!(f.get("missing"), "");
    }

    /// A body that sends its first bytes and then nothing more.
    struct Trickle(bool);

    impl http_body::Body for Trickle {
        type Data = bytes::Bytes;
        type Error = crate::web::BoxError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"username=al",
            )))))
        }
    }

    fn posted(body: Body) -> Request<Body> {
        Request::post("/.portcullis/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_form_body_that_stops_arriving_is_refused_after_the_limit() {
        let started = tokio::time::Instant::now();
        let refused = read(posted(Body::new(Trickle(false))), Duration::from_secs(10)).await;
        assert!(matches!(refused, Err(Refusal::RequestTimeout)));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // A whole form within the limit is read as before.
        let (_, form) = read(
            posted(crate::web::full("username=alice")),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(form.get("username"), "alice");
    }

    #[test]
    fn hostile_forms_are_refused_not_panicking() {
        assert!(parse(b"username=%FF%FE").is_err());
        assert!(parse(b"a=\xff").is_err());
        let long = format!("password={}", "a".repeat(MAX_FIELD_BYTES + 1));
        assert!(parse(long.as_bytes()).is_err());
        assert!(parse(b"=&&&==&%").is_ok());
        assert_eq!(parse(b"a=1&a=2").unwrap().get("a"), "1");
    }
}
