//! PgCat's query plugins, configured as PgCat configures them (`[plugins]`
//! or, replacing it for one pool, `[pools.<name>.plugins]`), and run, as
//! in PgCat, only where the query parser is on:
//!
//! - `query_logger`: logs each simple query with its pool and user;
//! - `intercept`: answers configured queries with canned rows, without a
//!   server (`${USER}` and `${DATABASE}` are substituted in the cells);
//! - `table_access`: refuses statements that touch listed tables;
//! - `prewarmer`: runs queries on every new server connection before it
//!   serves a client (see `pool`).
//!
//! Queries are compared after a round trip through the SQL parser and
//! lower-casing, so spacing and keyword case do not matter. The plugins
//! act on simple-protocol queries; extended-protocol statements go to the
//! server unchanged.

use std::ops::ControlFlow;

use bytes::BytesMut;
use serde::Deserialize;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::proxy::protocol::messages::{self, Severity};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Config {
    intercept: Option<InterceptConfig>,
    table_access: Option<TableAccessConfig>,
    query_logger: Option<Enabled>,
    prewarmer: Option<PrewarmerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Enabled {
    enabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InterceptConfig {
    enabled: bool,
    queries: std::collections::BTreeMap<String, InterceptQuery>,
}

#[derive(Debug, Deserialize)]
struct InterceptQuery {
    query: String,
    schema: Vec<(String, String)>,
    result: Vec<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TableAccessConfig {
    enabled: bool,
    tables: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PrewarmerConfig {
    enabled: bool,
    queries: Vec<String>,
}

/// One canned answer.
#[derive(Debug)]
struct Intercept {
    /// The query, normalized.
    query: String,
    /// Column names and type OIDs.
    columns: Vec<(String, i32)>,
    rows: Vec<Vec<String>>,
}

/// The enabled plugins of one pool.
#[derive(Debug, Default)]
pub struct Plugins {
    intercepts: Vec<Intercept>,
    denied_tables: Vec<String>,
    log_queries: bool,
    /// Run on every new server connection (prewarmer).
    pub prewarm: Vec<String>,
}

/// PgCat's type names for intercepted columns.
fn type_oid(name: &str) -> i32 {
    match name {
        "text" => 25,
        "anyarray" => 2277,
        "oid" => 26,
        "bool" => 16,
        "int4" => 23,
        _ => 2276,
    }
}

/// A statement list as the parser renders it, lower-cased; text that
/// does not parse is compared with its spacing collapsed.
fn normalize(sql: &str) -> String {
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(statements) if !statements.is_empty() => statements
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("; ")
            .to_lowercase(),
        _ => sql
            .trim()
            .trim_end_matches(';')
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase(),
    }
}

impl Plugins {
    /// Reads a `[plugins]` table; an error names what is wrong.
    pub fn from_toml(value: &toml::Value) -> Result<Plugins, String> {
        let config: Config = value.clone().try_into().map_err(|e| e.to_string())?;
        let mut p = Plugins::default();
        if let Some(i) = config.intercept.filter(|i| i.enabled) {
            for (key, q) in i.queries {
                if q.result.iter().any(|r| r.len() != q.schema.len()) {
                    return Err(format!(
                        "intercept.queries.{key}: every result row needs one value per schema column"
                    ));
                }
                p.intercepts.push(Intercept {
                    query: normalize(&q.query),
                    columns: q
                        .schema
                        .iter()
                        .map(|(n, t)| (n.clone(), type_oid(t)))
                        .collect(),
                    rows: q.result,
                });
            }
        }
        if let Some(t) = config.table_access.filter(|t| t.enabled) {
            p.denied_tables = t.tables;
        }
        p.log_queries = config.query_logger.is_some_and(|l| l.enabled);
        if let Some(w) = config.prewarmer.filter(|w| w.enabled) {
            p.prewarm = w.queries;
        }
        Ok(p)
    }

    /// Whether any plugin looks at client queries.
    pub fn inspects_queries(&self) -> bool {
        !self.intercepts.is_empty() || !self.denied_tables.is_empty() || self.log_queries
    }

    /// Runs the plugins on one simple query. True: answered here (canned
    /// rows or a refusal, with ReadyForQuery), the server is not asked.
    pub fn on_query(&self, sql: &str, db: &str, user: &str, out: &mut BytesMut) -> bool {
        if self.log_queries {
            tracing::info!("[pool: {db}][user: {user}] {}", sql.trim_end_matches('\0'));
        }
        if !self.intercepts.is_empty() {
            let wanted = normalize(sql.trim_end_matches('\0'));
            if let Some(i) = self.intercepts.iter().find(|i| i.query == wanted) {
                let columns: Vec<(&str, i32, i16)> = i
                    .columns
                    .iter()
                    .map(|(n, oid)| (n.as_str(), *oid, -1))
                    .collect();
                messages::row_description(out, &columns);
                for row in &i.rows {
                    let cells: Vec<Option<String>> = row
                        .iter()
                        .map(|c| {
                            let v = c.replace("${USER}", user).replace("${DATABASE}", db);
                            (!v.is_empty()).then_some(v)
                        })
                        .collect();
                    messages::data_row_text(out, &cells);
                }
                let at = messages::begin(out, b'C');
                messages::put_cstr(out, b"SELECT");
                messages::finish(out, at);
                messages::ready_for_query(out, b'I');
                return true;
            }
        }
        if !self.denied_tables.is_empty() {
            if let Some(table) = self.denied_table(sql.trim_end_matches('\0')) {
                messages::error_response(
                    out,
                    Severity::Error,
                    "58000",
                    &format!("permission for table \"{table}\" denied"),
                );
                messages::ready_for_query(out, b'I');
                return true;
            }
        }
        false
    }

    /// The first listed table the statements touch (by the last part of
    /// its name), anywhere: FROM, JOIN, subqueries, INSERT, UPDATE, DELETE.
    fn denied_table(&self, sql: &str) -> Option<String> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
        let mut hit = None;
        let _ = sqlparser::ast::visit_relations(&statements, |name| {
            let last = name.0.last().map(|p| p.to_string()).unwrap_or_default();
            if self.denied_tables.contains(&last) {
                hit = Some(last);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugins(text: &str) -> Plugins {
        Plugins::from_toml(&toml::from_str::<toml::Value>(text).unwrap()).unwrap()
    }

    const CONFIG: &str = r#"
[intercept]
enabled = true
[intercept.queries.0]
query = "select current_database() as a, current_schemas(false) as b"
schema = [["a", "text"], ["b", "text"]]
result = [["${DATABASE}", "{public}"], ["${USER}", ""]]
[table_access]
enabled = true
tables = ["pg_user", "pg_roles"]
[prewarmer]
enabled = true
queries = ["SELECT 1"]
"#;

    #[test]
    fn intercept_matches_regardless_of_spacing_and_case() {
        let p = plugins(CONFIG);
        let mut out = BytesMut::new();
        assert!(p.on_query(
            "SELECT  current_database()  AS a,current_schemas(FALSE) AS b;\0",
            "sharded_db",
            "alice",
            &mut out
        ));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("sharded_db") && text.contains("{public}") && text.contains("alice"));
        assert_eq!(out[0], b'T');
        assert_eq!(&out[out.len() - 6..], &[b'Z', 0, 0, 0, 5, b'I']);
        let mut out = BytesMut::new();
        assert!(!p.on_query("SELECT 1", "db", "u", &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn table_access_refuses_listed_tables_anywhere() {
        let p = plugins(CONFIG);
        for sql in [
            "SELECT * FROM pg_user",
            "SELECT 1 FROM t JOIN pg_catalog.pg_roles r ON true",
            "SELECT * FROM t WHERE x IN (SELECT 1 FROM pg_user)",
        ] {
            let mut out = BytesMut::new();
            assert!(p.on_query(sql, "db", "u", &mut out), "{sql}");
            assert_eq!(out[0], b'E');
            assert!(String::from_utf8_lossy(&out).contains("permission for table"));
        }
        let mut out = BytesMut::new();
        assert!(!p.on_query("SELECT * FROM pg_users_history", "db", "u", &mut out));
        assert_eq!(p.prewarm, vec!["SELECT 1".to_string()]);
    }

    #[test]
    fn disabled_plugins_do_nothing() {
        let p = plugins("[intercept]\nenabled = false\n[query_logger]\nenabled = false\n");
        assert!(!p.inspects_queries());
        assert!(p.prewarm.is_empty());
    }
}
