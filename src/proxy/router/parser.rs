//! The query parser (a real SQL parser, `sqlparser`'s PostgreSQL
//! dialect): whether a statement only reads, and which sharding keys it
//! names (`automatic_sharding_key`), following PgCat's rules with two
//! differences: function calls are writes unless known to only read, and
//! `BEGIN READ ONLY` is a read.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_statements, BinaryOperator, Expr, FromTable, Ident, JoinConstraint,
    JoinOperator, ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableFactor, TableObject,
    TableWithJoins, TransactionAccessMode, TransactionMode, UpdateTableFromKind, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// `automatic_sharding_key = "table.column"` (`*` for any table),
/// lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardingKey {
    /// None: any table.
    pub table: Option<String>,
    pub column: String,
}

impl ShardingKey {
    pub fn parse(s: &str) -> Option<ShardingKey> {
        let s = s.trim().trim_matches('"').to_lowercase();
        let (table, column) = s.split_once('.')?;
        if column.is_empty() || column.contains('.') || table.is_empty() {
            return None;
        }
        Some(ShardingKey {
            table: (table != "*").then(|| table.to_string()),
            column: column.to_string(),
        })
    }
}

/// Functions taken to only read. Anything else a query calls makes it a
/// write (it may be `nextval`, or a function that updates), unless the
/// pool's `query_parser_read_functions` names it (or is `["*"]`).
const READ_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_append",
    "array_cat",
    "array_length",
    "array_position",
    "array_remove",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "clock_timestamp",
    "coalesce",
    "col_description",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_database",
    "current_date",
    "current_schema",
    "current_schemas",
    "current_setting",
    "current_time",
    "current_timestamp",
    "current_user",
    "date_part",
    "date_trunc",
    "decode",
    "dense_rank",
    "encode",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "format_type",
    "gen_random_uuid",
    "generate_series",
    "greatest",
    "has_schema_privilege",
    "has_table_privilege",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "initcap",
    "isfinite",
    "json_agg",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_extract_path",
    "json_extract_path_text",
    "json_object_agg",
    "json_typeof",
    "jsonb_agg",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_path_query",
    "jsonb_set",
    "jsonb_typeof",
    "justify_interval",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "obj_description",
    "octet_length",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_backend_pid",
    "pg_column_size",
    "pg_get_userbyid",
    "pg_is_in_recovery",
    "pg_last_xact_replay_timestamp",
    "pg_postmaster_start_time",
    "pg_sleep",
    "pg_table_is_visible",
    "pg_typeof",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "random",
    "rank",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "session_user",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timeofday",
    "to_char",
    "to_date",
    "to_hex",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "txid_current_if_assigned",
    "unnest",
    "upper",
    "uuid_generate_v4",
    "var_pop",
    "var_samp",
    "variance",
    "version",
];

/// What the parser is told by the pool.
#[derive(Debug, Clone, Default)]
pub struct ParserConfig {
    pub key: Option<ShardingKey>,
    /// Every function counts as a read (PgCat's behaviour).
    pub all_functions_read: bool,
    /// Functions counted as reads beyond the built-in list, lower-cased.
    pub read_functions: HashSet<String>,
}

impl ParserConfig {
    fn reads(&self, name: &str) -> bool {
        self.all_functions_read
            || READ_FUNCTIONS.binary_search(&name).is_ok()
            || self.read_functions.contains(name)
    }
}

/// What a query text says about routing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inference {
    /// It writes or locks, or might: the primary.
    pub write: bool,
    /// Integer values of the sharding key it names.
    pub keys: Vec<i64>,
    /// Parameters (`$n`, 1-based) bound to the sharding key.
    pub placeholders: Vec<usize>,
    /// A reason the sharding key gives no shard (PgCat's messages).
    pub key_error: Option<String>,
}

/// Parses `sql` and infers. An error: the text does not parse (the
/// caller sends such a query to the primary).
pub fn infer(sql: &str, config: &ParserConfig) -> Result<Inference, String> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| e.to_string())?;
    let mut inf = Inference::default();
    if statements.is_empty() {
        inf.write = true;
        return Ok(inf);
    }
    for statement in &statements {
        match statement {
            Statement::StartTransaction { modes, .. } => {
                // The transaction's first statement decides for all of it.
                let read_only = modes.iter().any(|m| {
                    matches!(
                        m,
                        TransactionMode::AccessMode(TransactionAccessMode::ReadOnly)
                    )
                });
                inf.write |= !read_only;
                break;
            }
            Statement::Query(query) => {
                if query_writes(query, config) {
                    inf.write = true;
                }
                if let Some(key) = &config.key {
                    keys_in_query(query, key, &mut inf);
                }
            }
            Statement::Insert(insert) => {
                inf.write = true;
                if let Some(key) = &config.key {
                    let table = match &insert.table {
                        TableObject::TableName(name) => last_part(name),
                        _ => None,
                    };
                    if let (Some(table), Some(source)) = (table, &insert.source) {
                        keys_in_insert(&table, &insert.columns, source, key, &mut inf);
                    }
                }
            }
            Statement::Update(update) => {
                inf.write = true;
                if let Some(key) = &config.key {
                    if key.table.is_none()
                        && update.assignments.iter().any(|a| match &a.target {
                            sqlparser::ast::AssignmentTarget::ColumnName(n) => {
                                last_part(n).as_deref() == Some(key.column.as_str())
                            }
                            _ => false,
                        })
                    {
                        inf.key_error = Some("Sharding key cannot be updated.".into());
                        continue;
                    }
                    let mut tables = Vec::new();
                    tables_of(std::slice::from_ref(&update.table), &mut tables);
                    if let Some(
                        UpdateTableFromKind::AfterSet(from) | UpdateTableFromKind::BeforeSet(from),
                    ) = &update.from
                    {
                        tables_of(from, &mut tables);
                    }
                    if let Some(selection) = &update.selection {
                        keys_in_expr(selection, &tables, key, &mut inf);
                    }
                }
            }
            Statement::Delete(delete) => {
                inf.write = true;
                if let Some(key) = &config.key {
                    let mut tables = Vec::new();
                    match &delete.from {
                        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => {
                            tables_of(t, &mut tables)
                        }
                    }
                    if let Some(using) = &delete.using {
                        tables_of(using, &mut tables);
                    }
                    if let Some(selection) = &delete.selection {
                        keys_in_expr(selection, &tables, key, &mut inf);
                    }
                }
            }
            // SET, SHOW, COMMIT, DDL, EXPLAIN, COPY, CALL...: the primary.
            _ => inf.write = true,
        }
    }
    Ok(inf)
}

/// Whether a query writes: locks rows, modifies data (in a CTE), or calls
/// a function not known to only read.
fn query_writes(query: &Query, config: &ParserConfig) -> bool {
    let mut writes = false;
    let _ = visit_statements(query, |s| {
        if matches!(
            s,
            Statement::Insert(_)
                | Statement::Update(_)
                | Statement::Delete(_)
                | Statement::Merge(_)
        ) {
            writes = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if writes || locks(query) {
        return true;
    }
    let _ = visit_expressions(query, |e| {
        if let Expr::Function(f) = e {
            let name = last_part(&f.name).unwrap_or_default();
            if !config.reads(&name) {
                writes = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    writes
}

/// FOR UPDATE / FOR SHARE anywhere in the query.
fn locks(query: &Query) -> bool {
    if !query.locks.is_empty() {
        return true;
    }
    fn body(b: &SetExpr) -> bool {
        match b {
            SetExpr::Query(q) => locks(q),
            SetExpr::SetOperation { left, right, .. } => body(left) || body(right),
            _ => false,
        }
    }
    body(&query.body)
        || query
            .with
            .as_ref()
            .is_some_and(|w| w.cte_tables.iter().any(|c| locks(&c.query)))
}

fn ident(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

fn last_part(name: &ObjectName) -> Option<String> {
    match name.0.last()? {
        ObjectNamePart::Identifier(i) => Some(ident(i)),
        _ => None,
    }
}

fn tables_of(from: &[TableWithJoins], out: &mut Vec<String>) {
    for t in from {
        if let TableFactor::Table { name, .. } = &t.relation {
            out.extend(last_part(name));
        }
        for j in &t.joins {
            if let TableFactor::Table { name, .. } = &j.relation {
                out.extend(last_part(name));
            }
        }
    }
}

fn join_conditions(from: &[TableWithJoins]) -> Vec<&Expr> {
    let mut out = Vec::new();
    for t in from {
        for j in &t.joins {
            if let JoinOperator::Inner(JoinConstraint::On(e))
            | JoinOperator::Join(JoinConstraint::On(e)) = &j.join_operator
            {
                out.push(e);
            }
        }
    }
    out
}

fn keys_in_query(query: &Query, key: &ShardingKey, inf: &mut Inference) {
    fn body(b: &SetExpr, key: &ShardingKey, inf: &mut Inference) {
        match b {
            SetExpr::Select(select) => {
                let mut tables = Vec::new();
                tables_of(&select.from, &mut tables);
                if let Some(selection) = &select.selection {
                    keys_in_expr(selection, &tables, key, inf);
                }
                for on in join_conditions(&select.from) {
                    keys_in_expr(on, &tables, key, inf);
                }
            }
            SetExpr::Query(q) => keys_in_query(q, key, inf),
            _ => {}
        }
    }
    body(&query.body, key, inf);
}

fn keys_in_insert(
    table: &str,
    columns: &[ObjectName],
    source: &Query,
    key: &ShardingKey,
    inf: &mut Inference,
) {
    if key.table.as_deref().is_some_and(|t| t != table) {
        return;
    }
    let Some(at) = columns
        .iter()
        .position(|c| last_part(c).as_deref() == Some(key.column.as_str()))
    else {
        return;
    };
    match source.body.as_ref() {
        SetExpr::Values(values) => {
            for row in &values.rows {
                if let Some(e) = row.content.get(at) {
                    value_of(e, inf);
                }
            }
        }
        SetExpr::Select(_) | SetExpr::Query(_) => keys_in_query(source, key, inf),
        _ => {}
    }
}

fn value_of(e: &Expr, inf: &mut Inference) {
    if let Expr::UnaryOp {
        op: sqlparser::ast::UnaryOperator::Minus,
        expr,
    } = e
    {
        if let Expr::Value(v) = expr.as_ref() {
            if let Value::Number(n, _) = &v.value {
                if let Ok(k) = format!("-{n}").parse::<i64>() {
                    inf.keys.push(k);
                }
            }
        }
        return;
    }
    if let Expr::Value(v) = e {
        match &v.value {
            Value::Number(n, _) | Value::SingleQuotedString(n) => {
                if let Ok(k) = n.parse::<i64>() {
                    inf.keys.push(k);
                }
            }
            Value::Placeholder(p) => {
                if let Some(n) = p.strip_prefix('$').and_then(|n| n.parse().ok()) {
                    inf.placeholders.push(n);
                }
            }
            _ => {}
        }
    }
}

/// PgCat's reading of a WHERE or ON expression: `key = value` terms
/// joined by AND or OR.
fn keys_in_expr(expr: &Expr, tables: &[String], key: &ShardingKey, inf: &mut Inference) {
    match expr {
        Expr::Nested(e) => keys_in_expr(e, tables, key, inf),
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And | BinaryOperator::Or => {
                keys_in_expr(left, tables, key, inf);
                keys_in_expr(right, tables, key, inf);
            }
            BinaryOperator::Eq => {
                let is_key = |e: &Expr| match e {
                    Expr::Identifier(c) => {
                        ident(c) == key.column
                            && match &key.table {
                                None => true,
                                Some(t) => tables.len() == 1 && &tables[0] == t,
                            }
                    }
                    Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                        let n = parts.len();
                        ident(&parts[n - 1]) == key.column
                            && key
                                .table
                                .as_ref()
                                .is_none_or(|t| &ident(&parts[n - 2]) == t)
                    }
                    _ => false,
                };
                if is_key(left) {
                    value_of(right, inf);
                } else if is_key(right) {
                    value_of(left, inf);
                }
            }
            _ => {}
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(key: Option<&str>) -> ParserConfig {
        ParserConfig {
            key: key.and_then(ShardingKey::parse),
            ..Default::default()
        }
    }

    fn writes(sql: &str) -> bool {
        infer(sql, &cfg(None)).unwrap().write
    }

    #[test]
    fn the_read_function_list_is_sorted() {
        assert!(READ_FUNCTIONS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn reads_and_writes() {
        for read in [
            "SELECT 1",
            "SELECT * FROM t WHERE a = 1",
            "SELECT count(*), max(a) FROM t",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SELECT 1 UNION SELECT 2",
            "BEGIN READ ONLY",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
            "VALUES (1), (2)",
        ] {
            assert!(!writes(read), "{read}");
        }
        for write in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT nextval('s')",
            "SELECT my_function(1)",
            "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
            "BEGIN",
            "BEGIN; SELECT 1",
            "SELECT 1; INSERT INTO t VALUES (1); SELECT 2",
            "CREATE TABLE t (a int)",
            "SET search_path = x",
            "SHOW work_mem",
            "COPY t FROM STDIN",
            "",
        ] {
            assert!(writes(write), "{write}");
        }
        assert!(infer("SELEC 1", &cfg(None)).is_err());
        let all = ParserConfig {
            all_functions_read: true,
            ..Default::default()
        };
        assert!(!infer("SELECT my_function(1)", &all).unwrap().write);
    }

    #[test]
    fn sharding_keys_as_pgcat_reads_them() {
        let keys = |key: &str, sql: &str| {
            let i = infer(sql, &cfg(Some(key))).unwrap();
            (i.keys, i.placeholders, i.key_error)
        };
        assert_eq!(
            keys("data.id", "SELECT * FROM data WHERE id = 5").0,
            vec![5]
        );
        assert_eq!(
            keys("data.id", "SELECT a FROM public.data WHERE id = 6").0,
            vec![6]
        );
        assert_eq!(
            keys(
                "data.id",
                "SELECT * FROM \"public\".\"data\" WHERE \"id\" = 6"
            )
            .0,
            vec![6]
        );
        assert_eq!(
            keys(
                "data.id",
                "SELECT * FROM t2 INNER JOIN data ON id = 6 AND data.id = t2.data_id"
            )
            .0,
            Vec::<i64>::new(),
            "ambiguous: two tables, unqualified column"
        );
        assert_eq!(
            keys(
                "*.w_id",
                "SELECT no_o_id FROM new_order WHERE no_d_id = 7 AND w_id = 5 AND no_o_id > 3"
            )
            .0,
            vec![5]
        );
        assert_eq!(
            keys(
                "*.w_id",
                "INSERT INTO new_order (no_o_id, no_d_id, w_id) VALUES (3, 3, 5)"
            )
            .0,
            vec![5]
        );
        assert_eq!(
            keys("data.id", "INSERT INTO data (id, v) VALUES ($1, $2)").1,
            vec![1]
        );
        assert_eq!(
            keys("data.id", "SELECT * FROM data WHERE id = $1").1,
            vec![1]
        );
        assert_eq!(keys("data.id", "DELETE FROM data WHERE id = 9").0, vec![9]);
        assert_eq!(
            keys("data.id", "SELECT * FROM data WHERE id = -9").0,
            vec![-9]
        );
        assert_eq!(
            keys("data.id", "SELECT * FROM data WHERE id = '12'").0,
            vec![12]
        );
        assert_eq!(
            keys("data.id", "UPDATE data SET v = 1 WHERE id = 9").0,
            vec![9]
        );
        assert_eq!(
            keys("*.w_id", "UPDATE orders SET w_id = 3 WHERE w_id = 5")
                .2
                .as_deref(),
            Some("Sharding key cannot be updated.")
        );
        assert!(keys("*.w_id", "SELECT i_price FROM item WHERE i_id = 3")
            .0
            .is_empty());
        assert_eq!(ShardingKey::parse("*.a").unwrap().table, None);
        assert_eq!(ShardingKey::parse("a"), None);
    }
}
