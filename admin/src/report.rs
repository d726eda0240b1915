//! What a command answers: a table for people, JSON for scripts, and whether it succeeded.

use serde_json::Value;

/// A command's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Column names.
    pub columns: Vec<&'static str>,
    /// One row per item, as many cells as columns.
    pub rows: Vec<Vec<String>>,
    /// The same, for scripts.
    pub json: Value,
    /// False when the server refused or did not find what was asked (exit status 1).
    pub ok: bool,
    /// A line after the table (a refusal's reason, where the next page starts).
    pub note: Option<String>,
}

impl Report {
    /// A report of `rows` under `columns`.
    pub fn table(columns: Vec<&'static str>, rows: Vec<Vec<String>>, json: Value) -> Report {
        Report { columns, rows, json, ok: true, note: None }
    }

    /// Marks the report as a refusal or a miss, with why.
    pub fn failed(mut self, note: String) -> Report {
        self.ok = false;
        self.note = Some(note);
        self
    }

    /// Adds a line after the table.
    pub fn with_note(mut self, note: String) -> Report {
        self.note = Some(note);
        self
    }

    /// The report as text: JSON on one line, or an aligned table and its note.
    pub fn render(&self, json: bool) -> String {
        if json {
            return format!("{}\n", self.json);
        }
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let padded: Vec<String> =
                cells.zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            format!("{}\n", padded.join("  ").trim_end())
        };
        let mut out = String::new();
        if !self.columns.is_empty() {
            out.push_str(&line(&mut self.columns.iter().copied()));
            for row in &self.rows {
                out.push_str(&line(&mut row.iter().map(String::as_str)));
            }
        }
        if let Some(note) = &self.note {
            out.push_str(note);
            out.push('\n');
        }
        out
    }
}

/// An optional number as a cell: `-` when unset.
pub fn cell<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}
