//! Template files → a JSON value plus a map from value paths (`locales.fr.sms.body`)
//! to source lines, so every validation error can say file, line and what to fix, and
//! a line inside a template text (a `|` block) maps back to its line in the file.
//! YAML (via saphyr, with spans) and JSON (parsed as YAML 1.2, which it is) both work.
//! Shared by every YAML/JSON file Chorus reads with lines (journeys, audiences and
//! settings load through `chorus_engine::journey::source`, which calls [`load_file`]).

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// Paths (as produced by [`Path`]) → 1-based line numbers.
#[derive(Clone, Debug, Default)]
pub struct LineMap {
    lines: HashMap<String, usize>,
    /// Where each mapping value starts, and whether it is a literal block (`|`), whose
    /// lines are the file's lines.
    values: HashMap<String, (usize, bool)>,
}

impl LineMap {
    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path.to_string();
        loop {
            if let Some(l) = self.lines.get(&p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }

    /// Where the value at `path` starts, and whether it is a literal block (`|`).
    pub fn value_start(&self, path: &str) -> Option<(usize, bool)> {
        self.values.get(path).copied()
    }

    /// The file line of line `n` (1-based) of the text at `path`: exact for one-line
    /// values and literal blocks, the value's first line otherwise.
    #[cfg(test)]
    pub fn text_line(&self, path: &str, n: usize) -> Option<usize> {
        match self.values.get(path) {
            Some((start, true)) => Some(start + n.saturating_sub(1)),
            Some((start, false)) => Some(*start),
            None => self.line_of(path),
        }
    }
}

/// Builds paths like `in_app.buttons[0].label`.
pub fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

pub fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A syntax error in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parse a template file's YAML or JSON text into a value and its line map.
pub fn load(text: &str) -> Result<(Value, LineMap), SyntaxError> {
    load_file(text, "template", "an id and one channel variant")
}

/// Parse YAML or JSON text holding one `kind` (a journey, a template, …; `needs` says
/// what an empty file lacks) into a value and its line map.
pub fn load_file(text: &str, kind: &str, needs: &str) -> Result<(Value, LineMap), SyntaxError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| SyntaxError { line: e.marker().line(), message: e.info().to_string() })?;
    let mut map = LineMap::default();
    match docs.len() {
        0 => Err(SyntaxError { line: 1, message: format!("the file is empty: a {kind} needs at least {needs}") }),
        1 => {
            let src: Vec<&str> = text.lines().collect();
            let v = convert(&docs[0], "", &src, kind, &mut map)?;
            Ok((v, map))
        }
        n => Err(SyntaxError { line: docs[1].span.start.line(), message: format!("{n} YAML documents in one file: put one {kind} per file") }),
    }
}

fn convert(node: &MarkedYaml<'_>, path: &str, src: &[&str], kind: &str, map: &mut LineMap) -> Result<Value, SyntaxError> {
    map.lines.entry(path.to_string()).or_insert(node.span.start.line());
    Ok(match &node.data {
        YamlData::Value(s) => scalar(s),
        YamlData::Representation(text, _, _) => Value::String(text.to_string()),
        YamlData::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(convert(item, &index_path(path, i), src, kind, map)?);
            }
            Value::Array(out)
        }
        YamlData::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m.iter() {
                let key = match &k.data {
                    YamlData::Value(Scalar::String(s)) => s.to_string(),
                    YamlData::Value(s) => match scalar(s) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    },
                    YamlData::Representation(text, _, _) => text.to_string(),
                    _ => {
                        return Err(SyntaxError { line: k.span.start.line(), message: "mapping keys must be plain scalars".into() });
                    }
                };
                let p = child(path, &key);
                map.lines.insert(p.clone(), k.span.start.line());
                if out.contains_key(&key) {
                    return Err(SyntaxError { line: k.span.start.line(), message: format!("duplicate key {key:?}") });
                }
                map.values.insert(p.clone(), (v.span.start.line(), literal_block(src, k)));
                let value = convert(v, &p, src, kind, map)?;
                out.insert(key, value);
            }
            Value::Object(out)
        }
        YamlData::Tagged(_, inner) => convert(inner, path, src, kind, map)?,
        YamlData::Alias(_) => {
            return Err(SyntaxError { line: node.span.start.line(), message: format!("YAML aliases are not supported in {kind} files") });
        }
        YamlData::BadValue => {
            return Err(SyntaxError { line: node.span.start.line(), message: "invalid YAML value".into() });
        }
    })
}

/// Whether the value after key `k` is a literal block scalar (`key: |`).
fn literal_block(src: &[&str], k: &MarkedYaml<'_>) -> bool {
    let Some(line) = k.span.end.line().checked_sub(1).and_then(|l| src.get(l)) else {
        return false;
    };
    let after: String = line.chars().skip(k.span.end.col()).collect();
    after.trim_start().strip_prefix(':').is_some_and(|rest| rest.trim_start().starts_with('|'))
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => Number::from_f64(f.into_inner()).map(Value::Number).unwrap_or(Value::Null),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_values_keep_their_lines() {
        let text = "id: j\nsteps:\n  - id: a\n    send: { channel: email, template: t }\n  - id: b\n    wait: 24h\n";
        let (v, lines) = load(text).unwrap();
        assert_eq!(v["steps"][1]["wait"], "24h");
        assert_eq!(lines.line_of("steps[1].wait"), Some(6));
        assert_eq!(lines.line_of("steps[0].send.channel"), Some(4));
        assert_eq!(lines.line_of("steps[0].send.nothing.deeper"), Some(4));
    }

    #[test]
    fn json_is_accepted_and_syntax_errors_have_lines() {
        let (v, _) = load("{\"id\": \"j\", \"priority\": 5}").unwrap();
        assert_eq!(v["priority"], 5);
        let err = load("id: j\nsteps: [\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        let err = load("id: j\nid: k\n").unwrap_err();
        assert!(err.message.contains("duplicate"), "{err:?}");
    }

    #[test]
    fn lines_inside_literal_blocks_are_file_lines() {
        let text = "id: t\nemail:\n  subject: \"Hi\"\n  html: |\n    <p>a</p>\n    <p>b</p>\n  text: >\n    x\n    y\n";
        let (_, lines) = load(text).unwrap();
        assert_eq!(lines.text_line("email.subject", 1), Some(3));
        assert_eq!(lines.text_line("email.html", 2), Some(6));
        assert_eq!(lines.text_line("email.text", 2), Some(8));
        assert_eq!(lines.text_line("email.nothing", 2), Some(2));
    }
}
