//! Incremental decoder and encoder for the chunked transfer coding (RFC 9112 §7.1).
//!
//! Bodies stream through the gateway (LLM responses are long-lived chunked
//! streams), so the decoder is a byte-driven state machine that never needs a
//! whole chunk, or even a whole size line, in memory: it keeps its place
//! between calls and hands payload back as ranges of the caller's own buffer,
//! so decoding copies nothing. Size lines, extensions and trailers are bounded
//! so a peer cannot make it consume unbounded framing without producing data.

use super::scan::is_field_byte;
use super::HttpError;

/// Terminator written after each chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";
/// The zero-size last chunk plus the empty trailer section: ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Longest chunk-size line (size, extensions and CRLF) accepted. Extensions
/// carry nothing the gateway uses, so this only needs to fit sane senders.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section accepted, final CRLF included.
const MAX_TRAILER: usize = 16 * 1024;
/// 15 hex digits = 60 bits, far above any real chunk, with headroom so the
/// running value can never overflow u64.
const MAX_SIZE_DIGITS: u8 = 15;

/// What one [`ChunkedDecoder::decode`] call found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkEvent {
    /// Payload bytes at `buf[range]` of the buffer passed to that call.
    Data(std::ops::Range<usize>),
    /// The last chunk and the trailer section have been consumed; the body is over.
    Done,
    /// Everything given has been consumed into the decoder's state; read more.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizePhase {
    /// Reading hex digits.
    Digits,
    /// Whitespace after the size, which is only valid before an extension.
    Space,
    /// Inside chunk extensions, skipped up to CR.
    Ext,
    /// Saw CR, need LF.
    Lf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Size {
        value: u64,
        any_digit: bool,
        sig_digits: u8,
        line_len: usize,
        phase: SizePhase,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    Trailer {
        total: usize,
        line_len: usize,
        cr: bool,
    },
    Done,
    /// Sticky: once framing is broken, nothing after it can be trusted.
    Failed(HttpError),
}

const NEW_SIZE: State = State::Size {
    value: 0,
    any_digit: false,
    sig_digits: 0,
    line_len: 0,
    phase: SizePhase::Digits,
};

/// Incremental chunked-body decoder; one per body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder positioned at the first chunk-size line.
    pub fn new() -> Self {
        ChunkedDecoder { state: NEW_SIZE }
    }

    /// Consumes framing bytes from the front of `buf`; returns (bytes consumed, event).
    ///
    /// For `Data(r)`, `r.end` equals the bytes consumed and `r` lies within `buf`.
    /// Call again with the unconsumed rest until `NeedMore` or `Done`; bytes
    /// consumed before `NeedMore` are remembered and must not be passed again.
    /// After `Done`, bytes beyond the consumed count belong to the next message.
    /// Any error is sticky: later calls return it again.
    pub fn decode(&mut self, buf: &[u8]) -> Result<(usize, ChunkEvent), HttpError> {
        let mut i = 0;
        loop {
            match &mut self.state {
                State::Done => return Ok((i, ChunkEvent::Done)),
                State::Failed(e) => return Err(e.clone()),
                State::Data { remaining } => {
                    let avail = buf.len() - i;
                    if avail == 0 {
                        return Ok((i, ChunkEvent::NeedMore));
                    }
                    // min() with avail makes the result fit in usize.
                    let n = (*remaining).min(avail as u64) as usize;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok((i + n, ChunkEvent::Data(i..i + n)));
                }
                _ => {
                    let Some(&b) = buf.get(i) else {
                        return Ok((i, ChunkEvent::NeedMore));
                    };
                    i += 1;
                    if let Err(e) = self.step(b) {
                        self.state = State::Failed(e.clone());
                        return Err(e);
                    }
                }
            }
        }
    }

    /// True once the last chunk and trailers have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Advances the framing state machine by one byte (never called in `Data`).
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        match &mut self.state {
            State::Size {
                value,
                any_digit,
                sig_digits,
                line_len,
                phase,
            } => {
                *line_len += 1;
                if *line_len > MAX_SIZE_LINE {
                    return Err(HttpError::ChunkLineTooLong);
                }
                match (*phase, b) {
                    (SizePhase::Digits, _) if b.is_ascii_hexdigit() => {
                        let d = hex_value(b);
                        *any_digit = true;
                        // Leading zeros are legal and unbounded (up to the line
                        // limit), so only significant digits count toward overflow.
                        if *value != 0 || d != 0 {
                            *sig_digits += 1;
                            if *sig_digits > MAX_SIZE_DIGITS {
                                return Err(HttpError::ChunkSizeOverflow);
                            }
                            *value = (*value << 4) | u64::from(d);
                        }
                    }
                    (SizePhase::Digits, _) if !*any_digit => return Err(HttpError::BadChunkSize),
                    (SizePhase::Digits | SizePhase::Space, b' ' | b'\t') => {
                        *phase = SizePhase::Space
                    }
                    (SizePhase::Digits | SizePhase::Space, b';') => *phase = SizePhase::Ext,
                    (SizePhase::Digits | SizePhase::Ext, b'\r') => *phase = SizePhase::Lf,
                    (SizePhase::Ext, _) if is_field_byte(b) => {}
                    (SizePhase::Lf, b'\n') => {
                        self.state = if *value == 0 {
                            State::Trailer {
                                total: 0,
                                line_len: 0,
                                cr: false,
                            }
                        } else {
                            State::Data { remaining: *value }
                        };
                    }
                    _ => return Err(HttpError::BadChunkSize),
                }
            }
            State::DataCr if b == b'\r' => self.state = State::DataLf,
            State::DataLf if b == b'\n' => self.state = NEW_SIZE,
            State::DataCr | State::DataLf => return Err(HttpError::BadChunkTerminator),
            State::Trailer {
                total,
                line_len,
                cr,
            } => {
                *total += 1;
                if *total > MAX_TRAILER {
                    return Err(HttpError::TrailerTooLarge);
                }
                match (*cr, b) {
                    (false, b'\r') => *cr = true,
                    (true, b'\n') if *line_len == 0 => self.state = State::Done,
                    (true, b'\n') => {
                        *cr = false;
                        *line_len = 0;
                    }
                    (false, _) if is_field_byte(b) => *line_len += 1,
                    _ => return Err(HttpError::BadTrailer),
                }
            }
            // decode() handles these states without calling step().
            State::Data { .. } | State::Done | State::Failed(_) => {}
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// Writes a chunk-size line (`"{len:x}\r\n"`) into `out`, without allocating.
///
/// `len == 0` writes `"0\r\n"`, which starts the last chunk: to end a body use
/// [`LAST_CHUNK`], and never emit a zero-length data chunk (see [`encode_chunk`]).
pub fn encode_chunk_header(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 2 * std::mem::size_of::<usize>()];
    let mut pos = digits.len();
    let mut n = len;
    loop {
        pos -= 1;
        digits[pos] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[pos..]);
    out.extend_from_slice(CHUNK_END);
}

/// Writes `data` as one complete chunk (size line, data, CRLF); writes nothing
/// for empty `data`, since a zero-size chunk would end the body early.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.reserve(data.len() + 20);
    encode_chunk_header(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_END);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` delivered in pieces of `step` bytes, as a socket would.
    /// Returns (payload, bytes consumed in total) or the first error.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), HttpError> {
        let mut dec = ChunkedDecoder::new();
        let mut payload = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut consumed_total = 0;
        for piece in input.chunks(step.max(1)) {
            pending.extend_from_slice(piece);
            loop {
                let (n, ev) = dec.decode(&pending)?;
                assert!(n <= pending.len());
                match ev {
                    ChunkEvent::Data(r) => {
                        assert!(r.end == n && r.start <= r.end);
                        payload.extend_from_slice(&pending[r]);
                        pending.drain(..n);
                        consumed_total += n;
                    }
                    ChunkEvent::NeedMore => {
                        assert_eq!(n, pending.len());
                        pending.clear();
                        consumed_total += n;
                        break;
                    }
                    ChunkEvent::Done => {
                        assert!(dec.is_done());
                        return Ok((payload, consumed_total + n));
                    }
                }
            }
        }
        assert!(!dec.is_done());
        Ok((payload, usize::MAX))
    }

    const BODY: &[u8] = b"5;ext=1\r\nhello\r\n6 ; name=\"q v\" ;flag\r\n world\r\n000A\r\n0123456789\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0;last=yes\r\nX-Trailer: 1\r\nY: two\r\n\r\n";

    #[test]
    fn multi_chunk_byte_at_a_time_and_whole() {
        let want: &[u8] = b"hello world0123456789abcdefghijklmnopqrstuvwxyz";
        let mut input = BODY.to_vec();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        for step in [1, 2, 3, 7, 16, input.len()] {
            let (payload, consumed) = decode_in_steps(&input, step).unwrap();
            assert_eq!(payload, want, "step {step}");
            assert_eq!(consumed, BODY.len(), "step {step}");
        }
    }

    #[test]
    fn no_trailers_and_done_is_sticky() {
        let mut dec = ChunkedDecoder::new();
        let input = b"3\r\nabc\r\n0\r\n\r\nrest";
        assert_eq!(dec.decode(input), Ok((6, ChunkEvent::Data(3..6))));
        assert_eq!(dec.decode(&input[6..]), Ok((7, ChunkEvent::Done)));
        assert!(dec.is_done());
        assert_eq!(dec.decode(b"more"), Ok((0, ChunkEvent::Done)));
        let mut dec = ChunkedDecoder::new();
        assert_eq!(dec.decode(b"0\r\n\r\n"), Ok((5, ChunkEvent::Done)));
        let mut dec = ChunkedDecoder::new();
        assert_eq!(dec.decode(b""), Ok((0, ChunkEvent::NeedMore)));
        assert!(!dec.is_done());
    }

    #[test]
    fn large_size_within_limit() {
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            dec.decode(b"fffffffffffffff\r\nab"),
            Ok((19, ChunkEvent::Data(17..19)))
        );
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            dec.decode(b"00000000000000000000001\r\nx\r\n"),
            Ok((26, ChunkEvent::Data(25..26)))
        );
    }

    #[test]
    fn rejections() {
        let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_SIZE_LINE));
        let big_trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILER));
        let cases: Vec<(&str, Vec<u8>, HttpError)> = vec![
            ("non-hex size", b"zz\r\n".to_vec(), HttpError::BadChunkSize),
            (
                "hex then junk",
                b"5g\r\nhello\r\n".to_vec(),
                HttpError::BadChunkSize,
            ),
            ("empty size", b"\r\n".to_vec(), HttpError::BadChunkSize),
            (
                "0x prefix",
                b"0x5\r\nhello\r\n".to_vec(),
                HttpError::BadChunkSize,
            ),
            (
                "negative",
                b"-5\r\nhello\r\n".to_vec(),
                HttpError::BadChunkSize,
            ),
            ("plus", b"+5\r\nhello\r\n".to_vec(), HttpError::BadChunkSize),
            (
                "leading space",
                b" 5\r\nhello\r\n".to_vec(),
                HttpError::BadChunkSize,
            ),
            (
                "trailing space then CR",
                b"5 \r\nhello\r\n".to_vec(),
                HttpError::BadChunkSize,
            ),
            (
                "16 digits",
                b"1000000000000000\r\n".to_vec(),
                HttpError::ChunkSizeOverflow,
            ),
            (
                "u64 overflow",
                b"ffffffffffffffffff\r\n".to_vec(),
                HttpError::ChunkSizeOverflow,
            ),
            (
                "bare LF size line",
                b"5\nhello\r\n".to_vec(),
                HttpError::BadChunkSize,
            ),
            (
                "bare LF after ext",
                b"5;a\nhello\r\n".to_vec(),
                HttpError::BadChunkSize,
            ),
            (
                "CR without LF",
                b"5\rhello\r\n".to_vec(),
                HttpError::BadChunkSize,
            ),
            (
                "NUL in ext",
                b"5;a\0\r\nhello\r\n".to_vec(),
                HttpError::BadChunkSize,
            ),
            (
                "size line too long",
                long_ext.into_bytes(),
                HttpError::ChunkLineTooLong,
            ),
            (
                "data too long",
                b"5\r\nhelloX\r\n".to_vec(),
                HttpError::BadChunkTerminator,
            ),
            (
                "data bare LF",
                b"5\r\nhello\n0\r\n\r\n".to_vec(),
                HttpError::BadChunkTerminator,
            ),
            (
                "data CR only",
                b"5\r\nhello\rX".to_vec(),
                HttpError::BadChunkTerminator,
            ),
            (
                "trailer bare LF",
                b"0\r\nX: 1\n\r\n".to_vec(),
                HttpError::BadTrailer,
            ),
            (
                "trailer NUL",
                b"0\r\nX: \0\r\n\r\n".to_vec(),
                HttpError::BadTrailer,
            ),
            ("end bare LF", b"0\r\n\n".to_vec(), HttpError::BadTrailer),
            (
                "trailer too large",
                big_trailer.into_bytes(),
                HttpError::TrailerTooLarge,
            ),
        ];
        for (name, input, want) in cases {
            for step in [1, input.len()] {
                assert_eq!(
                    decode_in_steps(&input, step),
                    Err(want.clone()),
                    "{name} step {step}"
                );
            }
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut dec = ChunkedDecoder::new();
        assert_eq!(dec.decode(b"z"), Err(HttpError::BadChunkSize));
        assert_eq!(dec.decode(b"5\r\nhello\r\n"), Err(HttpError::BadChunkSize));
        assert!(!dec.is_done());
    }

    #[test]
    fn encoding_round_trips() {
        let mut out = Vec::new();
        encode_chunk_header(0x1a, &mut out);
        assert_eq!(out, b"1a\r\n");
        out.clear();
        encode_chunk_header(0, &mut out);
        assert_eq!(out, b"0\r\n");
        out.clear();
        encode_chunk_header(usize::MAX, &mut out);
        assert_eq!(out.len(), 2 * std::mem::size_of::<usize>() + 2);

        let mut body = Vec::new();
        encode_chunk(b"hello ", &mut body);
        encode_chunk(b"", &mut body);
        encode_chunk(&[b'x'; 300], &mut body);
        body.extend_from_slice(LAST_CHUNK);
        assert!(body.starts_with(b"6\r\nhello \r\n12c\r\n"));
        let (payload, consumed) = decode_in_steps(&body, 1).unwrap();
        assert_eq!(consumed, body.len());
        assert_eq!(&payload[..6], b"hello ");
        assert_eq!(payload.len(), 306);
    }

    #[test]
    fn no_panic_on_noise() {
        const FRAGS: &[&[u8]] = &[
            b"0", b"5", b"f", b"g", b";", b"=", b" ", b"\r\n", b"\r", b"\n", b"hello", b"\0",
            b"X: 1", b"\xff",
        ];
        let mut seed = 0x1234_5678_9abc_def1u64;
        for _ in 0..5000 {
            let mut input = Vec::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input.extend_from_slice(FRAGS[(seed % FRAGS.len() as u64) as usize]);
            }
            let whole = decode_in_steps(&input, input.len());
            let bytewise = decode_in_steps(&input, 1);
            assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(&input));
        }
    }
}
