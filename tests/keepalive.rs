//! TCP keepalives and TCP_USER_TIMEOUT: a server that dies silently is
//! noticed, not waited on forever.
//!
//! The tests that cut a link put PostgreSQL in a network namespace behind
//! a veth pair and set the namespace's end down: packets are dropped
//! without a reset, as when a host or a network path dies. They need
//! root and iproute2, and fail (never skip) without them.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn error_code(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_in_flight_on_a_dead_link_fails_fast_and_the_pool_recovers() {
    let netns = Netns::new();
    let pg = PgCluster::in_netns(&netns);
    let db = pg.create_db("scram-sha-256");
    let text = config_text(
        // tcp_user_timeout 0 leaves keepalive alone in charge: with it set,
        // Linux ends an idle connection after the user timeout instead of
        // after idle + interval * count.
        "tcp_keepalives_idle = 2\ntcp_keepalives_interval = 1\ntcp_keepalives_count = 3\ntcp_user_timeout = 0",
        &[PoolSpec { pool_size: 1, ..PoolSpec::new(&db) }],
    );
    let proxy = TestProxy::start(&text).await;
    let client = proxy.connect(&db).await;
    client.batch_execute("SELECT 1").await.unwrap();
    let running =
        tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;

    netns.cut();
    let cut_at = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the client hung on a dead server")
        .unwrap();
    let took = cut_at.elapsed();
    let err = result.expect_err("the query cannot have succeeded");
    assert_eq!(
        error_code(&err).as_deref(),
        Some("08006"),
        "an ErrorResponse, not a silent close: {err:?}"
    );
    eprintln!("dead link noticed after {took:?} (idle 2 s + 3 probes * 1 s)");
    assert!(
        took < Duration::from_secs(8),
        "noticed after {took:?}, expected 2 + 3 * 1 s"
    );
    // The dead connection left the pool: nothing is left busy.
    let admin = proxy.admin().await;
    let pool = pool_row(&admin, &db.name).await;
    assert_eq!(pool["sv_active"].as_deref(), Some("0"), "{pool:?}");

    netns.restore();
    let restored_at = Instant::now();
    let client = tokio::time::timeout(Duration::from_secs(10), proxy.connect(&db))
        .await
        .expect("connect after restore");
    let v: i32 = client.query_one("SELECT 42", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
    let took = restored_at.elapsed();
    eprintln!("served again {took:?} after the link came back");
    assert!(
        took < Duration::from_secs(3),
        "the pool served again only after {took:?}"
    );
    // A single primary is never banned for a blip.
    assert!(admin_rows(&admin, "SHOW BANS").await.is_empty());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connection_on_a_dead_link_answers_within_the_user_timeout() {
    let netns = Netns::new();
    let pg = PgCluster::in_netns(&netns);
    let db = pg.create_db("scram-sha-256");
    let text = config_text(
        "tcp_user_timeout = 3000",
        &[PoolSpec {
            pool_size: 1,
            ..PoolSpec::new(&db)
        }],
    );
    let proxy = TestProxy::start(&text).await;
    let client = proxy.connect(&db).await;
    client.batch_execute("SELECT 1").await.unwrap();
    // The connection is idle in the pool when the link dies.
    netns.cut();
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), client.simple_query("SELECT 2"))
        .await
        .expect("the client hung on a dead server");
    let took = started.elapsed();
    eprintln!(
        "query on a dead idle connection answered after {took:?}: {:?}",
        result.as_ref().map(|_| ()).map_err(|e| e.to_string())
    );
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    if let Err(e) = &result {
        assert!(
            error_code(e).is_some(),
            "an ErrorResponse, not a silent close: {e:?}"
        );
    }
    netns.restore();
    let client = proxy.connect(&db).await;
    let v: i32 = client.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(v, 3);
    proxy.stop().await;
}

/// `ss -tnoi` lines (with their info line) for a local port.
fn ss_lines(local_port: u16) -> String {
    let out = std::process::Command::new("ss")
        .args(["-tnoi"])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let needle = format!(":{local_port} ");
    let lines: Vec<&str> = text.lines().collect();
    let mut found = String::new();
    for (i, l) in lines.iter().enumerate() {
        if l.split_whitespace()
            .nth(3)
            .is_some_and(|a| format!("{a} ").ends_with(&needle))
        {
            found.push_str(l);
            found.push('\n');
            if let Some(next) = lines.get(i + 1) {
                found.push_str(next);
                found.push('\n');
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_keepalives_read_back_on_client_and_server_sockets() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let text = config_text(
        "tcp_keepalives_idle = 7\ntcp_keepalives_interval = 3\ntcp_keepalives_count = 4\ntcp_user_timeout = 9000",
        &[PoolSpec::new(&db)],
    );
    let file = ConfigFile::new(&text);
    let proxy = TestProxy::start_file(&file).await;
    let client = proxy.connect(&db).await;
    client.batch_execute("SELECT 1").await.unwrap();
    let admin = proxy.admin().await;
    let check = |row: &std::collections::HashMap<String, Option<String>>, idle: &str| {
        assert_eq!(row["keepalive"].as_deref(), Some("1"), "{row:?}");
        assert_eq!(row["keepalive_idle"].as_deref(), Some(idle), "{row:?}");
        assert_eq!(row["keepalive_interval"].as_deref(), Some("3"));
        assert_eq!(row["keepalive_count"].as_deref(), Some("4"));
        assert_eq!(row["user_timeout_ms"].as_deref(), Some("9000"));
    };
    let clients = admin_rows(&admin, "SHOW CLIENTS").await;
    let client_row = clients
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .unwrap();
    check(client_row, "7");
    let servers = admin_rows(&admin, "SHOW SERVERS").await;
    let server_row = servers
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .unwrap();
    check(server_row, "7");
    assert!(
        server_row["rtt_us"]
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );

    // The kernel runs a keepalive timer on both sockets.
    let server_port: u16 = server_row["local_port"]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let lines = ss_lines(server_port);
        if lines.contains("timer:(keepalive") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no keepalive timer on the server socket:\n{lines}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // pgcat's end of the client connection has the proxy port as its
    // local port; find the one whose peer is our client.
    // While bytes are in flight ss shows the retransmission timer; the
    // keepalive timer runs whenever the socket is quiet.
    let client_port: u16 = client_row["port"].as_deref().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let out = std::process::Command::new("ss")
            .args(["-tnoi"])
            .output()
            .unwrap();
        let all = String::from_utf8_lossy(&out.stdout).to_string();
        let accepted = all
            .lines()
            .find(|l| {
                l.contains(&format!("127.0.0.1:{} ", proxy.port))
                    && l.contains(&format!("127.0.0.1:{client_port}"))
            })
            .unwrap_or_else(|| panic!("accepted socket not in ss output:\n{all}"))
            .to_string();
        if accepted.contains("timer:(keepalive") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no keepalive timer on the accepted socket: {accepted}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // After a reload that changes the values, new server connections
    // carry the new ones.
    file.write(&text.replace("tcp_keepalives_idle = 7", "tcp_keepalives_idle = 11"));
    proxy.handle.reload().unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    let servers = admin_rows(&admin, "SHOW SERVERS").await;
    let mine: Vec<_> = servers
        .iter()
        .filter(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .collect();
    assert_eq!(mine.len(), 1, "the old pool's connection is gone: {mine:?}");
    check(mine[0], "11");
    // So do client connections accepted after it: pgcat sets the options
    // on the listening socket, which new connections copy.
    let second = proxy.connect(&db).await;
    second.batch_execute("SELECT 1").await.unwrap();
    let clients = admin_rows(&admin, "SHOW CLIENTS").await;
    let mut idles: Vec<_> = clients
        .iter()
        .filter(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .map(|r| r["keepalive_idle"].clone().unwrap())
        .collect();
    idles.sort();
    assert_eq!(
        idles,
        ["11", "7"],
        "the first client keeps its socket's settings"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_closed_by_the_server_is_replaced_without_an_error() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let proxy = TestProxy::start(&config_text(
        "",
        &[PoolSpec {
            pool_size: 1,
            ..PoolSpec::new(&db)
        }],
    ))
    .await;
    let client = proxy.connect(&db).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // The server ends the idle pooled connection (a restart, an
    // idle_session_timeout, an operator).
    pg.psql_super("postgres", &format!("SELECT pg_terminate_backend({pid})"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new_pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("the client never sees the dead idle connection")
        .get(0);
    assert_ne!(pid, new_pid);
    proxy.stop().await;
}
