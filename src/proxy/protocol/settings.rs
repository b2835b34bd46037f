//! Session settings as data, without IO: the settings a client has set
//! (or a server holds) at session level, the SQL that moves a server from
//! one such state to another, the SQL that reads the state back, and the
//! startup `options` a client may send.
//!
//! The server is the source of truth: after a transaction that may have
//! changed settings, pgcat reads them back (`pg_settings` where `source =
//! 'session'`, plus the role, the session authorization and custom
//! settings by name, which `pg_settings` does not list) and that becomes
//! the client's state. Values are kept as PostgreSQL reports them, so
//! `set_config(name, value, false)` reproduces them exactly.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Settings at session level, sorted by name, with a digest for the
/// common comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pairs: Vec<(String, String)>,
    digest: u64,
}

/// Transaction-scoped pseudo settings that `pg_settings` lists with source
/// `session` but that cannot (and need not) be replayed: they follow the
/// `default_transaction_*` settings.
const TRANSACTION_SCOPED: &[&str] = &[
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

/// Changing these resets the role, so they are applied first.
const SESSION_AUTHORIZATION: &str = "session_authorization";
const ROLE: &str = "role";

impl Settings {
    pub fn empty() -> Arc<Settings> {
        Arc::new(Settings::default())
    }

    pub fn from_pairs(mut pairs: Vec<(String, String)>) -> Settings {
        pairs.retain(|(k, _)| !TRANSACTION_SCOPED.contains(&k.as_str()));
        pairs.sort();
        pairs.dedup_by(|a, b| a.0 == b.0);
        let mut h = std::hash::DefaultHasher::new();
        pairs.hash(&mut h);
        Settings {
            digest: h.finish(),
            pairs,
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.pairs[i].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Whether two states are the same (pointer first, then digest, then
    /// the pairs themselves).
    pub fn same(a: &Arc<Settings>, b: &Arc<Settings>) -> bool {
        Arc::ptr_eq(a, b) || (a.digest == b.digest && a.pairs == b.pairs)
    }

    /// `top` over `base`: what a client whose startup settings are `base`
    /// has when the server reports `top` at session level. A setting the
    /// client reset falls back to its startup value, as on a direct
    /// connection, where startup values are the reset values.
    pub fn overlay(base: &Settings, top: Settings) -> Settings {
        if base.is_empty() {
            return top;
        }
        let mut pairs = top.pairs;
        for (k, v) in &base.pairs {
            if top_get(&pairs, k).is_none() {
                pairs.push((k.clone(), v.clone()));
            }
        }
        Settings::from_pairs(pairs)
    }

    /// Custom settings (with a dot in the name), which must be read back
    /// by name.
    pub fn custom_names(&self) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.contains('.'))
    }
}

fn top_get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .binary_search_by(|(k, _)| k.as_str().cmp(name))
        .ok()
        .map(|i| pairs[i].1.as_str())
}

/// Quotes a string literal for SQL (standard_conforming_strings on, which
/// pgcat's own connections never change).
pub fn quote_literal(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    if value.contains('\\') {
        // E'' strings treat backslashes the same whatever the setting.
        s.push('E');
        s.push('\'');
        for c in value.chars() {
            if c == '\'' || c == '\\' {
                s.push(c);
            }
            s.push(c);
        }
    } else {
        s.push('\'');
        for c in value.chars() {
            if c == '\'' {
                s.push('\'');
            }
            s.push(c);
        }
    }
    s.push('\'');
    s
}

/// Quotes a setting name for RESET: each dotted part as an identifier.
fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The SQL that turns a server whose session settings are `from` into
/// one whose settings are `to`: one simple query, so PostgreSQL applies
/// all of it or (on an error) none. None when nothing differs.
pub fn apply_sql(from: &Settings, to: &Settings) -> Option<String> {
    let mut resets = String::new();
    let mut sets = Vec::new();
    let mut auth = String::new();
    // Session authorization first: changing it resets the role.
    let (fa, ta) = (
        from.get(SESSION_AUTHORIZATION),
        to.get(SESSION_AUTHORIZATION),
    );
    if fa != ta {
        match ta {
            Some(v) => sets.insert(0, (SESSION_AUTHORIZATION, v)),
            None => auth.push_str("RESET SESSION AUTHORIZATION;"),
        }
    }
    let auth_changed = fa != ta;
    for (k, _) in from.iter() {
        if k == SESSION_AUTHORIZATION {
            continue;
        }
        if to.get(k).is_none() && !(k == ROLE && auth_changed) {
            resets.push_str(&format!("RESET {};", quote_name(k)));
        }
    }
    for (k, v) in to.iter() {
        if k == SESSION_AUTHORIZATION {
            continue;
        }
        if from.get(k) != Some(v) || (k == ROLE && auth_changed) {
            // The role goes right after the authorization.
            if k == ROLE {
                let at = usize::from(ta.is_some() && fa != ta);
                sets.insert(at, (k, v));
            } else {
                sets.push((k, v));
            }
        }
    }
    if resets.is_empty() && sets.is_empty() && auth.is_empty() {
        return None;
    }
    let mut sql = auth;
    sql.push_str(&resets);
    if !sets.is_empty() {
        sql.push_str("SELECT ");
        for (i, (k, v)) in sets.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "set_config({}, {}, false)",
                quote_literal(k),
                quote_literal(v)
            ));
        }
    }
    Some(sql)
}

/// Readback rows are (kind, name, value): a session setting...
const READBACK_SETTING: &str = "s";
/// ...the value the client had for `statement_timeout` before pgcat
/// turned it off for its own statements...
const READBACK_TIMEOUT: &str = "t";
/// ...or one of the protocol-level statements on the server...
const READBACK_STATEMENT: &str = "p";
/// ...or the reset value of `statement_timeout`, in milliseconds.
const READBACK_RESET: &str = "r";

/// The one query pgcat runs after a transaction that may have changed
/// session state: `cleanup` (see [`cleanup_sql`]) first, then the session
/// settings (`pg_settings` where `source = 'session'`, the role, the
/// session authorization when the session user is not `login_user`, and
/// the `custom` settings by name), and with `statements` the statements
/// left on the server.
///
/// It starts by reading the client's `statement_timeout` and turning it
/// off for the rest of the query (`set_config(..., true)`: the query is
/// one implicit transaction), so that a client's tiny timeout cannot
/// cancel pgcat's own statements. If that first statement is cancelled
/// after all, nothing happened and the query can be run again.
pub fn readback_sql<'a>(
    login_user: &str,
    custom: impl Iterator<Item = &'a str>,
    cleanup: Option<&str>,
    statements: bool,
) -> String {
    let mut sql = format!(
        "SELECT '{READBACK_TIMEOUT}', 'statement_timeout', \
         pg_catalog.current_setting('statement_timeout'), \
         pg_catalog.set_config('statement_timeout', '0', true);"
    );
    if let Some(clean) = cleanup {
        sql.push_str(clean);
    }
    // statement_timeout is the value set just above for the rest of this
    // transaction: its reset value is read instead, to tell whether the
    // client's differs from it.
    sql.push_str(&format!(
        "SELECT '{READBACK_SETTING}', name, setting FROM pg_catalog.pg_settings \
         WHERE source = 'session' AND name <> 'statement_timeout' \
         UNION ALL SELECT '{READBACK_RESET}', name, reset_val FROM pg_catalog.pg_settings \
         WHERE name = 'statement_timeout' \
         UNION ALL SELECT '{READBACK_SETTING}', 'role', pg_catalog.current_setting('role') \
         WHERE pg_catalog.current_setting('role') <> 'none' \
         UNION ALL SELECT '{READBACK_SETTING}', 'session_authorization', session_user::text \
         WHERE session_user <> {}",
        quote_literal(login_user)
    ));
    let names: Vec<String> = custom.map(quote_literal).collect();
    if !names.is_empty() {
        sql.push_str(&format!(
            " UNION ALL SELECT '{READBACK_SETTING}', n, pg_catalog.current_setting(n, true) \
             FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS n \
             WHERE pg_catalog.current_setting(n, true) IS NOT NULL",
            names.join(", ")
        ));
    }
    if statements {
        sql.push_str(&format!(
            ";SELECT '{READBACK_STATEMENT}', name, '' FROM pg_catalog.pg_prepared_statements \
             WHERE NOT from_sql"
        ));
    }
    sql
}

/// What a readback query found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Readback {
    /// The session settings, of the server and so of the client.
    pub settings: Settings,
    /// Names of the protocol-level statements on the server.
    pub statements: Vec<String>,
}

/// How PostgreSQL displays a time setting of `ms` milliseconds: in the
/// largest unit that divides it.
fn display_ms(ms: i64) -> String {
    if ms == 0 {
        return "0".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("min", 60_000),
        ("s", 1000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Reads the rows of a [`readback_sql`] query. The `statement_timeout`
/// read first (before pgcat turned it off for its own statements) counts
/// as a session setting when it differs from its reset value.
pub fn parse_readback(rows: &[Vec<Option<String>>]) -> Readback {
    let mut pairs = Vec::new();
    let mut timeout = None;
    let mut reset = None;
    let mut statements = Vec::new();
    for row in rows {
        match row.as_slice() {
            [Some(kind), Some(name), Some(value), ..] if kind == READBACK_SETTING => {
                pairs.push((name.clone(), value.clone()))
            }
            [Some(kind), _, Some(value), ..] if kind == READBACK_TIMEOUT => {
                timeout = Some(value.clone())
            }
            [Some(kind), _, Some(value), ..] if kind == READBACK_RESET => {
                reset = value.parse::<i64>().ok().map(display_ms)
            }
            [Some(kind), Some(name), ..] if kind == READBACK_STATEMENT => {
                statements.push(name.clone())
            }
            _ => {}
        }
    }
    if let Some(t) = timeout {
        if Some(&t) != reset.as_ref() {
            pairs.push(("statement_timeout".into(), t));
        }
    }
    Readback {
        settings: Settings::from_pairs(pairs),
        statements,
    }
}

/// Statements that clean what a client left on a server connection and
/// that another client must not see. `listen`, `cursors`, `advisory`,
/// `temp` and `sql_prepared` say what needs cleaning.
pub fn cleanup_sql(
    listen: bool,
    cursors: bool,
    advisory: bool,
    temp: bool,
    sql_prepared: bool,
) -> Option<String> {
    let mut sql = String::new();
    if listen {
        sql.push_str("UNLISTEN *;");
    }
    if cursors {
        sql.push_str("CLOSE ALL;");
    }
    if temp {
        sql.push_str("DISCARD TEMP;");
    }
    if advisory || sql_prepared {
        // One block: SQL-level statements (not pgcat's, which are
        // protocol-level) and session advisory locks.
        sql.push_str("DO $pgcat$DECLARE r record; BEGIN ");
        if advisory {
            sql.push_str("PERFORM pg_catalog.pg_advisory_unlock_all(); ");
        }
        if sql_prepared {
            sql.push_str(
                "FOR r IN SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql LOOP \
                 EXECUTE pg_catalog.format('DEALLOCATE %I', r.name); END LOOP; ",
            );
        }
        sql.push_str("END$pgcat$;");
    }
    (!sql.is_empty()).then_some(sql)
}

/// Splits the value of the startup parameter `options` the way PostgreSQL
/// does (whitespace separates, a backslash escapes the next character) and
/// returns the settings it carries (`-c name=value`, `--name=value`), with
/// `-` in names read as `_`. Anything else is refused: pgcat could not
/// honour it.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
                in_word = true;
            }
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
                .ok_or_else(|| "option \"-c\" requires a value".to_string())?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_string()
        } else {
            return Err(format!(
                "unsupported startup option \"{w}\": pgcat accepts only -c name=value and --name=value"
            ));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(format!("option \"{setting}\" requires a value"));
        };
        if name.is_empty() {
            return Err(format!("invalid option \"{setting}\""));
        }
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn settings_are_sorted_and_compared_by_content() {
        let a = Arc::new(s(&[("work_mem", "77"), ("search_path", "x")]));
        let b = Arc::new(s(&[("search_path", "x"), ("work_mem", "77")]));
        assert!(Settings::same(&a, &b));
        assert_eq!(a.get("work_mem"), Some("77"));
        assert_eq!(a.get("nope"), None);
        let c = Arc::new(s(&[("search_path", "y"), ("work_mem", "77")]));
        assert!(!Settings::same(&a, &c));
        let t = s(&[("transaction_isolation", "serializable")]);
        assert!(t.is_empty());
    }

    #[test]
    fn reset_settings_fall_back_to_startup_values() {
        let startup = s(&[("search_path", "tenant_x"), ("work_mem", "64")]);
        let read = s(&[("work_mem", "128"), ("lock_timeout", "5")]);
        let o = Settings::overlay(&startup, read);
        assert_eq!(o.get("search_path"), Some("tenant_x"));
        assert_eq!(o.get("work_mem"), Some("128"));
        assert_eq!(o.get("lock_timeout"), Some("5"));
        assert_eq!(
            Settings::overlay(&Settings::default(), s(&[("a", "1")])).len(),
            1
        );
    }

    #[test]
    fn apply_sets_changes_and_resets_what_is_gone() {
        let from = s(&[("work_mem", "77"), ("app.x", "1"), ("TimeZone", "UTC")]);
        let to = s(&[("search_path", "a, b"), ("TimeZone", "UTC")]);
        let sql = apply_sql(&from, &to).unwrap();
        assert_eq!(
            sql,
            "RESET \"app\".\"x\";RESET \"work_mem\";SELECT set_config('search_path', 'a, b', false)"
        );
        assert_eq!(apply_sql(&to, &to), None);
    }

    #[test]
    fn apply_orders_authorization_before_role() {
        let from = s(&[("role", "r1")]);
        let to = s(&[
            ("session_authorization", "alice"),
            ("role", "r2"),
            ("work_mem", "1"),
        ]);
        let sql = apply_sql(&from, &to).unwrap();
        assert_eq!(
            sql,
            "SELECT set_config('session_authorization', 'alice', false), \
             set_config('role', 'r2', false), set_config('work_mem', '1', false)"
        );
        // Dropping the authorization resets the role with it; a role the
        // target keeps is set again after.
        let sql = apply_sql(&to, &s(&[("role", "r2")])).unwrap();
        assert_eq!(
            sql,
            "RESET SESSION AUTHORIZATION;RESET \"work_mem\";SELECT set_config('role', 'r2', false)"
        );
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }

    #[test]
    fn readback_names_custom_settings() {
        let sql = readback_sql(
            "app",
            ["a.b", "c.d'"].into_iter(),
            Some("UNLISTEN *;"),
            true,
        );
        assert!(sql.starts_with("SELECT 't', 'statement_timeout'"), "{sql}");
        assert!(sql.contains("session_user <> 'app'"));
        assert!(sql.contains("ARRAY['a.b', 'c.d''']::text[]"));
        assert!(sql.contains("UNLISTEN *;SELECT 's'"));
        assert!(sql.contains("pg_prepared_statements"));
        let plain = readback_sql("app", std::iter::empty(), None, false);
        assert!(!plain.contains("unnest") && !plain.contains("pg_prepared_statements"));
    }

    #[test]
    fn readback_rows_keep_a_statement_timeout_that_differs_from_its_default() {
        let row = |k: &str, n: &str, v: &str| vec![Some(k.into()), Some(n.into()), Some(v.into())];
        let rows = |t: &str, reset: &str| {
            vec![
                vec![
                    Some("t".into()),
                    Some("statement_timeout".into()),
                    Some(t.into()),
                    Some("0".into()),
                ],
                row("r", "statement_timeout", reset),
                row("s", "work_mem", "77"),
                row("p", "pgcat_x", ""),
            ]
        };
        let r = parse_readback(&rows("1ms", "0"));
        assert_eq!(r.settings.get("statement_timeout"), Some("1ms"));
        assert_eq!(r.settings.get("work_mem"), Some("77"));
        assert_eq!(r.statements, vec!["pgcat_x".to_string()]);
        assert_eq!(
            parse_readback(&rows("0", "0"))
                .settings
                .get("statement_timeout"),
            None
        );
        assert_eq!(
            parse_readback(&rows("5s", "5000"))
                .settings
                .get("statement_timeout"),
            None
        );
        assert_eq!(
            parse_readback(&rows("0", "5000"))
                .settings
                .get("statement_timeout"),
            Some("0")
        );
    }

    #[test]
    fn time_settings_display_as_postgres_does() {
        assert_eq!(display_ms(0), "0");
        assert_eq!(display_ms(1), "1ms");
        assert_eq!(display_ms(1500), "1500ms");
        assert_eq!(display_ms(5000), "5s");
        assert_eq!(display_ms(120_000), "2min");
        assert_eq!(display_ms(7_200_000), "2h");
        assert_eq!(display_ms(86_400_000), "1d");
    }

    #[test]
    fn cleanup_covers_what_was_flagged() {
        assert_eq!(cleanup_sql(false, false, false, false, false), None);
        let all = cleanup_sql(true, true, true, true, true).unwrap();
        for part in [
            "UNLISTEN *",
            "CLOSE ALL",
            "DISCARD TEMP",
            "pg_advisory_unlock_all",
            "DEALLOCATE",
        ] {
            assert!(all.contains(part), "{part} in {all}");
        }
    }

    #[test]
    fn options_are_split_like_postgres() {
        let o =
            parse_options("-c search_path=tenant_x --work-mem=64kB -cstatement_timeout=5").unwrap();
        assert_eq!(
            o,
            vec![
                ("search_path".into(), "tenant_x".into()),
                ("work_mem".into(), "64kB".into()),
                ("statement_timeout".into(), "5".into()),
            ]
        );
        let o = parse_options(r"-c search_path=a,\ b").unwrap();
        assert_eq!(o, vec![("search_path".into(), "a, b".into())]);
        assert!(parse_options("-B 100").unwrap_err().contains("-B"));
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c work_mem").is_err());
        assert_eq!(parse_options("  ").unwrap(), vec![]);
    }
}
