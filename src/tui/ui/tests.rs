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
        client_id: 0,
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
        servers: vec![],
        mirrors: vec![],
    }
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
    Snapshot {
        version: "0.1.0".into(),
        listen: "127.0.0.1:6432".into(),
        config_path: Some("/etc/pgcat/pgcat.toml".into()),
        started_at_unix: T0,
        taken_at_unix: T0 + 3723,
        pools: vec![app_pool, reports],
        clients: vec![ClientSnapshot {
            id: 9,
            db: "app".into(),
            user: "alice".into(),
            admin: false,
            state: "active",
            addr: "127.0.0.1".into(),
            port: 51000,
            local_addr: "127.0.0.1".into(),
            local_port: 6432,
            connect_time_unix: T0,
            request_time_unix: T0,
            wait_us: 0,
            server_id: 1,
            application_name: "psql".into(),
            socket: None,
            tls: Some("TLSv1_3/TLS13_AES_256_GCM_SHA384".into()),
            xact_count: 0,
            query_count: 0,
            max_wait_us: 0,
        }],
        servers: vec![
            server(1, "active", socket(0, 0, 0, 12)),
            // Unanswered keepalive probes: the server went quiet.
            server(2, "idle", socket(2, 1, 1, 7_200)),
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
    insta::assert_snapshot!(render(80, 24, |f| super::draw(f, &app)));
}

#[test]
fn help_and_edit_overlays() {
    let mut app = app();
    app.on_key(Key::Char('?'));
    insta::assert_snapshot!("help", render(80, 24, |f| super::draw(f, &app)));
    app.on_key(Key::Esc);
    app.on_key(Key::Char('E'));
    for c in "12".chars() {
        app.on_key(Key::Char(c));
    }
    insta::assert_snapshot!("edit", render(80, 24, |f| super::draw(f, &app)));
}

#[test]
fn filter_selects_and_keys_move() {
    let mut app = app();
    assert_eq!(app.selected_pool().unwrap().db, "app");
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
