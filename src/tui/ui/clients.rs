//! Clients, live, like SHOW CLIENTS: who is waiting, who holds which
//! server connection (its address and backend pid, as pg_stat_activity
//! shows it), for how long, running what. Busy clients first, longest in
//! their state first (`s` orders by id instead); `/` filters, `k` ends the
//! selected one after a confirmation.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::TableState;
use ratatui::Frame;

use super::fit::{self, Column, FitRow};
use super::{block, fmt_age, fmt_us, focused};

/// 850µs, 12.3ms, 4.1s; from a minute on, 3m05s, 2h04m.
fn fmt_duration_ms(ms: u64) -> String {
    if ms < 60_000 {
        fmt_us(ms * 1000)
    } else {
        fmt_age(ms / 1000)
    }
}
use crate::tui::app::{App, ClientSort, Focus};

const COLUMNS: [Column; 9] = [
    Column::num("id", 7),
    Column::text("user", 0, 16),
    Column::text("database", 0, 20),
    Column::text("address", 1, 21),
    Column::text("application", 2, 16),
    Column::text("state", 0, 11),
    Column::num("time", 0),
    Column::text("server", 3, 30),
    Column::stretch("query", 6, 20),
];

/// Rows the panel holds (for the layout).
pub fn count(app: &App) -> usize {
    app.visible_clients().len()
}

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let servers = app.snapshot.as_ref().map(|s| &s.servers);
    let rows: Vec<FitRow> = app
        .visible_clients()
        .iter()
        .map(|c| {
            let server = servers
                .and_then(|v| v.iter().find(|s| s.id == c.server_id && c.server_id > 0))
                .map(|s| format!("{}:{} pid {}", s.host, s.port, s.remote_pid))
                .unwrap_or_else(|| "-".into());
            // One line: newlines and runs of blanks as one space.
            let query = c
                .query
                .as_deref()
                .map(|q| q.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            let row = FitRow::new(vec![
                c.id.to_string(),
                c.user.clone(),
                c.db.clone(),
                format!("{}:{}", c.addr, c.port),
                c.application_name.clone(),
                match c.activity {
                    "idle in transaction" => "idle in txn".to_string(),
                    a => a.to_string(),
                },
                fmt_duration_ms(c.activity_ms),
                server,
                query,
            ]);
            match c.activity {
                "waiting" => row.style(Style::default().fg(Color::Magenta)),
                "active" => row.style(Style::default().fg(Color::Green)),
                "idle in transaction" => row.style(Style::default().fg(Color::Yellow)),
                _ => row,
            }
        })
        .collect();
    let total = app
        .snapshot
        .as_ref()
        .map(|s| s.clients.iter().filter(|c| !c.admin).count())
        .unwrap_or(0);
    let mut title = format!("Clients {}/{}", rows.len(), total);
    if let Some(p) = app.selected_pool() {
        title.push_str(&format!(" of {}/{}", p.db, p.user));
    }
    title.push_str(match app.client_sort {
        ClientSort::TimeInState => ", by time in state",
        ClientSort::Id => ", by id",
    });
    if !app.client_filter.is_empty() {
        title.push_str(&format!(", filter \"{}\"", app.client_filter));
    }
    let focus = focused(app, Focus::Clients);
    let table = fit::table(&COLUMNS, rows, area.width.saturating_sub(2))
        .block(block(&title, focus))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(focus.then_some(app.client_selected));
    frame.render_stateful_widget(table, area, &mut state);
}
