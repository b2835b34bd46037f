//! Snapshot tests of every panel, drawn with ratatui's TestBackend from
//! fixed values: a pool whose hash changed at the last reload, a lagging
//! mirror, and a server connection with unanswered keepalive probes.

use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::Terminal;

use crate::proxy::mirror::MirrorSnapshot;
use crate::proxy::net::SocketInfo;
use crate::proxy::stats::snapshot::{
    CertificateSnapshot, ClientSnapshot, PoolServerSnapshot, PoolSnapshot, ServerSnapshot, Snapshot,
};
use crate::proxy::stats::{Averages, ReloadRecord, Totals};
use crate::tui::app::App;
use crate::tui::keys::Key;
use crate::tui::LogBuffer;

const T0: u64 = 1_800_000_000;

fn socket(probes: u8, unacked: u32, retransmits: u8, last_rx_ms: u32) -> SocketInfo {
    SocketInfo {
        keepalive: true,
        keepalive_idle_s: 5,
        keepalive_interval_s: 5,
        keepalive_count: 5,
        user_timeout_ms: 10_000,
        rtt_us: 85,
        probes,
        unacked,
        retransmits,
        total_retrans: retransmits as u32,
        last_data_recv_ms: last_rx_ms,
    }
}

fn server(id: u64, state: &'static str, s: SocketInfo) -> ServerSnapshot {
    ServerSnapshot {
        id,
        db: "app".into(),
        user: "alice".into(),
        state,
        host: "127.0.0.1".into(),
        port: 5432,
        database: "app".into(),
        role: "primary",
        lag_ms: None,
        local_addr: "127.0.0.1".into(),
        local_port: 40000 + id as u16,
        connect_time_unix: T0,
        request_time_unix: T0 + 3700,
        client_id: if state == "active" { id + 8 } else { 0 },
        remote_pid: 1000 + id as i32,
        application_name: "".into(),
        socket: Some(s),
        tls: None,
    }
}

fn pool(db: &str, user: &str, mode: &'static str, hash: u64) -> PoolSnapshot {
    PoolSnapshot {
        db: db.into(),
        user: user.into(),
        server_user: user.into(),
        mode,
        config_hash: hash,
        built_at_unix: T0 + 3600,
        pool_size: 10,
        min_pool_size: 0,
        server_lifetime_ms: 3_600_000,
        paused: false,
        cl_active: 3,
        cl_waiting: 1,
        cl_idle: 8,
        sv_active: 2,
        sv_idle: 5,
        sv_login: 0,
        sv_used: 0,
        maxwait_us: 1_500,
        totals: Totals::default(),
        averages: Averages {
            wait_time_us: 230.0,
            ..Default::default()
        },
        query_hist: vec![],
        wait_hist: vec![],
        servers: vec![],
        mirrors: vec![],
    }
}

#[allow(clippy::too_many_arguments)]
fn client(
    id: u64,
    db: &str,
    user: &str,
    activity: &'static str,
    activity_ms: u64,
    app: &str,
    query: Option<&str>,
    server_id: u64,
) -> ClientSnapshot {
    ClientSnapshot {
        id,
        db: db.into(),
        user: user.into(),
        admin: false,
        state: match activity {
            "waiting" => "waiting",
            "idle" => "idle",
            _ => "active",
        },
        addr: format!("10.1.{}.{}", id / 200, id % 200 + 10),
        port: 40_000 + id as u16,
        local_addr: "127.0.0.1".into(),
        local_port: 6432,
        connect_time_unix: T0,
        request_time_unix: T0,
        wait_us: if activity == "waiting" { 1_500 } else { 0 },
        server_id,
        application_name: app.into(),
        socket: None,
        tls: None,
        xact_count: 0,
        query_count: 0,
        max_wait_us: 0,
        activity,
        activity_ms,
        query: query.map(str::to_string),
    }
}

/// Thirty clients: pgbench on app, a long-named service, psql on
/// reports; one waiting, one idle in a transaction, two running queries.
fn clients() -> Vec<ClientSnapshot> {
    let mut v = vec![
        client(
            9,
            "app",
            "alice",
            "active",
            4_200,
            "psql",
            Some("SELECT pg_sleep(30), now()\n  FROM accounts WHERE id = $1"),
            1,
        ),
        client(
            10,
            "app",
            "alice",
            "idle in transaction",
            73_000,
            "billing-worker",
            None,
            2,
        ),
        client(11, "app", "alice", "waiting", 1, "pgbench", None, 0),
        client(
            12,
            "analytics_reporting_eu_west_1",
            "reporting_readonly_service",
            "active",
            250,
            "metabase",
            Some("SELECT date_trunc('day', created_at) AS day, count(*) FROM events GROUP BY 1 ORDER BY 1 DESC LIMIT 90"),
            3,
        ),
    ];
    for id in 13..31 {
        v.push(client(
            id,
            "app",
            "alice",
            "idle",
            1_000 * id,
            "pgbench",
            None,
            0,
        ));
    }
    for id in 31..35 {
        v.push(client(
            id,
            "analytics_reporting_eu_west_1",
            "reporting_readonly_service",
            "idle",
            3_600_000 + id,
            "metabase",
            None,
            0,
        ));
    }
    for id in 35..39 {
        v.push(client(
            id, "reports", "bob", "idle", 90_000, "psql", None, 0,
        ));
    }
    v
}

pub(crate) fn fixture() -> Snapshot {
    let mut app_pool = pool("app", "alice", "transaction", 0x1234_abcd_5678_ef90);
    app_pool.servers = vec![
        PoolServerSnapshot {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "app".into(),
            role: "primary",
            configured_role: "primary",
            lag_ms: None,
            shard: 0,
            banned: false,
            ban_remaining_s: 0,
            last_error: None,
            connections: 7,
            idle: 5,
        },
        PoolServerSnapshot {
            host: "10.0.0.2".into(),
            port: 5432,
            database: "app".into(),
            role: "replica",
            configured_role: "auto",
            lag_ms: Some(1250),
            shard: 0,
            banned: true,
            ban_remaining_s: 42,
            last_error: Some("connection refused".into()),
            connections: 0,
            idle: 0,
        },
    ];
    app_pool.mirrors = vec![MirrorSnapshot {
        host: "10.0.0.9".into(),
        port: 5432,
        server_host: "127.0.0.1".into(),
        server_port: 5432,
        shard: 0,
        server_index: 0,
        state: "connected",
        last_error: None,
        tasks: 7,
        connections: 7,
        sent_messages: 4567,
        dropped_transactions: 3,
        errors: 0,
        queue_depth: 12,
        lag_current_us: Some(1_500_000),
        lag_max_us: Some(2_500_000),
        lag_p99_us: Some(2_100_000),
    }];
    let reports = pool("reports", "bob", "session", 0xfeed_0000_1111_2222);
    let mut long = pool(
        "analytics_reporting_eu_west_1",
        "reporting_readonly_service",
        "transaction",
        0x0bad_cafe_0000_0001,
    );
    long.cl_waiting = 0;
    long.pool_size = 40;
    Snapshot {
        version: "0.1.0".into(),
        listen: "127.0.0.1:6432".into(),
        config_path: Some("/etc/pgcat/pgcat.toml".into()),
        started_at_unix: T0,
        taken_at_unix: T0 + 3723,
        pools: vec![app_pool, long, reports],
        clients: clients(),
        servers: vec![
            server(1, "active", socket(0, 0, 0, 12)),
            // Unanswered keepalive probes: the server went quiet.
            server(2, "active", socket(2, 1, 1, 7_200)),
            {
                let mut s = server(3, "active", socket(0, 0, 0, 3));
                s.db = "analytics_reporting_eu_west_1".into();
                s.user = "reporting_readonly_service".into();
                s.host = "analytics-replica-2.internal.example.com".into();
                s.client_id = 12;
                s
            },
        ],
        reloads: vec![ReloadRecord {
            at_unix: T0 + 3600,
            trigger: "SIGHUP".into(),
            ok: true,
            error: None,
            changed: vec!["app".into()],
        }],
        reload_count: 1,
        reload_failures: 0,
        certificates: vec![CertificateSnapshot {
            key: "tls_certificate".into(),
            path: "/etc/pgcat/server.crt".into(),
            subject: "CN=pgcat.example".into(),
            not_after_unix: 1_900_000_000,
        }],
    }
}

pub(crate) fn app() -> App {
    let logs = LogBuffer::default();
    logs.push(
        "2027-01-15T08:00:00Z  INFO pgcat::proxy: pgcat listening local_addr=127.0.0.1:6432".into(),
    );
    logs.push("2027-01-15T08:00:01Z  WARN pgcat::proxy::pool: server connection failed server=10.0.0.2:5432/app".into());
    logs.push("2027-01-15T09:00:00Z ERROR pgcat::proxy::reload: reload failed, keeping the running config".into());
    let mut app = App::new(logs, Some("/etc/pgcat/pgcat.toml".into()), false);
    app.update(fixture());
    // Lag grew over the last samples.
    let key = crate::tui::app::mirror_key(
        &app.snapshot.as_ref().unwrap().pools[0],
        &app.snapshot.as_ref().unwrap().pools[0].mirrors[0],
    );
    let h = app.lag_history.get_mut(&key).unwrap();
    h.clear();
    h.extend([10, 12, 15, 40, 90, 300, 800, 1200, 1500]);
    // Throughput that rose, and latency over the last seconds.
    let rising: Vec<u64> = (0..60).map(|i| 200 + i * i).collect();
    let flat: Vec<u64> = (0..60).map(|i| 40 + i % 3).collect();
    for (key, tps, q50, q99) in [
        (("app", "alice"), &rising, 180, 2_400),
        (
            (
                "analytics_reporting_eu_west_1",
                "reporting_readonly_service",
            ),
            &flat,
            35_000,
            900_000,
        ),
    ] {
        let mut h = crate::tui::app::PoolHistory::with_rates(
            tps,
            &tps.iter().map(|x| x * 3).collect::<Vec<_>>(),
        );
        h.query_p50 = Some(q50);
        h.query_p99 = Some(q99);
        h.wait_p50 = Some(20);
        h.wait_p99 = Some(1_400);
        app.history.insert((key.0.into(), key.1.into()), h);
    }
    app
}

fn text(buffer: &Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn render(width: u16, height: u16, f: impl FnOnce(&mut ratatui::Frame)) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(f).unwrap();
    text(terminal.backend().buffer())
}

#[test]
fn header_panel() {
    let app = app();
    insta::assert_snapshot!(render(80, 2, |f| super::draw_header(f, f.area(), &app)));
}

#[test]
fn pools_panel_marks_the_changed_hash() {
    let app = app();
    let out = render(80, 6, |f| super::draw_pools(f, f.area(), &app));
    assert!(out.contains("1234abcd*"), "{out}");
    assert!(out.contains("feed0000 "), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn servers_panel_shows_keepalive_state() {
    let app = app();
    let out = render(80, 5, |f| super::draw_servers(f, f.area(), &app));
    assert!(out.contains("5/5/5"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn servers_panel_shows_bans_and_lag_of_servers_without_connections() {
    let app = app();
    let out = render(80, 6, |f| super::draw_servers(f, f.area(), &app));
    let row = out
        .lines()
        .find(|l| l.contains("10.0.0.2:5432"))
        .unwrap_or_else(|| panic!("banned replica missing:\n{out}"));
    assert!(
        row.contains("rep") && row.contains("42s") && row.contains("1.2s"),
        "{row}"
    );
}

#[test]
fn mirrors_panel_shows_lag() {
    let app = app();
    let out = render(80, 4, |f| super::draw_mirrors(f, f.area(), &app));
    assert!(out.contains("1.5s") && out.contains("2.5s"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn log_panel() {
    let app = app();
    insta::assert_snapshot!(render(80, 5, |f| super::draw_logs(f, f.area(), &app)));
}

#[test]
fn whole_dashboard_fits_80x24() {
    let app = app();
    let out = render(80, 24, |f| super::draw(f, &app));
    // Every panel is there, and the busiest client comes first.
    for panel in ["Pools", "Servers", "Clients", "Mirrors"] {
        assert!(out.contains(panel), "{panel} missing:\n{out}");
    }
    insta::assert_snapshot!(out);
}

#[test]
fn whole_dashboard_fills_200x60() {
    let app = app();
    let out = render(200, 60, |f| super::draw(f, &app));
    // A taller screen shows more clients, not blank space: all 30 fit,
    // with their queries, and the sparklines and percentiles show.
    let clients = out.lines().filter(|l| l.contains(":400")).count();
    assert_eq!(clients, 30, "{out}");
    assert!(out.contains("pg_sleep(30), now() FROM accounts"), "{out}");
    assert!(out.contains("idle in txn"), "{out}");
    assert!(out.contains("waiting"), "{out}");
    assert!(out.contains("tx/s history") && out.contains('█'), "{out}");
    assert!(out.contains("2.4ms") && out.contains("900ms"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn values_sit_under_their_headers() {
    let app = app();
    let out = render(200, 60, |f| super::draw(f, &app));
    let lines: Vec<&str> = out.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.contains("sv a/i/l"))
        .expect("pools header");
    let col = |l: &str, pat: &str| l.find(pat).map(|b| l[..b].chars().count());
    // Right-aligned numbers end where their header ends.
    let size_end = col(lines[header], "size").unwrap() + 4;
    let row = lines[header + 1];
    assert_eq!(
        row.chars().nth(size_end - 1),
        Some('0'),
        "pool_size 10 under size:\n{}\n{row}",
        lines[header]
    );
    // Text starts where its header starts.
    assert_eq!(col(lines[header], "mode"), col(row, "txn"));
}

#[test]
fn servers_follow_the_selected_pool_or_show_all() {
    let mut app = app();
    // Nothing selected: every pool's connections, with a pool column.
    let out = render(120, 12, |f| super::draw_servers(f, f.area(), &app));
    assert!(out.contains("Servers (all pools)"), "{out}");
    assert!(out.contains("analytics-replica-2"), "{out}");
    assert!(out.contains("app/alice"), "{out}");
    // The long-named pool selected: only its connection.
    app.on_key(Key::Down);
    app.on_key(Key::Down);
    assert_eq!(
        app.selected_pool().unwrap().db,
        "analytics_reporting_eu_west_1"
    );
    let out = render(120, 12, |f| super::draw_servers(f, f.area(), &app));
    assert!(out.contains("analytics-replica-2"), "{out}");
    assert!(!out.contains("127.0.0.1:5432"), "{out}");
    // Esc: all again.
    app.on_key(Key::Esc);
    assert!(app.selected_pool().is_none());
}

#[test]
fn clients_sort_filter_and_kill_asks_first() {
    let mut app = app();
    let ids = |app: &App| {
        app.visible_clients()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    // Busy first, longest in its state first.
    assert_eq!(&ids(&app)[..4], &[10, 9, 12, 11]);
    app.on_key(Key::Tab);
    app.on_key(Key::Tab);
    assert_eq!(app.focus, crate::tui::app::Focus::Clients);
    app.on_key(Key::Char('s'));
    assert_eq!(&ids(&app)[..3], &[9, 10, 11]);
    app.on_key(Key::Char('s'));
    // `/` filters clients by what is shown.
    app.on_key(Key::Char('/'));
    for c in "metabase".chars() {
        app.on_key(Key::Char(c));
    }
    app.on_key(Key::Enter);
    assert_eq!(ids(&app), vec![12, 34, 33, 32, 31]);
    // k asks; a key other than y keeps the client.
    app.on_key(Key::Down);
    assert_eq!(app.on_key(Key::Char('k')), None);
    let out = render(80, 24, |f| super::draw(f, &app));
    assert!(out.contains("End client 34"), "{out}");
    assert_eq!(app.on_key(Key::Char('n')), None);
    assert!(app.confirm.is_none());
    app.on_key(Key::Char('k'));
    insta::assert_snapshot!(
        "kill_confirmation",
        render(80, 24, |f| super::draw(f, &app))
    );
    assert_eq!(
        app.on_key(Key::Char('y')),
        Some(crate::tui::app::Command::KillClient(34))
    );
    // The footer names the keys of the focused panel.
    assert!(super::footer_keys(&app).contains("k kill"));
    app.on_key(Key::Tab);
    assert!(!super::footer_keys(&app).contains("k kill"));
}

#[test]
fn help_lists_every_key() {
    let mut app = app();
    app.on_key(Key::Char('?'));
    let out = render(100, 30, |f| super::draw(f, &app));
    for (key, _) in crate::tui::keys::HELP {
        assert!(out.contains(key), "{key} missing:\n{out}");
    }
}

#[test]
fn help_and_edit_overlays() {
    let mut app = app();
    app.on_key(Key::Char('?'));
    insta::assert_snapshot!("help", render(80, 24, |f| super::draw(f, &app)));
    app.on_key(Key::Esc);
    app.on_key(Key::Down);
    app.on_key(Key::Char('E'));
    for c in "12".chars() {
        app.on_key(Key::Char(c));
    }
    insta::assert_snapshot!("edit", render(80, 24, |f| super::draw(f, &app)));
}

#[test]
fn filter_selects_and_keys_move() {
    let mut app = app();
    assert!(app.selected_pool().is_none());
    app.on_key(Key::Down);
    assert_eq!(app.selected_pool().unwrap().db, "app");
    app.on_key(Key::Down);
    assert_eq!(
        app.selected_pool().unwrap().db,
        "analytics_reporting_eu_west_1"
    );
    app.on_key(Key::Down);
    assert_eq!(app.selected_pool().unwrap().db, "reports");
    app.on_key(Key::Char('/'));
    for c in "app".chars() {
        app.on_key(Key::Char(c));
    }
    app.on_key(Key::Enter);
    assert_eq!(app.visible_pools().len(), 1);
    assert_eq!(app.selected_pool().unwrap().db, "app");
    assert_eq!(
        app.on_key(Key::Char('p')),
        Some(crate::tui::app::Command::Pause {
            db: "app".into(),
            user: "alice".into(),
            paused: true
        })
    );
    assert_eq!(
        app.on_key(Key::Char('r')),
        Some(crate::tui::app::Command::Reload)
    );
    assert_eq!(
        app.on_key(Key::Char('q')),
        Some(crate::tui::app::Command::Quit)
    );
    assert!(app.quit);
}
