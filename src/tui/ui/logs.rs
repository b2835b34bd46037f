//! The log pane: the most recent lines, warnings and errors highlighted.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{block, focused};
use crate::tui::app::{App, Focus};

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let height = area.height.saturating_sub(2) as usize;
    let lines = app.logs.lines();
    let skip = if focused(app, Focus::Logs) {
        app.scroll
    } else {
        0
    };
    let end = lines.len().saturating_sub(skip);
    let start = end.saturating_sub(height);
    let shown: Vec<Line> = lines[start..end]
        .iter()
        .map(|l| {
            let style = if l.contains("ERROR") {
                Style::default().fg(Color::Red)
            } else if l.contains("WARN") {
                Style::default().fg(Color::Yellow)
            } else {
                Style::default()
            };
            Line::styled(l.clone(), style)
        })
        .collect();
    frame.render_widget(
        Paragraph::new(shown).block(block("Log", focused(app, Focus::Logs))),
        area,
    );
}
