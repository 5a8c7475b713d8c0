//! The event framing of `text/event-stream` (WHATWG HTML, "server-sent events"), reduced to
//! what a translator needs: the joined `data` of each complete event, from bytes fed in
//! whatever pieces the socket delivers. Lines end in CRLF, LF or CR (a CR at the end of one
//! piece and the LF at the start of the next are one ending); a blank line ends the event;
//! fields other than `data` are ignored. Bounded: an event's data past `max` bytes is dropped
//! whole rather than grown without end.

/// The default bound on one event's data (and on one line): what a translator keeps whole.
pub const DEFAULT_MAX: usize = 16 << 20;

/// Splits a byte stream into the data of its events.
#[derive(Debug)]
pub struct SseData {
    line: Vec<u8>,
    data: Vec<u8>,
    /// The current event has a `data` field (an empty one counts).
    has_data: bool,
    /// The current line outgrew `max` (what is left of it is skipped).
    line_over: bool,
    /// The current event outgrew `max`: it is dropped at its end.
    event_over: bool,
    /// The last piece ended in CR: a LF at the start of the next belongs to that ending.
    last_cr: bool,
    max: usize,
}

impl Default for SseData {
    /// A splitter bounded at [`DEFAULT_MAX`].
    fn default() -> Self {
        Self::new(DEFAULT_MAX)
    }
}

impl SseData {
    /// A splitter that keeps events of at most `max` bytes of data.
    pub fn new(max: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            line_over: false,
            event_over: false,
            last_cr: false,
            max,
        }
    }

    /// Feeds the next piece; `on_event` gets the data of each event it completes.
    pub fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(&[u8])) {
        let mut rest = bytes;
        if self.last_cr && !rest.is_empty() {
            self.last_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(p) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.take(&rest[..p]);
            self.end_line(&mut on_event);
            let cr = rest[p] == b'\r';
            rest = &rest[p + 1..];
            if cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.last_cr = true,
                    Some(_) => {}
                }
            }
        }
        self.take(rest);
    }

    /// End of the stream: an event left without its blank line is still delivered (a
    /// provider that closes right after its last `data:` line meant it).
    pub fn finish(&mut self, mut on_event: impl FnMut(&[u8])) {
        if !self.line.is_empty() || self.line_over {
            self.end_line(&mut on_event);
        }
        self.dispatch(&mut on_event);
        self.last_cr = false;
    }

    fn take(&mut self, b: &[u8]) {
        if self.line_over || b.is_empty() {
            return;
        }
        if self.line.len() + b.len() > self.max {
            self.line_over = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(b);
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if self.line_over {
            // Whatever the line was, its event cannot be read whole.
            self.line_over = false;
            self.event_over = true;
            return;
        }
        if self.line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if let Some(v) = self.line.strip_prefix(b"data") {
            let v = match v.split_first() {
                None => Some(&[][..]),
                Some((b':', v)) => Some(v.strip_prefix(b" ").unwrap_or(v)),
                Some(_) => None,
            };
            if let Some(v) = v {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.has_data = true;
                if self.data.len() + v.len() > self.max {
                    self.event_over = true;
                    self.data.clear();
                } else if !self.event_over {
                    self.data.extend_from_slice(v);
                }
            }
        }
        self.line.clear();
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if self.has_data && !self.event_over {
            on_event(&self.data);
        }
        self.data.clear();
        self.has_data = false;
        self.event_over = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(pieces: &[&[u8]], max: usize) -> Vec<Vec<u8>> {
        let mut s = SseData::new(max);
        let mut got = Vec::new();
        for p in pieces {
            s.feed(p, |d| got.push(d.to_vec()));
        }
        s.finish(|d| got.push(d.to_vec()));
        got
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let stream: &[u8] =
            b": comment\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata:two\ndata: lines\n\ndata\r\rid: 3\r\n\r\ndata: end";
        let whole = events(&[stream], 1 << 20);
        assert_eq!(
            whole,
            vec![
                b"{\"a\":1}".to_vec(),
                b"two\nlines".to_vec(),
                b"".to_vec(),
                b"end".to_vec()
            ]
        );
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let got = events(&[&stream[..i], &stream[i..j], &stream[j..]], 1 << 20);
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn an_oversized_event_is_dropped_whole_and_the_next_one_kept() {
        let got = events(&[b"data: 0123456789\ndata: more\n\ndata: ok\n\n"], 8);
        assert_eq!(got, vec![b"ok".to_vec()]);
    }

    #[test]
    fn a_field_that_only_starts_with_data_is_not_data() {
        let got = events(&[b"database: x\ndata: y\n\n"], 64);
        assert_eq!(got, vec![b"y".to_vec()]);
    }
}
