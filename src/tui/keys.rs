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
    ("r", "reload the config file"),
    (
        "e",
        "edit the config in $EDITOR (validated before it is written)",
    ),
    (
        "E",
        "edit pool_size, pool_mode or keepalives of the selected pool",
    ),
    ("p", "pause / resume the selected pool"),
    ("↑ ↓ j k", "move"),
    ("Tab", "next panel"),
    ("/", "filter pools"),
    ("?", "this help"),
    ("q", "quit"),
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
