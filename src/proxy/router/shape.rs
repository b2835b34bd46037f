//! The shape of a query text: the text with its numeric and string
//! literals replaced by placeholders, used as the key under which the
//! parser's reading is cached. Whether a statement reads or writes never
//! depends on the value of a literal, so texts that differ only in their
//! literals (`... WHERE aid = 17` and `... WHERE aid = 42`) share one
//! parse. Used only when no sharding key is read from the text (then
//! literal values matter).
//!
//! The scan follows PostgreSQL's lexer where a literal could hide
//! structure: `'...'` with `''` escapes, `E'...'` with backslash escapes,
//! `"..."` identifiers, `--` and nested `/* */` comments, which are all
//! kept verbatim but for literal contents. Dollar quoting, or anything the
//! scan cannot follow (an unterminated literal or comment), gives no
//! shape: the text is then its own key.

/// The shape of `text`, or None when the exact text must be the key.
pub fn shape(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    let n = text.len();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    while i < n {
        let b = text[i];
        match b {
            b'\'' => {
                // E'...': backslash escapes, when the E starts a token.
                let escapes =
                    i >= 1 && matches!(text[i - 1], b'e' | b'E') && (i < 2 || !ident(text[i - 2]));
                let end = string_end(text, i + 1, escapes)?;
                out.extend_from_slice(b"'?'");
                i = end;
            }
            b'"' => {
                let end = quoted_ident_end(text, i + 1)?;
                out.extend_from_slice(&text[i..end]);
                i = end;
            }
            b'-' if text.get(i + 1) == Some(&b'-') => {
                let end = text[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(n, |p| i + p + 1);
                out.extend_from_slice(&text[i..end]);
                i = end;
            }
            b'/' if text.get(i + 1) == Some(&b'*') => {
                let end = comment_end(text, i)?;
                out.extend_from_slice(&text[i..end]);
                i = end;
            }
            // Dollar quoting ($$ or $tag$): not followed.
            b'$' if i + 1 < n
                && !text[i + 1].is_ascii_digit()
                && (i == 0 || !ident(text[i - 1])) =>
            {
                return None;
            }
            b'0'..=b'9' if i == 0 || !ident(text[i - 1]) => {
                i = number_end(text, i);
                out.push(b'0');
            }
            b'.' if text.get(i + 1).is_some_and(u8::is_ascii_digit)
                && (i == 0 || !ident(text[i - 1])) =>
            {
                i = number_end(text, i);
                out.push(b'0');
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Past the closing quote of a string whose contents start at `i`.
fn string_end(text: &[u8], mut i: usize, escapes: bool) -> Option<usize> {
    while i < text.len() {
        match text[i] {
            b'\\' if escapes => i += 2,
            b'\'' if text.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn quoted_ident_end(text: &[u8], mut i: usize) -> Option<usize> {
    while i < text.len() {
        match text[i] {
            b'"' if text.get(i + 1) == Some(&b'"') => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Past the end of a (nested) block comment starting at `i`.
fn comment_end(text: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i + 1 < text.len() {
        match (text[i], text[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Past a numeric literal: digits, a point, an exponent.
fn number_end(text: &[u8], mut i: usize) -> usize {
    while i < text.len() && (text[i].is_ascii_digit() || text[i] == b'.' || text[i] == b'_') {
        i += 1;
    }
    if i < text.len() && matches!(text[i], b'e' | b'E') {
        let mut j = i + 1;
        if j < text.len() && matches!(text[j], b'+' | b'-') {
            j += 1;
        }
        if j < text.len() && text[j].is_ascii_digit() {
            i = j;
            while i < text.len() && text[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Option<String> {
        shape(t.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            s("SELECT abalance FROM pgbench_accounts WHERE aid = 412345;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = 0;")
        );
        assert_eq!(
            s("SELECT 'it''s', E'a\\'b', 1.5e-3, .5, x1, $1").as_deref(),
            Some("SELECT '?', E'?', 0, 0, x1, $1")
        );
        assert_eq!(
            s("SELECT \"a'b\", 1 -- it's\n, 2").as_deref(),
            Some("SELECT \"a'b\", 0 -- it's\n, 0")
        );
        assert_eq!(
            s("SELECT /* it's /* nested */ */ 1").as_deref(),
            Some("SELECT /* it's /* nested */ */ 0")
        );
        assert_eq!(
            s("SELECT 1FOR UPDATE").as_deref(),
            Some("SELECT 0FOR UPDATE")
        );
    }

    #[test]
    fn what_cannot_be_followed_has_no_shape() {
        for t in [
            "SELECT $$a$$",
            "SELECT $f$ x $f$",
            "SELECT 'open",
            "SELECT \"open",
            "SELECT /* open",
            "SELECT E'\\'",
        ] {
            assert_eq!(s(t), None, "{t}");
        }
    }

    #[test]
    fn texts_with_one_shape_read_alike() {
        // Pairs that share a shape must get the same reading.
        let cfg = super::super::parser::ParserConfig::default();
        let pairs = [
            (
                "SELECT * FROM t WHERE a = 1",
                "SELECT * FROM t WHERE a = 99",
            ),
            ("SELECT 'x; DELETE FROM t'", "SELECT 'y'"),
            ("SELECT E'\\' ; DELETE FROM t; --'", "SELECT E'z'"),
            ("SELECT nextval('a')", "SELECT nextval('b')"),
            ("SELECT 1 -- ; DELETE FROM t", "SELECT 2 -- ; DELETE FROM t"),
        ];
        for (a, b) in pairs {
            assert_eq!(s(a), s(b), "{a} / {b}");
            let ra = super::super::parser::infer(a, &cfg).map(|i| i.write);
            let rb = super::super::parser::infer(b, &cfg).map(|i| i.write);
            assert_eq!(ra.ok(), rb.ok(), "{a} / {b}");
        }
        // And texts whose structure differs do not share one.
        assert_ne!(
            s("SELECT 'a' ; DELETE FROM t"),
            s("SELECT 'a ; DELETE FROM t'")
        );
        assert_ne!(s("SELECT \"a\" FROM t"), s("SELECT \"b\" FROM t"));
    }
}
