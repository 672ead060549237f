//! How results look: aligned tables and key/value blocks for people, JSON values for
//! scripts, and the one stdout writer (which goes quiet, instead of failing, when the
//! reader goes away as in `chorusctl messages tail -f | head`). No gRPC here.

use crate::timefmt::format_rfc3339_ms;
use serde_json::{Map, Value};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// `-o table` (default) or `-o json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and key/value blocks for people
    Table,
    /// JSON objects (NDJSON for streams) for scripts; stable field names
    Json,
}

/// Gap between table columns.
const COLUMN_GAP: &str = "  ";

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Write `text` and a newline to stdout. Once stdout is closed by the reader, further
/// output is dropped; see [`stdout_closed`].
pub fn emit(text: &str) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let result = out.write_all(text.as_bytes()).and_then(|()| if text.ends_with('\n') { Ok(()) } else { out.write_all(b"\n") }).and_then(|()| out.flush());
    if result.is_err() {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// True once a write to stdout failed (reader gone): long-running commands stop.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Pretty-print one JSON document.
pub fn emit_json(value: &Value) {
    emit(&serde_json::to_string_pretty(value).expect("a serde_json::Value always serializes"));
}

/// One compact JSON document per line (for streams).
pub fn emit_json_line(value: &Value) {
    emit(&serde_json::to_string(value).expect("a serde_json::Value always serializes"));
}

/// A table with a header row. Columns are as wide as their widest cell; the last
/// column is not padded. Cells never contain line breaks (they are escaped).
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    right_aligned: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), right_aligned: vec![false; headers.len()], rows: Vec::new() }
    }

    /// Right-align these columns (numbers).
    pub fn align_right(mut self, columns: &[usize]) -> Table {
        for &c in columns {
            self.right_aligned[c] = true;
        }
        self
    }

    pub fn push(&mut self, row: Vec<String>) {
        assert_eq!(row.len(), self.headers.len(), "table row has the wrong number of cells");
        self.rows.push(row.into_iter().map(|c| one_line(&c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Column widths for the header and every row.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        widths
    }

    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        out.push_str(&self.render_row_with(&widths, &self.headers));
        for row in &self.rows {
            out.push('\n');
            out.push_str(&self.render_row_with(&widths, row));
        }
        out
    }

    /// The header line only, for streaming output with fixed widths.
    pub fn render_header_with(&self, widths: &[usize]) -> String {
        self.render_row_with(widths, &self.headers)
    }

    /// One row laid out in the given widths; a longer cell pushes the rest of its
    /// row to the right rather than being cut.
    pub fn render_row_with(&self, widths: &[usize], row: &[String]) -> String {
        let mut line = String::new();
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            let cell = one_line(cell);
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(width(&cell));
            if i > 0 {
                line.push_str(COLUMN_GAP);
            }
            if self.right_aligned.get(i).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(&cell);
            } else {
                line.push_str(&cell);
                if i != last {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        line.trim_end().to_string()
    }
}

/// A block of `key  value` lines with the values aligned; multi-line values are
/// indented under the first line.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let key_width = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let indent = " ".repeat(key_width + COLUMN_GAP.len());
    let mut out = String::new();
    for (key, value) in pairs {
        let mut lines = value.lines();
        let first = lines.next().unwrap_or("");
        let line = format!("{key:<key_width$}{COLUMN_GAP}{first}");
        out.push_str(line.trim_end());
        out.push('\n');
        for more in lines {
            out.push_str(&indent);
            out.push_str(more);
            out.push('\n');
        }
    }
    out.truncate(out.trim_end_matches('\n').len());
    out
}

/// Display width in characters (good enough for ids, names and ASCII text).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// Make a cell one line: escape line breaks, turn tabs and other control characters
/// into spaces.
fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Shorten `s` to at most `max` characters, marking the cut with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A JSON-as-text field from the API as a real JSON value: empty text is `{}`;
/// text that does not parse is kept as a string rather than lost.
pub fn json_text(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Object(Map::new());
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// Unix milliseconds as RFC 3339 text, or `null` for 0 (unknown).
pub fn time_json(ms: i64) -> Value {
    if ms == 0 { Value::Null } else { Value::String(format_rfc3339_ms(ms)) }
}

/// Unix milliseconds as RFC 3339 text, or `-` for 0 (unknown).
pub fn time_cell(ms: i64) -> String {
    if ms == 0 { "-".to_string() } else { format_rfc3339_ms(ms) }
}

/// Empty text as `null`, anything else as a JSON string.
pub fn opt_string(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { Value::String(s.to_string()) }
}

/// Empty text as `-` in tables.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".to_string() } else { s.to_string() }
}

/// A decision detail or other free text in plain words: a JSON object becomes
/// `key=value, key=value` (strings unquoted); anything else is shown as is.
pub fn plain_words(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => text.to_string(),
    }
}

/// Pretty JSON for a key/value block (`{}` stays on one line).
pub fn pretty(value: &Value) -> String {
    match value {
        Value::Object(m) if m.is_empty() => "{}".to_string(),
        v => serde_json::to_string_pretty(v).expect("a serde_json::Value always serializes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn table_columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["SHARD", "LEADER", "CUSTOMERS"]).align_right(&[0, 2]);
        t.push(row(&["0", "1", "12"]));
        t.push(row(&["17", "-", "123456"]));
        let text = t.render();
        assert_eq!(
            text,
            "SHARD  LEADER  CUSTOMERS\n\
             \x20   0  1              12\n\
             \x20  17  -          123456"
        );
        // Every line has the columns at the same offsets.
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
    }

    #[test]
    fn last_left_aligned_column_is_not_padded_and_cells_stay_on_one_line() {
        let mut t = Table::new(&["KIND", "DETAIL"]);
        t.push(row(&["send", "a\nb"]));
        t.push(row(&["journey.entered", ""]));
        assert_eq!(t.render(), "KIND             DETAIL\nsend             a\\nb\njourney.entered");
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut t = Table::new(&["NAME", "X"]);
        t.push(row(&["Zoë", "1"]));
        t.push(row(&["Bob", "2"]));
        let text = t.render();
        let cols: Vec<usize> = text.lines().map(|l| l.chars().position(|c| c == '1' || c == '2' || c == 'X').unwrap()).collect();
        assert_eq!(cols, vec![6, 6, 6]);
    }

    #[test]
    fn fixed_width_rows_for_streams() {
        let t = Table::new(&["SEQ", "CHANNEL", "TO"]).align_right(&[0]);
        let widths = [4, 7, 2];
        assert_eq!(t.render_header_with(&widths), " SEQ  CHANNEL  TO");
        assert_eq!(t.render_row_with(&widths, &row(&["7", "email", "a@b"])), "   7  email    a@b");
        assert_eq!(t.render_row_with(&widths, &row(&["12345", "webhook-long", "x"])), "12345  webhook-long  x");
    }

    #[test]
    fn key_value_blocks_align_values_and_indent_continuations() {
        let text = key_values(&[("customer", "cu_1".into()), ("attributes", "{\n  \"a\": 1\n}".into()), ("x", String::new())]);
        assert_eq!(text, "customer    cu_1\nattributes  {\n              \"a\": 1\n            }\nx");
    }

    #[test]
    fn json_helpers() {
        assert_eq!(json_text(""), serde_json::json!({}));
        assert_eq!(json_text("{\"a\":[1]}"), serde_json::json!({"a": [1]}));
        assert_eq!(json_text("not json"), serde_json::json!("not json"));
        assert_eq!(time_json(0), Value::Null);
        assert_eq!(time_json(1000), serde_json::json!("1970-01-01T00:00:01Z"));
        assert_eq!(plain_words("{\"cap\":\"email/day\",\"limit\":3}"), "cap=email/day, limit=3");
        assert_eq!(plain_words("quiet hours until 08:00"), "quiet hours until 08:00");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
