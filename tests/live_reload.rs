//! Live reload: each pool keeps the hash of its own config, and a reload
//! rebuilds exactly the pools whose hash changed, every time, also when a
//! config comes back to an earlier state.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// Keeps `clients` connections busy with short transactions until
/// stopped; counts failures.
fn hammer(
    conn_str: String,
    clients: usize,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..clients)
        .map(|i| {
            let conn_str = conn_str.clone();
            let stop = stop.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                let client = connect(&conn_str).await;
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) {
                    match client
                        .query_one("SELECT $1::int4 + 1, pg_sleep(0.002)", &[&(i as i32)])
                        .await
                    {
                        Ok(r) => assert_eq!(r.get::<_, i32>(0), i as i32 + 1),
                        Err(e) => {
                            eprintln!("query failed: {e:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done += 1;
                }
                done
            })
        })
        .collect()
}

/// Highest number of backends PostgreSQL reports for the pool's database
/// and user over `window`.
async fn max_backends(pg: &'static PgCluster, db: &TestDb, window: Duration) -> usize {
    let db = db.clone();
    let watch = MaxWatch::start(move || pg.backends(&db.name, &db.user));
    tokio::time::sleep(window).await;
    watch.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_b_a_reload_under_load_applies_every_time() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let text_a = config_text(
        "",
        &[PoolSpec {
            pool_size: 5,
            ..PoolSpec::new(&db)
        }],
    );
    let text_b = config_text(
        "",
        &[PoolSpec {
            pool_size: 8,
            ..PoolSpec::new(&db)
        }],
    );
    let file = ConfigFile::new(&text_a);
    let proxy = TestProxy::start_file(&file).await;
    let admin = proxy.admin().await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let workers = hammer(proxy.conn_str(&db), 20, stop.clone(), failures.clone());
    // Warm up: the pool fills to its size under 20 clients.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hash_a = pool_row(&admin, &db.name).await["config_hash"]
        .clone()
        .unwrap();
    let max = max_backends(pg, &db, Duration::from_millis(800)).await;
    assert!(
        max <= 5,
        "A: PostgreSQL saw {max} connections, pool_size is 5"
    );

    let mut hashes = vec![hash_a.clone()];
    for (text, size) in [(&text_b, 8), (&text_a, 5), (&text_b, 8), (&text_a, 5)] {
        file.write(text);
        let tag = admin.simple_query("RELOAD").await.expect("RELOAD");
        assert!(matches!(
            &tag[0],
            tokio_postgres::SimpleQueryMessage::CommandComplete(_)
        ));
        // Let the replaced pool's busy connections finish their
        // transactions, then watch.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let max = max_backends(pg, &db, Duration::from_millis(1200)).await;
        assert!(
            max <= size,
            "PostgreSQL saw {max} connections, pool_size is {size}"
        );
        let pool = pool_row(&admin, &db.name).await;
        assert_eq!(
            pool["pool_size"].as_deref(),
            Some(size.to_string().as_str())
        );
        let databases = admin_rows(&admin, "SHOW DATABASES").await;
        let row = databases
            .iter()
            .find(|r| r["name"].as_deref() == Some(db.name.as_str()))
            .unwrap();
        assert_eq!(row["pool_size"].as_deref(), Some(size.to_string().as_str()));
        assert_eq!(
            row["config_hash"], pool["config_hash"],
            "SHOW DATABASES and SHOW POOLS agree"
        );
        let current: usize = row["current_connections"]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            current <= size,
            "SHOW DATABASES reports {current} connections"
        );
        hashes.push(pool["config_hash"].clone().unwrap());
    }
    // A -> B -> A -> B -> A: the hash alternates and every step applied.
    assert_ne!(hashes[0], hashes[1]);
    assert_eq!(hashes[0], hashes[2]);
    assert_eq!(hashes[1], hashes[3]);
    assert_eq!(hashes[0], hashes[4]);
    let (records, count, failures_count) = proxy.handle.shared().reload_history();
    assert_eq!((count, failures_count), (4, 0));
    assert!(
        records.iter().all(|r| r.changed == vec![db.name.clone()]),
        "{records:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert!(total > 100, "the clients did work: {total}");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no query failed across reloads"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_pool_keeps_its_server_connections() {
    let pg = PgCluster::shared();
    let kept = pg.create_db("scram-sha-256");
    let changed = pg.create_db("scram-sha-256");
    let text = |size: u32| {
        config_text(
            "",
            &[
                PoolSpec {
                    pool_size: 1,
                    ..PoolSpec::new(&kept)
                },
                PoolSpec {
                    pool_size: size,
                    ..PoolSpec::new(&changed)
                },
            ],
        )
    };
    let file = ConfigFile::new(&text(1));
    let proxy = TestProxy::start_file(&file).await;
    let a = proxy.connect(&kept).await;
    let b = proxy.connect(&changed).await;
    let kept_pid: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let changed_pid: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    file.write(&text(2));
    let record = proxy.handle.reload().expect("reload");
    assert_eq!(record.changed, vec![changed.name.clone()]);

    let kept_after: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let changed_after: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        kept_pid, kept_after,
        "the untouched pool kept its connection"
    );
    assert_ne!(changed_pid, changed_after, "the changed pool was rebuilt");
    // The replaced pool's connection is gone.
    eventually(
        Duration::from_secs(5),
        "the old pool's connection closed",
        || pg.backends(&changed.name, &changed.user) <= 1,
    )
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_file_changes_nothing_and_reload_names_the_line() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let good = config_text("", &[PoolSpec::new(&db)]);
    let file = ConfigFile::new(&good);
    let proxy = TestProxy::start_file(&file).await;
    let admin = proxy.admin().await;
    let client = proxy.connect(&db).await;
    let hash = pool_row(&admin, &db.name).await["config_hash"].clone();

    let bad = good.replace("pool_size = 5", "pool_size = \"many\"");
    let line = bad.lines().position(|l| l.contains("\"many\"")).unwrap() + 1;
    file.write(&bad);
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    let msg = err
        .as_db_error()
        .expect("an ErrorResponse")
        .message()
        .to_string();
    let want = format!(
        "{}:{line}: pools.{}.users.0.pool_size",
        file.path.display(),
        db.name
    );
    assert!(msg.contains(&want), "{msg} should contain {want}");

    // A semantic error, too.
    let bad = good.replace("pool_size = 5", "pool_size = 0");
    file.write(&bad);
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(
        msg.contains(&format!(
            ":{line}: pools.{}.users.0.pool_size: must be at least 1",
            db.name
        )),
        "{msg}"
    );

    // Nothing changed: same hash, queries work.
    assert_eq!(pool_row(&admin, &db.name).await["config_hash"], hash);
    let v: i32 = client.query_one("SELECT 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);
    let (records, count, failed) = proxy.handle.shared().reload_history();
    assert_eq!((count, failed), (2, 2));
    assert!(records.iter().all(|r| !r.ok && r.error.is_some()));
    // The console shows the same record.
    let shown = admin_rows(&admin, "SHOW RELOADS").await;
    assert_eq!(shown.len(), 2);
    assert_eq!(shown[1]["result"].as_deref(), Some("failed"));
    assert!(shown[1]["error"]
        .as_deref()
        .unwrap()
        .contains("must be at least 1"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_does_not_wait_for_an_unreachable_server() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let file = ConfigFile::new(&config_text("", &[PoolSpec::new(&db)]));
    let proxy = TestProxy::start_file(&file).await;
    let admin = proxy.admin().await;
    // A new pool whose only server does not answer (nothing listens on
    // that port), asking for connections up front.
    let dead_port = free_port();
    let ghost = TestDb {
        name: "ghost".into(),
        user: "ghost".into(),
        password: "ghost".into(),
        host: "127.0.0.1".into(),
        port: dead_port,
    };
    let text = config_text(
        "",
        &[
            PoolSpec::new(&db),
            PoolSpec {
                user_extra: "min_pool_size = 2",
                ..PoolSpec::new(&ghost)
            },
        ],
    );
    file.write(&text);
    let started = Instant::now();
    admin.simple_query("RELOAD").await.expect("RELOAD");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "RELOAD took {:?}",
        started.elapsed()
    );
    let shown = admin_rows(&admin, "SHOW RELOADS").await;
    assert_eq!(shown.last().unwrap()["changed"].as_deref(), Some("ghost"));
    // The reachable pool goes on serving.
    let client = proxy.connect(&db).await;
    let v: i32 = client.query_one("SELECT 8", &[]).await.unwrap().get(0);
    assert_eq!(v, 8);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoreload_applies_a_changed_file_within_its_interval() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let text = |size: u32| {
        config_text(
            "autoreload = 500",
            &[PoolSpec {
                pool_size: size,
                ..PoolSpec::new(&db)
            }],
        )
    };
    let file = ConfigFile::new(&text(5));
    let proxy = TestProxy::start_file(&file).await;
    let admin = proxy.admin().await;
    let before = pool_row(&admin, &db.name).await["config_hash"].clone();
    file.write(&text(7));
    let changed_at = Instant::now();
    loop {
        let row = pool_row(&admin, &db.name).await;
        if row["pool_size"].as_deref() == Some("7") {
            assert_ne!(row["config_hash"], before);
            break;
        }
        assert!(
            changed_at.elapsed() < Duration::from_millis(1000),
            "autoreload (500 ms) did not apply within 2 intervals"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A broken file is reported once and changes nothing.
    file.write("this is not toml [");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        pool_row(&admin, &db.name).await["pool_size"].as_deref(),
        Some("7")
    );
    let (_, _, failed) = proxy.handle.shared().reload_history();
    assert_eq!(failed, 1, "the same broken content is reported once");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_during_pgbench_fail_no_transaction() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let other = pg.create_db("scram-sha-256");
    let text = |size: u32| {
        config_text(
            "",
            &[
                PoolSpec {
                    pool_size: size,
                    ..PoolSpec::new(&db)
                },
                PoolSpec::new(&other),
            ],
        )
    };
    let file = ConfigFile::new(&text(4));
    let proxy = TestProxy::start_file(&file).await;
    let init = run_tool_async(
        {
            let mut c = std::process::Command::new("pgbench");
            c.args([
                "-h",
                "127.0.0.1",
                "-p",
                &proxy.port.to_string(),
                "-U",
                &db.user,
                "-i",
                "-q",
                &db.name,
            ])
            .env("PGPASSWORD", &db.password);
            c
        },
        Duration::from_secs(120),
    )
    .await;
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    let mut bench = std::process::Command::new("pgbench");
    bench
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port.to_string(),
            "-U",
            &db.user,
        ])
        .args(["-c", "8", "-j", "2", "-T", "12", "-M", "extended", &db.name])
        .env("PGPASSWORD", &db.password);
    let run = tokio::task::spawn_blocking(move || run_tool(bench, Duration::from_secs(120)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..50u32 {
        // Half the reloads change the pool (its size), half change nothing.
        let size = if i % 2 == 0 {
            4 + (i / 2) % 3
        } else {
            4 + ((i - 1) / 2) % 3
        };
        file.write(&text(size));
        proxy.handle.reload().expect("reload");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}"
    );
    let (records, count, failed) = proxy.handle.shared().reload_history();
    assert_eq!((count, failed), (50, 0));
    let rebuilt = records.iter().filter(|r| !r.changed.is_empty()).count();
    assert!(
        rebuilt >= 10,
        "reloads that changed the pool rebuilt it: {rebuilt} of the last {}",
        records.len()
    );
    assert!(
        records
            .iter()
            .all(|r| r.changed.iter().all(|d| *d == db.name)),
        "the other pool was never rebuilt"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_queries_and_resume_releases_them() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let proxy = TestProxy::start(&config_text("", &[PoolSpec::new(&db)])).await;
    let admin = proxy.admin().await;
    let client = proxy.connect(&db).await;
    client.batch_execute("SELECT 1").await.unwrap();
    admin
        .simple_query(&format!("PAUSE {}", db.name))
        .await
        .unwrap();
    assert_eq!(
        pool_row(&admin, &db.name).await["paused"].as_deref(),
        Some("1")
    );
    let held = tokio::spawn(async move {
        let r: i32 = client.query_one("SELECT 11", &[]).await.unwrap().get(0);
        r
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!held.is_finished(), "a query ran while the pool was paused");
    let waiting = pool_row(&admin, &db.name).await["cl_waiting"].clone();
    assert_eq!(waiting.as_deref(), Some("1"));
    admin
        .simple_query(&format!("RESUME {}", db.name))
        .await
        .unwrap();
    let v = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released")
        .unwrap();
    assert_eq!(v, 11);
    proxy.stop().await;
}
