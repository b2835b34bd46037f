//! What a transaction may have done to session state, told by what the
//! server answered (command tags) and, where no tag tells, by a scan of
//! the query text. The session reads the state back from the server, or
//! cleans it, only when one of these says so: a transaction that changes
//! nothing pays nothing.

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// Kinds of session state a transaction may have touched.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Effects(u16);

impl Effects {
    pub const NONE: Effects = Effects(0);
    /// Settings (SET, RESET, set_config, SET ROLE, DISCARD ALL): read
    /// them back.
    pub const SETTINGS: Effects = Effects(1);
    /// Prepared statements dropped (DEALLOCATE, DISCARD ALL): read back
    /// which of pgcat's are left.
    pub const STATEMENTS: Effects = Effects(2);
    /// LISTEN: UNLISTEN before another client gets the server.
    pub const LISTEN: Effects = Effects(4);
    /// SQL-level PREPARE: deallocate them.
    pub const SQL_PREPARE: Effects = Effects(8);
    /// DECLARE CURSOR (WITH HOLD survives the transaction): CLOSE ALL.
    pub const CURSOR: Effects = Effects(16);
    /// Session advisory locks: unlock all.
    pub const ADVISORY: Effects = Effects(32);
    /// Temporary tables and the like: DISCARD TEMP.
    pub const TEMP: Effects = Effects(64);

    /// What must be cleaned (rather than read back) before reuse.
    pub const CLEANUP: Effects = Effects(4 | 8 | 16 | 32 | 64);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Effects) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersects(self, other: Effects) -> bool {
        self.0 & other.0 != 0
    }

    pub fn remove(&mut self, other: Effects) {
        self.0 &= !other.0;
    }

    /// The effect of a CommandComplete, given its body (the tag).
    pub fn of_tag(tag: &[u8]) -> Effects {
        let tag = tag.strip_suffix(b"\0").unwrap_or(tag);
        match tag.first() {
            Some(b'S') if tag == b"SET" => Effects::SETTINGS,
            Some(b'R') if tag == b"RESET" => Effects::SETTINGS,
            Some(b'D') => match tag {
                b"DISCARD ALL" => Effects::SETTINGS | Effects::STATEMENTS,
                b"DEALLOCATE" | b"DEALLOCATE ALL" => Effects::STATEMENTS,
                b"DECLARE CURSOR" => Effects::CURSOR,
                _ => Effects::NONE,
            },
            Some(b'L') if tag == b"LISTEN" => Effects::LISTEN,
            Some(b'P') if tag == b"PREPARE" => Effects::SQL_PREPARE,
            _ => Effects::NONE,
        }
    }
}

impl std::ops::BitOr for Effects {
    type Output = Effects;
    fn bitor(self, rhs: Effects) -> Effects {
        Effects(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Effects {
    fn bitor_assign(&mut self, rhs: Effects) {
        self.0 |= rhs.0;
    }
}

/// What a query text says that no command tag will: settings changed by
/// `set_config`, session advisory locks, temporary objects, and the names
/// of custom settings (`app.tenant`) it may set, which PostgreSQL does not
/// list in `pg_settings` and so must be asked for by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryHints {
    pub effects: Effects,
    pub names: Vec<Box<str>>,
}

const SET_CONFIG: usize = 0;
const ADVISORY: usize = 1;
const TEMP: usize = 2;
const TEMPORARY: usize = 3;
const PG_TEMP: usize = 4;
const SET: usize = 5;
const RESET: usize = 6;

fn automaton() -> &'static AhoCorasick {
    static AC: OnceLock<AhoCorasick> = OnceLock::new();
    AC.get_or_init(|| {
        AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build([
                "set_config",
                "advisory_lock",
                "temp",
                "temporary",
                "pg_temp",
                "set",
                "reset",
            ])
            .expect("static patterns")
    })
}

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl QueryHints {
    /// Scans a query text. Cheap: one pass of a small automaton; names are
    /// only collected when a SET, RESET or set_config names a custom one.
    pub fn scan(text: &[u8]) -> QueryHints {
        let mut hints = QueryHints::default();
        for m in automaton().find_iter(text) {
            let (start, end) = (m.start(), m.end());
            let left_ok = start == 0 || !ident_byte(text[start - 1]);
            let right_ok = end == text.len() || !ident_byte(text[end]);
            match m.pattern().as_usize() {
                SET_CONFIG => {
                    hints.effects |= Effects::SETTINGS;
                    if let Some(name) = set_config_name(&text[end..]) {
                        hints.add(name);
                    }
                }
                ADVISORY => hints.effects |= Effects::ADVISORY,
                TEMP | TEMPORARY if left_ok && right_ok => hints.effects |= Effects::TEMP,
                PG_TEMP if left_ok => hints.effects |= Effects::TEMP,
                SET | RESET if left_ok && right_ok => {
                    if let Some(name) = set_name(&text[end..]) {
                        hints.add(name);
                    }
                }
                _ => {}
            }
        }
        hints
    }

    fn add(&mut self, name: String) {
        // A bound on the names one text can add; past it the rest is
        // not read back (documented in docs/architecture.md).
        const MAX_NAMES: usize = 64;
        if self.names.len() < MAX_NAMES && !self.names.iter().any(|n| **n == *name) {
            self.names.push(name.into_boxed_str());
        }
    }
}

fn skip_space(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

/// The custom setting named after SET/RESET (`SET [SESSION|LOCAL] a.b`),
/// lower-cased unless quoted; None unless it has a dot.
fn set_name(after: &[u8]) -> Option<String> {
    let mut s = skip_space(after);
    for kw in [&b"session"[..], b"local"] {
        if s.len() > kw.len() && s[..kw.len()].eq_ignore_ascii_case(kw) && !ident_byte(s[kw.len()])
        {
            s = skip_space(&s[kw.len()..]);
            break;
        }
    }
    let mut name = String::new();
    let mut parts = 0;
    loop {
        if let Some(rest) = s.strip_prefix(b"\"") {
            let mut part = Vec::new();
            let mut i = 0;
            loop {
                match rest.get(i) {
                    None => return None,
                    Some(b'"') if rest.get(i + 1) == Some(&b'"') => {
                        part.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => break,
                    Some(&b) => {
                        part.push(b);
                        i += 1;
                    }
                }
            }
            name.push_str(std::str::from_utf8(&part).ok()?);
            s = &rest[i + 1..];
        } else {
            let n = s.iter().take_while(|&&b| ident_byte(b)).count();
            if n == 0 {
                return None;
            }
            name.push_str(&std::str::from_utf8(&s[..n]).ok()?.to_lowercase());
            s = &s[n..];
        }
        parts += 1;
        match s.strip_prefix(b".") {
            Some(rest) => {
                name.push('.');
                s = rest;
            }
            None => break,
        }
    }
    (parts > 1).then_some(name)
}

/// The custom setting named by the literal in `set_config('a.b', ...)`.
fn set_config_name(after: &[u8]) -> Option<String> {
    let s = skip_space(after).strip_prefix(b"(")?;
    let s = skip_space(s).strip_prefix(b"'")?;
    let mut name = Vec::new();
    let mut i = 0;
    loop {
        match s.get(i) {
            None => return None,
            Some(b'\'') if s.get(i + 1) == Some(&b'\'') => {
                name.push(b'\'');
                i += 2;
            }
            Some(b'\'') => break,
            Some(&b) => {
                name.push(b);
                i += 1;
            }
        }
    }
    let name = String::from_utf8(name).ok()?.to_lowercase();
    name.contains('.').then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(q: &str) -> Vec<String> {
        QueryHints::scan(q.as_bytes())
            .names
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    #[test]
    fn tags() {
        assert_eq!(Effects::of_tag(b"SET\0"), Effects::SETTINGS);
        assert_eq!(Effects::of_tag(b"RESET\0"), Effects::SETTINGS);
        assert_eq!(Effects::of_tag(b"SELECT 1\0"), Effects::NONE);
        assert_eq!(Effects::of_tag(b"SETX\0"), Effects::NONE);
        assert!(Effects::of_tag(b"DISCARD ALL\0").contains(Effects::SETTINGS | Effects::STATEMENTS));
        assert_eq!(Effects::of_tag(b"DISCARD TEMP\0"), Effects::NONE);
        assert_eq!(Effects::of_tag(b"DEALLOCATE ALL\0"), Effects::STATEMENTS);
        assert_eq!(Effects::of_tag(b"DEALLOCATE\0"), Effects::STATEMENTS);
        assert_eq!(Effects::of_tag(b"LISTEN\0"), Effects::LISTEN);
        assert_eq!(Effects::of_tag(b"UNLISTEN\0"), Effects::NONE);
        assert_eq!(Effects::of_tag(b"PREPARE\0"), Effects::SQL_PREPARE);
        assert_eq!(Effects::of_tag(b"DECLARE CURSOR\0"), Effects::CURSOR);
        assert_eq!(Effects::of_tag(b"DELETE 3\0"), Effects::NONE);
        assert!(Effects::CLEANUP.contains(Effects::TEMP));
        assert!(!Effects::CLEANUP.intersects(Effects::SETTINGS));
    }

    #[test]
    fn ordinary_queries_have_no_hints() {
        for q in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            "SELECT temperature, attempts FROM readings",
            "SELECT reset_count, settings FROM t",
            "SELECT pg_advisory_xact_lock(1)",
        ] {
            assert_eq!(QueryHints::scan(q.as_bytes()), QueryHints::default(), "{q}");
        }
    }

    #[test]
    fn text_effects() {
        let e = |q: &str| QueryHints::scan(q.as_bytes()).effects;
        assert!(e("select SET_CONFIG('work_mem', '1MB', false)").contains(Effects::SETTINGS));
        assert!(e("SELECT pg_advisory_lock(42)").contains(Effects::ADVISORY));
        assert!(e("select pg_try_advisory_lock_shared(1, 2)").contains(Effects::ADVISORY));
        assert!(e("CREATE TEMP TABLE t (a int)").contains(Effects::TEMP));
        assert!(e("create temporary table t as select 1").contains(Effects::TEMP));
        assert!(e("SELECT 1 INTO TEMP t").contains(Effects::TEMP));
        assert!(e("CREATE TABLE pg_temp.t (a int)").contains(Effects::TEMP));
        assert!(!e("SELECT temp_buffers FROM x").contains(Effects::TEMP));
    }

    #[test]
    fn custom_setting_names() {
        assert_eq!(names("SET app.tenant = '42'"), vec!["app.tenant"]);
        assert_eq!(names("set session MyApp.Tenant to 1"), vec!["myapp.tenant"]);
        assert_eq!(names("SET LOCAL \"My\".\"X\" = 1"), vec!["My.X"]);
        assert_eq!(names("RESET app.tenant"), vec!["app.tenant"]);
        assert_eq!(
            names(
                "SELECT set_config('App.Role', 'x', false), set_config('work_mem', '1MB', false)"
            ),
            vec!["app.role"]
        );
        assert_eq!(names("SET search_path = a, b"), Vec::<String>::new());
        assert_eq!(
            names("/* c */ SET a.b = 1; SET c.d = 2; SET a.b = 3"),
            vec!["a.b", "c.d"]
        );
        // A harmless false positive: read back, found unset, dropped.
        assert_eq!(names("UPDATE t SET col.sub = 1"), vec!["col.sub"]);
        assert_eq!(names("SET \"unterminated"), Vec::<String>::new());
        assert_eq!(
            names("SELECT set_config('unterminated"),
            Vec::<String>::new()
        );
    }
}
