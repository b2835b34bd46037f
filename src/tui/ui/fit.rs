//! Tables sized to what they hold: each column as wide as its header or
//! its widest value (up to a cap), numbers right-aligned under their
//! headers, and the columns that matter least left out when the panel is
//! too narrow. One column may stretch to take the width left over (a
//! query text, a sparkline).

use ratatui::layout::{Alignment, Constraint};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Row, Table};

/// Space between columns.
const GAP: u16 = 1;
/// Columns kept below this are left out before names are cut.
const SHRINK_AFTER: u8 = 6;
/// Text columns are cut down to this many cells (or their header).
const SHRINK_FLOOR: u16 = 10;

pub struct Column {
    pub header: &'static str,
    /// Lower numbers are dropped first when the width runs out; 0 never.
    pub keep: u8,
    pub right: bool,
    /// Widest the column gets for its values (longer ones are cut with …).
    pub cap: u16,
    /// Shares the width left over with the other stretching columns; at
    /// least `cap` (or its header) wide.
    pub stretch: bool,
    /// Cut from the left, keeping the end (a sparkline's latest values).
    pub tail: bool,
}

impl Column {
    pub const fn text(header: &'static str, keep: u8, cap: u16) -> Column {
        Column {
            header,
            keep,
            right: false,
            cap,
            stretch: false,
            tail: false,
        }
    }

    pub const fn num(header: &'static str, keep: u8) -> Column {
        Column {
            header,
            keep,
            right: true,
            cap: 12,
            stretch: false,
            tail: false,
        }
    }

    /// A column that takes what width is left (at least `min`).
    pub const fn stretch(header: &'static str, keep: u8, min: u16) -> Column {
        Column {
            header,
            keep,
            right: false,
            cap: min,
            stretch: true,
            tail: false,
        }
    }

    /// A stretching column that shows the end of its values: a sparkline.
    pub const fn history(header: &'static str, keep: u8, min: u16) -> Column {
        Column {
            header,
            keep,
            right: false,
            cap: min,
            stretch: true,
            tail: true,
        }
    }
}

/// A row's values, with an optional style for the whole row.
pub struct FitRow {
    pub cells: Vec<String>,
    pub style: Style,
}

impl FitRow {
    pub fn new(cells: Vec<String>) -> FitRow {
        FitRow {
            cells,
            style: Style::default(),
        }
    }

    pub fn style(mut self, style: Style) -> FitRow {
        self.style = style;
        self
    }
}

/// Display width of a string, in terminal cells (one per char here:
/// pgcat draws no wide characters).
fn width(s: &str) -> u16 {
    s.chars().count().min(u16::MAX as usize) as u16
}

/// `s` cut to `w` cells, with … when cut.
pub fn cut(s: &str, w: u16) -> String {
    let w = w as usize;
    if s.chars().count() <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(w - 1).collect();
    out.push('…');
    out
}

/// Which columns fit in `available` cells, and how wide each is.
pub fn layout(columns: &[Column], rows: &[FitRow], available: u16) -> Vec<(usize, u16)> {
    let natural: Vec<u16> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let widest = rows
                .iter()
                .filter_map(|r| r.cells.get(i))
                .map(|v| width(v))
                .max()
                .unwrap_or(0);
            if c.stretch {
                width(c.header).max(c.cap)
            } else {
                width(c.header).max(widest.min(c.cap))
            }
        })
        .collect();
    let wanted = natural.clone();
    let mut natural = natural;
    let mut shown: Vec<usize> = (0..columns.len()).collect();
    let total = |shown: &[usize], natural: &[u16]| -> u16 {
        shown.iter().map(|&i| natural[i]).sum::<u16>() + GAP * shown.len().saturating_sub(1) as u16
    };
    // Drops the least needed column below `below` (the rightmost among
    // equals); false when there is none.
    let drop_one = |shown: &mut Vec<usize>, below: u8| -> bool {
        let Some(pos) = shown
            .iter()
            .enumerate()
            .filter(|(_, &i)| columns[i].keep > 0 && columns[i].keep < below)
            .min_by_key(|(p, &i)| (columns[i].keep, std::cmp::Reverse(*p)))
            .map(|(p, _)| p)
        else {
            return false;
        };
        shown.remove(pos);
        true
    };
    // First the extras go, then long names are cut, then the rest goes.
    while total(&shown, &natural) > available && drop_one(&mut shown, SHRINK_AFTER) {}
    while total(&shown, &natural) > available {
        let widest = shown
            .iter()
            .copied()
            .filter(|&i| !columns[i].right && !columns[i].stretch)
            .filter(|&i| natural[i] > width(columns[i].header).max(SHRINK_FLOOR))
            .max_by_key(|&i| natural[i]);
        match widest {
            Some(i) => natural[i] -= 1,
            None => break,
        }
    }
    while total(&shown, &natural) > available && drop_one(&mut shown, u8::MAX) {}
    // Width left after the last column went back to the names cut.
    let mut spare = available.saturating_sub(total(&shown, &natural));
    for &i in &shown {
        let back = wanted[i].saturating_sub(natural[i]).min(spare);
        natural[i] += back;
        spare -= back;
    }
    let stretching = shown.iter().filter(|&&i| columns[i].stretch).count() as u16;
    let mut left = spare;
    let mut seen = 0;
    shown
        .iter()
        .map(|&i| {
            let mut w = natural[i];
            if columns[i].stretch {
                seen += 1;
                // The last stretching column takes the rounding.
                let share = if seen == stretching {
                    left
                } else {
                    spare / stretching
                };
                left -= share;
                w += share;
            }
            (i, w)
        })
        .collect()
}

/// The table, with the columns that fit in `available` cells (the
/// panel's inner width).
pub fn table(columns: &[Column], rows: Vec<FitRow>, available: u16) -> Table<'static> {
    let plan = layout(columns, &rows, available);
    let cell = |text: &str, col: &Column, w: u16| {
        let shown = if col.tail {
            let n = text.chars().count();
            text.chars().skip(n.saturating_sub(w as usize)).collect()
        } else {
            cut(text, w)
        };
        let line = Line::from(shown);
        Cell::from(if col.right {
            line.alignment(Alignment::Right)
        } else {
            line
        })
    };
    let header = Row::new(
        plan.iter()
            .map(|&(i, w)| cell(columns[i].header, &columns[i], w))
            .collect::<Vec<_>>(),
    )
    .style(Style::default().add_modifier(Modifier::BOLD));
    let body: Vec<Row> = rows
        .iter()
        .map(|r| {
            Row::new(
                plan.iter()
                    .map(|&(i, w)| {
                        cell(
                            r.cells.get(i).map(String::as_str).unwrap_or(""),
                            &columns[i],
                            w,
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .style(r.style)
        })
        .collect();
    let widths: Vec<Constraint> = plan.iter().map(|&(_, w)| Constraint::Length(w)).collect();
    Table::new(body, widths).header(header).column_spacing(GAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[&[&str]]) -> Vec<FitRow> {
        v.iter()
            .map(|r| FitRow::new(r.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn columns_take_their_content_and_the_least_needed_go_first() {
        let cols = [
            Column::text("pool", 0, 20),
            Column::num("size", 2),
            Column::text("hash", 1, 9),
            Column::stretch("query", 3, 10),
        ];
        let r = rows(&[&["app", "10", "1234abcd", "SELECT 1"]]);
        // Wide: every column, the query takes what is left.
        let plan = layout(&cols, &r, 60);
        assert_eq!(plan[0], (0, 4));
        assert_eq!(plan[1], (1, 4));
        assert_eq!(plan[2], (2, 8));
        assert_eq!(plan[3].1, 60 - 4 - 4 - 8 - 3);
        // Narrow: hash (keep 1) goes, then size (keep 2).
        let plan = layout(&cols, &r, 20);
        assert_eq!(plan.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1, 3]);
        let plan = layout(&cols, &r, 15);
        assert_eq!(plan.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 3]);
        // Long values are capped.
        let r = rows(&[&["a_very_long_database_name_indeed", "1", "x", ""]]);
        assert_eq!(layout(&cols, &r, 200)[0], (0, 20));
        assert_eq!(cut("a_very_long", 5), "a_ve…");
    }
}
