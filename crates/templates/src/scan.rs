//! A read-only pass over Liquid template text that liquid itself does not offer:
//! every variable reference with its line and where it is used (a test — condition,
//! loop collection — or a filter chain, with or without `default`), the filters in
//! text order (the order liquid numbers them in when compiling), the names the
//! template binds itself, the text every rendering outputs, and problems worth a
//! precise line (unknown tags and filters, unbalanced or too deeply nested blocks, a
//! local hiding a template variable).
//!
//! It follows liquid 0.26's grammar (identifiers may contain `-`, strings have no
//! escapes). Syntax errors are left to liquid's parser, which runs after this.

use crate::engine::Seg;
use std::collections::BTreeSet;

/// One variable reference, e.g. `profile.first_name` on line 3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    pub root: String,
    /// The static part of the path (up to the first index computed from a variable).
    pub segs: Vec<Seg>,
    /// True when the path continues with a computed index (`a[b]`).
    pub dynamic: bool,
    /// 1-based line within the template text.
    pub line: usize,
    /// The filter chain (output, `assign`, `cycle`) it is part of; None in a test
    /// (`if`, `elsif`, `unless`, `case`, `when`, `for`), where a missing value is nil.
    pub chain: Option<usize>,
}

/// A filter chain: `value | filter | …` of an output, `assign` or `cycle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    pub has_default: bool,
    pub has_filters: bool,
}

/// One filter in text order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterUse {
    pub chain: usize,
    /// The chain's first filter (the one right after the value it starts from).
    pub first: bool,
}

/// What [`scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    pub refs: Vec<Ref>,
    pub chains: Vec<Chain>,
    pub filters: Vec<FilterUse>,
    /// Names the template binds: `assign`, `capture`, `for` variables, counters.
    pub locals: BTreeSet<String>,
    /// The text outside any block, which every rendering outputs.
    pub literal: String,
    /// (line, message)
    pub problems: Vec<(usize, String)>,
}

/// The variables a template may use.
pub const ROOTS: &[&str] = &["profile", "event", "vars", "journey", "message", "links"];

const TAGS: &[&str] = &[
    "assign",
    "break",
    "continue",
    "cycle",
    "increment",
    "decrement",
    "raw",
    "endraw",
    "if",
    "elsif",
    "else",
    "endif",
    "unless",
    "endunless",
    "ifchanged",
    "endifchanged",
    "for",
    "endfor",
    "comment",
    "endcomment",
    "capture",
    "endcapture",
    "case",
    "when",
    "endcase",
];
const OPENERS: &[&str] = &["if", "unless", "for", "case", "capture", "ifchanged"];
const CLOSERS: &[&str] = &["endif", "endunless", "endfor", "endcase", "endcapture", "endifchanged"];
const LITERALS: &[&str] = &["nil", "null", "empty", "blank", "true", "false"];
const OPERATORS: &[&str] = &["and", "or", "contains", "in", "reversed"];

/// Scan `text`; `filters` are the known filter names.
pub fn scan(text: &str, filters: &[&str], nesting_depth_max: usize) -> Scan {
    let mut s = Scanner { text, lines: line_starts(text), out: Scan::default(), filters, open: Vec::new() };
    s.run(nesting_depth_max);
    s.out
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect()
}

struct Scanner<'a> {
    text: &'a str,
    lines: Vec<usize>,
    out: Scan,
    filters: &'a [&'a str],
    /// Open blocks: (tag, position).
    open: Vec<(&'a str, usize)>,
}

/// Liquid's whitespace (no tabs).
fn trim_ws_end(s: &str) -> &str {
    s.trim_end_matches([' ', '\n', '\r'])
}
fn trim_ws_start(s: &str) -> &str {
    s.trim_start_matches([' ', '\n', '\r'])
}

/// The end of markup starting at `from` (just after `{{` or `{%`), honouring quotes:
/// the index of the closing `close` (`}}` or `%}`).
fn markup_end(text: &str, from: usize, close: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = from;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        match quote {
            Some(q) if b[i] == q => quote = None,
            Some(_) => {}
            None if b[i] == b'\'' || b[i] == b'"' => quote = Some(b[i]),
            None if text[i..].starts_with(close) => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

impl Scan {
    /// A missing value is tolerated at `r`: a test, or a chain with `default`.
    pub fn excused(&self, r: &Ref) -> bool {
        r.chain.is_none_or(|c| self.chains[c].has_default)
    }
}

impl Scanner<'_> {
    fn line(&self, pos: usize) -> usize {
        match self.lines.binary_search(&pos) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    fn problem(&mut self, pos: usize, message: String) {
        let line = self.line(pos);
        self.out.problems.push((line, message));
    }

    fn literal(&mut self, piece: &str, trim_start: bool) {
        if self.open.is_empty() {
            self.out.literal.push_str(if trim_start { trim_ws_start(piece) } else { piece });
        }
    }

    fn run(&mut self, nesting_depth_max: usize) {
        self.markup(nesting_depth_max);
        for (opener, at) in std::mem::take(&mut self.open) {
            self.problem(at, format!("{{% {opener} %}} is never closed: add {{% end{opener} %}}"));
        }
    }

    /// Walk the text: literal pieces, outputs and tags. Stops at the first markup it
    /// cannot follow (liquid then reports the syntax error).
    fn markup(&mut self, nesting_depth_max: usize) {
        let text = self.text;
        let mut pos = 0;
        let mut trim_next = false;
        let mut too_deep_reported = false;
        while pos < text.len() {
            let next = [text[pos..].find("{{"), text[pos..].find("{%")].into_iter().flatten().min();
            let Some(rel) = next else {
                self.literal(&text[pos..], trim_next);
                break;
            };
            let start = pos + rel;
            let is_output = text[start..].starts_with("{{");
            let inner_start = start + 2;
            let left_trim = text[inner_start..].starts_with('-');
            let piece = &text[pos..start];
            let piece = if left_trim { trim_ws_end(piece) } else { piece };
            self.literal(piece, trim_next);
            let close = if is_output { "}}" } else { "%}" };
            let Some(end) = markup_end(text, inner_start, close) else {
                // Unclosed markup: liquid reports it with its position.
                return;
            };
            let mut inner = &text[inner_start..end];
            let mut inner_pos = inner_start;
            if let Some(rest) = inner.strip_prefix('-') {
                inner = rest;
                inner_pos += 1;
            }
            trim_next = false;
            if let Some(rest) = inner.strip_suffix('-') {
                inner = rest;
                trim_next = true;
            }
            pos = end + 2;
            if is_output {
                let toks = lex(inner, inner_pos);
                let mut p = Parser { toks: &toks, i: 0, refs: Vec::new(), filters: Vec::new() };
                p.chain();
                self.finish(p, false);
                continue;
            }
            // A tag.
            let toks = lex(inner, inner_pos);
            let Some(first) = toks.first() else { continue };
            let name = first.text;
            if !TAGS.contains(&name) {
                let msg = match name {
                    "include" | "render" => format!("{{% {name} %}} is not supported: a template cannot include other files"),
                    "tablerow" => "{% tablerow %} is not supported: build the table with {% for %}".to_string(),
                    _ => match crate::closest(name, TAGS) {
                        Some(c) => format!("unknown tag {name:?} (did you mean {c:?}?)"),
                        None => format!("unknown tag {name:?}"),
                    },
                };
                self.problem(first.pos, msg);
                continue;
            }
            match name {
                "raw" | "comment" => {
                    let (content_end, after) = skip_block(text, pos, name);
                    if name == "raw" {
                        self.literal(&text[pos..content_end], trim_next);
                    }
                    trim_next = false;
                    pos = after;
                    continue;
                }
                _ if OPENERS.contains(&name) => {
                    self.open.push((name, first.pos));
                    if self.open.len() > nesting_depth_max && !too_deep_reported {
                        too_deep_reported = true;
                        self.problem(first.pos, format!("blocks are nested more than {nesting_depth_max} deep (nesting_depth_max): flatten the template"));
                    }
                }
                _ if CLOSERS.contains(&name) => match self.open.last() {
                    Some((opener, _)) if name.strip_prefix("end") == Some(opener) => {
                        self.open.pop();
                    }
                    Some((opener, _)) => {
                        let opener = *opener;
                        self.problem(first.pos, format!("{{% {name} %}} does not close the open {{% {opener} %}}: close that first with {{% end{opener} %}}"));
                        self.open.clear();
                        return;
                    }
                    None => {
                        self.problem(first.pos, format!("{{% {name} %}} closes no block"));
                        return;
                    }
                },
                _ => {}
            }
            let mut p = Parser { toks: &toks, i: 1, refs: Vec::new(), filters: Vec::new() };
            match name {
                "assign" | "capture" | "increment" | "decrement" | "for" => {
                    if let Some(t) = p.peek().filter(|t| t.kind == Kind::Ident) {
                        p.i += 1;
                        if ROOTS.contains(&t.text) {
                            self.problem(t.pos, format!("{{% {name} {} %}} would hide the template variable {}: choose another name", t.text, t.text));
                        }
                        self.out.locals.insert(t.text.to_string());
                    }
                    match name {
                        "assign" => {
                            if p.peek().is_some_and(|t| t.text == "=") {
                                p.i += 1;
                            }
                            p.chain();
                            self.finish(p, false);
                        }
                        "for" => {
                            self.out.locals.insert("forloop".into());
                            p.rest();
                            self.finish(p, true);
                        }
                        _ => {}
                    }
                }
                "if" | "elsif" | "unless" | "case" | "when" => {
                    p.rest();
                    self.finish(p, true);
                }
                "cycle" => {
                    p.rest();
                    self.finish(p, false);
                }
                _ => {}
            }
        }
    }

    /// Record a parsed piece's references and filters: a test's, or a chain's.
    fn finish(&mut self, p: Parser<'_, '_>, test: bool) {
        let chain = if test {
            None
        } else {
            let id = self.out.chains.len();
            self.out.chains.push(Chain { has_default: p.filters.iter().any(|(f, _)| *f == "default"), has_filters: !p.filters.is_empty() });
            for i in 0..p.filters.len() {
                self.out.filters.push(FilterUse { chain: id, first: i == 0 });
            }
            Some(id)
        };
        for (name, pos) in &p.filters {
            if !self.filters.contains(name) {
                let msg = match crate::closest(name, self.filters) {
                    Some(c) => format!("unknown filter {name:?} (did you mean {c:?}?)"),
                    None => format!("unknown filter {name:?}"),
                };
                self.problem(*pos, msg);
            }
        }
        for r in p.refs {
            let line = self.line(r.pos);
            self.out.refs.push(Ref { root: r.root, segs: r.segs, dynamic: r.dynamic, line, chain });
        }
    }
}

/// Skip a `raw` or `comment` block whose opening tag ended at `from`: (where the
/// content ends, where the closing tag ends). Comments nest; raw does not.
fn skip_block(text: &str, from: usize, name: &str) -> (usize, usize) {
    let close = format!("end{name}");
    let mut depth = 1;
    let mut pos = from;
    while let Some(rel) = text[pos..].find("{%") {
        let start = pos + rel;
        let Some(end) = text[start + 2..].find("%}").map(|e| start + 2 + e) else {
            break;
        };
        let inner = text[start + 2..end].trim_matches(|c: char| c == '-' || c.is_whitespace());
        let word = inner.split_whitespace().next().unwrap_or("");
        if word == close {
            depth -= 1;
            if depth == 0 {
                return (start, end + 2);
            }
        } else if word == name && name == "comment" {
            depth += 1;
        }
        pos = end + 2;
    }
    (text.len(), text.len())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ident,
    Str,
    Num,
    Punct,
}

#[derive(Clone, Copy, Debug)]
struct Tok<'a> {
    kind: Kind,
    text: &'a str,
    pos: usize,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b'-'
}
fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Tokens of markup text starting at byte `base` of the template.
fn lex(s: &str, base: usize) -> Vec<Tok<'_>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let kind = if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
            i += 1;
            continue;
        } else if c == b'\'' || c == b'"' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += 1;
            }
            i = (i + 1).min(b.len());
            Kind::Str
        } else if c.is_ascii_digit() || ((c == b'-' || c == b'+') && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            Kind::Num
        } else if is_ident_start(c) {
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            Kind::Ident
        } else {
            let two = s.get(i..i + 2).unwrap_or("");
            i += if ["..", "==", "!=", "<>", ">=", "<="].contains(&two) { 2 } else { s[i..].chars().next().map_or(1, char::len_utf8) };
            Kind::Punct
        };
        out.push(Tok { kind, text: &s[start..i], pos: base + start });
    }
    out
}

struct RawRef {
    root: String,
    segs: Vec<Seg>,
    dynamic: bool,
    pos: usize,
}

struct Parser<'t, 'a> {
    toks: &'t [Tok<'a>],
    i: usize,
    refs: Vec<RawRef>,
    /// (filter name, position)
    filters: Vec<(&'a str, usize)>,
}

impl<'a> Parser<'_, 'a> {
    fn peek(&self) -> Option<Tok<'a>> {
        self.toks.get(self.i).copied()
    }
    fn peek_at(&self, n: usize) -> Option<Tok<'a>> {
        self.toks.get(self.i + n).copied()
    }
    fn eat(&mut self, text: &str) -> bool {
        if self.peek().is_some_and(|t| t.kind == Kind::Punct && t.text == text) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// A value: a literal, a variable or a range.
    fn value(&mut self) {
        let Some(t) = self.peek() else { return };
        match t.kind {
            Kind::Str | Kind::Num => self.i += 1,
            Kind::Ident if LITERALS.contains(&t.text) => self.i += 1,
            Kind::Ident => self.variable(),
            Kind::Punct if t.text == "(" => {
                self.i += 1;
                self.value();
                self.eat("..");
                self.value();
                self.eat(")");
            }
            Kind::Punct => self.i += 1,
        }
    }

    fn variable(&mut self) {
        let Some(t) = self.peek() else { return };
        self.i += 1;
        let mut r = RawRef { root: t.text.to_string(), segs: Vec::new(), dynamic: false, pos: t.pos };
        loop {
            if self.peek().is_some_and(|p| p.text == ".") && self.peek_at(1).is_some_and(|n| n.kind == Kind::Ident) {
                let n = self.toks[self.i + 1];
                self.i += 2;
                if !r.dynamic {
                    r.segs.push(Seg::Key(n.text.to_string()));
                }
            } else if self.eat("[") {
                match self.peek() {
                    Some(Tok { kind: Kind::Str, text, .. }) => {
                        self.i += 1;
                        if !r.dynamic {
                            r.segs.push(Seg::Key(text[1..text.len().saturating_sub(1).max(1)].to_string()));
                        }
                    }
                    Some(Tok { kind: Kind::Num, text, .. }) if text.parse::<i64>().is_ok() => {
                        self.i += 1;
                        if !r.dynamic {
                            r.segs.push(Seg::Index(text.parse().unwrap_or(0)));
                        }
                    }
                    _ => {
                        r.dynamic = true;
                        self.value();
                    }
                }
                self.eat("]");
            } else {
                break;
            }
        }
        self.refs.push(r);
    }

    /// `value | filter: arg, key: arg | …`
    fn chain(&mut self) {
        self.value();
        while self.eat("|") {
            let Some(f) = self.peek().filter(|t| t.kind == Kind::Ident) else {
                return;
            };
            self.i += 1;
            self.filters.push((f.text, f.pos));
            if self.eat(":") {
                loop {
                    if self.peek().is_some_and(|t| t.kind == Kind::Ident) && self.peek_at(1).is_some_and(|t| t.text == ":") {
                        self.i += 2;
                    }
                    self.value();
                    if !self.eat(",") {
                        break;
                    }
                }
            }
        }
    }

    /// The rest of a tag: chains separated by operators, keywords and `name:` keys.
    fn rest(&mut self) {
        while let Some(t) = self.peek() {
            match t.kind {
                Kind::Ident if OPERATORS.contains(&t.text) => self.i += 1,
                Kind::Ident if self.peek_at(1).is_some_and(|n| n.text == ":") => self.i += 2,
                Kind::Punct if t.text != "(" => self.i += 1,
                _ => self.chain(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILTERS: &[&str] = &["default", "upcase", "append", "size"];

    fn refs(text: &str) -> Vec<(String, usize, bool)> {
        let s = scan(text, FILTERS, 8);
        s.refs.iter().map(|r| (crate::engine::path_text(&r.root, &r.segs) + if r.dynamic { "[…]" } else { "" }, r.line, s.excused(r))).collect()
    }

    #[test]
    fn references_carry_lines_and_whether_they_are_excused() {
        let t = "Hi {{ profile.first_name | default: 'there' }}\n{% if event.coupon %}{{ event.coupon | upcase }}{% endif %}\n{{ vars.items[0].name }} {{ profile[\"a b\"] }} {{ profile.x[vars.k].y }}";
        assert_eq!(
            refs(t),
            vec![
                ("profile.first_name".into(), 1, true),
                ("event.coupon".into(), 2, true),
                ("event.coupon".into(), 2, false),
                ("vars.items[0].name".into(), 3, false),
                ("profile[\"a b\"]".into(), 3, false),
                ("vars.k".into(), 3, false),
                ("profile.x[…]".into(), 3, false),
            ]
        );
    }

    #[test]
    fn locals_literals_and_problems() {
        let t = "A {% assign n = profile.n | default: 1 %}{% for p in event.products limit: vars.max %}{{ p.name }} {{ forloop.index }}{% endfor %}\n{%- capture c -%} x {%- endcapture %} B\n{% raw %}{{ raw }}{% endraw %} {{ x | upcasee }}\n{% include 'x' %}{% assign profile = 1 %}";
        let s = scan(t, FILTERS, 8);
        assert_eq!(s.locals.iter().cloned().collect::<Vec<_>>(), vec!["c", "forloop", "n", "p", "profile"]);
        assert_eq!(s.literal, "A  B\n{{ raw }} \n");
        assert_eq!(
            s.problems,
            vec![
                (3, "unknown filter \"upcasee\" (did you mean \"upcase\"?)".to_string()),
                (4, "{% include %} is not supported: a template cannot include other files".to_string()),
                (4, "{% assign profile %} would hide the template variable profile: choose another name".to_string()),
            ]
        );
        let r: Vec<_> = s.refs.iter().map(|r| (r.root.as_str(), r.chain)).collect();
        assert_eq!(r, vec![("profile", Some(0)), ("event", None), ("vars", None), ("p", Some(1)), ("forloop", Some(2)), ("x", Some(3))]);
        assert_eq!(s.chains[0], Chain { has_default: true, has_filters: true });
        assert_eq!(s.chains[1], Chain { has_default: false, has_filters: false });
        assert_eq!(s.filters, vec![FilterUse { chain: 0, first: true }, FilterUse { chain: 3, first: true }]);
    }

    #[test]
    fn nesting_is_bounded() {
        let t = "{% if a %}{% if b %}\n{% if c %}{% endif %}{% endif %}{% endif %}";
        assert_eq!(scan(t, FILTERS, 2).problems, vec![(2, "blocks are nested more than 2 deep (nesting_depth_max): flatten the template".to_string())]);
        assert!(scan(t, FILTERS, 3).problems.is_empty());
    }
}
