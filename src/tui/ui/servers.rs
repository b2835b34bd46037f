//! Server connections of the selected pool, with keepalive state as the
//! kernel reports it: configured idle/interval/count and user timeout
//! (read back from the socket), RTT, unacknowledged probes, retransmits,
//! time since data was last received.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Cell, Row, Table};
use ratatui::Frame;

use super::{block, fmt_ms, fmt_us, focused};
use crate::tui::app::{App, Focus};

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let title = match app.selected_pool() {
        Some(p) => format!("Servers of {}/{}", p.db, p.user),
        None => "Servers".to_string(),
    };
    let header = Row::new([
        "address", "rol", "state", "ban", "lag", "kalive", "utmo", "rtt", "prb", "unack", "retr",
        "rx ago",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let mut rows = Vec::new();
    if let (Some(p), Some(s)) = (app.selected_pool(), app.snapshot.as_ref()) {
        for c in s
            .servers
            .iter()
            .filter(|c| c.db == p.db && c.user == p.user)
            .skip(if focused(app, Focus::Servers) {
                app.scroll
            } else {
                0
            })
        {
            let pool_server = p
                .servers
                .iter()
                .find(|x| x.host == c.host && x.port == c.port);
            let role = pool_server.map(|x| x.role).unwrap_or(c.role);
            let ban = ban_cell(pool_server);
            let lag = lag_cell(pool_server);
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
            let style = if trouble {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            rows.push(
                Row::new(vec![
                    Cell::from(format!("{}:{}", c.host, c.port)),
                    Cell::from(&role[..role.len().min(3)]),
                    Cell::from(c.state),
                    Cell::from(ban),
                    Cell::from(lag),
                    Cell::from(ka),
                    Cell::from(utmo),
                    Cell::from(rtt),
                    Cell::from(probes),
                    Cell::from(unacked),
                    Cell::from(retr),
                    Cell::from(last),
                ])
                .style(style),
            );
        }
    }
    // Servers without a connection (banned, or not used yet) still show,
    // with their ban and lag.
    if let (Some(p), Some(s)) = (app.selected_pool(), app.snapshot.as_ref()) {
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
            rows.push(
                Row::new(vec![
                    Cell::from(format!("{}:{}", x.host, x.port)),
                    Cell::from(&x.role[..x.role.len().min(3)]),
                    Cell::from("none"),
                    Cell::from(ban_cell(Some(x))),
                    Cell::from(lag_cell(Some(x))),
                ])
                .style(style),
            );
        }
    }
    let table = Table::new(
        rows,
        [
            Constraint::Length(15),
            Constraint::Length(3),
            Constraint::Length(6),
            Constraint::Length(3),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(4),
            Constraint::Length(6),
            Constraint::Length(3),
            Constraint::Length(5),
            Constraint::Length(4),
            Constraint::Min(6),
        ],
    )
    .header(header)
    .block(block(&title, focused(app, Focus::Servers)));
    frame.render_widget(table, area);
}

/// A server's ban: the seconds it has left, or `-`.
fn ban_cell(s: Option<&crate::proxy::stats::snapshot::PoolServerSnapshot>) -> String {
    match s {
        Some(x) if x.banned && x.ban_remaining_s < 100 => format!("{}s", x.ban_remaining_s.max(1)),
        Some(x) if x.banned => format!("{}m", (x.ban_remaining_s / 60).min(99)),
        _ => "-".into(),
    }
}

/// A server's replay lag as last measured, or `-`.
fn lag_cell(s: Option<&crate::proxy::stats::snapshot::PoolServerSnapshot>) -> String {
    match s.and_then(|x| x.lag_ms) {
        Some(l) => fmt_ms(l.max(0) as u64),
        None => "-".into(),
    }
}
