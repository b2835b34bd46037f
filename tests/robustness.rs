//! One client cannot hurt the others: half-sent messages, silent
//! connections, clients that stop reading or sit in a transaction,
//! cancels racing the end of a transaction, saturated pools, and secrets
//! that must never reach a log.

mod support;

use std::net::TcpStream as StdStream;
use std::time::{Duration, Instant};

use support::wire::{LoginError, Reply, Wire};
use support::*;

fn md5_db() -> TestDb {
    PgCluster::shared().create_db("md5")
}

fn spec(db: &TestDb, size: u32) -> PoolSpec<'_> {
    let mut s = PoolSpec::new(db);
    s.pool_size = size;
    s.auth_type = "md5";
    s
}

async fn wire(port: u16, db: &TestDb) -> Wire {
    Wire::connect("127.0.0.1", port, &db.user, &db.password, &db.name, &[])
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"))
}

/// A simple Query claiming `len` bytes of text, of which only `sent` are
/// written.
fn half_query(len: usize, sent: usize) -> Vec<u8> {
    let mut b = vec![b'Q'];
    b.extend_from_slice(&((len + 4) as i32).to_be_bytes());
    b.extend_from_slice(b"SELECT '");
    b.resize(5 + sent, b'x');
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_large_query_with_the_pool_exhausted_neither_spins_nor_blocks_others() {
    let db = md5_db();
    let text =
        config_text("", &[spec(&db, 1)]).replace("connect_timeout = 5000", "connect_timeout = 500");
    let cat = PgcatChild::start(&text, "warn");
    let holder = connect(&cat.conn_str(&db)).await;
    holder.batch_execute("BEGIN").await.unwrap();
    // 70 kB of a 200 kB query; its checkout times out while the rest
    // never comes.
    let mut half = wire(cat.port, &db).await;
    half.write_raw(&half_query(200_000, 70_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cpu = cat.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cat.cpu_seconds() - cpu;
    assert!(used < 0.3, "pgcat used {used:.2} s of CPU in 3 s");
    let other = connect(&cat.conn_str(&db)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let freed = Instant::now();
    other.simple_query("SELECT 1").await.unwrap();
    assert!(
        freed.elapsed() < Duration::from_secs(1),
        "served {:?} after the pool freed",
        freed.elapsed()
    );
    // The half-sent client, once its message is whole, hears that its
    // checkout failed, and goes on.
    half.write_raw(&vec![b'x'; 130_000 - 2]).await.unwrap();
    half.write_raw(b"'\0").await.unwrap();
    let r = half.read_until_ready().await.unwrap();
    assert!(
        matches!(&r[0], Reply::Error { code, .. } if code == "58000"),
        "{r:?}"
    );
    assert_eq!(r.last(), Some(&Reply::Ready('I')), "{r:?}");
    let r = half.query("SELECT 2").round_trip().await.unwrap();
    assert!(r.contains(&Reply::Row(vec![Some("2".into())])), "{r:?}");
}

/// Context switches of every thread of process `pid` so far.
fn context_switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("voluntary_ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// With clients logged in and nothing to do, pgcat sleeps: no thread of
/// its own ticks a clock (one did, 100 times a second), so what wakes it
/// is the runtime's and the pools' own timers, a few times a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pgcat_is_woken_a_few_times_a_second_at_most() {
    let db = md5_db();
    let cat = PgcatChild::start(&config_text("", &[spec(&db, 2)]), "warn");
    let clients = [
        connect(&cat.conn_str(&db)).await,
        connect(&cat.conn_str(&db)).await,
    ];
    for c in &clients {
        c.simple_query("SELECT 1").await.unwrap();
    }
    // Warm connections go back to bb8 after a second or two; then
    // nothing is due.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = context_switches(cat.pid());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let woken = context_switches(cat.pid()) - before;
    let per_second = woken as f64 / started.elapsed().as_secs_f64();
    assert!(
        per_second < 20.0,
        "pgcat's threads were switched in {woken} times in {:?} while idle",
        started.elapsed()
    );
    for c in &clients {
        c.simple_query("SELECT 2").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_silent_connections_cost_little_and_block_nobody() {
    raise_file_limit();
    let db = md5_db();
    let cat = PgcatChild::start(&config_text("", &[spec(&db, 2)]), "warn");
    let client = connect(&cat.conn_str(&db)).await;
    client.simple_query("SELECT 1").await.unwrap();
    let before = cat.rss_kb();
    let port = cat.port;
    let silent = tokio::task::spawn_blocking(move || {
        (0..3000)
            .map(|_| StdStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A normal client logs in and is served meanwhile.
    let other = connect(&cat.conn_str(&db)).await;
    other.simple_query("SELECT 1").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let grown = cat.rss_kb().saturating_sub(before);
    assert!(
        grown < 40 * 1024,
        "3000 silent connections grew pgcat by {grown} kB"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_the_next_client_with_53300() {
    let db = md5_db();
    let proxy = TestProxy::start(&config_text("max_client_conn = 3", &[spec(&db, 1)])).await;
    let held: Vec<_> = futures_util::future::join_all((0..3).map(|_| proxy.connect(&db))).await;
    let err = try_connect(&proxy.conn_str(&db)).await.unwrap_err();
    let e = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(e.code().code(), "53300", "{err}");
    assert!(e.message().contains("max_client_conn"), "{err}");
    // One leaves, the next gets in.
    drop(held);
    eventually(Duration::from_secs(5), "a slot freed", || true).await;
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(c) = try_connect(&proxy.conn_str(&db)).await {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = ok.expect("a client gets in once others left");
    c.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_a_large_result_loses_its_connection_and_the_server_goes_back_clean(
) {
    let db = md5_db();
    let pg = PgCluster::shared();
    let text = config_text("stalled_client_timeout = 2000", &[spec(&db, 1)]);
    let proxy = TestProxy::start(&text).await;
    let mut reader = wire(proxy.port, &db).await;
    // 50 MB of rows, asked for and never read.
    reader
        .query("BEGIN; SELECT repeat('x', 1000) FROM generate_series(1, 50000)")
        .flush()
        .await
        .unwrap();
    let asked = Instant::now();
    // The pool's one server is held until pgcat gives up on the client.
    let other = proxy.connect(&db).await;
    let one: i32 = tokio::time::timeout(Duration::from_secs(30), other.query_one("SELECT 1", &[]))
        .await
        .expect("served after the stalled client was let go")
        .unwrap()
        .get(0);
    assert_eq!(one, 1);
    let waited = asked.elapsed();
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    // The stalled client's connection is closed.
    let mut closed = false;
    for _ in 0..200_000 {
        match reader.read_reply().await {
            Err(_) => {
                closed = true;
                break;
            }
            Ok(Reply::Ready(_)) => panic!("the stalled client was served to the end"),
            Ok(_) => {}
        }
    }
    assert!(closed, "the stalled client's connection was not closed");
    // Nothing of it stays on the server: no open transaction anywhere.
    eventually(Duration::from_secs(5), "no backend in a transaction", || {
        pg.psql_super(
            &db.name,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}' AND state LIKE 'idle in transaction%'",
                db.user
            ),
        ) == "0"
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_in_the_middle_of_a_message_is_let_go() {
    let db = md5_db();
    let text = config_text("stalled_client_timeout = 1000", &[spec(&db, 1)]);
    let proxy = TestProxy::start(&text).await;
    let mut half = wire(proxy.port, &db).await;
    // The server is free: pgcat starts forwarding, then waits for the
    // rest, holding the server.
    half.write_raw(&half_query(300_000, 100_000)).await.unwrap();
    let other = proxy.connect(&db).await;
    let one: i32 = tokio::time::timeout(Duration::from_secs(20), other.query_one("SELECT 1", &[]))
        .await
        .expect("served after the stalled client was let go")
        .unwrap()
        .get(0);
    assert_eq!(one, 1);
    assert!(
        half.read_until_ready().await.is_err(),
        "its connection was closed"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_timeout_rolls_back_and_frees_the_server() {
    let db = md5_db();
    let pg = PgCluster::shared();
    pg.psql_super(
        &db.name,
        &format!("CREATE TABLE t (v int); ALTER TABLE t OWNER TO {}", db.user),
    );
    let text = config_text("idle_client_in_transaction_timeout = 500", &[spec(&db, 1)]);
    let proxy = TestProxy::start(&text).await;
    let idle = proxy.connect(&db).await;
    idle.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // Below the timeout, the transaction goes on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    idle.batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    // Another client waits for the one server; it gets it once the idle
    // client has been idle for the timeout.
    let other = proxy.connect(&db).await;
    let started = Instant::now();
    let n: i64 = tokio::time::timeout(
        Duration::from_secs(10),
        other.query_one("SELECT count(*) FROM t", &[]),
    )
    .await
    .expect("the idle transaction let go of the server")
    .unwrap()
    .get(0);
    assert_eq!(n, 0, "the idle transaction was rolled back");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The idle client hears of it at its next statement, and goes on.
    let err = idle.batch_execute("COMMIT").await.unwrap_err();
    let e = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(e.code().code(), "58000");
    assert_eq!(e.message(), "idle transaction timeout");
    let one: i32 = idle.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_end_of_a_transaction_never_cancels_another_clients_query() {
    let db = md5_db();
    let proxy = TestProxy::start(&config_text("", &[spec(&db, 1)])).await;
    let (a, b) = (proxy.connect(&db).await, proxy.connect(&db).await);
    let token = a.cancel_token();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // B runs short sleeps on the one server, over and over.
    let b_task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut ran = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                b.simple_query("SELECT pg_sleep(0.005)")
                    .await
                    .expect("B's query is never cancelled");
                ran += 1;
            }
            ran
        })
    };
    // A's cancels fly while its own short queries end.
    for i in 0..300 {
        let q = a.simple_query("SELECT 1");
        let cancel = token.cancel_query(tokio_postgres::NoTls);
        if i % 2 == 0 {
            let (r, _) = tokio::join!(q, cancel);
            if let Err(e) = r {
                assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
            }
        } else {
            let (_, r) = tokio::join!(cancel, q);
            if let Err(e) = r {
                assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ran = b_task.await.expect("B never saw 57014");
    assert!(ran > 10, "B ran {ran} queries");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_bans_nothing() {
    let db = md5_db();
    // Two servers, both this PostgreSQL under different names, one
    // connection each; every checkout beyond two waits and times out.
    let mut s = spec(&db, 1);
    s.pool_extra = "default_role = \"any\"";
    let text = config_text("", &[s])
        .replace("connect_timeout = 5000", "connect_timeout = 300")
        .replace(
            &format!("servers = [[\"{}\", {}, \"primary\"]]", db.host, db.port),
            &format!(
                "servers = [[\"127.0.0.1\", {p}, \"primary\"], [\"localhost\", {p}, \"replica\"]]",
                p = db.port
            ),
        );
    let proxy = TestProxy::start(&text).await;
    let holders: Vec<_> = futures_util::future::join_all((0..2).map(|_| proxy.connect(&db))).await;
    for h in &holders {
        h.batch_execute("BEGIN").await.unwrap();
    }
    let waiter = proxy.connect(&db).await;
    for _ in 0..3 {
        let err = waiter.simple_query("SELECT 1").await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("58000"), "{err}");
    }
    let admin = proxy.admin().await;
    let bans = admin_rows(&admin, "SHOW BANS").await;
    assert!(bans.is_empty(), "a saturated pool banned {bans:?}");
    for h in &holders {
        h.batch_execute("COMMIT").await.unwrap();
    }
    waiter.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_reaches_the_log_even_at_trace_level() {
    let pg = PgCluster::shared();
    let md5 = pg.create_db("md5");
    let scram = pg.create_db("scram-sha-256");
    let mut a = PoolSpec::new(&md5);
    a.auth_type = "md5";
    let b = PoolSpec::new(&scram);
    let mut cat = PgcatChild::start(&config_text("", &[a, b]), "trace");
    for db in [&md5, &scram] {
        let c = connect(&cat.conn_str(db)).await;
        c.simple_query("SELECT 1").await.unwrap();
        let wrong = format!(
            "host=127.0.0.1 port={} user={} password=wrong-{} dbname={}",
            cat.port, db.user, db.password, db.name
        );
        assert!(try_connect(&wrong).await.is_err());
    }
    let admin = connect(&admin_conn_str(cat.port)).await;
    admin.simple_query("SHOW CONFIG").await.unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    cat.stop();
    let log = cat.log_text();
    assert!(
        log.len() > 1000,
        "a trace log was written ({} bytes)",
        log.len()
    );
    for secret in [&md5.password, &scram.password, &ADMIN_PASSWORD.to_string()] {
        assert!(!log.contains(secret.as_str()), "{secret} is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_bounded_by_client_login_timeout() {
    let db = md5_db();
    let proxy = TestProxy::start(&config_text("client_login_timeout = 500", &[spec(&db, 1)])).await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    // Says nothing; pgcat ends it.
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&buf).contains("timeout"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    match Wire::connect(
        "127.0.0.1",
        proxy.port,
        &db.user,
        &db.password,
        &db.name,
        &[],
    )
    .await
    {
        Ok(_) => {}
        Err(LoginError::Refused { code, message }) => panic!("{code} {message}"),
        Err(e) => panic!("{e:?}"),
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_failure_limit_disconnects_the_client_after_n_failures() {
    let db = md5_db();
    let mut s = spec(&db, 1);
    s.pool_extra = "checkout_failure_limit = 2";
    let text = config_text("", &[s]).replace("connect_timeout = 5000", "connect_timeout = 300");
    let proxy = TestProxy::start(&text).await;
    let holder = proxy.connect(&db).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = proxy.connect(&db).await;
    // PgCat's behaviour: each failed checkout is 58000 and the client goes
    // on, until the limit, which ends the connection.
    for _ in 0..2 {
        let err = waiter.simple_query("SELECT 1").await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("58000"), "{err}");
    }
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.is_closed()
            || err.as_db_error().is_some_and(|e| e
                .message()
                .contains("checkout failure limit reached (2 / 2)")),
        "the third request finds the connection closed: {err:?}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    // Other clients are served as before.
    let other = proxy.connect(&db).await;
    other.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await;
}
