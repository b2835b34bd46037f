//! Drawing. One file per panel; each draws from the [`App`] alone, so
//! panels can be tested with ratatui's `TestBackend` from fixed
//! snapshots. The layout fits 80x24.

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

pub use header::draw as draw_header;
pub use logs::draw as draw_logs;
pub use mirrors::draw as draw_mirrors;
pub use pools::draw as draw_pools;
pub use servers::draw as draw_servers;

/// Draws the whole dashboard.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let pools = app.visible_pools().len().max(1) as u16;
    let servers = app
        .selected_pool()
        .and_then(|p| {
            app.snapshot.as_ref().map(|s| {
                s.servers
                    .iter()
                    .filter(|x| x.db == p.db && x.user == p.user)
                    .count()
            })
        })
        .unwrap_or(0)
        .max(1) as u16;
    let mirrors = app
        .selected_pool()
        .map(|p| p.mirrors.len())
        .unwrap_or(0)
        .max(1) as u16;
    let chunks = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(2),
            Constraint::Length((pools + 3).min(8)),
            Constraint::Length((servers + 3).min(7)),
            Constraint::Length((mirrors + 3).min(5)),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .split(area);
    draw_header(frame, chunks[0], app);
    draw_pools(frame, chunks[1], app);
    draw_servers(frame, chunks[2], app);
    draw_mirrors(frame, chunks[3], app);
    draw_logs(frame, chunks[4], app);
    draw_footer(frame, chunks[5], app);
    if app.help {
        overlay::help(frame, area);
    }
    if let Some(edit) = &app.editing {
        overlay::edit(frame, area, app, edit);
    }
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App) {
    let line = if app.filtering {
        Line::from(vec![
            Span::styled("filter: ", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(app.filter.clone()),
            Span::styled("_", Style::default().add_modifier(Modifier::SLOW_BLINK)),
        ])
    } else {
        let edit = if app.pending_edit.is_some() {
            " e:fix edit"
        } else {
            " e:edit"
        };
        let mut hint = format!("q:quit r:reload{edit} E:set p:pause /:filter Tab:panel ?:help");
        if !app.filter.is_empty() {
            hint.push_str(&format!("  [filter: {}]", app.filter));
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
