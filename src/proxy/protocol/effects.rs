//! What a transaction may have done to session state, told by what the
//! server answered (command tags) and, where no tag tells, by a scan of
//! the query text. The session reads the state back from the server, or
//! cleans it, only when one of these says so: a transaction that changes
//! nothing pays nothing.

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

    /// Every named statement of the client is gone (DEALLOCATE ALL,
    /// DISCARD ALL).
    pub const CLIENT_STATEMENTS: Effects = Effects(128);

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
                b"DISCARD ALL" => {
                    Effects::SETTINGS | Effects::STATEMENTS | Effects::CLIENT_STATEMENTS
                }
                b"DEALLOCATE ALL" => Effects::STATEMENTS | Effects::CLIENT_STATEMENTS,
                b"DEALLOCATE" => Effects::STATEMENTS,
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

/// Whether `word` (lower case) is at `text[i..]`, in any case.
fn at(text: &[u8], i: usize, word: &[u8]) -> bool {
    text.get(i..i + word.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(word))
}

fn left_ok(text: &[u8], i: usize) -> bool {
    i == 0 || !ident_byte(text[i - 1])
}

fn right_ok(text: &[u8], end: usize) -> bool {
    end >= text.len() || !ident_byte(text[end])
}

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl QueryHints {
    /// Scans a query text. Cheap: every word it looks for has an `e` (set,
    /// reset, set_config, temp, temporary, pg_temp) or a `v` (advisory),
    /// so it finds those letters eight bytes at a time and looks only
    /// around them; names are only collected when a SET, RESET or
    /// set_config names a custom setting.
    pub fn scan(text: &[u8]) -> QueryHints {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        const CASE: u64 = 0x2020_2020_2020_2020;
        const E: u64 = ONES * b'e' as u64;
        const V: u64 = ONES * b'v' as u64;
        let mut hints = QueryHints::default();
        let mut i = 0;
        while i + 8 <= text.len() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&text[i..i + 8]);
            let x = u64::from_le_bytes(word) | CASE;
            let (e, v) = (x ^ E, x ^ V);
            // High bit set in each byte that is zero (and perhaps in one
            // above a zero: every candidate is checked again).
            let mut m = (e.wrapping_sub(ONES) & !e | v.wrapping_sub(ONES) & !v) & HIGH;
            while m != 0 {
                hints.look_at(text, i + (m.trailing_zeros() / 8) as usize);
                m &= m - 1;
            }
            i += 8;
        }
        while i < text.len() {
            if matches!(text[i] | 0x20, b'e' | b'v') {
                hints.look_at(text, i);
            }
            i += 1;
        }
        hints
    }

    /// Looks around `text[i]` for the words [`QueryHints::scan`] wants.
    fn look_at(&mut self, text: &[u8], i: usize) {
        let lower = |i: usize| text.get(i).map_or(0, |b| b | 0x20);
        match lower(i) {
            // The common case, an `e` in neither word, is decided by its
            // two neighbours.
            b'e' if i > 0 => match (lower(i - 1), lower(i + 1)) {
                (b's', b't') => self.set_family(text, i - 1),
                (b't', b'm') => self.temp_family(text, i - 1),
                _ => {}
            },
            b'v' if i >= 2 && at(text, i - 2, b"advisory_lock") => {
                self.effects |= Effects::ADVISORY;
            }
            _ => {}
        }
    }

    /// `set` at `start`: set_config(...), or SET/RESET naming a setting.
    #[cold]
    fn set_family(&mut self, text: &[u8], start: usize) {
        if at(text, start, b"set_config") {
            self.effects |= Effects::SETTINGS;
            if let Some(name) = set_config_name(&text[start + 10..]) {
                self.add(name);
            }
            return;
        }
        let word = if start >= 2 && at(text, start - 2, b"reset") {
            start - 2
        } else {
            start
        };
        if left_ok(text, word) && right_ok(text, start + 3) {
            if let Some(name) = set_name(&text[start + 3..]) {
                self.add(name);
            }
        }
    }

    /// `tem` at `start`: TEMP, TEMPORARY, pg_temp.
    #[cold]
    fn temp_family(&mut self, text: &[u8], start: usize) {
        if !at(text, start, b"temp") {
            return;
        }
        let temp = if start >= 3 && at(text, start - 3, b"pg_") {
            left_ok(text, start - 3)
        } else {
            left_ok(text, start)
                && (right_ok(text, start + 4)
                    || (at(text, start, b"temporary") && right_ok(text, start + 9)))
        };
        if temp {
            self.effects |= Effects::TEMP;
        }
    }

    /// Nothing to note: the common case.
    pub fn is_empty(&self) -> bool {
        self.effects.is_empty() && self.names.is_empty()
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

/// What a simple query that is nothing but `DEALLOCATE` drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deallocate {
    All,
    Name(Vec<u8>),
}

/// Reads `DEALLOCATE [PREPARE] name` or `DEALLOCATE [PREPARE] ALL` (with
/// an optional `;`), the whole text of a simple query. Names follow SQL:
/// unquoted ones are lower-cased. None for anything else.
pub fn deallocate(text: &[u8]) -> Option<Deallocate> {
    // Most queries are rejected by their first letter.
    let first = text.iter().position(|b| !b.is_ascii_whitespace())?;
    if text[first] | 0x20 != b'd' {
        return None;
    }
    let text = text.strip_suffix(b"\0").unwrap_or(text);
    let mut s = text[first..].trim_ascii();
    s = s.strip_suffix(b";").unwrap_or(s).trim_ascii_end();
    let word = |s: &[u8], w: &[u8]| {
        s.len() > w.len() && s[..w.len()].eq_ignore_ascii_case(w) && !ident_byte(s[w.len()])
    };
    if !word(s, b"deallocate") {
        return None;
    }
    s = skip_space(&s[10..]);
    if word(s, b"prepare") {
        s = skip_space(&s[7..]);
    }
    let name = if let Some(rest) = s.strip_prefix(b"\"") {
        let mut name = Vec::new();
        let mut i = 0;
        loop {
            match rest.get(i) {
                None => return None,
                Some(b'"') if rest.get(i + 1) == Some(&b'"') => {
                    name.push(b'"');
                    i += 2;
                }
                Some(b'"') => break,
                Some(&b) => {
                    name.push(b);
                    i += 1;
                }
            }
        }
        if !rest[i + 1..].is_empty() {
            return None;
        }
        return Some(Deallocate::Name(name));
    } else {
        if s.is_empty() || !s.iter().all(|&b| ident_byte(b)) {
            return None;
        }
        s.to_ascii_lowercase()
    };
    if name == b"all" {
        Some(Deallocate::All)
    } else {
        Some(Deallocate::Name(name))
    }
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
        assert_eq!(
            Effects::of_tag(b"DEALLOCATE ALL\0"),
            Effects::STATEMENTS | Effects::CLIENT_STATEMENTS
        );
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
    fn words_are_found_at_every_offset_and_case() {
        for pad in 0..17 {
            for (word, effect) in [
                ("SET_CONFIG('a', 'b', false)", Effects::SETTINGS),
                ("pg_advisory_lock(1)", Effects::ADVISORY),
                ("create TeMp table t()", Effects::TEMP),
            ] {
                let q = format!("{}{word}", " ".repeat(pad));
                assert!(
                    QueryHints::scan(q.as_bytes()).effects.contains(effect),
                    "{q:?}"
                );
            }
            let q = format!("{}SET A.b = 1", "x;".repeat(pad));
            assert_eq!(QueryHints::scan(q.as_bytes()).names.len(), 1, "{q:?}");
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
    fn deallocate_texts() {
        let d = |q: &str| deallocate(q.as_bytes());
        assert_eq!(d("DEALLOCATE s1"), Some(Deallocate::Name(b"s1".to_vec())));
        assert_eq!(
            d("deallocate prepare _pg3_0;\0"),
            Some(Deallocate::Name(b"_pg3_0".to_vec()))
        );
        assert_eq!(
            d(" DEALLOCATE \"My S\"\"1\" ; "),
            Some(Deallocate::Name(b"My S\"1".to_vec()))
        );
        assert_eq!(d("DEALLOCATE ALL"), Some(Deallocate::All));
        assert_eq!(d("DEALLOCATE PREPARE all;"), Some(Deallocate::All));
        assert_eq!(d("DEALLOCATE S1"), Some(Deallocate::Name(b"s1".to_vec())));
        assert_eq!(d("DEALLOCATE s1; SELECT 1"), None);
        assert_eq!(d("DEALLOCATEs1"), None);
        assert_eq!(d("SELECT 1"), None);
        assert_eq!(d("DEALLOCATE \"open"), None);
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
