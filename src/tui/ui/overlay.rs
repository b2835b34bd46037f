//! Pop-ups over the dashboard: the key help and the `E` form.

use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Clear, Paragraph};
use ratatui::Frame;

use super::block;
use crate::tui::app::{App, ConfirmKill, Field, InPlaceEdit};
use crate::tui::keys::HELP;

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// Asks before `k` ends a client.
pub fn confirm(frame: &mut Frame, area: Rect, c: &ConfirmKill) {
    let lines = vec![
        Line::from(format!("End client {}?", c.who)),
        Line::from("Its connection closes at once; a transaction it has open rolls back."),
        Line::styled(
            "y: end it    any other key: keep it",
            Style::default().add_modifier(Modifier::BOLD),
        ),
    ];
    let r = centered(area, 76, lines.len() as u16 + 2);
    frame.render_widget(Clear, r);
    frame.render_widget(Paragraph::new(lines).block(block("Kill client", true)), r);
}

pub fn help(frame: &mut Frame, area: Rect) {
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| Line::from(format!("{k:>9}  {v}")))
        .collect();
    let r = centered(area, 76, lines.len() as u16 + 2);
    frame.render_widget(Clear, r);
    frame.render_widget(Paragraph::new(lines).block(block("Keys", true)), r);
}

pub fn edit(frame: &mut Frame, area: Rect, app: &App, edit: &InPlaceEdit) {
    let pool = app.snapshot.as_ref().and_then(|s| {
        s.pools
            .iter()
            .find(|p| p.db == edit.db && p.user == edit.user)
    });
    let mut lines = vec![Line::from(format!(
        "{}/{}: Tab picks, Enter writes and reloads, Esc cancels",
        edit.db, edit.user
    ))];
    for (i, f) in Field::ALL.iter().enumerate() {
        let current = match (f, pool) {
            (Field::PoolSize, Some(p)) => p.pool_size.to_string(),
            (Field::PoolMode, Some(p)) => p.mode.to_string(),
            _ => String::new(),
        };
        let text = if i == edit.field {
            format!("> {:<24} {:<12} new: {}_", f.key(), current, edit.input)
        } else {
            format!("  {:<24} {}", f.key(), current)
        };
        let style = if i == edit.field {
            Style::default().add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        lines.push(Line::styled(text, style));
    }
    let r = centered(area, 72, lines.len() as u16 + 2);
    frame.render_widget(Clear, r);
    frame.render_widget(Paragraph::new(lines).block(block("Edit", true)), r);
}
