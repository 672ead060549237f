//! Journey (and audience and settings) files → a JSON value plus a map from value paths
//! (`steps[2].send.channel`) to source lines, so every validation error can say file,
//! line and what to fix. The loader is the templates crate's (one YAML/JSON reader with
//! lines for every file Chorus reads).

pub use chorus_templates::source::{LineMap, SyntaxError, child, index_path as index};
use serde_json::Value;

/// Parse a journey file's YAML or JSON text into a value and its line map.
pub fn load(text: &str) -> Result<(Value, LineMap), SyntaxError> {
    chorus_templates::source::load_file(text, "journey", "id, entry and steps")
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
