//! Journey files → a JSON value plus a map from value paths (`steps[2].send.channel`)
//! to source lines, so every validation error can say file, line and what to fix.
//! YAML (via saphyr, with spans) and JSON (parsed as YAML 1.2, which it is) both work.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// Paths (as produced by [`Path`]) → 1-based line numbers.
#[derive(Clone, Debug, Default)]
pub struct LineMap {
    lines: HashMap<String, usize>,
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
}

/// Builds paths like `steps[2].send.channel`.
pub fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A syntax error in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parse YAML or JSON text into a value and its line map.
pub fn load(text: &str) -> Result<(Value, LineMap), SyntaxError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| SyntaxError { line: e.marker().line(), message: e.info().to_string() })?;
    let mut map = LineMap::default();
    match docs.len() {
        0 => Err(SyntaxError { line: 1, message: "the file is empty: a journey needs at least id, entry and steps".into() }),
        1 => {
            let v = convert(&docs[0], "", &mut map)?;
            Ok((v, map))
        }
        n => Err(SyntaxError { line: docs[1].span.start.line(), message: format!("{n} YAML documents in one file: put one journey per file") }),
    }
}

fn convert(node: &MarkedYaml<'_>, path: &str, map: &mut LineMap) -> Result<Value, SyntaxError> {
    map.lines.entry(path.to_string()).or_insert(node.span.start.line());
    Ok(match &node.data {
        YamlData::Value(s) => scalar(s),
        YamlData::Representation(text, _, _) => Value::String(text.to_string()),
        YamlData::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(convert(item, &index(path, i), map)?);
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
                    _ => return Err(SyntaxError { line: k.span.start.line(), message: "mapping keys must be plain scalars".into() }),
                };
                let p = child(path, &key);
                map.lines.insert(p.clone(), k.span.start.line());
                if out.contains_key(&key) {
                    return Err(SyntaxError { line: k.span.start.line(), message: format!("duplicate key {key:?}") });
                }
                let value = convert(v, &p, map)?;
                out.insert(key, value);
            }
            Value::Object(out)
        }
        YamlData::Tagged(_, inner) => convert(inner, path, map)?,
        YamlData::Alias(_) => return Err(SyntaxError { line: node.span.start.line(), message: "YAML aliases are not supported in journey files".into() }),
        YamlData::BadValue => return Err(SyntaxError { line: node.span.start.line(), message: "invalid YAML value".into() }),
    })
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
}
