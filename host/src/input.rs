//! Limits on text the node takes from outside (HTTP bodies, spec files):
//! how deeply a JSON or YAML document may nest, checked by a linear scan
//! before any parser sees it, and how much of the input an error message
//! may quote.
//!
//! Why the nesting limit: libyaml (under `serde_yaml_ng`) spends time
//! quadratic in the depth of flow collections (`{"a":{"a":…` of 200 KB
//! takes seconds), and the parsers' own recursion limits only apply after
//! the whole document was read.

use std::fmt;

/// Deepest nesting of `[` and `{` accepted in a spec or a JSON body.
pub const MAX_NESTING: usize = 64;

/// Longest error message (in bytes) that may quote the input.
pub const MESSAGE_MAX: usize = 1024;

/// The language of a document, for [`check_nesting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// JSON: strings are `"…"` with `\` escapes.
    Json,
    /// YAML (a superset of JSON): also `'…'` strings and `#` comments.
    Yaml,
}

/// A document nests deeper than allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooDeep {
    /// The limit.
    pub limit: usize,
    /// Byte offset of the `[` or `{` that went past it.
    pub at: usize,
}

impl fmt::Display for TooDeep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the document nests `[`/`{{` more than {} levels deep (at byte {}); at most {} levels are accepted",
            self.limit, self.at, self.limit
        )
    }
}

impl std::error::Error for TooDeep {}

/// Checks that `text` nests `[`/`{` at most `limit` levels deep outside
/// strings (and, for YAML, comments), in one pass over its bytes.
///
/// JSON is scanned exactly. For YAML, whether a quote opens a string or a
/// `#` a comment depends on context a scan cannot know (`it's` versus
/// `'it'`), and guessing wrong could hide a deep document from the check.
/// So the YAML scan follows every reading at once (a quote that may open a
/// string both does and does not, likewise a `#`) and keeps the deepest:
/// a document libyaml would read deeper than `limit` is always refused.
/// The price: brackets inside YAML quotes count unless they balance, which
/// a spec needs more than 64 of before it is refused wrongly.
pub fn check_nesting(text: &str, syntax: Syntax, limit: usize) -> Result<(), TooDeep> {
    match syntax {
        Syntax::Json => check_json(text.as_bytes(), limit),
        Syntax::Yaml => check_yaml(text.as_bytes(), limit),
    }
}

fn check_json(bytes: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (at, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep { limit, at });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Where a reading of a YAML text may be; each holds the deepest nesting
/// of any reading there, or `None` if no reading is.
#[derive(Clone, Copy, Default)]
struct Readings {
    /// In structure (or a plain scalar).
    outside: Option<usize>,
    /// In a `'…'` scalar.
    single: Option<usize>,
    /// In a `"…"` scalar…
    double: Option<usize>,
    /// …just after a `\`.
    escape: Option<usize>,
    /// In a `#` comment, until the line ends.
    comment: Option<usize>,
    /// In a verbatim tag `!<…>` (whose URI may hold `[`, `]` and `,`).
    verbatim: Option<usize>,
}

fn join(a: &mut Option<usize>, b: Option<usize>) {
    *a = match (*a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
}

fn check_yaml(bytes: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut now = Readings {
        outside: Some(0),
        ..Readings::default()
    };
    for (at, &b) in bytes.iter().enumerate() {
        let before = |back: usize| at.checked_sub(back).map(|i| bytes[i]);
        // libyaml never starts a token (a quoted scalar, a comment) right
        // after a letter or digit: there the quote or `#` is plain text.
        let may_start_token = !before(1).is_some_and(|p| p.is_ascii_alphanumeric());
        // A line break ends a comment: CR, LF, and NEL, LS, PS in UTF-8.
        let line_break = match b {
            b'\n' | b'\r' => true,
            0x85 => before(1) == Some(0xC2),
            0xA8 | 0xA9 => before(1) == Some(0x80) && before(2) == Some(0xE2),
            _ => false,
        };
        let mut next = Readings::default();
        if let Some(depth) = now.outside {
            match b {
                b'[' | b'{' => {
                    if depth + 1 > limit {
                        return Err(TooDeep { limit, at });
                    }
                    join(&mut next.outside, Some(depth + 1));
                }
                b']' | b'}' => join(&mut next.outside, Some(depth.saturating_sub(1))),
                b'\'' if may_start_token => {
                    join(&mut next.single, Some(depth));
                    join(&mut next.outside, Some(depth));
                }
                b'"' if may_start_token => {
                    join(&mut next.double, Some(depth));
                    join(&mut next.outside, Some(depth));
                }
                // After a blank or at a line's start, `#` always opens a
                // comment; after `[`, `,`, a quote… it may.
                b'#' if matches!(before(1), None | Some(b' ' | b'\t' | b'\n' | b'\r')) => {
                    join(&mut next.comment, Some(depth));
                }
                b'#' if may_start_token => {
                    join(&mut next.comment, Some(depth));
                    join(&mut next.outside, Some(depth));
                }
                b'<' if before(1) == Some(b'!') => {
                    join(&mut next.verbatim, Some(depth));
                    join(&mut next.outside, Some(depth));
                }
                _ => join(&mut next.outside, Some(depth)),
            }
        }
        if let Some(depth) = now.single {
            if b == b'\'' {
                // Closes it, or (doubled) is a quote inside: the reading
                // that closes it opens another at the next quote.
                join(&mut next.outside, Some(depth));
            } else {
                join(&mut next.single, Some(depth));
            }
        }
        if let Some(depth) = now.double {
            match b {
                b'"' => join(&mut next.outside, Some(depth)),
                b'\\' => join(&mut next.escape, Some(depth)),
                _ => join(&mut next.double, Some(depth)),
            }
        }
        join(&mut next.double, now.escape);
        if let Some(depth) = now.comment {
            if line_break {
                join(&mut next.outside, Some(depth));
            } else {
                join(&mut next.comment, Some(depth));
            }
        }
        if let Some(depth) = now.verbatim {
            if b == b'>' || b.is_ascii_whitespace() {
                join(&mut next.outside, Some(depth));
            } else {
                join(&mut next.verbatim, Some(depth));
            }
        }
        now = next;
    }
    Ok(())
}

/// `message` cut to at most [`MESSAGE_MAX`] bytes (on a character
/// boundary) and marked with `…` if cut, for errors that may quote input.
pub fn cap_message(message: impl Into<String>) -> String {
    cap(message.into(), MESSAGE_MAX)
}

/// `message` cut to at most `max` bytes (at least 4), marked with `…` if
/// cut.
pub fn cap(mut message: String, max: usize) -> String {
    let max = max.max(4);
    if message.len() > max {
        let mut end = max - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str, syntax: Syntax) -> bool {
        check_nesting(text, syntax, 3).is_ok()
    }

    #[test]
    fn defect_05_deep_nesting_is_refused_before_parsing() {
        let deep = "{\"a\":".repeat(40_000);
        let started = std::time::Instant::now();
        for syntax in [Syntax::Json, Syntax::Yaml] {
            let err = check_nesting(&deep, syntax, MAX_NESTING).unwrap_err();
            assert_eq!(err.at, 5 * MAX_NESTING, "{syntax:?}");
            assert!(err.to_string().contains("64 levels"), "{err}");
            assert!(check_nesting(&"[".repeat(200_000), syntax, MAX_NESTING).is_err());
            assert!(check_nesting(&"[".repeat(64), syntax, MAX_NESTING).is_ok());
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // The spec parser refuses it too, naming the limit.
        let err = crate::spec::TwinSpec::parse(&deep).unwrap_err();
        assert!(err.to_string().contains("64 levels"), "{err}");
    }

    #[test]
    fn nesting_counts_structure_not_strings() {
        assert!(depth_ok("[[[1]], [[2]], {\"a\": [3]}]", Syntax::Json));
        assert!(!depth_ok("[[[[1]]]]", Syntax::Json));
        assert!(depth_ok("[\"[[[[[\", \"\\\"[[[[\"]", Syntax::Json));
        // YAML quotes may hold brackets if they balance (a quote might be
        // plain text, so what it holds counts); comments anything.
        assert!(depth_ok(
            "a: '[[x]]'\nb: \"[[[]]]\" # [[[[\nc: it's [x]",
            Syntax::Yaml
        ));
        assert!(!depth_ok("[\"[[[[\"]", Syntax::Yaml));
        assert!(!depth_ok("a: [[[[1]]]]", Syntax::Yaml));
    }

    #[test]
    fn a_yaml_quote_or_comment_cannot_hide_deep_nesting() {
        // A quote that libyaml reads as plain text (inside `x 'y`) must not
        // make the scan skip what follows, nor a `#` that is no comment.
        assert!(!depth_ok("a: x 'y\nb: [[[[1]]]] '", Syntax::Yaml));
        assert!(!depth_ok("a: x \"y\nb: [[[[1]]]] \"", Syntax::Yaml));
        // Closers in a quoted scalar do not close anything.
        assert!(!depth_ok("[[['x]]]', [['y]]', [[[1]]]]]", Syntax::Yaml));
        // A comment ends at any line break, CR and LS included.
        assert!(!depth_ok("# x\r[[[[1]]]]", Syntax::Yaml));
        assert!(!depth_ok("# x\u{2028}[[[[1]]]]", Syntax::Yaml));
        // A verbatim tag may hold `]`, which closes nothing.
        assert!(!depth_ok("[[[!<x]]]> [1]]]]", Syntax::Yaml));
    }

    #[test]
    fn long_messages_are_capped() {
        assert_eq!(cap_message("short"), "short");
        let capped = cap_message("é".repeat(10_000));
        assert!(
            capped.len() <= MESSAGE_MAX && capped.ends_with('…'),
            "{capped}"
        );
    }
}

/// The size limits on what a node's clients send, each a flag of
/// `wasmtwin host`; over one, a request is refused with 413 (a size) or 400
/// (a query), naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// A twin spec (`PUT /v1/twins/{name}`, a migration's spec).
    pub spec_bytes: usize,
    /// An action's input.
    pub action_bytes: usize,
    /// A checkpoint bundle or a history copy.
    pub bundle_bytes: usize,
    /// The points one history query may ask for (`limit`).
    pub history_points: usize,
}

impl Default for InputLimits {
    /// A megabyte of spec or action input is far more than any real one.
    /// A bundle (guest state, history and, with `--with-component`, the
    /// components together) or a history copy streams through a blocking
    /// reader and its history through a temporary file, so memory is not
    /// the reason for its cap: disk and the time a request may hold a
    /// blocking thread are. A twin's guest state is at most its memory
    /// limit (64 MiB by default), its components a few MiB each, and its
    /// history about `maxPoints` (100,000) rows of well under 1 KiB for
    /// typical telemetry, about 100 MiB: 256 MiB leaves room for all of it.
    fn default() -> Self {
        Self {
            spec_bytes: 1 << 20,
            action_bytes: 1 << 20,
            bundle_bytes: 256 << 20,
            history_points: 100_000,
        }
    }
}
