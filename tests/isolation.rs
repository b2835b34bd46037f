//! Transaction pooling that isolates clients: with a pool of one server
//! connection shared by several clients, each client's session state
//! (settings by every route, startup options, its unnamed and named
//! statements) is its own, on every transaction, and nothing of one
//! client reaches another. Everything runs against a real PostgreSQL.

mod support;

use support::wire::{without_status, Reply, Wire};
use support::*;

struct Setup {
    db: TestDb,
    proxy: TestProxy,
}

/// A database with schemas `x` and `tenant_x` and a role `<db>_r1` the
/// test user may SET ROLE to, behind a transaction pool of `size`.
async fn setup(size: u32, pool_extra: &str) -> Setup {
    let pg = PgCluster::shared();
    let db = pg.create_db("md5");
    pg.psql_super(
        &db.name,
        &format!(
            "CREATE SCHEMA x AUTHORIZATION {u}; CREATE SCHEMA tenant_x AUTHORIZATION {u}; \
             CREATE ROLE {u}_r1 NOLOGIN; GRANT {u}_r1 TO {u};",
            u = db.user
        ),
    );
    let mut spec = PoolSpec::new(&db);
    spec.pool_size = size;
    spec.auth_type = "md5";
    spec.pool_extra = Box::leak(pool_extra.to_string().into_boxed_str());
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    Setup { db, proxy }
}

impl Setup {
    async fn client(&self) -> Wire {
        self.client_with(&[]).await
    }

    async fn client_with(&self, extra: &[(&str, &str)]) -> Wire {
        Wire::connect(
            "127.0.0.1",
            self.proxy.port,
            &self.db.user,
            &self.db.password,
            &self.db.name,
            extra,
        )
        .await
        .unwrap_or_else(|e| panic!("login through pgcat: {e:?}"))
    }

    async fn stop(self) {
        self.proxy.stop().await;
    }
}

/// A statement run through the extended protocol, as JDBC, pgx and
/// Npgsql send every statement: Parse/Bind/Execute/Sync, unnamed.
async fn extended(w: &mut Wire, sql: &str) -> Vec<Reply> {
    w.parse("", sql, &[])
        .bind("", "", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap()
}

fn error_code(replies: &[Reply]) -> Option<String> {
    replies.iter().find_map(|r| match r {
        Reply::Error { code, .. } => Some(code.clone()),
        _ => None,
    })
}

fn rows(replies: &[Reply]) -> Vec<Option<String>> {
    replies
        .iter()
        .filter_map(|r| match r {
            Reply::Row(cols) => Some(cols[0].clone()),
            _ => None,
        })
        .collect()
}

const DEFAULT_PATH: &str = "\"$user\", public";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_through_the_extended_protocol_stays_with_its_client() {
    let s = setup(1, "").await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    let r = extended(&mut a, "SET search_path TO x").await;
    assert!(r.contains(&Reply::Complete("SET".into())), "{r:?}");
    // A timeout of 1 ms on A: B's queries are not cancelled.
    let r = extended(&mut a, "SET statement_timeout = 1").await;
    assert_eq!(error_code(&r), None);
    for _ in 0..3 {
        assert_eq!(b.value("SHOW search_path").await, DEFAULT_PATH);
        assert_eq!(b.value("SHOW statement_timeout").await, "0");
        b.simple("SELECT pg_sleep(0.05)")
            .await
            .expect("B's query is not cancelled by A's statement_timeout");
    }
    // At 1 ms A's own statements may be cancelled too (as on a direct
    // connection); A moves to a timeout it can work with.
    let mut tries = 0;
    while error_code(&extended(&mut a, "SET statement_timeout = '150ms'").await).is_some() {
        tries += 1;
        assert!(tries < 100, "A could not change its timeout");
    }
    // A keeps both, transaction after transaction.
    for _ in 0..3 {
        assert_eq!(a.value("SHOW search_path").await, "x");
        assert_eq!(a.value("SHOW statement_timeout").await, "150ms");
        assert_eq!(b.value("SHOW statement_timeout").await, "0");
    }
    let err = a.simple("SELECT pg_sleep(0.5)").await.unwrap_err();
    assert_eq!(err.0, "57014", "A's own timeout applies to A: {err:?}");
    b.simple("SELECT pg_sleep(0.5)").await.expect("not B's");
    // A brand new client after A left sees nothing either.
    a.terminate().await;
    let mut d = s.client().await;
    assert_eq!(d.value("SHOW search_path").await, DEFAULT_PATH);
    assert_eq!(d.value("SHOW statement_timeout").await, "0");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_of_a_multi_statement_query_and_set_config_count() {
    let s = setup(1, "").await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.simple("SELECT 1; SET work_mem = '77kB'").await.unwrap();
    assert_eq!(b.value("SHOW work_mem").await, "4MB");
    assert_eq!(a.value("SHOW work_mem").await, "77kB");
    a.simple("SELECT set_config('work_mem', '78kB', false)")
        .await
        .unwrap();
    assert_eq!(b.value("SHOW work_mem").await, "4MB");
    assert_eq!(a.value("SHOW work_mem").await, "78kB");
    // set_config through the extended protocol, and a custom setting,
    // which PostgreSQL does not list in pg_settings.
    extended(&mut a, "SELECT set_config('app.tenant', '42', false)").await;
    a.simple("SET app.region = 'eu'").await.unwrap();
    assert_eq!(
        b.value("SELECT coalesce(current_setting('app.tenant', true), '')")
            .await,
        ""
    );
    assert_eq!(a.value("SELECT current_setting('app.tenant')").await, "42");
    assert_eq!(a.value("SELECT current_setting('app.region')").await, "eu");
    // set_config(..., true) lasts only for its transaction.
    a.simple("BEGIN; SELECT set_config('work_mem', '79kB', true); COMMIT")
        .await
        .unwrap();
    assert_eq!(a.value("SHOW work_mem").await, "78kB");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_rollback_savepoints_and_reset_behave_as_postgres() {
    let s = setup(1, "").await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    let r = a
        .simple("BEGIN; SET LOCAL work_mem = '1MB'; SHOW work_mem")
        .await
        .unwrap();
    assert_eq!(r, vec![Some("1MB".into())]);
    a.simple("COMMIT").await.unwrap();
    assert_eq!(a.value("SHOW work_mem").await, "4MB");
    a.simple("BEGIN; SET work_mem = '2MB'").await.unwrap();
    a.simple("ROLLBACK").await.unwrap();
    assert_eq!(a.value("SHOW work_mem").await, "4MB");
    a.simple("BEGIN; SET work_mem = '3MB'; COMMIT")
        .await
        .unwrap();
    assert_eq!(a.value("SHOW work_mem").await, "3MB");
    a.simple("BEGIN; SAVEPOINT s; SET work_mem = '5MB'; ROLLBACK TO s; COMMIT")
        .await
        .unwrap();
    assert_eq!(a.value("SHOW work_mem").await, "3MB");
    assert_eq!(b.value("SHOW work_mem").await, "4MB");
    // An error inside a transaction undoes its SETs too.
    let r = a
        .query("BEGIN; SET work_mem = '6MB'; SELECT 1/0")
        .round_trip()
        .await
        .unwrap();
    assert_eq!(error_code(&r).as_deref(), Some("22012"));
    a.simple("ROLLBACK").await.unwrap();
    assert_eq!(a.value("SHOW work_mem").await, "3MB");
    a.simple("SET lock_timeout TO DEFAULT").await.unwrap();
    a.simple("SET lock_timeout = '7s'").await.unwrap();
    a.simple("RESET work_mem").await.unwrap();
    assert_eq!(a.value("SHOW work_mem").await, "4MB");
    assert_eq!(a.value("SHOW lock_timeout").await, "7s");
    assert_eq!(b.value("SHOW lock_timeout").await, "0");
    a.simple("RESET ALL").await.unwrap();
    assert_eq!(a.value("SHOW lock_timeout").await, "0");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_and_parameters_are_the_clients_settings() {
    let s = setup(1, "").await;
    let mut c = s
        .client_with(&[
            (
                "options",
                "-c search_path=tenant_x --work-mem=64kB -c app.tenant=7",
            ),
            ("application_name", "tenant-app"),
            ("lock_timeout", "9s"),
        ])
        .await;
    assert_eq!(
        c.reported.get("application_name").map(String::as_str),
        Some("tenant-app")
    );
    let mut b = s.client().await;
    for _ in 0..3 {
        assert_eq!(c.value("SHOW search_path").await, "tenant_x");
        assert_eq!(c.value("SHOW work_mem").await, "64kB");
        assert_eq!(c.value("SHOW lock_timeout").await, "9s");
        assert_eq!(c.value("SELECT current_setting('app.tenant')").await, "7");
        assert_eq!(c.value("SHOW application_name").await, "tenant-app");
        assert_eq!(b.value("SHOW search_path").await, DEFAULT_PATH);
        assert_eq!(b.value("SHOW work_mem").await, "4MB");
        assert_ne!(b.value("SHOW application_name").await, "tenant-app");
    }
    // A RESET goes back to the startup value, as on a direct connection.
    c.simple("SET work_mem = '1MB'").await.unwrap();
    assert_eq!(c.value("SHOW work_mem").await, "1MB");
    c.simple("RESET work_mem").await.unwrap();
    assert_eq!(c.value("SHOW work_mem").await, "64kB");
    // What PostgreSQL refuses is refused at login, naming the parameter.
    for (extra, code, needle) in [
        (("options", "-c work_mem=lots"), "22023", "work_mem"),
        (("no_such_setting", "1"), "42704", "no_such_setting"),
        (("options", "-B 100"), "0A000", "-B"),
    ] {
        let err = Wire::connect(
            "127.0.0.1",
            s.proxy.port,
            &s.db.user,
            &s.db.password,
            &s.db.name,
            &[extra],
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{extra:?} was accepted"));
        match err {
            support::wire::LoginError::Refused { code: c, message } => {
                assert_eq!(c, code, "{message}");
                assert!(message.contains(needle), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_startup_parameters_drops_them() {
    let pg = PgCluster::shared();
    let db = pg.create_db("md5");
    let mut spec = PoolSpec::new(&db);
    spec.pool_size = 1;
    spec.auth_type = "md5";
    let text = config_text(
        "ignore_startup_parameters = \"extra_float_digits, options\"\ntrack_extra_parameters = \"IntervalStyle\"",
        &[spec],
    );
    let proxy = TestProxy::start(&text).await;
    let mut w = Wire::connect(
        "127.0.0.1",
        proxy.port,
        &db.user,
        &db.password,
        &db.name,
        &[("extra_float_digits", "2"), ("options", "-c work_mem=64kB")],
    )
    .await
    .unwrap();
    assert_eq!(w.value("SHOW extra_float_digits").await, "1");
    assert_eq!(w.value("SHOW work_mem").await, "4MB");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_role_belongs_to_its_client() {
    let s = setup(1, "").await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    let r1 = format!("{}_r1", s.db.user);
    a.simple(&format!("SET ROLE {r1}")).await.unwrap();
    assert_eq!(b.value("SELECT current_user").await, s.db.user);
    assert_eq!(a.value("SELECT current_user").await, r1);
    extended(&mut b, &format!("SET ROLE {r1}")).await;
    b.simple("RESET ROLE").await.unwrap();
    assert_eq!(a.value("SELECT current_user").await, r1);
    assert_eq!(b.value("SELECT current_user").await, s.db.user);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_session_authorization_belongs_to_its_client() {
    let pg = PgCluster::shared();
    let db = pg.create_db("md5");
    // Only a superuser may change the session authorization.
    let su = TestDb {
        user: SUPERUSER.into(),
        password: SUPERUSER_PASSWORD.into(),
        ..db.clone()
    };
    let mut spec = PoolSpec::new(&su);
    spec.pool_size = 1;
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    let connect = || {
        Wire::connect(
            "127.0.0.1",
            proxy.port,
            SUPERUSER,
            SUPERUSER_PASSWORD,
            &db.name,
            &[],
        )
    };
    let mut a = connect().await.unwrap();
    let mut b = connect().await.unwrap();
    a.simple(&format!("SET SESSION AUTHORIZATION {}", db.user))
        .await
        .unwrap();
    assert_eq!(b.value("SELECT session_user").await, SUPERUSER);
    assert_eq!(a.value("SELECT session_user").await, db.user);
    assert_eq!(a.value("SELECT current_user").await, db.user);
    a.simple("RESET SESSION AUTHORIZATION").await.unwrap();
    assert_eq!(a.value("SELECT session_user").await, SUPERUSER);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_is_the_clients_own() {
    unnamed_statement_is_the_clients_own("").await;
}

/// The same when pgcat runs unnamed statements as its own named ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_is_the_clients_own_when_cached() {
    unnamed_statement_is_the_clients_own("cache_unnamed_statements = true").await;
}

async fn unnamed_statement_is_the_clients_own(pool_extra: &str) {
    let s = setup(1, pool_extra).await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    let r = a
        .parse("", "SELECT 'a'", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(r, vec![Reply::ParseComplete, Reply::Ready('I')]);
    // B never parsed one: binding it fails as on a direct connection.
    let r = b
        .bind("", "", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(error_code(&r).as_deref(), Some("26000"), "{r:?}");
    // A binds its own in a later transaction.
    let r = a
        .bind("", "", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![Some("a".into())]);
    // B parses its own; each keeps its own.
    b.parse("", "SELECT 'b'", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    for _ in 0..2 {
        let r = a
            .bind("", "", &[])
            .execute("")
            .sync()
            .round_trip()
            .await
            .unwrap();
        assert_eq!(rows(&r), vec![Some("a".into())]);
        let r = b
            .bind("", "", &[])
            .execute("")
            .sync()
            .round_trip()
            .await
            .unwrap();
        assert_eq!(rows(&r), vec![Some("b".into())]);
    }
    // Describe works across transactions too.
    let r = a.describe_statement("").sync().round_trip().await.unwrap();
    assert!(
        r.contains(&Reply::RowDescription(vec!["?column?".into()])),
        "{r:?}"
    );
    // A simple query drops the unnamed statement, as in PostgreSQL.
    a.simple("SELECT 1").await.unwrap();
    let r = a
        .bind("", "", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(error_code(&r).as_deref(), Some("26000"), "{r:?}");
    // A failed Parse leaves none; one skipped after an earlier error in
    // the pipeline leaves the previous one.
    b.parse("", "SELEC 1", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    let r = b
        .bind("", "", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(error_code(&r).as_deref(), Some("26000"), "{r:?}");
    b.parse("", "SELECT 'c'", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    let r = b
        .parse("", "SELECT 1/0", &[])
        .bind("", "", &[])
        .execute("")
        .parse("", "SELECT 'skipped'", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(error_code(&r).as_deref(), Some("22012"), "{r:?}");
    let r = b
        .bind("", "", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(
        error_code(&r).as_deref(),
        Some("22012"),
        "the 1/0 statement stays: {r:?}"
    );
    s.stop().await;
}

/// `cache_unnamed_statements`: the same unnamed statement from two
/// clients is one statement on the server, parsed once and executed by
/// both; each client still sees exactly what PostgreSQL would tell it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_unnamed_statements_are_parsed_once_per_server() {
    const SQL: &str = "SELECT $1::int + 41";
    let count_sql =
        "SELECT count(*)::text || ' ' || coalesce(sum(generic_plans + custom_plans), 0)::text \
         FROM pg_prepared_statements WHERE statement = 'SELECT $1::int + 41'";
    for (extra, expected) in [("", "0 0"), ("cache_unnamed_statements = true", "1 3")] {
        let s = setup(1, extra).await;
        let mut a = s.client().await;
        let mut b = s.client().await;
        let mut direct = Wire::connect(
            &s.db.host,
            s.db.port,
            &s.db.user,
            &s.db.password,
            &s.db.name,
            &[],
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        for (who, param) in [(0, "1"), (1, "2"), (0, "3"), (2, "1")] {
            let w = match who {
                0 => &mut a,
                1 => &mut b,
                _ => &mut direct,
            };
            let r = w
                .parse("", SQL, &[])
                .bind("", "", &[Some(param)])
                .describe_portal("")
                .execute("")
                .sync()
                .round_trip()
                .await
                .unwrap();
            seen.push(without_status(&r));
        }
        let direct_replies = seen.pop().unwrap();
        assert_eq!(seen[0], direct_replies, "{extra}: the first Parse");
        assert_eq!(
            rows(&seen[1]),
            vec![Some("43".into())],
            "{extra}: {:?}",
            seen[1]
        );
        assert_eq!(
            rows(&seen[2]),
            vec![Some("44".into())],
            "{extra}: {:?}",
            seen[2]
        );
        // Describe of the unnamed statement answers as PostgreSQL does.
        let mine = a.describe_statement("").sync().round_trip().await.unwrap();
        let theirs = direct
            .describe_statement("")
            .sync()
            .round_trip()
            .await
            .unwrap();
        assert_eq!(without_status(&mine), without_status(&theirs), "{extra}");
        // The pool's one server connection: one statement, executed three
        // times, when pgcat caches; none of pgcat's otherwise.
        assert_eq!(a.value(count_sql).await, expected, "{extra}");
        // A Close of the unnamed statement: it is gone for the client.
        let r = b
            .close_statement("")
            .bind("", "", &[Some("1")])
            .execute("")
            .sync()
            .round_trip()
            .await
            .unwrap();
        assert_eq!(error_code(&r).as_deref(), Some("26000"), "{extra}: {r:?}");
        direct.terminate().await;
        s.stop().await;
    }
}

/// `cache_unnamed_statements`, after a table a cached statement reads
/// gains a column: PostgreSQL refuses to run the statement it holds
/// (`cached plan must not change result type`, 0A000) once per server
/// connection; pgcat then prepares it again, and the next run shows the
/// new column. Without the cache the first run already does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_unnamed_statement_after_its_table_changed() {
    for (extra, first_after) in [
        ("", None),
        ("cache_unnamed_statements = true", Some("0A000")),
    ] {
        let s = setup(1, extra).await;
        let mut a = s.client().await;
        a.simple("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let r = extended(&mut a, "SELECT * FROM t").await;
        assert_eq!(rows(&r), vec![Some("1".into())], "{extra}: {r:?}");
        a.simple("ALTER TABLE t ADD COLUMN y int DEFAULT 2")
            .await
            .unwrap();
        let r = extended(&mut a, "SELECT * FROM t").await;
        assert_eq!(error_code(&r).as_deref(), first_after, "{extra}: {r:?}");
        let r = extended(&mut a, "SELECT * FROM t").await;
        assert!(
            r.contains(&Reply::Row(vec![Some("1".into()), Some("2".into())])),
            "{extra}: {r:?}"
        );
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_across_transactions_and_clients() {
    let s = setup(1, "").await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.parse("s1", "SELECT 1", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    b.parse("s1", "SELECT 2", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    for _ in 0..2 {
        let r = a
            .bind("", "s1", &[])
            .execute("")
            .sync()
            .round_trip()
            .await
            .unwrap();
        assert_eq!(rows(&r), vec![Some("1".into())]);
        let r = b
            .bind("", "s1", &[])
            .execute("")
            .sync()
            .round_trip()
            .await
            .unwrap();
        assert_eq!(rows(&r), vec![Some("2".into())]);
    }
    // Same name again: PostgreSQL's error, and the old one stays.
    let r = a
        .parse("s1", "SELECT 3", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(
        r[0],
        Reply::Error {
            code: "42P05".into(),
            message: "prepared statement \"s1\" already exists".into()
        }
    );
    let r = a
        .bind("", "s1", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![Some("1".into())]);
    // In a pipeline, the duplicate fails where it stands: what came
    // before it stays, what comes after is skipped.
    let r = a
        .parse("before", "SELECT 5", &[])
        .parse("s1", "SELECT 4", &[])
        .parse("after", "SELECT 6", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[0], Reply::ParseComplete);
    assert_eq!(error_code(&r).as_deref(), Some("42P05"));
    let r = a
        .bind("", "before", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![Some("5".into())]);
    let r = a
        .bind("", "after", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(error_code(&r).as_deref(), Some("26000"), "{r:?}");
    // Close, then the name is gone for A only.
    let r = a.close_statement("s1").sync().round_trip().await.unwrap();
    assert_eq!(r, vec![Reply::CloseComplete, Reply::Ready('I')]);
    let r = a
        .bind("", "s1", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(
        r[0],
        Reply::Error {
            code: "26000".into(),
            message: "prepared statement \"s1\" does not exist".into()
        }
    );
    let r = b
        .bind("", "s1", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![Some("2".into())]);
    // Same text, parameter types differ: different statements.
    a.parse("t_int", "SELECT $1", &[23])
        .sync()
        .round_trip()
        .await
        .unwrap();
    a.parse("t_text", "SELECT $1", &[25])
        .sync()
        .round_trip()
        .await
        .unwrap();
    let r = a
        .describe_statement("t_int")
        .describe_statement("t_text")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(error_code(&r), None, "{r:?}");
    let r = a
        .bind("", "t_int", &[Some("x")])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(
        error_code(&r).as_deref(),
        Some("22P02"),
        "int parameter: {r:?}"
    );
    let r = a
        .bind("", "t_text", &[Some("x")])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![Some("x".into())]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_session_state_is_cleaned_before_another_client() {
    let s = setup(1, "").await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.simple("LISTEN ch").await.unwrap();
    assert_eq!(
        b.value("SELECT count(*) FROM pg_listening_channels()")
            .await,
        "0"
    );
    a.simple("SELECT pg_advisory_lock(42)").await.unwrap();
    assert_eq!(
        b.value(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        .await,
        "0"
    );
    a.simple("CREATE TEMP TABLE tmp_a (v int)").await.unwrap();
    assert_eq!(
        b.value("SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()")
            .await,
        "0"
    );
    a.simple("BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT")
        .await
        .unwrap();
    assert_eq!(b.value("SELECT count(*) FROM pg_cursors").await, "0");
    a.simple("PREPARE p AS SELECT 1").await.unwrap();
    assert_eq!(
        b.value("SELECT count(*) FROM pg_prepared_statements WHERE from_sql")
            .await,
        "0"
    );
    // The same through the extended protocol.
    extended(&mut a, "LISTEN ch2").await;
    extended(&mut a, "SELECT pg_advisory_lock(43)").await;
    assert_eq!(
        b.value("SELECT count(*) FROM pg_listening_channels()")
            .await,
        "0"
    );
    assert_eq!(
        b.value(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        .await,
        "0"
    );
    s.stop().await;
}

/// The number of pgcat's statements on the server a client is on.
async fn pgcat_statements(w: &mut Wire) -> usize {
    w.value("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgcat\\_%'")
        .await
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_keep_pgcats_record_true() {
    let s = setup(1, "").await;
    let mut a = s.client().await;
    a.parse("s1", "SELECT 11", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    let bind_s1 = |w: &mut Wire| {
        w.bind("", "s1", &[]).execute("").sync();
    };
    bind_s1(&mut a);
    assert_eq!(
        rows(&a.round_trip().await.unwrap()),
        vec![Some("11".into())]
    );
    assert_eq!(pgcat_statements(&mut a).await, 1);
    for drop_them in ["DEALLOCATE ALL", "DISCARD ALL"] {
        a.simple(drop_them).await.unwrap();
        assert_eq!(pgcat_statements(&mut a).await, 0, "after {drop_them}");
        // The client's statements are gone too, as on a direct connection.
        bind_s1(&mut a);
        let r = a.round_trip().await.unwrap();
        assert_eq!(error_code(&r).as_deref(), Some("26000"), "{r:?}");
        a.parse("s1", "SELECT 11", &[])
            .sync()
            .round_trip()
            .await
            .unwrap();
        bind_s1(&mut a);
        let r = a.round_trip().await.unwrap();
        assert_eq!(
            rows(&r),
            vec![Some("11".into())],
            "after {drop_them}: {r:?}"
        );
    }
    // DEALLOCATE of the client's own name is answered by pgcat, which
    // keeps the statement on the server for others.
    a.simple("DEALLOCATE s1").await.unwrap();
    bind_s1(&mut a);
    let r = a.round_trip().await.unwrap();
    assert_eq!(error_code(&r).as_deref(), Some("26000"), "{r:?}");
    assert_eq!(pgcat_statements(&mut a).await, 1);
    a.parse("s1", "SELECT 11", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    // DEALLOCATE of pgcat's own name, found the way a curious client
    // would.
    let name = a
        .value("SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgcat\\_%'")
        .await;
    a.simple(&format!("DEALLOCATE \"{name}\"")).await.unwrap();
    bind_s1(&mut a);
    assert_eq!(
        rows(&a.round_trip().await.unwrap()),
        vec![Some("11".into())]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_drifted_is_repaired() {
    let s = setup(1, "").await;
    let pg = PgCluster::shared();
    // Functions change statements where no command tag says so.
    pg.psql_super(
        &s.db.name,
        &format!(
            "CREATE FUNCTION drop_all() RETURNS int LANGUAGE plpgsql AS \
             $$BEGIN EXECUTE 'DEALLOCATE ALL'; RETURN 1; END$$; \
             CREATE FUNCTION prep(n text) RETURNS int LANGUAGE plpgsql AS \
             $$BEGIN EXECUTE format('PREPARE %I AS SELECT 99', n); RETURN 1; END$$; \
             GRANT EXECUTE ON FUNCTION drop_all(), prep(text) TO {};",
            s.db.user
        ),
    );
    let mut a = s.client().await;
    a.parse("s1", "SELECT 12", &[])
        .sync()
        .round_trip()
        .await
        .unwrap();
    a.simple("SELECT drop_all()").await.unwrap();
    // pgcat believes the server has it: the first Bind meets 26000 and
    // pgcat learns; from then on it works again.
    let mut ok = 0;
    for _ in 0..3 {
        let r = a
            .bind("", "s1", &[])
            .execute("")
            .sync()
            .round_trip()
            .await
            .unwrap();
        if rows(&r) == vec![Some("12".into())] {
            ok += 1;
        } else {
            assert_eq!(error_code(&r).as_deref(), Some("26000"), "{r:?}");
        }
    }
    assert!(ok >= 2, "repaired after at most one failure");
    // The other way: the server has a statement under pgcat's name that
    // pgcat does not know of (a function dropped pgcat's and prepared
    // something else under its name). pgcat's Parse meets 42P05; pgcat
    // closes the intruder and prepares its own, so what runs is s1's.
    let name = a
        .value("SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgcat\\_%'")
        .await;
    a.simple(&format!(
        "BEGIN; DEALLOCATE \"{name}\"; SELECT prep('{name}'); COMMIT"
    ))
    .await
    .unwrap();
    let mut ok = 0;
    for _ in 0..3 {
        let r = a
            .bind("", "s1", &[])
            .execute("")
            .sync()
            .round_trip()
            .await
            .unwrap();
        if error_code(&r).is_none() {
            assert_eq!(rows(&r), vec![Some("12".into())], "s1's statement runs");
            ok += 1;
        } else {
            assert_eq!(error_code(&r).as_deref(), Some("42P05"), "{r:?}");
        }
    }
    assert!(ok >= 2, "repaired after at most one failure");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_pipeline_with_injected_parse_and_eviction_keeps_the_record() {
    // A cache of two statements per server connection: a third evicts.
    let s = setup(1, "prepared_statements_cache_size = 2").await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    for (name, v) in [("s1", 1), ("s2", 2), ("s3", 3)] {
        a.parse(name, &format!("SELECT {v}"), &[])
            .sync()
            .round_trip()
            .await
            .unwrap();
    }
    // s1 was evicted on the server: binding it injects a Parse and an
    // eviction Close; an error later in the same pipeline skips the rest.
    let r = a
        .bind("", "s1", &[])
        .execute("")
        .parse("", "SELECT 1/0", &[])
        .bind("", "", &[])
        .execute("")
        .bind("", "s2", &[])
        .execute("")
        .sync()
        .round_trip()
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![Some("1".into())], "{r:?}");
    assert_eq!(error_code(&r).as_deref(), Some("22012"));
    // One ParseComplete, for the client's own Parse: the injected ones
    // are hidden.
    let parses = r.iter().filter(|x| **x == Reply::ParseComplete).count();
    assert_eq!(parses, 1, "{r:?}");
    b.simple("SELECT 1").await.unwrap();
    for (name, v) in [("s1", "1"), ("s2", "2"), ("s3", "3"), ("s1", "1")] {
        let r = a
            .bind("", name, &[])
            .execute("")
            .sync()
            .round_trip()
            .await
            .unwrap();
        assert_eq!(rows(&r), vec![Some(v.into())], "{name}: {r:?}");
    }
    assert!(pgcat_statements(&mut a).await <= 2);
    s.stop().await;
}
