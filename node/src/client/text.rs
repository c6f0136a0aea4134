//! Text out of a token stream. A token's piece is bytes: a character may span two
//! tokens, and so may a stop string. [`TextStream`] turns pieces into text that is safe
//! to show at once: whole characters only, and never the start of what may still become
//! a stop string (held back until the next piece settles it). On a stop string it ends,
//! cut exactly before it, so no part of it ever leaks.

/// Pieces in, text out; see the module doc.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes of a character not yet complete.
    pending: Vec<u8>,
    /// Text that may be the start of a stop string.
    held: String,
    stops: Vec<String>,
    stopped: bool,
}

impl TextStream {
    /// A stream that ends at the first of `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), ..Self::default() }
    }

    /// Adds a token's bytes; returns the text that can be shown now.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        if self.stopped {
            return String::new();
        }
        self.pending.extend_from_slice(bytes);
        let complete = self.pending.len() - incomplete_tail(&self.pending);
        self.held.push_str(&String::from_utf8_lossy(&self.pending[..complete]));
        self.pending.drain(..complete);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            self.pending.clear();
            let mut out = std::mem::take(&mut self.held);
            out.truncate(at);
            return out;
        }
        let keep = self.stops.iter().map(|s| longest_prefix_suffix(&self.held, s)).max().unwrap_or(0);
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        out
    }

    /// Whether a stop string was met: nothing more comes out.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The end of the generation: what was held back (an incomplete character shows as
    /// U+FFFD).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.pending)));
        out
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 character that is not complete.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        let width = match b {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            0x80..=0xbf => continue, // a continuation byte: look further back
            _ => return 0,
        };
        return if back < width { back } else { 0 };
    }
    0
}

/// The length of the longest end of `text` that begins `stop` (shorter than all of it).
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len()).rev().find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k])).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, String, bool) {
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let out: Vec<String> = pieces.iter().map(|p| s.push(p)).collect();
        let end = s.finish();
        (out, end, s.stopped())
    }

    #[test]
    fn characters_split_across_tokens_come_out_whole() {
        let e_acute = "é".as_bytes();
        let (out, end, _) = run(&[], &[b"caf", &e_acute[..1], &e_acute[1..], b"!"]);
        assert_eq!(out, ["caf", "", "é", "!"]);
        assert_eq!(end, "");
        let (out, end, _) = run(&[], &[b"ab", &"€".as_bytes()[..2]]);
        assert_eq!((out[0].as_str(), end.as_str()), ("ab", "\u{fffd}"));
    }

    #[test]
    fn a_stop_string_across_tokens_is_cut_exactly_and_never_leaks() {
        let (out, end, stopped) = run(&["END"], &[b"one E", b"N", b"D two"]);
        assert_eq!(out, ["one ", "", ""]);
        assert_eq!((end.as_str(), stopped), ("", true));
        // A prefix that does not become the stop string is released.
        let (out, end, stopped) = run(&["END"], &[b"one E", b"Nx", b" two"]);
        assert_eq!(out.concat() + &end, "one ENx two");
        assert_eq!(out, ["one ", "ENx", " two"]);
        assert!(!stopped);
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_held_text_ends_the_stream() {
        let (out, _, stopped) = run(&["bb", "a b"], &[b"xa", b" bb"]);
        assert_eq!(out, ["x", ""]);
        assert!(stopped);
        let (out, end, stopped) = run(&["\n\n"], &[b"line\n"]);
        assert_eq!((out[0].as_str(), end.as_str(), stopped), ("line", "\n", false));
        let (out, _, stopped) = run(&["é!"], &[b"caf\xc3", b"\xa9!"]);
        assert_eq!((out.concat().as_str(), stopped), ("caf", true));
    }
}
