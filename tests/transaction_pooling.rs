//! Real clients through pgcat in transaction and session mode, against a
//! real PostgreSQL.

mod support;

use std::time::{Duration, Instant};

use futures_util::{future::join_all, SinkExt, StreamExt};
use support::*;

fn setup(mode: &str, pool_size: u32) -> (TestDb, String) {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let mut spec = PoolSpec::new(&db);
    spec.mode = mode;
    spec.pool_size = pool_size;
    let text = config_text("", &[spec]);
    (db, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_extended_and_typed_queries_work_in_transaction_mode() {
    let (db, text) = setup("transaction", 2);
    let proxy = TestProxy::start(&text).await;
    let client = proxy.connect(&db).await;

    // Simple protocol, several statements in one string.
    let msgs = client
        .simple_query("CREATE TABLE t (id int primary key, name text, score float8); SELECT 1; SELECT 'a', 'b'")
        .await
        .unwrap();
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec!["1", "a"]);

    // Extended protocol with typed parameters: tokio-postgres prepares a
    // named statement and binds it in a second round trip, which in
    // transaction mode may land on another server connection.
    for i in 0..50 {
        client
            .execute(
                "INSERT INTO t (id, name, score) VALUES ($1, $2, $3)",
                &[&i, &format!("name {i}"), &(i as f64 / 2.0)],
            )
            .await
            .unwrap();
    }
    let row = client
        .query_one(
            "SELECT count(*)::int4, sum(score)::float8, max(name) FROM t WHERE id >= $1",
            &[&10i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 40);
    assert_eq!(
        row.get::<_, f64>(1),
        (10..50).map(|i| i as f64 / 2.0).sum::<f64>()
    );
    assert_eq!(row.get::<_, String>(2), "name 49");

    // An explicitly prepared statement reused many times.
    let stmt = client
        .prepare("SELECT name FROM t WHERE id = $1")
        .await
        .unwrap();
    for i in [0i32, 7, 49] {
        let name: String = client.query_one(&stmt, &[&i]).await.unwrap().get(0);
        assert_eq!(name, format!("name {i}"));
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batch_of_100_statements() {
    let (db, text) = setup("transaction", 3);
    let proxy = TestProxy::start(&text).await;
    let client = proxy.connect(&db).await;
    let stmt = client.prepare("SELECT $1::int4 * 2").await.unwrap();
    // tokio-postgres pipelines queries issued concurrently on one
    // connection: 100 Bind/Execute/Sync groups in flight at once.
    let futures = (0..100i32).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move {
            client
                .query_one(stmt, &[&i])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    });
    let results = join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i32 * 2);
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_inside_transaction_then_rollback_and_more_work() {
    let (db, text) = setup("transaction", 2);
    let proxy = TestProxy::start(&text).await;
    let client = proxy.connect(&db).await;
    client
        .batch_execute("CREATE TABLE e (v int)")
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("INSERT INTO e VALUES ($1)", &[&1i32])
        .await
        .unwrap();
    let err = client.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    let err = client
        .execute("INSERT INTO e VALUES ($1)", &[&2i32])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "25P02", "in failed transaction");
    client.batch_execute("ROLLBACK").await.unwrap();
    client
        .execute("INSERT INTO e VALUES ($1)", &[&3i32])
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM e", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let v: i32 = client
        .query_one("SELECT v FROM e", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 3);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_of_10_mb_is_byte_identical() {
    let (db, text) = setup("transaction", 2);
    let proxy = TestProxy::start(&text).await;
    let client = proxy.connect(&db).await;
    client
        .batch_execute("CREATE TABLE c (id int, payload text)")
        .await
        .unwrap();

    // 10 MB of rows with varied content, in COPY text format.
    let mut data = Vec::with_capacity(11 << 20);
    let mut i = 0u64;
    while data.len() < 10 << 20 {
        let payload: String = (0..(i % 200 + 50))
            .map(|k| (b'a' + ((i * 31 + k) % 26) as u8) as char)
            .collect();
        data.extend_from_slice(format!("{i}\t{payload}\n").as_bytes());
        i += 1;
    }
    let sink = client
        .copy_in("COPY c (id, payload) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(100_000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, i);

    let stream = client
        .copy_out("COPY (SELECT id, payload FROM c ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::with_capacity(data.len());
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(out.len(), data.len());
    assert!(out == data, "COPY OUT differs from what went in");

    // The connection is still usable afterwards.
    let n: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as u64, i);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_running_query() {
    let (db, text) = setup("transaction", 2);
    let proxy = TestProxy::start(&text).await;
    let client = proxy.connect(&db).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let query = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(30)").await;
        (r, client)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (result, client) = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("query did not end after cancel")
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("canceling statement due to user request"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
    // The session goes on.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_transaction_leaves_no_idle_in_transaction_backend() {
    let pg = PgCluster::shared();
    let (db, text) = setup("transaction", 1);
    let proxy = TestProxy::start(&text).await;
    {
        let client = proxy.connect(&db).await;
        client
            .batch_execute("CREATE TABLE a (v int)")
            .await
            .unwrap();
        client
            .batch_execute("BEGIN; INSERT INTO a VALUES (1)")
            .await
            .unwrap();
        let state = pg.psql_super(
            "postgres",
            &format!(
                "SELECT state FROM pg_stat_activity WHERE datname = '{}' AND usename = '{}'",
                db.name, db.user
            ),
        );
        assert_eq!(state, "idle in transaction");
        // Dropping the client closes its socket mid-transaction.
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states = pg.psql_super(
            "postgres",
            &format!("SELECT coalesce(string_agg(state, ','), '') FROM pg_stat_activity WHERE datname = '{}'", db.name),
        );
        if !states.contains("in transaction") {
            break;
        }
        assert!(Instant::now() < deadline, "backend stayed {states}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The insert was rolled back, and the pool of one serves the next
    // client.
    let client = proxy.connect(&db).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM a", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_a_pool_of_five() {
    let pg = PgCluster::shared();
    let (db, text) = setup("transaction", 5);
    let proxy = TestProxy::start(&text).await;
    let conn_str = proxy.conn_str(&db);
    let watcher_db = db.clone();
    let watch = MaxWatch::start(move || pg.backends(&watcher_db.name, &watcher_db.user));
    let tasks = (0..200i32).map(|i| {
        let conn_str = conn_str.clone();
        tokio::spawn(async move {
            let client = connect(&conn_str).await;
            for j in 0..5i32 {
                let v: i32 = client
                    .query_one("SELECT $1::int4 + $2::int4", &[&i, &j])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(v, i + j);
                let rows = client
                    .simple_query(&format!("SELECT {i} * 1000 + {j}"))
                    .await
                    .unwrap();
                let got = match &rows[1] {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_string(),
                    other => panic!("unexpected {other:?}"),
                };
                assert_eq!(got, (i * 1000 + j).to_string());
            }
        })
    });
    for r in join_all(tasks).await {
        r.unwrap();
    }
    let max = watch.finish().await;
    assert!(max <= 5, "PostgreSQL saw {max} connections for a pool of 5");
    assert!(max >= 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_settings_follow_the_client_across_server_connections() {
    let (db, text) = setup("transaction", 2);
    let proxy = TestProxy::start(&text).await;
    let a = connect(&format!("{} application_name=alpha", proxy.conn_str(&db))).await;
    let b = connect(&format!("{} application_name=beta", proxy.conn_str(&db))).await;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    b.batch_execute("SET TimeZone = 'America/New_York'")
        .await
        .unwrap();
    for _ in 0..10 {
        let (name, tz): (String, String) = {
            let r = a
                .query_one(
                    "SELECT current_setting('application_name'), current_setting('TimeZone')",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((name.as_str(), tz.as_str()), ("alpha", "Asia/Tokyo"));
        let r = b
            .query_one(
                "SELECT current_setting('application_name'), current_setting('TimeZone')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                r.get::<_, String>(0).as_str(),
                r.get::<_, String>(1).as_str()
            ),
            ("beta", "America/New_York")
        );
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_session_state_and_resets_it_on_release() {
    let (db, text) = setup("session", 1);
    let proxy = TestProxy::start(&text).await;
    let pid1;
    {
        let client = proxy.connect(&db).await;
        client.batch_execute("SET search_path = pg_catalog; PREPARE p AS SELECT 42; CREATE TEMP TABLE tmp (v int)").await.unwrap();
        let v: i32 = client.query_one("EXECUTE p", &[]).await.unwrap().get(0);
        assert_eq!(v, 42);
        pid1 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0);
    }
    // The next client gets the same server connection (pool of one),
    // reset with DISCARD ALL.
    let client = proxy.connect(&db).await;
    let pid2: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid1, pid2, "pool of one reuses its connection");
    let path: String = client
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, "\"$user\", public");
    assert!(
        client.batch_execute("EXECUTE p").await.is_err(),
        "prepared statement survived"
    );
    assert!(
        client.batch_execute("SELECT * FROM tmp").await.is_err(),
        "temp table survived"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_in_transaction_mode_does_not_leak_to_other_clients() {
    let (db, text) = setup("transaction", 1);
    let proxy = TestProxy::start(&text).await;
    let a = proxy.connect(&db).await;
    let b = proxy.connect(&db).await;
    a.batch_execute("SET search_path = pg_catalog")
        .await
        .unwrap();
    let path: String = b.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "\"$user\", public");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_applies_per_user() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let mut spec = PoolSpec::new(&db);
    spec.user_extra = "statement_timeout = 200";
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    let client = proxy.connect(&db).await;
    let err = client.simple_query("SELECT pg_sleep(5)").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014");
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("statement timeout"), "{msg}");
    // A client's own RESET ALL keeps the configured timeout (it is the
    // session default of the server connection).
    client.batch_execute("RESET ALL").await.unwrap();
    let v: String = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "200ms");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_and_server_lifetime_retire_idle_connections() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let mut spec = PoolSpec::new(&db);
    spec.pool_size = 3;
    spec.user_extra = "idle_timeout = 400";
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    let client = proxy.connect(&db).await;
    let pid_before: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Inside a transaction the connection is never retired, however long
    // it stays idle.
    client.batch_execute("BEGIN").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pid_in_tx: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_before, pid_in_tx);
    client.batch_execute("COMMIT").await.unwrap();
    // Idle in the pool beyond idle_timeout: closed.
    eventually(Duration::from_secs(10), "idle connection closed", || {
        pg.backends(&db.name, &db.user) == 0
    })
    .await;
    let pid_after: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid_before, pid_after);
    proxy.stop().await;

    let db = pg.create_db("scram-sha-256");
    let mut spec = PoolSpec::new(&db);
    spec.user_extra = "server_lifetime = 500";
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    let client = proxy.connect(&db).await;
    let first: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Keep the connection busy: lifetime retires it even so, between
        // transactions.
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        if pid != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server_lifetime never retired the connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_longer_than_connect_timeout_gives_a_clear_error() {
    let (db, _) = setup("transaction", 1);
    let mut spec = PoolSpec::new(&db);
    spec.pool_size = 1;
    let text = config_text("", &[spec]).replace("connect_timeout = 5000", "connect_timeout = 300");
    let proxy = TestProxy::start(&text).await;
    // The first login opens the pool's one server connection, which a
    // loaded machine may take longer than 300 ms to fork: that is not
    // what this test is about, so it may try again.
    let mut holder = None;
    for _ in 0..10 {
        match try_connect(&proxy.conn_str(&db)).await {
            Ok(c) => {
                holder = Some(c);
                break;
            }
            Err(e) => eprintln!("holder login, trying again: {e:?}"),
        }
    }
    let holder = holder.expect("the holder logs in within ten tries");
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = proxy.connect(&db).await;
    let started = Instant::now();
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let msg = err
        .as_db_error()
        .expect("an ErrorResponse")
        .message()
        .to_string();
    assert!(
        msg.contains("no server connection available") && msg.contains("300 ms"),
        "{msg}"
    );
    // The waiting client is still connected and succeeds once the server
    // is free.
    holder.batch_execute("COMMIT").await.unwrap();
    let one: i32 = waiter.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    proxy.stop().await;
}
