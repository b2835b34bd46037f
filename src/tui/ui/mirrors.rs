//! Mirrors of the selected pool: state, lag (current, max, and a
//! sparkline of the last two minutes), queue depth, sent, dropped, errors.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Cell, Row, Table};
use ratatui::Frame;

use super::{block, fmt_us, focused, sparkline};
use crate::tui::app::{mirror_key, App, Focus};

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let header = Row::new([
        "mirror", "state", "lag", "max", "history", "queue", "sent", "drop", "err",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let mut rows = Vec::new();
    if let Some(p) = app.selected_pool() {
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
                Row::new(vec![
                    Cell::from(format!("{}:{}", m.host, m.port)),
                    Cell::from(m.state),
                    Cell::from(lag(m.lag_current_us)),
                    Cell::from(lag(m.lag_max_us)),
                    Cell::from(sparkline(&history, 12)),
                    Cell::from(m.queue_depth.to_string()),
                    Cell::from(m.sent_messages.to_string()),
                    Cell::from(m.dropped_transactions.to_string()),
                    Cell::from(m.errors.to_string()),
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
    let table = Table::new(
        rows,
        [
            Constraint::Length(15),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(12),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(5),
            Constraint::Min(3),
        ],
    )
    .header(header)
    .block(block(title, focused(app, Focus::Mirrors)));
    frame.render_widget(table, area);
}
