//! A sans-I/O RESP2 codec: commands encoded into a caller's buffer, replies decoded from
//! whatever bytes have arrived (an incomplete reply says so and consumes nothing).
//!
//! Hand-written rather than the `redis-protocol` crate: the gateway sends one command shape
//! (an array of bulk strings) and reads five reply types, which is ~150 lines without the
//! parser-combinator dependencies; every length is bounded so a hostile or broken peer
//! cannot make the decoder allocate without limit or recurse deeply.

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(Vec<u8>),
    /// `-ERR ...`: the server refused the command.
    Error(Vec<u8>),
    /// `:42`.
    Int(i64),
    /// `$n` bytes, or `$-1` (None).
    Bulk(Option<Vec<u8>>),
    /// `*n` values, or `*-1` (None).
    Array(Option<Vec<Value>>),
}

/// A reply that cannot be RESP2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// The first byte of a reply is not a RESP2 type.
    #[error("unknown RESP type byte {0:#04x}")]
    UnknownType(u8),
    /// A length or integer that does not parse, or is out of bounds.
    #[error("malformed RESP length or integer")]
    BadNumber,
    /// A line or bulk string not ended by CRLF.
    #[error("missing CRLF in RESP reply")]
    MissingCrlf,
    /// Nested arrays deeper than [`MAX_DEPTH`].
    #[error("RESP reply nested too deeply")]
    TooDeep,
}

/// Largest bulk string accepted (the gateway's replies are a few bytes).
pub const MAX_BULK: usize = 1 << 20;
/// Largest array accepted.
pub const MAX_ARRAY: usize = 1024;
/// Most bytes one reply may take while it is incomplete: far past any reply the gateway
/// asks for (a script's array of integers, a sha1), and what keeps a store that streams a
/// reply without end (an array of arrays of bulk strings is otherwise ~1024⁴ MiB) from
/// growing a worker's read buffer without bound.
pub const MAX_REPLY: usize = 2 * MAX_BULK;
/// Deepest array nesting accepted.
pub const MAX_DEPTH: usize = 4;
/// Longest simple line (status, error, integer, length) accepted.
const MAX_LINE: usize = 4096;

/// Appends one command (`*N` of bulk strings) to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_number(out, args.len() as u64);
    for a in args {
        out.push(b'$');
        push_number(out, a.len() as u64);
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Decodes one reply from the front of `buf`: `Ok(None)` while it is incomplete, else the
/// value and the bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    decode_at(buf, 0, 0)
}

fn decode_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value, usize)>, RespError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((line, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((Value::Simple(line.to_vec()), next))),
        b'-' => Ok(Some((Value::Error(line.to_vec()), next))),
        b':' => Ok(Some((Value::Int(number(line)?), next))),
        b'$' => {
            let n = number(line)?;
            if n == -1 {
                return Ok(Some((Value::Bulk(None), next)));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_BULK)
                .ok_or(RespError::BadNumber)?;
            let end = next + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            Ok(Some((Value::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        b'*' => {
            let n = number(line)?;
            if n == -1 {
                return Ok(Some((Value::Array(None), next)));
            }
            if depth >= MAX_DEPTH {
                return Err(RespError::TooDeep);
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_ARRAY)
                .ok_or(RespError::BadNumber)?;
            let mut items = Vec::with_capacity(n);
            let mut pos = next;
            for _ in 0..n {
                match decode_at(buf, pos, depth + 1)? {
                    Some((v, p)) => {
                        items.push(v);
                        pos = p;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), pos)))
        }
        other => Err(RespError::UnknownType(other)),
    }
}

/// The line starting at `at` (without its CRLF) and the index after the CRLF.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = buf.get(at..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\r') {
        Some(i) if i > MAX_LINE => Err(RespError::MissingCrlf),
        Some(i) => match rest.get(i + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((&rest[..i], at + i + 2))),
            Some(_) => Err(RespError::MissingCrlf),
        },
        None if rest.len() > MAX_LINE => Err(RespError::MissingCrlf),
        None => Ok(None),
    }
}

fn number(b: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(RespError::BadNumber)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"EVALSHA", b"abc", b"", b"1234567890"]);
        assert_eq!(
            out,
            b"*4\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$0\r\n\r\n$10\r\n1234567890\r\n"
        );
    }

    #[test]
    fn replies_decode_whole_or_not_at_all() {
        let wire: &[u8] = b"*4\r\n:1\r\n$-1\r\n+OK\r\n*2\r\n$3\r\na\r\n\r\n:-7\r\n-NOSCRIPT x\r\n";
        let want = Value::Array(Some(vec![
            Value::Int(1),
            Value::Bulk(None),
            Value::Simple(b"OK".to_vec()),
            Value::Array(Some(vec![
                Value::Bulk(Some(b"a\r\n".to_vec())),
                Value::Int(-7),
            ])),
        ]));
        let first_len = wire.len() - b"-NOSCRIPT x\r\n".len();
        // Every strict prefix of the first reply is incomplete, never an error.
        for cut in 0..first_len {
            assert_eq!(decode(&wire[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        let (v, used) = decode(wire).expect("valid").expect("complete");
        assert_eq!((v, used), (want, first_len));
        let (e, _) = decode(&wire[first_len..])
            .expect("valid")
            .expect("complete");
        assert_eq!(e, Value::Error(b"NOSCRIPT x".to_vec()));
    }

    #[test]
    fn hostile_replies_are_errors_not_allocations() {
        let cases: [(&[u8], RespError); 6] = [
            (b"?x\r\n", RespError::UnknownType(b'?')),
            (b":12a\r\n", RespError::BadNumber),
            (b"$99999999999\r\n", RespError::BadNumber),
            (b"*99999999\r\n", RespError::BadNumber),
            (b"$1\r\nab\r\n", RespError::MissingCrlf),
            (b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", RespError::TooDeep),
        ];
        for (wire, err) in cases {
            assert_eq!(
                decode(wire),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let endless = vec![b'+'; MAX_LINE + 10];
        assert_eq!(decode(&endless), Err(RespError::MissingCrlf));
    }
}
