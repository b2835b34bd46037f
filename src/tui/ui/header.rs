//! Header: version, listen address, uptime, config file, last reload,
//! totals and rates, days until the first TLS certificate expires, and
//! the result of the last action.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{fmt_age, fmt_clock};
use crate::tui::app::App;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let Some(s) = &app.snapshot else {
        frame.render_widget(
            Paragraph::new("pgcat: waiting for the first snapshot..."),
            area,
        );
        return;
    };
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let uptime = s.taken_at_unix.saturating_sub(s.started_at_unix);
    let first = Line::from(vec![
        Span::styled(format!("pgcat {}", s.version), bold),
        Span::raw(format!("  {}  up {}", s.listen, fmt_age(uptime))),
        Span::styled(
            format!(
                "  {}",
                s.config_path.as_deref().unwrap_or("(no config file)")
            ),
            Style::default().fg(Color::DarkGray),
        ),
    ]);
    let reload = match s.reloads.last() {
        None => Span::raw("no reload yet"),
        Some(r) if r.ok => Span::styled(
            format!(
                "reload {} ok{}",
                fmt_clock(r.at_unix),
                if r.changed.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", r.changed.join(","))
                }
            ),
            Style::default().fg(Color::Green),
        ),
        Some(r) => Span::styled(
            format!("reload {} FAILED", fmt_clock(r.at_unix)),
            Style::default().fg(Color::Red),
        ),
    };
    let clients = s.clients.iter().filter(|c| !c.admin).count();
    let (qps, tps) = app.rates();
    let mut second = vec![
        reload,
        Span::raw(format!(
            "  cl {clients} sv {}  {qps} q/s {tps} tx/s",
            s.servers.len()
        )),
    ];
    // The certificate that expires first: red within a week.
    if let Some(c) = s.certificates.iter().min_by_key(|c| c.not_after_unix) {
        let days = (c.not_after_unix - s.taken_at_unix as i64).div_euclid(86_400);
        let style = if days < 7 {
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::default().fg(Color::DarkGray)
        };
        second.push(Span::styled(format!("  tls cert {days}d"), style));
    }
    if let Some(m) = &app.message {
        let style = if m.error {
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::default().fg(Color::Yellow)
        };
        second.push(Span::styled(format!("  {}", m.text), style));
    }
    frame.render_widget(Paragraph::new(vec![first, Line::from(second)]), area);
}
