//! Pools: mode, config hash (marked * when the last reload rebuilt the
//! pool), size, servers and clients by state, throughput now and as a
//! sparkline of the last minutes, query and wait latency (p50 / p99 over
//! the last seconds), the longest wait now. Columns that do not fit the
//! width are left out, the least needed first.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::TableState;
use ratatui::Frame;

use super::fit::{self, Column, FitRow};
use super::{block, fmt_us, focused, sparkline};
use crate::tui::app::{App, Focus, RATE_HISTORY};

const COLUMNS: [Column; 16] = [
    Column::text("pool", 0, 24),
    Column::text("user", 0, 16),
    Column::text("mode", 7, 7),
    Column::text("hash", 6, 9),
    Column::num("size", 3),
    Column::text("sv a/i/l", 7, 11),
    Column::text("cl a/w/i", 7, 14),
    Column::num("tx/s", 8),
    Column::history("tx/s history", 2, 12),
    Column::num("q/s", 4),
    Column::history("q/s history", 1, 12),
    Column::num("q p50", 6),
    Column::num("q p99", 7),
    Column::num("wait p50", 4),
    Column::num("wait p99", 5),
    Column::num("max wait", 5),
];

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let pct = |v: Option<u64>| v.map(fmt_us).unwrap_or_else(|| "-".into());
    let rows: Vec<FitRow> = app
        .visible_pools()
        .iter()
        .map(|p| {
            let changed = app.changed_at_last_reload(&p.db);
            let hash = format!(
                "{:08x}{}",
                p.config_hash >> 32,
                if changed { "*" } else { "" }
            );
            let mode = match p.mode {
                _ if p.paused => "PAUSED",
                "transaction" => "txn",
                m => m,
            };
            let h = app.pool_history(p);
            let last = |v: Option<&std::collections::VecDeque<u64>>| {
                v.and_then(|v| v.back().copied())
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let spark = |v: Option<&std::collections::VecDeque<u64>>| {
                let v: Vec<u64> = v.map(|v| v.iter().copied().collect()).unwrap_or_default();
                sparkline(&v, RATE_HISTORY)
            };
            let row = FitRow::new(vec![
                p.db.clone(),
                p.user.clone(),
                mode.to_string(),
                hash,
                p.pool_size.to_string(),
                format!("{}/{}/{}", p.sv_active, p.sv_idle + p.sv_used, p.sv_login),
                format!("{}/{}/{}", p.cl_active, p.cl_waiting, p.cl_idle),
                last(h.map(|h| &h.tps)),
                spark(h.map(|h| &h.tps)),
                last(h.map(|h| &h.qps)),
                spark(h.map(|h| &h.qps)),
                pct(h.and_then(|h| h.query_p50)),
                pct(h.and_then(|h| h.query_p99)),
                pct(h.and_then(|h| h.wait_p50)),
                pct(h.and_then(|h| h.wait_p99)),
                fmt_us(p.maxwait_us),
            ]);
            if changed {
                row.style(Style::default().fg(Color::Yellow))
            } else if p.cl_waiting > 0 {
                row.style(Style::default().fg(Color::Magenta))
            } else {
                row
            }
        })
        .collect();
    let title = match app.selected_pool() {
        Some(_) if app.selected.is_some() => "Pools (Esc: all)",
        _ => "Pools",
    };
    let table = fit::table(&COLUMNS, rows, area.width.saturating_sub(2))
        .block(block(title, focused(app, Focus::Pools)))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(app.selected);
    frame.render_stateful_widget(table, area, &mut state);
}
