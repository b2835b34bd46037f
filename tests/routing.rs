//! Replicas: read/write splitting by the query parser, load balancing,
//! bans, replica lag and primary detection, against real clusters. For
//! routing, a "replica" can be an independent cluster with the same
//! database: each server answers `current_setting('port')` with its own
//! port, so the answer says where a statement ran, and a write sent to the
//! wrong server lands there (and is counted there).
//!
//! The lag and failover tests use a physical streaming replica made with
//! `pg_basebackup`.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::*;
use tokio_postgres::SimpleQueryMessage;

const WHERE: &str = "SELECT current_setting('port')";
const WRITE: &str = "INSERT INTO hits VALUES (current_setting('port')::int)";

/// A primary and an independent "replica" with the same role, database
/// and `hits` table.
struct Pair {
    primary: PgCluster,
    replica: PgCluster,
    db: TestDb,
}

fn pair() -> Pair {
    let primary = PgCluster::new();
    let replica = PgCluster::new();
    let db = primary.create_db("scram-sha-256");
    let on_replica = replica.create_db_like(&db);
    for (c, d) in [(&primary, &db), (&replica, &on_replica)] {
        c.psql_super(
            &d.name,
            &format!(
                "CREATE TABLE hits (port int); ALTER TABLE hits OWNER TO {}",
                d.user
            ),
        );
    }
    Pair {
        primary,
        replica,
        db,
    }
}

/// A one-shard pool over `servers` (host, port, role).
fn config(
    db: &TestDb,
    servers: &[(&str, u16, &str)],
    pool_extra: &str,
    general_extra: &str,
) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(h, p, r)| format!("[\"{h}\", {p}, \"{r}\"]"))
        .collect();
    format!(
        "[general]\nhost = \"127.0.0.1\"\nport = 0\nadmin_username = \"{ADMIN_USER}\"\n\
         admin_password = \"{ADMIN_PASSWORD}\"\nconnect_timeout = 3000\n{general_extra}\n\n\
         [pools.{name}]\npool_mode = \"transaction\"\n{pool_extra}\n\n\
         [pools.{name}.users.0]\nusername = \"{user}\"\npassword = \"{password}\"\npool_size = 4\n\n\
         [pools.{name}.shards.0]\ndatabase = \"{name}\"\nservers = [{list}]\n",
        name = db.name,
        user = db.user,
        password = db.password,
        list = list.join(", "),
    )
}

const SPLIT: &str = "query_parser_enabled = true\nquery_parser_read_write_splitting = true\n";

fn servers(p: &Pair) -> Vec<(&str, u16, &'static str)> {
    vec![
        (p.primary.host.as_str(), p.primary.port, "primary"),
        (p.replica.host.as_str(), p.replica.port, "replica"),
    ]
}

async fn port_of(client: &impl tokio_postgres::GenericClient) -> u16 {
    let row = client.query_one(WHERE, &[]).await.unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

async fn simple_port(client: &tokio_postgres::Client, sql: &str) -> u16 {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .expect("a row")
}

fn hits(c: &PgCluster, db: &str) -> i64 {
    c.psql_super(db, "SELECT count(*) FROM hits")
        .parse()
        .unwrap()
}

async fn tally(client: &tokio_postgres::Client, n: usize) -> HashMap<u16, usize> {
    let mut seen = HashMap::new();
    for i in 0..n {
        let port = if i % 2 == 0 {
            port_of(client).await
        } else {
            simple_port(client, WHERE).await
        };
        *seen.entry(port).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_every_write_to_the_primary() {
    let p = pair();
    let proxy = TestProxy::start(&config(&p.db, &servers(&p), SPLIT, "")).await;
    let client = proxy.connect(&p.db).await;

    // Reads, in both protocols: the replica only.
    let seen = tally(&client, 60).await;
    assert_eq!(seen, HashMap::from([(p.replica.port, 60)]), "reads");

    // Writes: the primary only, in both protocols, and with a read in the
    // same simple query.
    for i in 0..40 {
        match i % 3 {
            0 => {
                client.execute(WRITE, &[]).await.unwrap();
            }
            1 => {
                client.simple_query(WRITE).await.unwrap();
            }
            _ => {
                let port = simple_port(&client, &format!("{WHERE}; {WRITE}")).await;
                assert_eq!(port, p.primary.port, "a read batched with a write");
            }
        }
    }
    assert_eq!(hits(&p.primary, &p.db.name), 40);
    assert_eq!(
        hits(&p.replica, &p.db.name),
        0,
        "a write reached the replica"
    );

    // Functions that may write, and locking reads, go to the primary.
    client
        .simple_query("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        .await
        .unwrap();
    assert_eq!(
        simple_port(
            &client,
            "SELECT current_setting('port') FROM hits LIMIT 1 FOR UPDATE"
        )
        .await,
        p.primary.port
    );
    p.replica.psql_super(
        &p.db.name,
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    );
    assert_eq!(
        simple_port(&client, "SELECT current_setting('port'), f()").await,
        p.primary.port
    );
    // A statement the parser cannot read goes to the primary too.
    assert_eq!(
        simple_port(
            &client,
            "SELECT current_setting('port') FROM ROWS FROM (generate_series(1, 1))"
        )
        .await,
        p.primary.port
    );

    // SET PRIMARY READS TO on: reads spread over both.
    client
        .simple_query("SET PRIMARY READS TO on")
        .await
        .unwrap();
    let seen = tally(&client, 200).await;
    for port in [p.primary.port, p.replica.port] {
        let n = seen.get(&port).copied().unwrap_or(0);
        assert!(n >= 40, "primary reads on: {seen:?}");
    }
    client
        .simple_query("SET PRIMARY READS TO default")
        .await
        .unwrap();

    // SET SERVER ROLE pins a role; 'auto' gives the decision back.
    client
        .simple_query("SET SERVER ROLE TO 'primary'")
        .await
        .unwrap();
    assert_eq!(
        tally(&client, 10).await,
        HashMap::from([(p.primary.port, 10)])
    );
    let role = client.simple_query("SHOW SERVER ROLE").await.unwrap();
    assert!(matches!(&role[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("primary")));
    client
        .simple_query("SET SERVER ROLE TO 'auto'")
        .await
        .unwrap();
    assert_eq!(
        tally(&client, 10).await,
        HashMap::from([(p.replica.port, 10)])
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_never_split() {
    let p = pair();
    let proxy = TestProxy::start(&config(&p.db, &servers(&p), SPLIT, "")).await;
    let mut client = proxy.connect(&p.db).await;

    // BEGIN without READ ONLY: all of it on the primary, the reads too.
    for _ in 0..10 {
        let t = client.transaction().await.unwrap();
        let a = port_of(&t).await;
        t.execute(WRITE, &[]).await.unwrap();
        let b = port_of(&t).await;
        t.commit().await.unwrap();
        assert_eq!((a, b), (p.primary.port, p.primary.port));
    }
    // Simple-protocol transaction: one server from BEGIN to COMMIT.
    for _ in 0..10 {
        client.simple_query("BEGIN").await.unwrap();
        let a = simple_port(&client, WHERE).await;
        client.simple_query(WRITE).await.unwrap();
        let b = simple_port(&client, WHERE).await;
        client.simple_query("COMMIT").await.unwrap();
        assert_eq!((a, b), (p.primary.port, p.primary.port));
    }
    assert_eq!(hits(&p.primary, &p.db.name), 20);
    assert_eq!(hits(&p.replica, &p.db.name), 0);

    // BEGIN READ ONLY may go to a replica, and stays there.
    for _ in 0..10 {
        client.simple_query("BEGIN READ ONLY").await.unwrap();
        let a = simple_port(&client, WHERE).await;
        let b = port_of(&client).await;
        client.simple_query("COMMIT").await.unwrap();
        assert_eq!((a, b), (p.replica.port, p.replica.port));
    }
    proxy.stop().await;
}

/// pgcat's own queries at a login (settings read back, parameters to
/// report) go to the primary when any server may take the pool's
/// queries, so no replica holds a connection no client query asked for.
/// (PgCat's suite takes replicas down behind a proxy that lets queries
/// in and no answer out, then counts the queries each replica ran: a
/// login's idle connection there would carry the first one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_open_no_connection_on_a_replica() {
    let p = pair();
    for mode in ["random", "loc"] {
        let proxy = TestProxy::start(&config(
            &p.db,
            &servers(&p),
            &format!("load_balancing_mode = \"{mode}\""),
            "",
        ))
        .await;
        let mut clients = Vec::new();
        // Each with settings of its own: each is read back on a server.
        for i in 0..8 {
            let conn = format!(
                "{} options='-c work_mem={}kB'",
                proxy.conn_str(&p.db),
                64 + i
            );
            clients.push(connect(&conn).await);
        }
        assert!(p.primary.backends(&p.db.name, &p.db.user) >= 1, "{mode}");
        assert_eq!(p.replica.backends(&p.db.name, &p.db.user), 0, "{mode}");
        // Queries still spread.
        let seen = tally(&clients[0], 60).await;
        assert!(seen.contains_key(&p.replica.port), "{mode}: {seen:?}");
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancing_modes() {
    let p = pair();
    // random: both servers, roughly evenly.
    let proxy = TestProxy::start(&config(
        &p.db,
        &servers(&p),
        "load_balancing_mode = \"random\"",
        "",
    ))
    .await;
    let client = proxy.connect(&p.db).await;
    let seen = tally(&client, 200).await;
    for port in [p.primary.port, p.replica.port] {
        assert!(
            seen.get(&port).copied().unwrap_or(0) >= 40,
            "random: {seen:?}"
        );
    }
    proxy.stop().await;

    // loc: a server with a transaction open is passed over while the
    // other is free.
    let proxy = TestProxy::start(&config(
        &p.db,
        &servers(&p),
        "load_balancing_mode = \"loc\"",
        "",
    ))
    .await;
    let holder = proxy.connect(&p.db).await;
    let client = proxy.connect(&p.db).await;
    for (role, busy, free) in [
        ("primary", p.primary.port, p.replica.port),
        ("replica", p.replica.port, p.primary.port),
    ] {
        holder
            .simple_query(&format!("SET SERVER ROLE TO '{role}'"))
            .await
            .unwrap();
        holder.simple_query("BEGIN").await.unwrap();
        assert_eq!(simple_port(&holder, WHERE).await, busy);
        let seen = tally(&client, 30).await;
        assert_eq!(seen, HashMap::from([(free, 30)]), "loc with {role} busy");
        holder.simple_query("COMMIT").await.unwrap();
    }
    // Ties (both idle) are broken at random, not always the same way.
    let seen = tally(&client, 100).await;
    for port in [p.primary.port, p.replica.port] {
        assert!(
            seen.get(&port).copied().unwrap_or(0) >= 20,
            "loc ties: {seen:?}"
        );
    }
    proxy.stop().await;

    // random with a dead third server: once it is banned, the draw is
    // among the healthy ones, evenly (falling through to the next server
    // in config order would give one of them two thirds).
    let dead = free_port();
    let mut three = servers(&p);
    three.insert(1, ("127.0.0.1", dead, "replica"));
    let proxy = TestProxy::start(&config(
        &p.db,
        &three,
        "load_balancing_mode = \"random\"",
        "",
    ))
    .await;
    let client = proxy.connect(&p.db).await;
    let seen = tally(&client, 200).await;
    assert!(!seen.contains_key(&dead));
    for port in [p.primary.port, p.replica.port] {
        let n = seen.get(&port).copied().unwrap_or(0);
        assert!(
            (70..=130).contains(&n),
            "random among the healthy: {seen:?}"
        );
    }
    proxy.stop().await;

    // round_robin: one after the other.
    let proxy = TestProxy::start(&config(
        &p.db,
        &servers(&p),
        "load_balancing_mode = \"round_robin\"",
        "",
    ))
    .await;
    let client = proxy.connect(&p.db).await;
    let mut last = 0;
    for i in 0..20 {
        let port = simple_port(&client, WHERE).await;
        assert_ne!(
            port, last,
            "round_robin: the same server twice in a row at {i}"
        );
        last = port;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_banned_reads_continue_and_it_serves_again_when_back() {
    let mut p = pair();
    // A long ban: the replica must come back through the probe, not the
    // ban running out.
    let text = config(
        &p.db,
        &servers(&p),
        SPLIT,
        "ban_time = 600\nhealthcheck_delay = 0",
    );
    let proxy = TestProxy::start(&text).await;
    let admin = proxy.admin().await;
    let mut client = proxy.connect(&p.db).await;
    assert_eq!(
        tally(&client, 10).await,
        HashMap::from([(p.replica.port, 10)])
    );

    p.replica.stop();
    let mut failed = 0;
    let mut ports = HashMap::new();
    for _ in 0..30 {
        match client.simple_query(WHERE).await {
            Ok(rows) => {
                let port: u16 = match &rows[1] {
                    SimpleQueryMessage::Row(r) => r.get(0).unwrap().parse().unwrap(),
                    other => panic!("{other:?}"),
                };
                *ports.entry(port).or_insert(0) += 1;
            }
            Err(e) => {
                failed += 1;
                eprintln!("read failed while the replica died: {e}");
                if client.is_closed() {
                    client = proxy.connect(&p.db).await;
                }
            }
        }
    }
    assert!(failed <= 1, "{failed} reads failed");
    assert_eq!(
        ports.get(&p.primary.port).copied().unwrap_or(0),
        30 - failed
    );
    let bans = admin_rows(&admin, "SHOW BANS").await;
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(
        bans[0]["port"].as_deref(),
        Some(p.replica.port.to_string().as_str())
    );
    assert_eq!(bans[0]["role"].as_deref(), Some("replica"));

    p.replica.restart();
    let back = Instant::now();
    loop {
        if simple_port(&client, WHERE).await == p.replica.port {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the replica was back but got no reads for 10 s (ban_time is 600 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admin_rows(&admin, "SHOW BANS").await.is_empty());
    proxy.stop().await;
}

/// A primary with a streaming replica, and the test role and database.
fn streaming_pair() -> (PgCluster, PgCluster, TestDb) {
    let primary = PgCluster::new();
    let db = primary.create_db("scram-sha-256");
    primary.psql_super(
        &db.name,
        &format!(
            "CREATE TABLE hits (port int); ALTER TABLE hits OWNER TO {}",
            db.user
        ),
    );
    let replica = primary.streaming_replica();
    (primary, replica, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_gets_no_reads() {
    let (primary, replica, db) = streaming_pair();
    let servers = [
        (primary.host.as_str(), primary.port, "primary"),
        (replica.host.as_str(), replica.port, "replica"),
    ];
    let text = config(
        &db,
        &servers,
        &format!("{SPLIT}replica_max_lag = 1000"),
        "enable_prometheus_exporter = true\nprometheus_exporter_port = 0",
    );
    let proxy = TestProxy::start(&text).await;
    let admin = proxy.admin().await;
    let client = proxy.connect(&db).await;
    assert_eq!(
        tally(&client, 10).await,
        HashMap::from([(replica.port, 10)])
    );

    replica.psql_super("postgres", "SELECT pg_wal_replay_pause()");
    let lag_of_replica = |rows: &[HashMap<String, Option<String>>]| -> Option<i64> {
        rows.iter()
            .find(|r| r["port"].as_deref() == Some(replica.port.to_string().as_str()))
            .and_then(|r| r["replica_lag_ms"].as_deref()?.parse().ok())
    };
    let started = Instant::now();
    loop {
        primary.psql_super(&db.name, "INSERT INTO hits VALUES (0)");
        let rows = admin_rows(&admin, "SHOW DATABASES").await;
        if lag_of_replica(&rows).is_some_and(|l| l > 1000) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "lag never measured: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        tally(&client, 20).await,
        HashMap::from([(primary.port, 20)]),
        "reads went to a replica past replica_max_lag"
    );
    // SHOW SERVERS shows it too, on the replica's connections.
    let servers_rows = admin_rows(&admin, "SHOW SERVERS").await;
    assert!(
        servers_rows.iter().any(|r| r["port"].as_deref()
            == Some(replica.port.to_string().as_str())
            && r["replica_lag_ms"]
                .as_deref()
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > 1000)),
        "{servers_rows:?}"
    );
    // And /metrics.
    let addr = proxy.handle.metrics_addr().expect("exporter listening");
    let body = get_metrics(addr).await;
    let lag_line = body
        .lines()
        .find(|l| {
            l.starts_with("pgcat_server_replica_lag_seconds{")
                && l.contains(&format!("port=\"{}\"", replica.port))
        })
        .unwrap_or_else(|| panic!("no lag for the replica in /metrics:\n{body}"));
    let seconds: f64 = lag_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(seconds > 1.0, "{lag_line}");

    replica.psql_super("postgres", "SELECT pg_wal_replay_resume()");
    let resumed = Instant::now();
    loop {
        if tally(&client, 1).await.contains_key(&replica.port) {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "replica caught up but got no reads"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_followed_without_a_reload() {
    let (mut primary, replica, db) = streaming_pair();
    // Both "auto": pgcat finds which is the primary.
    let servers = [
        (primary.host.as_str(), primary.port, "auto"),
        (replica.host.as_str(), replica.port, "auto"),
    ];
    let text = config(&db, &servers, SPLIT, "");
    let proxy = TestProxy::start(&text).await;
    let admin = proxy.admin().await;
    let client = proxy.connect(&db).await;
    client.execute(WRITE, &[]).await.unwrap();
    assert_eq!(hits(&primary, &db.name), 1);
    assert_eq!(
        tally(&client, 10).await,
        HashMap::from([(replica.port, 10)])
    );
    let roles = admin_rows(&admin, "SHOW DATABASES").await;
    let role_of = |rows: &[HashMap<String, Option<String>>], port: u16| {
        rows.iter()
            .find(|r| r["port"].as_deref() == Some(port.to_string().as_str()))
            .and_then(|r| r["role"].clone())
    };
    assert_eq!(role_of(&roles, primary.port).as_deref(), Some("primary"));
    assert_eq!(role_of(&roles, replica.port).as_deref(), Some("replica"));

    primary.stop();
    replica.promote();
    let promoted = Instant::now();
    let mut client = client;
    loop {
        if client.is_closed() {
            client = proxy.connect(&db).await;
        }
        match client.execute(WRITE, &[]).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    promoted.elapsed() < Duration::from_secs(5),
                    "writes still fail 5 s after the promotion: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!(
        "writes succeed {:?} after the promotion",
        promoted.elapsed()
    );
    let rows: i64 = replica
        .psql_super(
            &db.name,
            &format!("SELECT count(*) FROM hits WHERE port = {}", replica.port),
        )
        .parse()
        .unwrap();
    assert_eq!(rows, 1, "the write after failover went to the new primary");
    let roles = admin_rows(&admin, "SHOW DATABASES").await;
    assert_eq!(role_of(&roles, replica.port).as_deref(), Some("primary"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_routed_one_by_one() {
    let p = pair();
    let proxy = TestProxy::start(&config(&p.db, &servers(&p), SPLIT, "")).await;
    let mut w = wire::Wire::connect(
        "127.0.0.1",
        proxy.port,
        &p.db.user,
        &p.db.password,
        &p.db.name,
        &[],
    )
    .await
    .unwrap();
    // One write: a read, a write, a read (extended, simple, extended), a
    // routing command, and a transaction whose reads must stay with its
    // write. Each request is routed on its own.
    w.parse("", WHERE, &[]).bind("", "", &[]).execute("").sync();
    w.query(WRITE);
    w.parse("", WHERE, &[]).bind("", "", &[]).execute("").sync();
    w.query("SHOW SERVER ROLE");
    w.query("BEGIN");
    w.parse("", WRITE, &[]).bind("", "", &[]).execute("").sync();
    w.query(WHERE);
    w.query("COMMIT");
    w.flush().await.unwrap();
    let mut ports = Vec::new();
    let mut roles = Vec::new();
    for _ in 0..8 {
        for r in w.read_until_ready().await.unwrap() {
            match r {
                wire::Reply::Row(cols) => {
                    let v = cols[0].clone().unwrap();
                    match v.parse::<u16>() {
                        Ok(port) => ports.push(port),
                        Err(_) => roles.push(v),
                    }
                }
                wire::Reply::Error { code, message } => panic!("{code}: {message}"),
                _ => {}
            }
        }
    }
    assert_eq!(ports, vec![p.replica.port, p.replica.port, p.primary.port]);
    assert_eq!(roles.len(), 1, "SHOW SERVER ROLE was answered by pgcat");
    assert_eq!(hits(&p.primary, &p.db.name), 2);
    assert_eq!(hits(&p.replica, &p.db.name), 0);
    w.terminate().await;
    proxy.stop().await;
}
