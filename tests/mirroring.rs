//! Query mirroring: production traffic copied to a second PostgreSQL
//! without touching production. pg_stat_statements on each cluster counts
//! what it received.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use support::*;

fn mirrors(entries: &[(&str, u16)]) -> String {
    let list: Vec<String> = entries
        .iter()
        .map(|(h, p)| format!("[\"{h}\", {p}, 0]"))
        .collect();
    format!("mirrors = [{}]", list.join(", "))
}

async fn mirror_row(
    admin: &tokio_postgres::Client,
    db: &str,
    mirror_port: u16,
) -> std::collections::HashMap<String, Option<String>> {
    admin_rows(admin, "SHOW MIRRORS")
        .await
        .into_iter()
        .find(|r| {
            r["database"].as_deref() == Some(db)
                && r["mirror"]
                    .as_deref()
                    .is_some_and(|m| m.ends_with(&format!(":{mirror_port}")))
        })
        .unwrap_or_else(|| panic!("no SHOW MIRRORS row for {db} -> :{mirror_port}"))
}

/// Sends `SELECT 1 + 2` through `client` until the mirror has run it
/// more than `before` times, for at most `limit`.
async fn send_until_mirrored(
    client: &tokio_postgres::Client,
    mirror: &PgCluster,
    db: &str,
    before: i64,
    limit: Duration,
    what: &str,
) {
    let started = Instant::now();
    loop {
        client.simple_query("SELECT 1 + 2").await.unwrap();
        if mirror.statement_calls(db, "SELECT $1 + $2") > before {
            break;
        }
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_queries_reach_the_primary_once_and_the_mirror() {
    let primary = PgCluster::shared();
    let mirror = PgCluster::new();
    let db = primary.create_db("scram-sha-256");
    mirror.create_db_like(&db);
    let spec = PoolSpec {
        shard_extra: mirrors(&[("127.0.0.1", mirror.port)]),
        ..PoolSpec::new(&db)
    };
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    let client = proxy.connect(&db).await;
    for _ in 0..100 {
        let rows = client.simple_query("SELECT 1 + 2").await.unwrap();
        assert!(
            matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("3"))
        );
    }
    assert_eq!(primary.statement_calls(&db.name, "SELECT $1 + $2"), 100);
    eventually(Duration::from_secs(5), "mirror ran at least 95", || {
        mirror.statement_calls(&db.name, "SELECT $1 + $2") >= 95
    })
    .await;
    let mirrored = mirror.statement_calls(&db.name, "SELECT $1 + $2");
    assert!(mirrored <= 100, "the mirror ran {mirrored}");
    // pgcat's own settings replay and health checks are not mirrored.
    let admin = proxy.admin().await;
    let row = mirror_row(&admin, &db.name, mirror.port).await;
    assert_eq!(row["state"].as_deref(), Some("connected"), "{row:?}");
    assert_eq!(row["errors"].as_deref(), Some("0"), "{row:?}");
    assert!(
        row["lag_ms"].is_some() && row["lag_p99_ms"].is_some(),
        "{row:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_and_pipelines_are_mirrored_without_errors() {
    let primary = PgCluster::shared();
    let mirror = PgCluster::new();
    let db = primary.create_db("scram-sha-256");
    mirror.create_db_like(&db);
    for c in [primary, &mirror] {
        c.psql_super(
            &db.name,
            &format!(
                "CREATE TABLE items (id int, v text); ALTER TABLE items OWNER TO {}",
                db.user
            ),
        );
    }
    let spec = PoolSpec {
        pool_size: 2,
        shard_extra: mirrors(&[("127.0.0.1", mirror.port)]),
        ..PoolSpec::new(&db)
    };
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    let client = proxy.connect(&db).await;
    let insert = client
        .prepare("INSERT INTO items VALUES ($1, $2)")
        .await
        .unwrap();
    for i in 0..20i32 {
        client
            .execute(&insert, &[&i, &format!("v{i}")])
            .await
            .unwrap();
    }
    client
        .batch_execute("BEGIN; INSERT INTO items VALUES (100, 'tx'); COMMIT")
        .await
        .unwrap();
    let select = client
        .prepare("SELECT v FROM items WHERE id = $1")
        .await
        .unwrap();
    let pipelined = (0..50i32).map(|i| {
        let client = &client;
        let select = &select;
        async move {
            client
                .query(select, &[&(i % 20)])
                .await
                .map(|rows| rows.len())
        }
    });
    for r in join_all(pipelined).await {
        assert_eq!(r.unwrap(), 1);
    }
    eventually(
        Duration::from_secs(5),
        "mirror ran the pipelined selects",
        || mirror.statement_calls(&db.name, "SELECT v FROM items WHERE id = $1") >= 50,
    )
    .await;
    // 20 prepared inserts and the one inside BEGIN/COMMIT, which
    // pg_stat_statements normalizes to the same text.
    assert_eq!(
        mirror.statement_calls(&db.name, "INSERT INTO items VALUES ($1, $2)"),
        21
    );
    let rows = mirror.psql_super(&db.name, "SELECT count(*) FROM items");
    assert_eq!(rows, "21", "the mirror holds the same rows");
    let log = mirror.log();
    assert!(!log.contains("ERROR"), "errors on the mirror:\n{log}");
    assert!(
        !log.contains("protocol"),
        "protocol trouble on the mirror:\n{log}"
    );
    proxy.stop().await;
}

/// Runs 1000 simple queries on one connection.
async fn thousand_queries(client: &tokio_postgres::Client) {
    for i in 0..1000 {
        let rows = client
            .simple_query(&format!("SELECT {i}"))
            .await
            .expect("query through pgcat");
        assert!(
            matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some(i.to_string().as_str()))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_mirrors_neither_fail_nor_slow_queries() {
    let primary = PgCluster::shared();
    let db = primary.create_db("scram-sha-256");
    let closed_port = free_port();
    // "mirror..invalid" fails inside the resolver without a packet sent.
    let spec = PoolSpec {
        pool_size: 1,
        shard_extra: mirrors(&[("127.0.0.1", closed_port), ("mirror..invalid", 5432)]),
        ..PoolSpec::new(&db)
    };
    let mirrored = TestProxy::start(&config_text("", &[spec])).await;
    // Speed is bench/run --mirror's business; here, every query succeeds
    // and the transactions are dropped at the handle, not queued.
    let b = mirrored.connect(&db).await;
    for _ in 0..3 {
        thousand_queries(&b).await;
    }
    let admin = mirrored.admin().await;
    for port in [closed_port, 5432] {
        let row = mirror_row(&admin, &db.name, port).await;
        assert_eq!(row["state"].as_deref(), Some("down"), "{row:?}");
        assert!(row["last_error"].is_some());
        let errors: u64 = row["errors"].as_deref().unwrap().parse().unwrap();
        let dropped: u64 = row["dropped"].as_deref().unwrap().parse().unwrap();
        // Retried with backoff, not for every one of the 3000 queries.
        assert!(
            (1..=40).contains(&errors),
            "{errors} connection attempts: {row:?}"
        );
        assert!(dropped >= 2900, "dropped {dropped}");
    }
    mirrored.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_resumes_after_the_mirror_restarts() {
    let primary = PgCluster::shared();
    let mut mirror = PgCluster::new();
    let db = primary.create_db("scram-sha-256");
    mirror.create_db_like(&db);
    let spec = PoolSpec {
        pool_size: 2,
        shard_extra: mirrors(&[("127.0.0.1", mirror.port)]),
        ..PoolSpec::new(&db)
    };
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    let client = proxy.connect(&db).await;
    for _ in 0..10 {
        client.simple_query("SELECT 1 + 2").await.unwrap();
    }
    eventually(Duration::from_secs(5), "mirrored before the stop", || {
        mirror.statement_calls(&db.name, "SELECT $1 + $2") >= 10
    })
    .await;
    mirror.stop();
    for _ in 0..50 {
        client
            .simple_query("SELECT 1 + 2")
            .await
            .expect("queries go on while the mirror is down");
    }
    let mirror = tokio::task::spawn_blocking(move || {
        mirror.restart();
        mirror
    })
    .await
    .unwrap();
    let before = mirror.statement_calls(&db.name, "SELECT $1 + $2");
    send_until_mirrored(
        &client,
        &mirror,
        &db.name,
        before,
        Duration::from_secs(5),
        "mirroring did not resume",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_mirror_connections_within_the_pool_size() {
    let primary = PgCluster::shared();
    let mirror = std::sync::Arc::new(PgCluster::new());
    let db = primary.create_db("scram-sha-256");
    mirror.create_db_like(&db);
    let mirror_port = mirror.port;
    let text = |timeout: u32, with_mirror: bool| {
        config_text(
            "",
            &[PoolSpec {
                pool_size: 3,
                user_extra: Box::leak(format!("statement_timeout = {timeout}").into_boxed_str()),
                shard_extra: if with_mirror {
                    mirrors(&[("127.0.0.1", mirror_port)])
                } else {
                    String::new()
                },
                ..PoolSpec::new(&db)
            }],
        )
    };
    let file = ConfigFile::new(&text(0, true));
    let proxy = TestProxy::start_file(&file).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let conn = proxy.conn_str(&db);
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = connect(&conn).await;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    c.simple_query("SELECT pg_sleep(0.005)").await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let watch = {
        let mirror = mirror.clone();
        let db = db.clone();
        MaxWatch::start(move || mirror.backends(&db.name, &db.user))
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    for i in 1..=5u32 {
        file.write(&text(i * 1000, true));
        let record = proxy.handle.reload().unwrap();
        assert_eq!(record.changed, vec![db.name.clone()]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    file.write(&text(0, false));
    proxy.handle.reload().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let max = watch.finish().await;
    assert!(max >= 1, "the mirror was used");
    assert!(max <= 3, "the mirror saw {max} connections for a pool of 3");
    // Mirrors removed: none of their connections is left.
    eventually(
        Duration::from_secs(5),
        "mirror connections gone with the config",
        || mirror.backends(&db.name, &db.user) == 0,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        assert!(w.await.unwrap() > 10);
    }
    proxy.stop().await;
}

/// Runs 500 lookups in table `t` on one connection.
async fn lookups_in_t(client: &tokio_postgres::Client) {
    for i in 0..500 {
        client
            .simple_query(&format!("SELECT count(*) FROM t WHERE v = {i}"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mirror_drops_transactions_instead_of_slowing_the_primary() {
    let primary = PgCluster::shared();
    let mirror = PgCluster::new();
    let db = primary.create_db("scram-sha-256");
    mirror.create_db_like(&db);
    for c in [primary, &mirror] {
        c.psql_super(
            &db.name,
            &format!("CREATE TABLE t (v int); ALTER TABLE t OWNER TO {}", db.user),
        );
    }
    let spec = PoolSpec {
        pool_size: 1,
        shard_extra: mirrors(&[("127.0.0.1", mirror.port)]),
        ..PoolSpec::new(&db)
    };
    let mirrored = TestProxy::start(&config_text("", &[spec])).await;
    // Someone holds a lock on the mirror's table for the whole run.
    let locker = connect(&direct_conn_str(&TestDb {
        host: mirror.host.clone(),
        port: mirror.port,
        ..db.clone()
    }))
    .await;
    locker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    // The lock stays until the end: had the primary waited for the
    // mirror, these would never finish.
    let b = mirrored.connect(&db).await;
    for _ in 0..3 {
        lookups_in_t(&b).await;
    }
    let admin = mirrored.admin().await;
    let row = mirror_row(&admin, &db.name, mirror.port).await;
    let dropped: u64 = row["dropped"].as_deref().unwrap().parse().unwrap();
    let depth: u64 = row["queue_depth"].as_deref().unwrap().parse().unwrap();
    assert!(dropped > 0, "drops are counted: {row:?}");
    assert!(
        depth <= pgcat::proxy::mirror::QUEUE as u64,
        "the queue stays bounded: {row:?}"
    );
    // Once the lock goes, the mirror works through its queue and then
    // takes new transactions again (the one in flight when the drop
    // ended is skipped to its boundary, so keep sending).
    locker.batch_execute("ROLLBACK").await.unwrap();
    send_until_mirrored(
        &b,
        &mirror,
        &db.name,
        0,
        Duration::from_secs(10),
        "the mirror never caught up",
    )
    .await;
    mirrored.stop().await;
}
