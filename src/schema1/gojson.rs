//! Just enough of Go's `encoding/json` to reproduce skopeo's bytes.
//!
//! skopeo (containers/image) converts schema1 with Go's `encoding/json`,
//! and the digest of the config it writes depends on details serde_json
//! does not share: strings escaped HTML-safe (`<` as `\u003c`), raw values
//! copied as compacted source text with their escapes untouched, struct
//! fields matched case-insensitively with the last duplicate key winning,
//! times re-written as RFC 3339 with trailing zeros trimmed. The invariant
//! here: for input Go accepts, every encoder produces the bytes Go would;
//! input Go rejects is an error, never a guess.
//!
//! This file holds the syntax: a parser that keeps source text and
//! duplicate keys, Go's string and raw-value writers, and `time.Time`.
//! [`super::gotype`] holds the typed decoding and encoding on top of it.

/// Nesting deeper than this is refused (serde_json's default limit, which
/// the same documents already passed).
const MAX_DEPTH: usize = 128;

/// A parsed JSON value that remembers its source text.
#[derive(Debug)]
pub(crate) struct Node<'a> {
    /// The exact source text of the value, without surrounding whitespace.
    pub raw: &'a str,
    pub kind: Kind<'a>,
}

#[derive(Debug)]
pub(crate) enum Kind<'a> {
    Null,
    Bool(bool),
    /// A number; its text is `raw`.
    Number,
    /// A string, unescaped.
    Str(String),
    Array(Vec<Node<'a>>),
    /// Members in source order, duplicates kept: Go lets the last win.
    Object(Vec<(String, Node<'a>)>),
}

impl Node<'_> {
    pub fn is_null(&self) -> bool {
        matches!(self.kind, Kind::Null)
    }
}

/// Parses one JSON document (RFC 8259, as Go's scanner accepts it).
pub(crate) fn parse(text: &str) -> Result<Node<'_>, String> {
    let mut p = Parser { text, pos: 0 };
    p.skip_ws();
    let node = p.value(0)?;
    p.skip_ws();
    if p.pos != text.len() {
        return Err(format!(
            "unexpected text after JSON value at byte {}",
            p.pos
        ));
    }
    Ok(node)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.pos))
    }

    fn value(&mut self, depth: usize) -> Result<Node<'a>, String> {
        if depth > MAX_DEPTH {
            return self.err("JSON nested too deeply");
        }
        let start = self.pos;
        let kind = match self.peek() {
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Kind::Str(self.string()?),
            Some(b't') => self.literal("true", Kind::Bool(true))?,
            Some(b'f') => self.literal("false", Kind::Bool(false))?,
            Some(b'n') => self.literal("null", Kind::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return self.err("expected a JSON value"),
        };
        Ok(Node {
            raw: &self.text[start..self.pos],
            kind,
        })
    }

    fn literal(&mut self, word: &str, kind: Kind<'a>) -> Result<Kind<'a>, String> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(kind)
        } else {
            self.err("invalid literal")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Kind<'a>, String> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        Ok(Kind::Number)
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let hex = self.text.get(self.pos..self.pos + 4);
        match hex.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(v) if hex.is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())) => {
                self.pos += 4;
                Ok(v)
            }
            _ => self.err("invalid \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.pos += 1; // the opening quote
        let mut out = String::new();
        loop {
            let rest = &self.text[self.pos..];
            let plain = rest
                .bytes()
                .position(|b| b == b'"' || b == b'\\' || b < 0x20)
                .ok_or_else(|| format!("unterminated string at byte {}", self.pos))?;
            out.push_str(&rest[..plain]);
            self.pos += plain;
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => self.pos += 1,
                _ => return self.err("control character in string"),
            }
            let escaped = self.peek();
            self.pos += 1;
            match escaped {
                Some(b'"') => out.push('"'),
                Some(b'\\') => out.push('\\'),
                Some(b'/') => out.push('/'),
                Some(b'b') => out.push('\u{8}'),
                Some(b'f') => out.push('\u{c}'),
                Some(b'n') => out.push('\n'),
                Some(b'r') => out.push('\r'),
                Some(b't') => out.push('\t'),
                Some(b'u') => {
                    let first = self.hex4()?;
                    // Go pairs surrogates when it can and turns a lone one
                    // into U+FFFD rather than failing.
                    let mut c = char::from_u32(first);
                    if (0xd800..0xdc00).contains(&first) && self.text[self.pos..].starts_with("\\u")
                    {
                        let save = self.pos;
                        self.pos += 2;
                        let second = self.hex4()?;
                        if (0xdc00..0xe000).contains(&second) {
                            c = char::from_u32(
                                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00),
                            );
                        } else {
                            self.pos = save;
                        }
                    }
                    out.push(c.unwrap_or('\u{fffd}'));
                }
                _ => {
                    self.pos -= 1;
                    return self.err("invalid escape in string");
                }
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Kind<'a>, String> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Kind::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Kind::Array(items));
                }
                _ => return self.err("expected , or ] in array"),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Kind<'a>, String> {
        self.pos += 1;
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Kind::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return self.err("expected a string key in object");
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return self.err("expected : in object");
            }
            self.pos += 1;
            self.skip_ws();
            members.push((key, self.value(depth + 1)?));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Kind::Object(members));
                }
                _ => return self.err("expected , or } in object"),
            }
        }
    }
}

/// Appends `s` as a JSON string the way Go's `json.Marshal` writes it.
pub(crate) fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Go 1.22 and later; containers/image requires a newer Go.
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // HTML-safe escaping is on by default in Go, and U+2028/U+2029
            // are escaped for JavaScript's sake.
            '<' | '>' | '&' | '\u{0}'..='\u{1f}' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends raw JSON text as Go re-emits a `json.RawMessage`: whitespace
/// between tokens dropped, `<`, `>`, `&`, U+2028 and U+2029 escaped, and
/// everything else, escapes and number spellings included, kept as it was.
pub(crate) fn write_compact(out: &mut String, raw: &str) {
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
}

/// A `time.Time` as Go's JSON round trip leaves it: RFC 3339 with
/// nanoseconds, trailing zeros of the fraction trimmed, `Z` for a zero
/// offset. Go keeps the offset it parsed, so no calendar arithmetic is
/// needed: the fields are re-emitted as they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GoTime(String);

impl GoTime {
    /// The zero `time.Time`, what Go writes for a time never set.
    pub const ZERO: &'static str = "0001-01-01T00:00:00Z";

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text between the quotes of a JSON string, as Go 1.20 and
    /// later's `Time.UnmarshalJSON` does: strict RFC 3339, escapes not
    /// decoded, fraction digits past nine truncated.
    pub fn parse(text: &str) -> Result<GoTime, String> {
        let bad = || format!("time {text:?} is not RFC 3339");
        let b = text.as_bytes();
        if b.len() < 20 {
            return Err(bad());
        }
        let num = |at: usize, len: usize| -> Option<u32> {
            let s = text.get(at..at + len)?;
            s.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse().ok())?
        };
        let shape = b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':';
        let (Some(year), Some(month), Some(day), Some(hour), Some(min), Some(sec)) = (
            num(0, 4),
            num(5, 2),
            num(8, 2),
            num(11, 2),
            num(14, 2),
            num(17, 2),
        ) else {
            return Err(bad());
        };
        let in_range = (1..=12).contains(&month)
            && day >= 1
            && day <= days_in(month, year)
            && hour < 24
            && min < 60
            && sec < 60;
        if !shape || !in_range {
            return Err(bad());
        }

        let mut rest = &text[19..];
        let mut fraction = "";
        if rest.len() >= 2 && rest.starts_with('.') && rest.as_bytes()[1].is_ascii_digit() {
            let n = 1 + rest[1..].bytes().take_while(u8::is_ascii_digit).count();
            fraction = &rest[1..n.min(10)];
            rest = &rest[n..];
        }
        let zone = match rest {
            "Z" => "Z".to_string(),
            _ => {
                let z = rest.as_bytes();
                let (Some(zh), Some(zm)) = (num(text.len() - 5, 2), num(text.len() - 2, 2)) else {
                    return Err(bad());
                };
                if z.len() != 6
                    || !matches!(z[0], b'+' | b'-')
                    || z[3] != b':'
                    || zh > 23
                    || zm > 59
                {
                    return Err(bad());
                }
                if zh == 0 && zm == 0 {
                    "Z".to_string()
                } else {
                    rest.to_string()
                }
            }
        };

        let fraction = fraction.trim_end_matches('0');
        let mut out = text[..19].to_string();
        if !fraction.is_empty() {
            out.push('.');
            out.push_str(fraction);
        }
        out.push_str(&zone);
        Ok(GoTime(out))
    }
}

fn days_in(month: u32, year: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(raw: &str) -> String {
        let mut out = String::new();
        write_compact(&mut out, raw);
        out
    }

    fn go_str(s: &str) -> String {
        let mut out = String::new();
        write_str(&mut out, s);
        out
    }

    #[test]
    fn escapes_strings_html_safe_like_go() {
        assert_eq!(go_str("a<b>&c"), r#""a\u003cb\u003e\u0026c""#);
        assert_eq!(go_str("q\"\\/"), r#""q\"\\/""#);
        assert_eq!(
            go_str("\n\r\t\u{8}\u{c}\u{1}\u{1f}"),
            r#""\n\r\t\b\f\u0001\u001f""#
        );
        assert_eq!(
            go_str("\u{2028}\u{2029}\u{7f}é☃"),
            "\"\\u2028\\u2029\u{7f}é☃\""
        );
    }

    #[test]
    fn compacts_raw_values_keeping_their_escapes() {
        assert_eq!(
            compact("{ \"a\" : [1 , 2.50, 1E5],\n\t\"b\":\"x <y> \\u00e9\\/ \\\" }\" }"),
            r#"{"a":[1,2.50,1E5],"b":"x \u003cy\u003e \u00e9\/ \" }"}"#
        );
        assert_eq!(compact("\"\u{2028}\""), "\"\\u2028\"");
    }

    #[test]
    fn parses_with_duplicates_in_order_and_raw_spans() {
        let node = parse(r#" {"a": 1, "b": {"c" : null}, "a": "x"} "#).unwrap();
        let Kind::Object(members) = &node.kind else {
            panic!("not an object")
        };
        let keys: Vec<_> = members.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "a"]);
        assert_eq!(members[1].1.raw, r#"{"c" : null}"#);
        assert_eq!(members[2].1.raw, r#""x""#);
    }

    #[test]
    fn decodes_escapes_and_replaces_lone_surrogates() {
        let node = parse(r#""\u00e9\ud83d\ude00\ud800x\n""#).unwrap();
        let Kind::Str(s) = node.kind else {
            panic!("not a string")
        };
        assert_eq!(s, "é😀\u{fffd}x\n");
    }

    #[test]
    fn rejects_malformed_json() {
        for bad in [
            "{",
            "[1,]",
            "{\"a\"}",
            "01",
            "1.",
            "-",
            "\"\t\"",
            "\"\\x\"",
            "tru",
            "{} x",
            "",
            "{\"a\":1,}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn normalises_times_as_go_marshals_them() {
        let t = |s| GoTime::parse(s).map(|t| t.0);
        assert_eq!(
            t("2018-01-25T00:37:48.268558Z").unwrap(),
            "2018-01-25T00:37:48.268558Z"
        );
        assert_eq!(
            t("2018-01-25T00:37:48.120000Z").unwrap(),
            "2018-01-25T00:37:48.12Z"
        );
        assert_eq!(
            t("2018-01-25T00:37:48.000Z").unwrap(),
            "2018-01-25T00:37:48Z"
        );
        assert_eq!(
            t("2018-01-25T00:37:48.1234567891234Z").unwrap(),
            "2018-01-25T00:37:48.123456789Z"
        );
        assert_eq!(
            t("2018-01-25T00:37:48+01:30").unwrap(),
            "2018-01-25T00:37:48+01:30"
        );
        assert_eq!(
            t("2018-01-25T00:37:48-00:00").unwrap(),
            "2018-01-25T00:37:48Z"
        );
        assert_eq!(t("2016-02-29T23:59:59Z").unwrap(), "2016-02-29T23:59:59Z");
    }

    #[test]
    fn rejects_times_go_rejects() {
        for bad in [
            "2018-01-25 00:37:48Z",
            "2018-01-25T00:37:48",
            "2018-01-25t00:37:48Z",
            "2018-01-25T00:37:48z",
            "2018-01-25T24:00:00Z",
            "2018-01-25T00:37:60Z",
            "2017-02-29T00:00:00Z",
            "2018-13-01T00:00:00Z",
            "2018-01-25T00:37:48,5Z",
            "2018-01-25T00:37:48.Z",
            "2018-01-25T00:37:48+24:00",
            "2018-01-25T00:37:48+0100",
            "2018-1-25T00:37:48Z",
        ] {
            assert!(GoTime::parse(bad).is_err(), "{bad}");
        }
    }
}
