//! `Tail`: the last lines of a stream, bounded in lines and bytes.

use std::collections::VecDeque;

/// Longest line kept; longer ones are cut (with a marker).
pub const MAX_LINE_BYTES: usize = 4 * 1024;

/// The last lines written, bounded so a child that floods its output costs fixed memory.
#[derive(Debug, Clone)]
pub struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
    truncated: bool,
}

impl Tail {
    /// A tail of at most `max_lines` lines and `max_bytes` bytes.
    pub fn new(max_lines: usize, max_bytes: usize) -> Tail {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(MAX_LINE_BYTES),
            truncated: false,
        }
    }

    /// Appends a line, dropping the oldest ones past the bounds.
    pub fn push(&mut self, line: &str) {
        let line = cut(line);
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= old.len();
                    self.truncated = true;
                }
                None => break,
            }
        }
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }

    /// The last `n` lines joined with newlines (for error messages).
    pub fn last(&self, n: usize) -> String {
        let skip = self.lines.len().saturating_sub(n);
        self.lines
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether lines were dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

fn cut(line: &str) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line.to_owned();
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [cut at {MAX_LINE_BYTES} bytes]", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_within_bounds() {
        let mut tail = Tail::new(3, 1 << 20);
        for i in 0..10 {
            tail.push(&format!("line {i}"));
        }
        assert_eq!(tail.lines(), ["line 7", "line 8", "line 9"]);
        assert!(tail.truncated());
        assert_eq!(tail.last(2), "line 8\nline 9");
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let mut tail = Tail::new(10, 1 << 20);
        tail.push(&"é".repeat(MAX_LINE_BYTES));
        let kept = &tail.lines()[0];
        assert!(kept.len() < MAX_LINE_BYTES + 64);
        assert!(kept.ends_with("bytes]"));
    }

    #[test]
    fn bytes_are_bounded_too() {
        let mut tail = Tail::new(1000, MAX_LINE_BYTES);
        for _ in 0..100 {
            tail.push(&"x".repeat(1000));
        }
        assert!(tail.lines().len() <= 4);
    }
}
