//! sqlx through pgcat: `scenario URL MODE`. Prints `PASS check` or
//! `FAIL check: reason` per check, like the other driver scenarios.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, Executor, Row};

type Res = Result<(), String>;

const DEFAULT_PATH: &str = "\"$user\", public";

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

fn expect<T: PartialEq + std::fmt::Debug>(got: T, want: T, what: &str) -> Res {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

async fn show(c: &mut PgConnection, what: &str) -> Result<String, String> {
    // sqlx sends every query through the extended protocol, prepared.
    let row = sqlx::query(&format!("SELECT current_setting('{what}')"))
        .fetch_one(&mut *c)
        .await
        .map_err(e)?;
    Ok(row.get::<String, _>(0))
}

struct Ctx {
    opts: PgConnectOptions,
    mode: String,
}

impl Ctx {
    async fn connect(&self) -> Result<PgConnection, String> {
        PgConnection::connect_with(&self.opts).await.map_err(e)
    }
}

async fn basic(x: &Ctx) -> Res {
    let mut c = x.connect().await?;
    let rows = sqlx::query("SELECT g FROM generate_series(1, 5) g")
        .fetch_all(&mut c)
        .await
        .map_err(e)?;
    expect(rows.len(), 5, "rows")?;
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut c)
        .await
        .map_err(e)?;
    expect(user.as_str(), "app", "current_user")
}

async fn params(x: &Ctx) -> Res {
    let mut c = x.connect().await?;
    let row = sqlx::query("SELECT $1::int4 + 1, $2::text || '!', $3::float8 * 2, $4::bool, $5::int8, $6::bytea")
        .bind(41i32)
        .bind("héllo")
        .bind(1.25f64)
        .bind(true)
        .bind(i64::MAX)
        .bind(vec![0u8, 255])
        .fetch_one(&mut c)
        .await
        .map_err(e)?;
    expect(row.get::<i32, _>(0), 42, "int4")?;
    expect(row.get::<String, _>(1), "héllo!".into(), "text")?;
    expect(row.get::<f64, _>(2), 2.5, "float8")?;
    expect(row.get::<bool, _>(3), true, "bool")?;
    expect(row.get::<i64, _>(4), i64::MAX, "int8")?;
    expect(row.get::<Vec<u8>, _>(5), vec![0u8, 255], "bytea")?;
    let null: Option<i32> = sqlx::query_scalar("SELECT $1::int4")
        .bind(None::<i32>)
        .fetch_one(&mut c)
        .await
        .map_err(e)?;
    expect(null, None, "NULL")
}

async fn transactions(x: &Ctx) -> Res {
    let mut c = x.connect().await?;
    c.execute("CREATE TABLE IF NOT EXISTS sqlx_items (id int, note text)")
        .await
        .map_err(e)?;
    c.execute("DELETE FROM sqlx_items").await.map_err(e)?;
    let mut t = c.begin().await.map_err(e)?;
    sqlx::query("INSERT INTO sqlx_items VALUES (1, 'kept')")
        .execute(&mut *t)
        .await
        .map_err(e)?;
    t.commit().await.map_err(e)?;
    let mut t = c.begin().await.map_err(e)?;
    sqlx::query("INSERT INTO sqlx_items VALUES (2, 'gone')")
        .execute(&mut *t)
        .await
        .map_err(e)?;
    t.rollback().await.map_err(e)?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlx_items")
        .fetch_one(&mut c)
        .await
        .map_err(e)?;
    expect(n, 1, "rows after commit and rollback")
}

async fn error_recovery(x: &Ctx) -> Res {
    let mut c = x.connect().await?;
    let mut t = c.begin().await.map_err(e)?;
    let err = sqlx::query("SELECT 1/0").execute(&mut *t).await.err();
    expect(err.is_some(), true, "division by zero fails")?;
    let err = sqlx::query("SELECT 1").execute(&mut *t).await.err().map(e);
    expect(
        err.map(|m| m.contains("current transaction is aborted")),
        Some(true),
        "aborted transaction",
    )?;
    t.rollback().await.map_err(e)?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut c).await.map_err(e)?;
    expect(one, 1, "after rollback")
}

async fn prepared(x: &Ctx) -> Res {
    let mut c = x.connect().await?;
    // sqlx caches the prepared statement on the connection and binds it
    // again and again: in transaction mode on whichever server it gets.
    for i in 0..50i32 {
        let v: i32 = sqlx::query_scalar("SELECT $1::int * 2")
            .bind(i)
            .fetch_one(&mut c)
            .await
            .map_err(e)?;
        expect(v, i * 2, "prepared run")?;
    }
    Ok(())
}

async fn batch(x: &Ctx) -> Res {
    let mut c = x.connect().await?;
    c.execute("CREATE TABLE IF NOT EXISTS sqlx_batch (id int)")
        .await
        .map_err(e)?;
    c.execute("DELETE FROM sqlx_batch").await.map_err(e)?;
    let mut t = c.begin().await.map_err(e)?;
    for i in 0..100i32 {
        sqlx::query("INSERT INTO sqlx_batch VALUES ($1)")
            .bind(i)
            .execute(&mut *t)
            .await
            .map_err(e)?;
    }
    t.commit().await.map_err(e)?;
    // And 100 statements in one simple-protocol string.
    let many: String = (0..100).map(|i| format!("INSERT INTO sqlx_batch VALUES ({});", 100 + i)).collect();
    c.execute(many.as_str()).await.map_err(e)?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlx_batch")
        .fetch_one(&mut c)
        .await
        .map_err(e)?;
    expect(n, 200, "rows")
}

async fn copy(x: &Ctx) -> Res {
    let mut c = x.connect().await?;
    c.execute("CREATE TABLE IF NOT EXISTS sqlx_copy (id int, note text)")
        .await
        .map_err(e)?;
    c.execute("DELETE FROM sqlx_copy").await.map_err(e)?;
    let mut sink = c
        .copy_in_raw("COPY sqlx_copy FROM STDIN")
        .await
        .map_err(e)?;
    let data: String = (0..1000).map(|i| format!("{i}\trow {i}\n")).collect();
    sink.send(data.as_bytes()).await.map_err(e)?;
    let rows = sink.finish().await.map_err(e)?;
    expect(rows, 1000, "copied rows")?;
    use futures_util::TryStreamExt;
    let out: Vec<_> = c
        .copy_out_raw("COPY sqlx_copy TO STDOUT")
        .await
        .map_err(e)?
        .try_collect()
        .await
        .map_err(e)?;
    let bytes: usize = out.iter().map(|b| b.len()).sum();
    expect(bytes, data.len(), "bytes copied out")
}

async fn concurrency(x: &Ctx) -> Res {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(x.opts.clone())
        .await
        .map_err(e)?;
    let mut tasks = Vec::new();
    for n in 0..4i32 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100i32 {
                let v: i32 = sqlx::query_scalar("SELECT $1::int + $2::int")
                    .bind(n)
                    .bind(i)
                    .fetch_one(&pool)
                    .await
                    .map_err(e)?;
                expect(v, n + i, "sum")?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(e)??;
    }
    pool.close().await;
    Ok(())
}

/// Asks each client twice, so that with a pool of two every client
/// lands on both servers.
async fn rounds(checks: &mut [(&mut PgConnection, &str, &str, &str)]) -> Res {
    for _ in 0..2 {
        for (c, what, want, who) in checks.iter_mut() {
            expect(show(c, what).await?.as_str(), *want, &format!("{who} {what}"))?;
        }
    }
    Ok(())
}

async fn isolation(x: &Ctx) -> Res {
    let mut a = x.connect().await?;
    let mut b = x.connect().await?;
    sqlx::query("SET search_path TO some_schema")
        .execute(&mut a)
        .await
        .map_err(e)?;
    sqlx::query("SET statement_timeout = '1234ms'")
        .execute(&mut a)
        .await
        .map_err(e)?;
    for _ in 0..2 {
        expect(show(&mut b, "search_path").await?.as_str(), DEFAULT_PATH, "B search_path")?;
        expect(show(&mut b, "statement_timeout").await?.as_str(), "0", "B statement_timeout")?;
        expect(show(&mut a, "search_path").await?.as_str(), "some_schema", "A search_path")?;
        expect(show(&mut a, "statement_timeout").await?.as_str(), "1234ms", "A statement_timeout")?;
    }
    Ok(())
}

async fn isolation_set_config(x: &Ctx) -> Res {
    let mut a = x.connect().await?;
    let mut b = x.connect().await?;
    sqlx::query("SELECT set_config('work_mem', $1, false)")
        .bind("78kB")
        .execute(&mut a)
        .await
        .map_err(e)?;
    rounds(&mut [(&mut b, "work_mem", "4MB", "B"), (&mut a, "work_mem", "78kB", "A")]).await
}

async fn startup_options(x: &Ctx) -> Res {
    let opts = x.opts.clone().options([("search_path", "tenant_x")]);
    let mut c = PgConnection::connect_with(&opts).await.map_err(e)?;
    let mut b = x.connect().await?;
    rounds(&mut [
        (&mut c, "search_path", "tenant_x", "C"),
        (&mut b, "search_path", DEFAULT_PATH, "B"),
    ])
    .await
}

async fn session_state(x: &Ctx) -> Res {
    let mut c = x.connect().await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut c)
        .await
        .map_err(e)?;
    c.execute("CREATE TEMP TABLE sqlx_tmp AS SELECT 1 AS x")
        .await
        .map_err(e)?;
    for _ in 0..3 {
        let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut c)
            .await
            .map_err(e)?;
        expect(again, pid, "backend across transactions")?;
        let x: i32 = sqlx::query_scalar("SELECT x FROM sqlx_tmp")
            .fetch_one(&mut c)
            .await
            .map_err(e)?;
        expect(x, 1, "temp table across transactions")?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, mode) = (&args[1], args[2].clone());
    let opts = PgConnectOptions::from_str(url).expect("connection URL");
    let x = Ctx { opts, mode };
    let mut failed = false;
    macro_rules! run {
        ($name:literal, $f:ident) => {
            match $f(&x).await {
                Ok(()) => println!("PASS {}", $name),
                Err(why) => {
                    failed = true;
                    println!("FAIL {}: {}", $name, why.replace('\n', " "));
                }
            }
        };
    }
    run!("basic", basic);
    run!("params", params);
    run!("transactions", transactions);
    run!("error-recovery", error_recovery);
    run!("prepared", prepared);
    run!("batch", batch);
    run!("copy", copy);
    run!("concurrency", concurrency);
    if x.mode == "session" {
        run!("session-state", session_state);
    }
    run!("isolation", isolation);
    run!("isolation-set-config", isolation_set_config);
    run!("startup-options", startup_options);
    std::process::exit(i32::from(failed));
}
