//! Journeys (SPEC §6): the definition model, loading from YAML/JSON files with line
//! numbers, and validation that says file, line and how to fix. Pure: no I/O here —
//! callers hand in the file's text.

pub mod model;
mod parse;
pub mod run;
pub mod simulate;
pub mod source;
pub mod stats;
mod validate;

pub use model::*;
pub use parse::{Problem, closest, parse_wait};
pub use validate::{Catalog, expressions};

use std::fmt;

/// One validation message, located in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: Option<usize>,
    /// The field concerned, e.g. `steps[2].send.channel` (empty for the whole file).
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.path.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.path, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Parse and validate a journey file's text. All problems are reported, in file order.
pub fn load_journey(text: &str, catalog: &Catalog) -> Result<JourneyDef, Vec<Diagnostic>> {
    let (value, lines) = source::load(text).map_err(|e| vec![Diagnostic { line: Some(e.line), path: String::new(), message: e.message }])?;
    let mut p = parse::Parser { problems: Vec::new(), broken: Default::default() };
    let def = p.journey(&value);
    if let Some(def) = &def {
        validate::validate(def, catalog, &p.broken, &mut p.problems);
    }
    if p.problems.is_empty() {
        if let Some(def) = def {
            return Ok(def);
        }
    }
    let mut diags: Vec<Diagnostic> =
        p.problems.into_iter().map(|pr| Diagnostic { line: lines.line_of(&pr.path), path: pr.path, message: pr.message }).collect();
    if diags.is_empty() {
        diags.push(Diagnostic { line: None, path: String::new(), message: "the journey is incomplete".into() });
    }
    diags.sort_by_key(|d| d.line.unwrap_or(0));
    Err(diags)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod rules_tests;
