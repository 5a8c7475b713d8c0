//! The bodies of ringgate's fuzz targets, one `check_*` function per parser reachable from a
//! socket, a provider response or a config input. Each takes the fuzzer's bytes and panics
//! when an invariant breaks (a panic in the parser itself counts too).
//!
//! They live here, not in `fuzz/`, so two runners share them: cargo-fuzz (`fuzz/`, nightly,
//! libFuzzer) and this crate's own tests on stable (`tests/replay.rs`), which feed every
//! file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through the same
//! function. A crash the fuzzer finds is kept by copying its input into
//! `fuzz/regressions/<target>/`: plain `cargo test` then runs it for good.
//!
//! Differential checks compare against [`reference`]: a chunked decoder and an SSE
//! event splitter written for clarity, not speed, independently of ringgate's own.

pub mod ai;
pub mod chunked;
pub mod heads;
pub mod inputs;
pub mod reference;

/// A target's body.
pub type Check = fn(&[u8]);

/// Every target by its `fuzz/fuzz_targets/<name>.rs` name (also its corpus and regressions
/// directory name).
pub const TARGETS: &[(&str, Check)] = &[
    ("request_head", heads::check_request_head),
    ("response_head", heads::check_response_head),
    ("chunked", chunked::check_chunked),
    ("reframe", chunked::check_reframe),
    ("sse", ai::check_sse),
    ("json_usage", ai::check_json_usage),
    ("body", ai::check_body),
    ("quota", inputs::check_quota),
    ("keys_file", inputs::check_keys_file),
    ("tls_pem", inputs::check_tls_pem),
    ("config", inputs::check_config),
    ("path", inputs::check_path),
    ("translate", ai::check_translate),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Check> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// A stream with the places the fuzzer cut it, for targets whose parser is fed in pieces.
///
/// Layout: `flags`, then `n` (its low 3 bits count the cuts), then that many bytes each
/// giving a piece's length, then the stream; whatever follows the last cut is the final
/// piece. Zero-length pieces are allowed: a parser must treat an empty feed as nothing. A
/// seed is readable as text after its two-byte prefix (`"\x01\x00data: ..."`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces<'a> {
    /// Target-specific switches (strip or not, re-chunk or not, ...).
    pub flags: u8,
    /// The whole stream.
    pub stream: &'a [u8],
    /// Piece boundaries, ascending offsets into `stream` (0 and `len` excluded unless cut).
    pub cuts: Vec<usize>,
}

impl<'a> Pieces<'a> {
    /// Reads the layout above; short inputs give an empty stream.
    pub fn parse(data: &'a [u8]) -> Self {
        let flags = data.first().copied().unwrap_or(0);
        let n = usize::from(data.get(1).copied().unwrap_or(0) & 7);
        let lens = data.get(2..(2 + n).min(data.len())).unwrap_or_default();
        let stream = data.get(2 + lens.len()..).unwrap_or_default();
        let mut cuts = Vec::with_capacity(lens.len());
        let mut at = 0usize;
        for &l in lens {
            at = (at + usize::from(l)).min(stream.len());
            cuts.push(at);
        }
        Pieces {
            flags,
            stream,
            cuts,
        }
    }

    /// The stream cut into its pieces, in order (empty ones included).
    pub fn pieces(&self) -> Vec<&'a [u8]> {
        let mut out = Vec::with_capacity(self.cuts.len() + 1);
        let mut from = 0;
        for &c in &self.cuts {
            out.push(&self.stream[from..c]);
            from = c;
        }
        out.push(&self.stream[from..]);
        out
    }

    /// Encodes `stream` with `flags` and `cuts` piece lengths (for seeds and tests).
    pub fn encode(flags: u8, lens: &[u8], stream: &[u8]) -> Vec<u8> {
        let mut v = vec![flags, lens.len().min(7) as u8];
        v.extend_from_slice(&lens[..lens.len().min(7)]);
        v.extend_from_slice(stream);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_stream_in_order() {
        let data = Pieces::encode(5, &[2, 0, 200], b"abcdef");
        let p = Pieces::parse(&data);
        assert_eq!(p.flags, 5);
        assert_eq!(p.stream, b"abcdef");
        assert_eq!(p.pieces(), vec![&b"ab"[..], b"", b"cdef", b""]);
        assert_eq!(Pieces::parse(b"").pieces(), vec![&b""[..]]);
        assert_eq!(Pieces::parse(&[1, 7, 1]).stream, b"");
    }

    #[test]
    fn every_target_has_a_unique_name() {
        for (i, (n, _)) in TARGETS.iter().enumerate() {
            assert!(TARGETS[..i].iter().all(|(m, _)| m != n), "{n}");
            assert!(target(n).is_some());
        }
        assert!(target("nope").is_none());
    }
}
