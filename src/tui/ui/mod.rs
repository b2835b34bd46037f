//! Drawing. One file per panel; each draws from the [`App`] alone, so
//! panels can be tested with ratatui's `TestBackend` from fixed
//! snapshots. The layout fits 80x24 and gives a taller screen to the
//! clients; tables size their columns to their content (`fit`).

mod clients;
pub mod fit;
mod header;
mod logs;
mod mirrors;
mod overlay;
mod pools;
mod servers;

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;

use super::app::{App, Focus};

pub use clients::draw as draw_clients;
pub use header::draw as draw_header;
pub use logs::draw as draw_logs;
pub use mirrors::draw as draw_mirrors;
pub use pools::draw as draw_pools;
pub use servers::draw as draw_servers;

/// Heights of the panels, top to bottom: header, pools, servers, clients,
/// mirrors, log, footer. Each panel gets what it holds (rows, a header
/// line, two borders) while there is room; servers and clients share
/// what is left, clients taking the rest so that a taller screen shows
/// more of them; the log is one line unless focused.
pub fn heights(app: &App, height: u16) -> [u16; 7] {
    let boxed = |rows: usize| rows.min(500) as u16 + 3;
    let avail = height.saturating_sub(3);
    let pools_want = boxed(app.visible_pools().len().max(1));
    let mirrors_n = mirrors::count(app);
    let servers_want = boxed(servers::count(app).max(1));
    let clients_want = boxed(clients::count(app).max(1));
    let log = if app.focus == Focus::Logs {
        (avail / 2).max(3)
    } else if height < 30 {
        // A small screen keeps its rows for the tables (Tab shows it).
        0
    } else {
        3
    };
    let mirrors = if mirrors_n == 0 && app.focus != Focus::Mirrors {
        // No mirror: a line in the header's place would say as much.
        0
    } else {
        boxed(mirrors_n.max(1)).min((avail / 5).max(4))
    };
    let pools = pools_want.min((avail / 3).max(4));
    let rest = avail.saturating_sub(log + mirrors + pools);
    let (servers, clients) = if servers_want + clients_want <= rest {
        (servers_want, rest - servers_want)
    } else {
        let floor = if app.focus == Focus::Servers {
            rest * 3 / 5
        } else {
            rest * 2 / 5
        };
        let servers = servers_want.min(floor.max(4)).min(rest);
        (servers, rest - servers)
    };
    [2, pools, servers, clients, mirrors, log, 1]
}

/// Draws the whole dashboard.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let h = heights(app, area.height);
    let chunks = Layout::default()
        .direction(Direction::Vertical)
        .constraints(h.map(Constraint::Length))
        .split(area);
    draw_header(frame, chunks[0], app);
    draw_pools(frame, chunks[1], app);
    if h[2] > 0 {
        draw_servers(frame, chunks[2], app);
    }
    if h[3] > 0 {
        draw_clients(frame, chunks[3], app);
    }
    if h[4] > 0 {
        draw_mirrors(frame, chunks[4], app);
    }
    if h[5] > 0 {
        draw_logs(frame, chunks[5], app);
    }
    draw_footer(frame, chunks[6], app);
    if app.help {
        overlay::help(frame, area);
    }
    if let Some(edit) = &app.editing {
        overlay::edit(frame, area, app, edit);
    }
    if let Some(c) = &app.confirm {
        overlay::confirm(frame, area, c);
    }
}

/// The keys of the focused panel, then the ones that work everywhere.
pub fn footer_keys(app: &App) -> String {
    let panel = match app.focus {
        Focus::Pools => {
            if app.selected.is_some() {
                "↑↓ pool  Esc all  p pause  E set  / filter"
            } else {
                "↓ pick a pool  / filter"
            }
        }
        Focus::Clients => "↑↓ client  k kill  s sort  / filter",
        Focus::Servers | Focus::Mirrors | Focus::Logs => "↑↓ scroll",
    };
    let edit = if app.pending_edit.is_some() {
        "e fix edit"
    } else {
        "e edit"
    };
    format!("{panel} │ Tab panel  r reload  {edit}  ? keys  q quit")
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App) {
    let line = if app.filtering {
        let f = if app.focus == Focus::Clients {
            &app.client_filter
        } else {
            &app.filter
        };
        Line::from(vec![
            Span::styled("filter: ", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(f.clone()),
            Span::styled("_", Style::default().add_modifier(Modifier::SLOW_BLINK)),
            Span::styled(
                "  Enter keeps it, Esc clears it",
                Style::default().fg(Color::DarkGray),
            ),
        ])
    } else {
        let mut hint = footer_keys(app);
        if !app.filter.is_empty() {
            hint.push_str(&format!("  [pools: {}]", app.filter));
        }
        Line::from(Span::styled(hint, Style::default().fg(Color::DarkGray)))
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// A bordered block whose title shows focus.
pub(crate) fn block(title: &str, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(format!(" {title} "), style))
}

pub(crate) fn focused(app: &App, f: Focus) -> bool {
    app.focus == f
}

/// 850µs, 12.3ms, 1.2s, 3m05s.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=99_999 => format!("{:.1}ms", us as f64 / 1000.0),
        100_000..=999_999 => format!("{}ms", us / 1000),
        1_000_000..=59_999_999 => format!("{:.1}s", us as f64 / 1e6),
        _ => format!("{}m{:02}s", us / 60_000_000, us / 1_000_000 % 60),
    }
}

/// 0ms, 140ms, 7.2s.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        fmt_us(ms * 1000)
    }
}

/// 59s, 12m03s, 5h02m, 3d04h.
pub fn fmt_age(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// HH:MM:SS (UTC) of a Unix time.
pub fn fmt_clock(unix: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        unix / 3600 % 24,
        unix / 60 % 60,
        unix % 60
    )
}

/// A text sparkline of the last `width` values.
pub fn sparkline(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let start = values.len().saturating_sub(width);
    let shown = &values[start..];
    let max = shown.iter().copied().max().unwrap_or(0).max(1);
    shown
        .iter()
        .map(|&v| BARS[((v * 7) / max) as usize])
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
