//! Server connections of the selected pool, or of every pool when none
//! is selected, with the client each serves and keepalive state as the
//! kernel reports it: configured idle/interval/count and user timeout
//! (read back from the socket), RTT, unacknowledged probes, retransmits,
//! time since data was last received. Servers without a connection
//! (banned, or not used yet) still show, with their ban and lag.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::Frame;

use super::fit::{self, Column, FitRow};
use super::{block, fmt_ms, fmt_us, focused};
use crate::proxy::stats::snapshot::PoolServerSnapshot;
use crate::tui::app::{App, Focus};

const COLUMNS: [Column; 16] = [
    Column::text("pool", 0, 24),
    Column::num("id", 1),
    Column::text("address", 0, 26),
    Column::text("rol", 6, 3),
    Column::text("state", 0, 6),
    Column::num("pid", 2),
    Column::num("client", 5),
    Column::text("ban", 6, 4),
    Column::text("lag", 6, 6),
    Column::text("kalive", 8, 8),
    Column::text("utmo", 5, 5),
    Column::num("rtt", 2),
    Column::num("prb", 7),
    Column::num("unack", 3),
    Column::num("retr", 3),
    Column::num("rx ago", 7),
];

/// Rows the panel holds (for the layout).
pub fn count(app: &App) -> usize {
    rows(app).len()
}

fn rows(app: &App) -> Vec<FitRow> {
    let Some(s) = app.snapshot.as_ref() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for p in app.pools_in_scope() {
        let pool = format!("{}/{}", p.db, p.user);
        for c in s
            .servers
            .iter()
            .filter(|c| c.db == p.db && c.user == p.user)
        {
            let pool_server = p
                .servers
                .iter()
                .find(|x| x.host == c.host && x.port == c.port);
            let role = pool_server.map(|x| x.role).unwrap_or(c.role);
            let (ka, utmo, rtt, probes, unacked, retr, last) = match &c.socket {
                Some(k) => (
                    if k.keepalive {
                        format!(
                            "{}/{}/{}",
                            k.keepalive_idle_s, k.keepalive_interval_s, k.keepalive_count
                        )
                    } else {
                        "off".to_string()
                    },
                    if k.user_timeout_ms == 0 {
                        "os".to_string()
                    } else {
                        format!("{}s", k.user_timeout_ms / 1000)
                    },
                    fmt_us(k.rtt_us as u64),
                    k.probes.to_string(),
                    k.unacked.to_string(),
                    k.retransmits.to_string(),
                    fmt_ms(k.last_data_recv_ms as u64),
                ),
                None => (
                    "?".into(),
                    "?".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ),
            };
            let trouble = c
                .socket
                .as_ref()
                .is_some_and(|k| k.probes > 0 || k.retransmits > 0);
            let row = FitRow::new(vec![
                pool.clone(),
                c.id.to_string(),
                format!("{}:{}", c.host, c.port),
                role[..role.len().min(3)].to_string(),
                c.state.to_string(),
                c.remote_pid.to_string(),
                if c.client_id > 0 {
                    c.client_id.to_string()
                } else {
                    "-".into()
                },
                ban_cell(pool_server),
                lag_cell(pool_server),
                ka,
                utmo,
                rtt,
                probes,
                unacked,
                retr,
                last,
            ]);
            rows.push(if trouble {
                row.style(Style::default().fg(Color::Red))
            } else {
                row
            });
        }
        for x in p.servers.iter().filter(|x| {
            !s.servers
                .iter()
                .any(|c| c.db == p.db && c.user == p.user && c.host == x.host && c.port == x.port)
        }) {
            let style = if x.banned {
                Style::default().fg(Color::Red)
            } else {
                Style::default().fg(Color::DarkGray)
            };
            let mut cells = vec![
                pool.clone(),
                "-".into(),
                format!("{}:{}", x.host, x.port),
                x.role[..x.role.len().min(3)].to_string(),
                "none".into(),
                "-".into(),
                "-".into(),
                ban_cell(Some(x)),
                lag_cell(Some(x)),
            ];
            cells.resize(COLUMNS.len(), String::new());
            rows.push(FitRow::new(cells).style(style));
        }
    }
    rows
}

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let title = match app.selected_pool() {
        Some(p) => format!("Servers of {}/{}", p.db, p.user),
        None => "Servers (all pools)".to_string(),
    };
    let skip = if focused(app, Focus::Servers) {
        app.scroll
    } else {
        0
    };
    let mut rows: Vec<FitRow> = rows(app).into_iter().skip(skip).collect();
    // The pool column only when several pools show.
    let columns = if app.selected_pool().is_some() {
        for r in rows.iter_mut() {
            r.cells.remove(0);
        }
        &COLUMNS[1..]
    } else {
        &COLUMNS[..]
    };
    let table = fit::table(columns, rows, area.width.saturating_sub(2))
        .block(block(&title, focused(app, Focus::Servers)));
    frame.render_widget(table, area);
}

/// A server's ban: the seconds it has left, or `-`.
fn ban_cell(s: Option<&PoolServerSnapshot>) -> String {
    match s {
        Some(x) if x.banned && x.ban_remaining_s < 100 => format!("{}s", x.ban_remaining_s.max(1)),
        Some(x) if x.banned => format!("{}m", (x.ban_remaining_s / 60).min(99)),
        _ => "-".into(),
    }
}

/// A server's replay lag as last measured, or `-`.
fn lag_cell(s: Option<&PoolServerSnapshot>) -> String {
    match s.and_then(|x| x.lag_ms) {
        Some(l) => fmt_ms(l.max(0) as u64),
        None => "-".into(),
    }
}
