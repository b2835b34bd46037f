//! The key map: terminal events to the keys the dashboard knows.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Up,
    Down,
    Tab,
    BackTab,
    Enter,
    Esc,
    Backspace,
    CtrlC,
}

/// None for events the dashboard ignores (key releases, other keys).
pub fn map(event: KeyEvent) -> Option<Key> {
    if event.kind == KeyEventKind::Release {
        return None;
    }
    if event.modifiers.contains(KeyModifiers::CONTROL) {
        return match event.code {
            KeyCode::Char('c') => Some(Key::CtrlC),
            _ => None,
        };
    }
    Some(match event.code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

/// The help text: one line per key.
pub const HELP: &[(&str, &str)] = &[
    (
        "Tab S-Tab",
        "next / previous panel: pools, servers, clients, mirrors, log",
    ),
    ("↑ ↓", "pick a pool or a client; scroll the other panels"),
    (
        "Esc",
        "pools: show every pool again (servers, clients, mirrors follow)",
    ),
    (
        "/",
        "filter the pools, or the clients when they are focused",
    ),
    ("s", "clients: sort by time in state (busy first) or by id"),
    (
        "k",
        "clients: end the selected client (asks first), as KILL_CLIENT",
    ),
    ("p", "pause / resume the selected pool"),
    ("r", "reload the config file"),
    (
        "e",
        "edit the config in $EDITOR (validated before it is written)",
    ),
    (
        "E",
        "edit pool_size, pool_mode or keepalives of the selected pool",
    ),
    ("?", "this help"),
    ("q Ctrl-C", "quit"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keys_and_ignores_releases() {
        let press = |code| KeyEvent::new(code, KeyModifiers::NONE);
        assert_eq!(map(press(KeyCode::Char('r'))), Some(Key::Char('r')));
        assert_eq!(map(press(KeyCode::Up)), Some(Key::Up));
        assert_eq!(
            map(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Key::CtrlC)
        );
        let mut release = press(KeyCode::Char('q'));
        release.kind = KeyEventKind::Release;
        assert_eq!(map(release), None);
        assert_eq!(map(press(KeyCode::F(5))), None);
    }
}
