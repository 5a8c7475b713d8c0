//! Chunked bodies: ringgate's incremental decoder against [`crate::reference`], fed in the
//! pieces the fuzzer chose (the request side: a body read into a buffer and consumed as
//! decoded), and the response side's re-framer (`proxy::pipe::reframe_chunks` over a
//! `ReadBuf`), whose output must decode to the same payload.

use ringgate::ai::body::RequestInfo;
use ringgate::bufio::ReadBuf;
use ringgate::http::{parse_response_head, ChunkEvent, ChunkedDecoder, LAST_CHUNK};
use ringgate::proxy::candidates::AiRequest;
use ringgate::proxy::pipe::reframe_chunks;
use ringgate::proxy::tap::Tap;

use crate::reference::{decode_chunked, sse_expected, Decoded, Ending};
use crate::Pieces;

/// Feeds `pieces` to a fresh decoder the way the proxy does: append to what is left,
/// decode until it needs more. Returns the payload and how it ended (Done with the bytes
/// the body took).
pub fn decode_in_pieces(pieces: &[&[u8]]) -> Decoded {
    let mut dec = ChunkedDecoder::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut consumed_before = 0usize;
    let mut body = Vec::new();
    for piece in pieces {
        pending.extend_from_slice(piece);
        let mut at = 0;
        loop {
            match dec.decode(&pending[at..]) {
                Err(_) => {
                    assert!(dec.decode(b"0\r\n\r\n").is_err(), "errors are sticky");
                    return Decoded {
                        body,
                        ending: Ending::Error,
                    };
                }
                Ok((used, ChunkEvent::Data(r))) => {
                    assert_eq!(r.end, used, "Data ends where consumption ends");
                    assert!(!r.is_empty(), "empty Data event");
                    body.extend_from_slice(&pending[at..][r]);
                    at += used;
                }
                Ok((used, ChunkEvent::Done)) => {
                    assert!(dec.is_done());
                    return Decoded {
                        body,
                        ending: Ending::Done(consumed_before + at + used),
                    };
                }
                Ok((used, ChunkEvent::NeedMore)) => {
                    assert_eq!(at + used, pending.len(), "NeedMore left bytes unread");
                    at += used;
                    break;
                }
            }
        }
        consumed_before += at;
        pending.drain(..at);
    }
    Decoded {
        body,
        ending: Ending::Incomplete,
    }
}

/// Chunked decoder target: any split gives what one piece gives, which is what the
/// reference decoder gives.
pub fn check_chunked(data: &[u8]) {
    let p = Pieces::parse(data);
    let want = decode_chunked(p.stream);
    let whole = decode_in_pieces(&[p.stream]);
    assert_eq!(whole, want, "decoder and reference disagree");
    let split = decode_in_pieces(&p.pieces());
    assert_eq!(split, want, "the split {:?} changed the result", p.cuts);
}

/// An event-stream 200 response's tap for a request whose usage chunk the gateway added.
fn strip_tap() -> Tap {
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
    let Ok(Some((resp, _))) = parse_response_head(head, 1024) else {
        unreachable!("a fixed, valid head")
    };
    let ai = AiRequest {
        original: Vec::new(),
        info: RequestInfo::default(),
        strip_usage_chunk: true,
        translated: Vec::new(),
        client: ringgate::config::Api::OpenAi,
    };
    Tap::for_response(Some(&ai), ringgate::config::Api::OpenAi, &resp)
}

/// Chunk re-framer target. Flags: bit 0 re-chunk, bit 1 through the SSE stripping tap.
/// The output decodes (or is, when not re-chunking) the reference payload, stripped when
/// tapped; the payload count and the end of the body agree with the reference.
pub fn check_reframe(data: &[u8]) {
    let p = Pieces::parse(data);
    let rechunk = p.flags & 1 == 1;
    let tapped = p.flags & 2 == 2;
    let want = decode_chunked(p.stream);
    let mut dec = ChunkedDecoder::new();
    let mut rb = ReadBuf::new(64, usize::MAX);
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut tap = tapped.then(strip_tap);
    let mut ending = Ending::Incomplete;
    let mut appended = 0;
    for piece in p.pieces() {
        rb.extend_for_test(piece);
        appended += piece.len();
        match reframe_chunks(
            &mut dec,
            &mut rb,
            &mut out,
            rechunk,
            &mut total,
            tap.as_mut(),
        ) {
            Ok(true) => {
                ending = Ending::Done(appended - rb.len());
                break;
            }
            Ok(false) => assert!(rb.is_empty(), "bytes left unread without an error"),
            Err(_) => {
                ending = Ending::Error;
                break;
            }
        }
    }
    assert_eq!(ending, want.ending, "re-framer and reference disagree");
    assert_eq!(total, want.body.len() as u64, "payload count");
    let payload = if rechunk {
        let d = decode_in_pieces(&[&out]);
        match (d.ending, ending) {
            (Ending::Done(n), Ending::Done(_)) => {
                assert_eq!(n, out.len(), "bytes after the re-framed last chunk");
                assert!(out.ends_with(LAST_CHUNK));
            }
            (Ending::Incomplete, Ending::Incomplete | Ending::Error) => {}
            (got, _) => panic!("re-framed output ends as {got:?}, input as {ending:?}"),
        }
        d.body
    } else {
        out
    };
    match (tapped, ending) {
        (false, _) => assert_eq!(payload, want.body, "payload changed"),
        (true, Ending::Done(_)) if want.body.len() <= ringgate::ai::usage::MAX_EVENT_BYTES => {
            let (stripped, _, _) = sse_expected(&want.body, true);
            assert_eq!(
                payload, stripped,
                "tapped payload is not the stripped stream"
            );
        }
        (true, _) => {}
    }
}
