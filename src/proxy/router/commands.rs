//! PgCat's routing commands, sent as simple queries and answered by
//! pgcat: `SET SHARD TO`, `SET SHARDING KEY TO`, `SET SERVER ROLE TO`,
//! `SET PRIMARY READS TO` and their `SHOW`s. The grammar is PgCat's
//! (case-insensitive, the whole query, an optional `;`); one thing is
//! fixed on purpose: `SET PRIMARY READS TO 'ON'` works in any case.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The number as written: it may not fit an i64.
    SetShardingKey(String),
    SetShard(ShardTarget),
    ShowShard,
    SetServerRole(RoleSetting),
    ShowServerRole,
    /// None: back to the pool's setting.
    SetPrimaryReads(Option<bool>),
    ShowPrimaryReads,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardTarget {
    Number(String),
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleSetting {
    Primary,
    Replica,
    Any,
    /// The query parser decides.
    Auto,
    /// Back to the pool's `default_role`.
    Default,
}

const PATTERNS: [&str; 7] = [
    r"(?i)^ *SET SHARDING KEY TO '?([0-9]+)'? *;? *$",
    r"(?i)^ *SET SHARD TO '?([0-9]+|ANY)'? *;? *$",
    r"(?i)^ *SHOW SHARD *;? *$",
    r"(?i)^ *SET SERVER ROLE TO '(PRIMARY|REPLICA|ANY|AUTO|DEFAULT)' *;? *$",
    r"(?i)^ *SHOW SERVER ROLE *;? *$",
    r"(?i)^ *SET PRIMARY READS TO '?(on|off|default)'? *;? *$",
    r"(?i)^ *SHOW PRIMARY READS *;? *$",
];

fn patterns() -> &'static (RegexSet, Vec<Regex>) {
    static P: OnceLock<(RegexSet, Vec<Regex>)> = OnceLock::new();
    P.get_or_init(|| {
        (
            RegexSet::new(PATTERNS).expect("static patterns"),
            PATTERNS
                .iter()
                .map(|p| Regex::new(p).expect("static pattern"))
                .collect(),
        )
    })
}

/// The command a simple query is, if it is one. `query` is the Query
/// message body (a trailing NUL is ignored).
pub fn parse(query: &[u8]) -> Option<Command> {
    let query = query.strip_suffix(b"\0").unwrap_or(query);
    // Most queries are not: a look at the first word decides.
    let start = query.iter().position(|&b| b != b' ')?;
    let first = query.get(start..start + 4)?;
    if !first.eq_ignore_ascii_case(b"set ") && !first.eq_ignore_ascii_case(b"show") {
        return None;
    }
    let text = std::str::from_utf8(query).ok()?;
    let (set, regexes) = patterns();
    let i = set.matches(text).into_iter().next()?;
    let capture = || {
        regexes[i]
            .captures(text)
            .and_then(|c| c.get(1))
            .map(|m| m.as_str().to_string())
            .unwrap_or_default()
    };
    Some(match i {
        0 => Command::SetShardingKey(capture()),
        1 => {
            let v = capture();
            if v.eq_ignore_ascii_case("any") {
                Command::SetShard(ShardTarget::Any)
            } else {
                Command::SetShard(ShardTarget::Number(v))
            }
        }
        2 => Command::ShowShard,
        3 => Command::SetServerRole(match capture().to_ascii_lowercase().as_str() {
            "primary" => RoleSetting::Primary,
            "replica" => RoleSetting::Replica,
            "any" => RoleSetting::Any,
            "auto" => RoleSetting::Auto,
            _ => RoleSetting::Default,
        }),
        4 => Command::ShowServerRole,
        5 => Command::SetPrimaryReads(match capture().to_ascii_lowercase().as_str() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        }),
        _ => Command::ShowPrimaryReads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str) -> Option<Command> {
        parse(q.as_bytes())
    }

    #[test]
    fn pgcats_commands() {
        assert_eq!(
            p("SET SHARDING KEY TO '13'"),
            Some(Command::SetShardingKey("13".into()))
        );
        assert_eq!(
            p("  set sharding key to 13 ;\0"),
            Some(Command::SetShardingKey("13".into()))
        );
        assert_eq!(
            p("SET SHARD TO '2'"),
            Some(Command::SetShard(ShardTarget::Number("2".into())))
        );
        assert_eq!(
            p("SET SHARD TO 'any';"),
            Some(Command::SetShard(ShardTarget::Any))
        );
        assert_eq!(p("SHOW SHARD"), Some(Command::ShowShard));
        assert_eq!(
            p("SET SERVER ROLE TO 'replica'"),
            Some(Command::SetServerRole(RoleSetting::Replica))
        );
        assert_eq!(
            p("SET SERVER ROLE TO 'AUTO'"),
            Some(Command::SetServerRole(RoleSetting::Auto))
        );
        assert_eq!(p("show server role;"), Some(Command::ShowServerRole));
        assert_eq!(
            p("SET PRIMARY READS TO 'ON'"),
            Some(Command::SetPrimaryReads(Some(true)))
        );
        assert_eq!(
            p("SET PRIMARY READS TO default"),
            Some(Command::SetPrimaryReads(None))
        );
        assert_eq!(p("SHOW PRIMARY READS"), Some(Command::ShowPrimaryReads));
    }

    #[test]
    fn anything_else_goes_to_postgres() {
        for q in [
            "SET SERVER ROLE TO primary",
            "SET SHARD TO '1'; SELECT 1",
            "SET SHARDING KEY TO '-5'",
            "\tSET SHARD TO '1'",
            "SET search_path = x",
            "SELECT 1",
            "SHOW work_mem",
            "SET SERVER ROLE TO 'foo'",
        ] {
            assert_eq!(p(q), None, "{q}");
        }
    }
}
