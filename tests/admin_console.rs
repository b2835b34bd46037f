//! The admin console (databases `pgcat` and `pgbouncer`) and the
//! Prometheus exporter.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use support::*;

const SHOW_COMMANDS: &[&str] = &[
    "SHOW POOLS",
    "SHOW STATS",
    "SHOW DATABASES",
    "SHOW SERVERS",
    "SHOW CLIENTS",
    "SHOW CONFIG",
    "SHOW LISTS",
    "SHOW USERS",
    "SHOW VERSION",
    "SHOW BANS",
    "SHOW HELP",
    "SHOW RELOADS",
    "SHOW MIRRORS",
    "SHOW STATUS",
    "SHOW LATENCY",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_command_renders_in_psql() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let proxy = TestProxy::start(&config_text("", &[PoolSpec::new(&db)])).await;
    let client = proxy.connect(&db).await;
    client.batch_execute("SELECT 1").await.unwrap();
    for admin_db in ["pgcat", "pgbouncer"] {
        for command in SHOW_COMMANDS {
            let mut psql = Command::new("psql");
            psql.args(["-X", "-P", "pager=off", "-c", command])
                .arg(format!(
                    "host=127.0.0.1 port={} user={ADMIN_USER} dbname={admin_db}",
                    proxy.port
                ))
                .env("PGPASSWORD", ADMIN_PASSWORD);
            let out = run_tool_async(psql, Duration::from_secs(20)).await;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{command} on {admin_db}: {stderr}");
            assert!(!stderr.contains("ERROR"), "{command}: {stderr}");
            // psql's aligned output: a header, a rule, rows, "(N rows)".
            assert!(stdout.contains("---"), "{command}: {stdout}");
            assert!(stdout.contains(" row"), "{command}: {stdout}");
        }
    }
    // The client shows up where it should.
    let admin = proxy.admin().await;
    let pools = admin_rows(&admin, "SHOW POOLS").await;
    let row = pools
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .unwrap();
    assert_eq!(row["user"].as_deref(), Some(db.user.as_str()));
    assert_eq!(row["pool_mode"].as_deref(), Some("transaction"));
    assert_eq!(row["config_hash"].as_ref().unwrap().len(), 16);
    assert_eq!(row["sv_idle"].as_deref(), Some("1"), "{row:?}");
    let clients = admin_rows(&admin, "SHOW CLIENTS").await;
    let mine = clients
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .expect("client listed");
    assert_eq!(mine["state"].as_deref(), Some("idle"));
    assert_eq!(mine["keepalive_idle"].as_deref(), Some("5"));
    let servers = admin_rows(&admin, "SHOW SERVERS").await;
    let server = servers
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .expect("server listed");
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        server["remote_pid"].as_deref(),
        Some(pid.to_string().as_str())
    );
    let stats = admin_rows(&admin, "SHOW STATS").await;
    let stats = stats
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .unwrap();
    let xacts: u64 = stats["total_xact_count"]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(xacts >= 2, "{stats:?}");
    let version = admin_rows(&admin, "SHOW VERSION").await;
    assert!(version[0]["version"]
        .as_deref()
        .unwrap()
        .starts_with("pgcat "));
    // SET is accepted and ignored; unknown commands get an error.
    admin
        .simple_query("SET application_name = 'x'")
        .await
        .unwrap();
    let err = admin.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("SHOW HELP"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_column_order_comes_first() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let proxy = TestProxy::start(&config_text("", &[PoolSpec::new(&db)])).await;
    let admin = proxy.admin().await;
    let expect: HashMap<&str, &[&str]> = HashMap::from([
        (
            "SHOW POOLS",
            &[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
                "load_balance_hosts",
            ][..],
        ),
        (
            "SHOW DATABASES",
            &[
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
                "min_pool_size",
                "reserve_pool_size",
                "server_lifetime",
                "pool_mode",
                "load_balance_hosts",
                "max_connections",
                "current_connections",
                "max_client_connections",
                "current_client_connections",
                "paused",
                "disabled",
            ][..],
        ),
        (
            "SHOW CLIENTS",
            &[
                "type",
                "user",
                "database",
                "replication",
                "state",
                "addr",
                "port",
                "local_addr",
                "local_port",
                "connect_time",
                "request_time",
                "wait",
                "wait_us",
                "close_needed",
                "ptr",
                "link",
                "remote_pid",
                "tls",
                "application_name",
                "id",
            ][..],
        ),
        (
            "SHOW STATS",
            &[
                "database",
                "total_xact_count",
                "total_query_count",
                "total_server_assignment_count",
                "total_received",
                "total_sent",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
                "total_client_parse_count",
                "total_server_parse_count",
                "total_bind_count",
                "total_client_login_count",
                "avg_xact_count",
                "avg_query_count",
                "avg_server_assignment_count",
                "avg_recv",
                "avg_sent",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
                "avg_client_parse_count",
                "avg_server_parse_count",
                "avg_bind_count",
                "avg_client_login_count",
            ][..],
        ),
        (
            "SHOW USERS",
            &[
                "name",
                "pool_size",
                "reserve_pool_size",
                "pool_mode",
                "max_user_connections",
                "current_connections",
                "max_user_client_connections",
                "current_client_connections",
            ][..],
        ),
        ("SHOW LISTS", &["list", "items"][..]),
        (
            "SHOW CONFIG",
            &["key", "value", "default", "changeable"][..],
        ),
    ]);
    for (command, columns) in expect {
        let messages = admin.simple_query(command).await.unwrap();
        let names: Vec<String> = messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::RowDescription(cols) => {
                    Some(cols.iter().map(|c| c.name().to_string()).collect())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{command} returned no row description"));
        assert_eq!(&names[..columns.len()], columns, "{command}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_user_with_its_password_gets_in() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    for auth in ["md5", "scram-sha-256"] {
        let text = config_text(
            &format!("admin_auth_type = \"{auth}\""),
            &[PoolSpec::new(&db)],
        );
        let proxy = TestProxy::start(&text).await;
        let admin = proxy.admin().await;
        admin.simple_query("SHOW VERSION").await.unwrap();
        let wrong = format!(
            "host=127.0.0.1 port={} user={ADMIN_USER} password=nope dbname=pgbouncer",
            proxy.port
        );
        let err = try_connect(&wrong).await.unwrap_err();
        assert_eq!(err.as_db_error().unwrap().code().code(), "28P01", "{auth}");
        let not_admin = format!(
            "host=127.0.0.1 port={} user={} password={} dbname=pgcat",
            proxy.port, db.user, db.password
        );
        let err = try_connect(&not_admin).await.unwrap_err();
        assert_eq!(err.as_db_error().unwrap().code().code(), "28000", "{auth}");
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_clients_and_reconnect_replaces_connections() {
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
    let admin = proxy.admin().await;
    let client = proxy.connect(&db).await;
    let pid1: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    admin
        .simple_query(&format!("RECONNECT {}", db.name))
        .await
        .unwrap();
    let pid2: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid1, pid2, "RECONNECT replaced the server connection");

    client.batch_execute("BEGIN").await.unwrap();
    admin
        .simple_query(&format!("KILL {}", db.name))
        .await
        .unwrap();
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the killed client is gone"
    );
    // New clients wait until RESUME.
    let waiting = tokio::spawn({
        let conn = proxy.conn_str(&db);
        async move {
            let c = connect(&conn).await;
            c.query_one("SELECT 3", &[])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiting.is_finished());
    admin
        .simple_query(&format!("RESUME {}", db.name))
        .await
        .unwrap();
    let v = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(v, 3);
    // The killed transaction's backend did not linger.
    eventually(Duration::from_secs(5), "old backends gone", || {
        pg.backends(&db.name, &db.user) <= 1
    })
    .await;
    proxy.stop().await;
}

/// A minimal parser for the Prometheus text format: every non-comment
/// line is `name{labels} value`; returns (name, labels, value).
fn parse_metrics(body: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    let mut out = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), HashMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let mut labels = HashMap::new();
                let mut chars = rest.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut val = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => val.push(chars.next().unwrap()),
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                    labels.insert(key, val);
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(&name);
        assert!(typed.contains(family), "{name} has no TYPE line");
        out.push((name, labels, value));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_parseable_prometheus_text() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let text = config_text(
        "enable_prometheus_exporter = true\nprometheus_exporter_port = 0",
        &[PoolSpec::new(&db)],
    );
    let file = ConfigFile::new(&text);
    let proxy = TestProxy::start_file(&file).await;
    let client = proxy.connect(&db).await;
    for _ in 0..3 {
        client.batch_execute("SELECT 1").await.unwrap();
    }
    proxy.handle.reload().unwrap();
    let addr = proxy.handle.metrics_addr().expect("exporter listening");
    let body = get_metrics(addr).await;
    let (head, body) = body.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain"));
    let samples = parse_metrics(body);
    let find = |name: &str, pool: bool| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && (!pool || l.get("pool") == Some(&db.name)))
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let (_, labels, _) = find("pgcat_pool_config_info", true);
    assert_eq!(labels["hash"].len(), 16);
    assert!(find("pgcat_pool_transactions_total", true).2 >= 3.0);
    assert_eq!(find("pgcat_reloads_total", false).2, 1.0);
    assert_eq!(find("pgcat_last_reload_success", false).2, 1.0);
    assert_eq!(find("pgcat_pool_clients", true).1.len(), 3);
    // The same through curl, as an operator would check it.
    let out = run_tool_async(
        {
            let mut c = Command::new("curl");
            c.args(["-s", "-f", &format!("http://{addr}/metrics")]);
            c
        },
        Duration::from_secs(20),
    )
    .await;
    assert!(out.status.success());
    assert!(!parse_metrics(&String::from_utf8_lossy(&out.stdout)).is_empty());
    proxy.stop().await;
}

/// The bucket (index into the sorted bounds) a value in µs falls in.
fn bucket(bounds_us: &[f64], v: f64) -> usize {
    bounds_us
        .iter()
        .position(|&b| v <= b)
        .unwrap_or(bounds_us.len())
}

/// Prometheus' histogram_quantile over cumulative buckets (le in
/// seconds), in microseconds.
fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().unwrap().1;
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, cum) in buckets {
        if cum >= rank && cum > prev.1 {
            if le.is_infinite() {
                return prev.0 * 1e6;
            }
            let within = (rank - prev.1) / (cum - prev.1);
            return (prev.0 + (le - prev.0) * within) * 1e6;
        }
        prev = (le, cum);
    }
    prev.0 * 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histograms_in_metrics_match_show_stats_percentiles() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let text = config_text(
        "enable_prometheus_exporter = true\nprometheus_exporter_port = 0",
        &[PoolSpec::new(&db)],
    );
    let proxy = TestProxy::start(&text).await;
    let client = proxy.connect(&db).await;
    // Two populations: fast queries, and one in eleven taking 20 ms, so
    // the median is fast and the 99th percentile is slow.
    for i in 0..220 {
        let sql = if i % 11 == 0 {
            "SELECT pg_sleep(0.02)"
        } else {
            "SELECT 1"
        };
        client.simple_query(sql).await.unwrap();
    }
    let admin = proxy.admin().await;
    let stats = admin_rows(&admin, "SHOW STATS").await;
    let stats = stats
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .unwrap();
    let stat = |k: &str| -> f64 { stats[k].as_deref().unwrap().parse().unwrap() };
    let addr = proxy.handle.metrics_addr().expect("exporter listening");
    let body = get_metrics(addr).await;
    let samples = parse_metrics(body.split_once("\r\n\r\n").unwrap().1);
    let buckets = |name: &str| -> Vec<(f64, f64)> {
        let mut b: Vec<(f64, f64)> = samples
            .iter()
            .filter(|(n, l, _)| n == name && l.get("pool") == Some(&db.name))
            .map(|(_, l, v)| {
                let le = match l["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    x => x.parse().unwrap(),
                };
                (le, *v)
            })
            .collect();
        b.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        b
    };
    let query = buckets("pgcat_pool_query_duration_seconds_bucket");
    let wait = buckets("pgcat_pool_wait_duration_seconds_bucket");
    assert!(query.len() > 30, "{query:?}");
    assert_eq!(query.last().unwrap().1, 220.0, "{query:?}");
    assert_eq!(
        wait.last().unwrap().1,
        stat("total_server_assignment_count")
    );
    // The bounds of the exported buckets, in µs (without +Inf).
    let bounds: Vec<f64> = query
        .iter()
        .filter(|b| b.0.is_finite())
        .map(|b| b.0 * 1e6)
        .collect();
    for (hist, q, column) in [
        (&query, 0.5, "query_p50"),
        (&query, 0.99, "query_p99"),
        (&wait, 0.5, "wait_p50"),
        (&wait, 0.99, "wait_p99"),
    ] {
        let from_metrics = histogram_quantile(hist, q);
        let shown = stat(column);
        // Within one bucket: no further apart than the width of the
        // bucket the exported quantile falls in.
        let i = bucket(&bounds, from_metrics);
        let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
        let width = bounds.get(i).copied().unwrap_or(lower) - lower;
        assert!(
            (from_metrics - shown).abs() <= width,
            "{column}: SHOW STATS says {shown} µs, /metrics {from_metrics} µs"
        );
    }
    assert!(stat("query_p50") < 20_000.0, "{stats:?}");
    assert!(stat("query_p99") >= 20_000.0, "{stats:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_tells_what_each_client_runs_and_kill_client_ends_one() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let proxy = TestProxy::start(&config_text("", &[PoolSpec::new(&db)])).await;
    let admin = proxy.admin().await;
    let sleeper = connect(&format!("{} application_name=sleeper", proxy.conn_str(&db))).await;
    let holder = connect(&format!("{} application_name=holder", proxy.conn_str(&db))).await;
    let bystander = proxy.connect(&db).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let running = tokio::spawn(async move {
        let r = sleeper.simple_query("SELECT pg_sleep(30) AS slow").await;
        (r, sleeper)
    });
    let row_of = |rows: &[HashMap<String, Option<String>>], app: &str| {
        rows.iter()
            .find(|r| r["application_name"].as_deref() == Some(app))
            .cloned()
            .unwrap_or_else(|| panic!("{app} not in SHOW CLIENTS: {rows:?}"))
    };
    let mut first_ms = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = admin_rows(&admin, "SHOW CLIENTS").await;
        let r = row_of(&rows, "sleeper");
        if r["activity"].as_deref() == Some("active") {
            assert_eq!(r["query"].as_deref(), Some("SELECT pg_sleep(30) AS slow"));
            assert!(r["link"].is_some(), "holds a server: {r:?}");
            let ms: u64 = r["activity_ms"].as_deref().unwrap().parse().unwrap();
            match first_ms {
                None => first_ms = Some(ms),
                Some(f) if ms > f => break,
                Some(_) => {}
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sleeping client never showed as active with a growing time: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = admin_rows(&admin, "SHOW CLIENTS").await;
    let h = row_of(&rows, "holder");
    assert_eq!(
        h["activity"].as_deref(),
        Some("idle in transaction"),
        "{h:?}"
    );
    assert_eq!(h["query"], None, "the query text goes when it ends: {h:?}");
    // KILL_CLIENT ends the sleeper: its query fails at once, the others
    // keep going.
    let id = row_of(&rows, "sleeper")["id"].clone().unwrap();
    admin
        .simple_query(&format!("KILL_CLIENT {id}"))
        .await
        .unwrap();
    let (result, sleeper) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the killed client's query ends")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
    assert!(sleeper.is_closed());
    bystander.batch_execute("SELECT 1").await.unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    let rows = admin_rows(&admin, "SHOW CLIENTS").await;
    assert!(!rows
        .iter()
        .any(|r| r["application_name"].as_deref() == Some("sleeper")));
    let err = admin.simple_query("KILL_CLIENT 999999").await.unwrap_err();
    let msg = err.as_db_error().map(|e| e.message().to_string());
    assert!(
        msg.as_deref().is_some_and(|m| m.contains("no such client")),
        "{err:?}"
    );
    proxy.stop().await;
}
