//! Pools: mode, config hash (marked * when the last reload rebuilt the
//! pool), size, servers and clients by state, waits.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Cell, Row, Table, TableState};
use ratatui::Frame;

use super::{block, fmt_us, focused};
use crate::tui::app::{App, Focus};

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let header = Row::new([
        "pool", "user", "mode", "hash", "size", "sv a/i/c", "cl a/w", "wait avg", "max",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows: Vec<Row> = app
        .visible_pools()
        .iter()
        .map(|p| {
            let changed = app.changed_at_last_reload(&p.db);
            let hash = format!(
                "{:08x}{}",
                p.config_hash >> 32,
                if changed { "*" } else { "" }
            );
            let hash_style = if changed {
                Style::default()
                    .fg(Color::Yellow)
                    .add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            let mode = if p.paused { "PAUSED" } else { p.mode };
            Row::new(vec![
                Cell::from(p.db.clone()),
                Cell::from(p.user.clone()),
                Cell::from(mode),
                Cell::from(hash).style(hash_style),
                Cell::from(p.pool_size.to_string()),
                Cell::from(format!(
                    "{}/{}/{}",
                    p.sv_active,
                    p.sv_idle + p.sv_used,
                    p.sv_login
                )),
                Cell::from(format!("{}/{}", p.cl_active, p.cl_waiting)),
                Cell::from(fmt_us(p.averages.wait_time_us as u64)),
                Cell::from(fmt_us(p.maxwait_us)),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Min(8),
            Constraint::Min(6),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(7),
        ],
    )
    .header(header)
    .block(block("Pools", focused(app, Focus::Pools)))
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(table, area, &mut state);
}
