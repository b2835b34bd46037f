//! Mirrors of the selected pool (of every pool when none is selected):
//! state, lag (current, max, and a sparkline of the last two minutes),
//! queue depth, sent, dropped, errors.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::Frame;

use super::fit::{self, Column, FitRow};
use super::{block, fmt_us, focused, sparkline};
use crate::tui::app::{mirror_key, App, Focus, LAG_HISTORY};

const COLUMNS: [Column; 11] = [
    Column::text("pool", 1, 24),
    Column::text("mirror", 0, 26),
    Column::text("of server", 2, 26),
    Column::text("state", 0, 10),
    Column::num("lag", 0),
    Column::num("max", 4),
    Column::history("lag history", 3, 12),
    Column::num("queue", 5),
    Column::num("sent", 5),
    Column::num("drop", 6),
    Column::num("err", 6),
];

/// Rows the panel holds (for the layout).
pub fn count(app: &App) -> usize {
    app.pools_in_scope().iter().map(|p| p.mirrors.len()).sum()
}

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let mut rows = Vec::new();
    for p in app.pools_in_scope() {
        for m in &p.mirrors {
            let history: Vec<u64> = app
                .lag_history
                .get(&mirror_key(p, m))
                .map(|h| h.iter().copied().collect())
                .unwrap_or_default();
            let style = match m.state {
                "down" => Style::default().fg(Color::Red),
                _ if m.lag_current_us.unwrap_or(0) > 1_000_000 => {
                    Style::default().fg(Color::Yellow)
                }
                _ => Style::default(),
            };
            let lag = |v: Option<u32>| v.map(|us| fmt_us(us as u64)).unwrap_or_else(|| "-".into());
            rows.push(
                FitRow::new(vec![
                    format!("{}/{}", p.db, p.user),
                    format!("{}:{}", m.host, m.port),
                    format!("{}:{}", m.server_host, m.server_port),
                    m.state.to_string(),
                    lag(m.lag_current_us),
                    lag(m.lag_max_us),
                    sparkline(&history, LAG_HISTORY),
                    m.queue_depth.to_string(),
                    m.sent_messages.to_string(),
                    m.dropped_transactions.to_string(),
                    m.errors.to_string(),
                ])
                .style(style),
            );
        }
    }
    let title = if rows.is_empty() {
        "Mirrors (none)"
    } else {
        "Mirrors"
    };
    let skip = if focused(app, Focus::Mirrors) {
        app.scroll.min(rows.len().saturating_sub(1))
    } else {
        0
    };
    let rows = rows.into_iter().skip(skip).collect();
    let table = fit::table(&COLUMNS, rows, area.width.saturating_sub(2))
        .block(block(title, focused(app, Focus::Mirrors)));
    frame.render_widget(table, area);
}
