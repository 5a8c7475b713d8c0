//! Property tests (proptest, stable) of the round-trips the fuzz targets also check, with
//! oracles built from the generated structure rather than from a second parser: a head
//! written from fields parses back to those fields; a payload chunk-encoded decodes back
//! to itself however it is split; an SSE stream with usage-only events stripped is, for
//! every split point, the stream built without them.

use proptest::prelude::*;
use ringgate::ai::usage::SseScanner;
use ringgate::http::{
    encode_chunk, parse_request_head, write_request_head, BodyFraming, HeadLimits, LAST_CHUNK,
};
use ringgate_fuzz_checks::chunked::decode_in_pieces;
use ringgate_fuzz_checks::reference::{decode_chunked, Ending};

/// A token (RFC 9110 tchar) of `min..=max` characters.
fn token(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9!#$%&'*+.^_`|~-]{{{min},{max}}}"))
        .expect("a valid regex")
}

fn field_name() -> impl Strategy<Value = String> {
    token(1, 12).prop_filter("framing fields are added apart", |n| {
        let l = n.to_ascii_lowercase();
        ![
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "expect",
        ]
        .contains(&l.as_str())
    })
}

/// A field value: field bytes with no surrounding whitespace (which parsing trims).
fn field_value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![0x21u8..0x7f, 0x80u8..=0xff, Just(b' '), Just(b'\t')],
        0..24,
    )
    .prop_map(|mut v| {
        while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.remove(0);
        }
        while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.pop();
        }
        v
    })
}

#[derive(Debug, Clone)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn request() -> impl Strategy<Value = (String, String, Vec<(String, Vec<u8>)>, Framing)> {
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("DELETE".to_string()),
        token(1, 10),
    ];
    let target = (
        proptest::collection::vec("[A-Za-z0-9._~%:@!$&'()*+,;=-]{0,8}", 0..6),
        proptest::option::of("[A-Za-z0-9=&/?%-]{0,16}"),
    )
        .prop_map(|(segs, q)| {
            let mut t = format!("/{}", segs.join("/"));
            if let Some(q) = q {
                t.push('?');
                t.push_str(&q);
            }
            t
        });
    let framing = prop_oneof![
        Just(Framing::None),
        (0u64..1 << 40).prop_map(Framing::Length),
        Just(Framing::Chunked)
    ];
    (
        method,
        target,
        proptest::collection::vec((field_name(), field_value()), 0..12),
        framing,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// write_request_head -> parse_request_head gives back the fields written, and the
    /// fuzz target's parse -> write -> parse identity holds on the result.
    #[test]
    fn request_head_write_then_parse_is_identity(
        (method, target, fields, framing) in request(),
        host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
    ) {
        let mut all: Vec<(String, Vec<u8>)> = vec![("Host".into(), host.into_bytes())];
        all.extend(fields);
        match &framing {
            Framing::None => {}
            Framing::Length(n) => all.push(("Content-Length".into(), n.to_string().into_bytes())),
            Framing::Chunked => all.push(("Transfer-Encoding".into(), b"chunked".to_vec())),
        }
        let refs: Vec<(&str, &[u8])> = all.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        let mut out = Vec::new();
        write_request_head(&mut out, &method, &target, &refs);
        let parsed = parse_request_head(&out, &HeadLimits::default());
        let Ok(Some((head, n))) = parsed else {
            panic!("{:?} does not parse: {parsed:?}", String::from_utf8_lossy(&out));
        };
        prop_assert_eq!(n, out.len());
        prop_assert_eq!(&head.method, &method);
        prop_assert_eq!(&head.target, &target);
        let got: Vec<(String, Vec<u8>)> =
            head.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect();
        prop_assert_eq!(got, all);
        let want = match framing {
            Framing::None => BodyFraming::None,
            Framing::Length(n) => BodyFraming::Length(n),
            Framing::Chunked => BodyFraming::Chunked,
        };
        prop_assert_eq!(head.framing, want);
        let mut raw = vec![1u8];
        raw.extend_from_slice(&out);
        ringgate_fuzz_checks::heads::check_request_head(&raw);
    }

    /// encode_chunk + LAST_CHUNK -> the decoder, cut at any two points, gives the payload
    /// back and ends exactly at the body's end; the reference decoder agrees.
    #[test]
    fn chunked_encode_then_decode_is_identity(
        parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
        trailers in proptest::option::of("[a-z-]{1,10}: [ -~]{0,10}"),
        next in proptest::collection::vec(any::<u8>(), 0..8),
        cut1 in any::<prop::sample::Index>(),
        cut2 in any::<prop::sample::Index>(),
    ) {
        let mut body = Vec::new();
        for p in &parts {
            encode_chunk(p, &mut body);
        }
        match &trailers {
            None => body.extend_from_slice(LAST_CHUNK),
            Some(t) => body.extend_from_slice(format!("0\r\n{t}\r\n\r\n").as_bytes()),
        }
        let len = body.len();
        body.extend_from_slice(&next);
        let (a, b) = {
            let (x, y) = (cut1.index(body.len() + 1), cut2.index(body.len() + 1));
            (x.min(y), x.max(y))
        };
        let d = decode_in_pieces(&[&body[..a], &body[a..b], &body[b..]]);
        prop_assert_eq!(&d.body, &parts.concat());
        prop_assert_eq!(d.ending, Ending::Done(len));
        prop_assert_eq!(decode_chunked(&body), d);
    }
}

#[derive(Debug, Clone)]
enum Ev {
    /// An ordinary delta chunk (kept).
    Delta(String),
    /// The usage-only chunk the gateway asked for (stripped).
    UsageOnly(u32, u32),
    /// A chunk with choices and usage (kept, usage read).
    UsageWithChoices(u32),
    /// A comment or other field (kept).
    Other(String),
}

fn event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        "[a-z ]{0,12}".prop_map(Ev::Delta),
        (0u32..100_000, 0u32..100_000).prop_map(|(p, c)| Ev::UsageOnly(p, c)),
        (0u32..100_000).prop_map(Ev::UsageWithChoices),
        "[a-z]{1,8}".prop_map(Ev::Other),
    ]
}

fn render(ev: &Ev, nl: &str) -> String {
    match ev {
        Ev::Delta(t) => {
            format!(r#"data: {{"choices":[{{"delta":{{"content":"{t}"}}}}],"usage":null}}{nl}{nl}"#)
        }
        Ev::UsageOnly(p, c) => format!(
            r#"data: {{"choices":[],{nl}data: "usage":{{"prompt_tokens":{p},"completion_tokens":{c}}}}}{nl}{nl}"#
        ),
        Ev::UsageWithChoices(p) => {
            format!(r#"data:{{"choices":[1],"usage":{{"prompt_tokens":{p}}}}}{nl}{nl}"#)
        }
        Ev::Other(t) => format!(": {t}{nl}event: {t}{nl}{nl}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Stripping removes exactly the usage-only events, for every single split point of
    /// the stream (and a second cut anywhere after it), with any line ending.
    #[test]
    fn sse_strip_removes_exactly_the_usage_only_events_at_every_split(
        events in proptest::collection::vec(event(), 0..6),
        nl in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        tail in "(data: [a-z]{0,6})?",
        second in any::<prop::sample::Index>(),
    ) {
        let mut stream = String::new();
        let mut want = String::new();
        let mut usage = None;
        for ev in &events {
            let text = render(ev, nl);
            stream.push_str(&text);
            match ev {
                Ev::UsageOnly(p, _) => usage = Some(u64::from(*p)),
                Ev::UsageWithChoices(p) => {
                    usage = Some(u64::from(*p));
                    want.push_str(&text);
                }
                _ => want.push_str(&text),
            }
        }
        stream.push_str(&tail);
        want.push_str(&tail);
        let s = stream.as_bytes();
        for cut in 0..=s.len() {
            let cut2 = cut + second.index(s.len() - cut + 1);
            let mut sc = SseScanner::new(true);
            let mut out = Vec::new();
            for piece in [&s[..cut], &s[cut..cut2], &s[cut2..]] {
                sc.feed(piece, &mut out);
            }
            sc.finish(&mut out);
            prop_assert_eq!(String::from_utf8_lossy(&out), want.as_str(), "cut at {} and {}", cut, cut2);
            prop_assert_eq!(sc.usage().map(|u| u.prompt), usage);
        }
        let mut data = vec![1u8, 0];
        data.extend_from_slice(s);
        ringgate_fuzz_checks::ai::check_sse(&data);
    }
}
