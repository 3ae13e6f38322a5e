//! Stop strings over streamed text: text that might be the start of a stop string is held
//! back until the next tokens decide, and a matched stop string is cut from the output.

/// The output text of one sequence and how much of it has been handed out.
#[derive(Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    text: String,
    sent: usize,
}

/// What a push of new text released.
#[derive(Debug, PartialEq)]
pub enum Released {
    /// Text that is final; generation goes on.
    Text(String),
    /// The text before the stop string that ended generation, and the stop string.
    Stopped(String, String),
}

impl StopText {
    pub fn new(stops: Vec<String>) -> Self {
        StopText { stops, text: String::new(), sent: 0 }
    }

    pub fn push(&mut self, new: &str) -> Released {
        self.text.push_str(new);
        let pending = &self.text[self.sent..];
        // A stop string cannot begin before `sent`: any text that could have begun one was held.
        let first = self.stops.iter().filter_map(|s| pending.find(s.as_str()).map(|at| (at, s))).min_by_key(|m| m.0);
        if let Some((at, stop)) = first {
            let out = pending[..at].to_string();
            let stop = stop.clone();
            self.sent = self.text.len();
            return Released::Stopped(out, stop);
        }
        let hold = self.stops.iter().map(|s| partial_suffix(pending, s)).max().unwrap_or(0);
        let end = self.text.len() - hold;
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        Released::Text(out)
    }

    /// Generation ended without a stop string: everything held back is final.
    pub fn flush(&mut self) -> String {
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, at a char boundary.
fn partial_suffix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, Option<String>) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for c in chunks {
            match s.push(c) {
                Released::Text(t) => out.push_str(&t),
                Released::Stopped(t, stop) => {
                    out.push_str(&t);
                    return (out, Some(stop));
                }
            }
        }
        out.push_str(&s.flush());
        (out, None)
    }

    #[test]
    fn stop_split_across_chunks_is_cut() {
        assert_eq!(run(&["</end>"], &["hello </e", "nd> tail"]), ("hello ".into(), Some("</end>".into())));
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        assert_eq!(run(&["abc"], &["xa", "b", "d"]), ("xabd".into(), None));
        let mut s = StopText::new(vec!["abc".into()]);
        assert_eq!(s.push("xab"), Released::Text("x".into()));
        assert_eq!(s.push("d"), Released::Text("abd".into()));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["world", "lo"], &["hello world"]), ("hel".into(), Some("lo".into())));
    }

    #[test]
    fn multibyte_text_is_held_on_char_boundaries() {
        assert_eq!(run(&["好吗"], &["你好", "吗？"]), ("你".into(), Some("好吗".into())));
        assert_eq!(run(&["é!"], &["café", "?"]), ("café?".into(), None));
    }
}
