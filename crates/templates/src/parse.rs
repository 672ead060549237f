//! Template files → [`Template`]: the shape (channels, fields, locales), every text
//! compiled with liquid and scanned for its variables, and the rules checked before
//! anything is sent: unknown variables in strict mode, the unsubscribe link of
//! marketing emails, SMS segments and push lengths of the literal text. Every problem
//! is collected with the field it concerns and its line.

use crate::engine::{self, Bounds, Seg, path_text};
use crate::scan::{self, ROOTS, Scan};
use crate::sms::sms_length;
use crate::source::{LineMap, child, index_path};
use crate::{Diagnostic, Limits, SMS_SEGMENTS_MAX, closest};
use chorus_types::Category;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One template text: its source, compiled form and what the scanner found.
#[derive(Debug)]
pub(crate) struct Text {
    pub compiled: liquid_core::Template,
    pub scan: Scan,
    /// Liquid numbered as many filters as the scanner saw, so a missing value can be
    /// traced to its filter chain (always, unless the two disagree on the syntax).
    pub chains_known: bool,
    /// The field path in the file, e.g. `locales.fr.email.subject`.
    pub path: String,
    /// File line of the text's first line, and whether its lines are file lines.
    pub first_line: usize,
    pub literal_block: bool,
}

impl Text {
    /// The file line of line `n` of this text.
    pub fn file_line(&self, n: usize) -> usize {
        if self.literal_block { self.first_line + n.saturating_sub(1) } else { self.first_line }
    }
}

#[derive(Debug)]
pub(crate) struct Button {
    pub label: Text,
    pub action: Text,
}

/// A field's value.
#[derive(Debug)]
pub(crate) enum Slot {
    Text(Text),
    Buttons(Vec<Button>),
    Headers(Vec<(String, Text)>),
    Method(String),
}

/// Fields of one channel variant (or of a locale's overrides for it).
pub(crate) type Variant = BTreeMap<&'static str, Slot>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Buttons,
    Headers,
    Method,
}

/// (field, kind, required in the default variant)
pub(crate) type FieldSpec = (&'static str, Kind, bool);

/// The channel variants a template may have, and their fields.
pub(crate) const CHANNEL_FIELDS: &[(&str, &[FieldSpec])] = &[
    ("email", &[("subject", Kind::Text, true), ("preheader", Kind::Text, false), ("html", Kind::Text, false), ("text", Kind::Text, false)]),
    ("sms", &[("body", Kind::Text, true)]),
    ("mms", &[("body", Kind::Text, false), ("media_url", Kind::Text, true)]),
    ("push", &[("title", Kind::Text, false), ("body", Kind::Text, true), ("image", Kind::Text, false), ("deep_link", Kind::Text, false)]),
    ("in_app", &[("title", Kind::Text, false), ("body", Kind::Text, true), ("buttons", Kind::Buttons, false)]),
    ("webhook", &[("url", Kind::Text, true), ("method", Kind::Method, false), ("headers", Kind::Headers, false), ("body", Kind::Text, false)]),
];

pub(crate) const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Fields of the fixed-shape roots.
const SHAPES: &[(&str, &[&str])] = &[("journey", &["id", "step"]), ("message", &["id"]), ("links", &["unsubscribe", "preferences"])];

const TOP_KEYS: &[&str] =
    &["id", "name", "description", "category", "strict", "sms_segments_max", "email", "sms", "mms", "push", "in_app", "webhook", "locales"];

/// A parsed, validated template file. Render it with [`Template::render`].
#[derive(Debug)]
pub struct Template {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) file: String,
    pub(crate) category: Category,
    pub(crate) strict: bool,
    pub(crate) sms_segments_max: u32,
    pub(crate) limits: Limits,
    pub(crate) variants: BTreeMap<&'static str, Variant>,
    /// (locale as written, normalized tag, overrides per channel)
    pub(crate) locales: Vec<(String, String, BTreeMap<&'static str, Variant>)>,
}

impl Template {
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The file name given to [`crate::parse`].
    pub fn file(&self) -> &str {
        &self.file
    }
    pub fn category(&self) -> Category {
        self.category
    }
    pub fn strict(&self) -> bool {
        self.strict
    }
    pub fn sms_segments_max(&self) -> u32 {
        self.sms_segments_max
    }
    /// The channels this template has a variant for, in file-format order.
    pub fn channels(&self) -> Vec<&'static str> {
        CHANNEL_FIELDS.iter().map(|(c, _)| *c).filter(|c| self.variants.contains_key(c)).collect()
    }
    /// The locales with overrides, as written in the file.
    pub fn locales(&self) -> Vec<&str> {
        self.locales.iter().map(|(l, _, _)| l.as_str()).collect()
    }
}

/// Lower-case, `_` → `-`: `fr_CA` and `FR-ca` are `fr-ca`.
pub(crate) fn normalize_locale(tag: &str) -> String {
    tag.trim().replace('_', "-").to_ascii_lowercase()
}

fn valid_locale(tag: &str) -> bool {
    let mut parts = tag.split(['-', '_']);
    let lang = parts.next().unwrap_or("");
    (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn json_kind(v: &Value) -> &'static str {
    chorus_types::json::json_kind(v)
}

struct Problem {
    path: String,
    /// A precise line (inside a template text); else the path's line.
    line: Option<usize>,
    message: String,
}

pub(crate) struct Parser<'a> {
    limits: &'a Limits,
    lines: &'a LineMap,
    lang: engine::Lang,
    filter_names: Vec<&'static str>,
    problems: Vec<Problem>,
    strict: bool,
    category: Category,
    sms_segments_max: u32,
}

/// Parse and validate a template file's text. `file` names it in diagnostics.
pub fn parse_with(text: &str, file: &str, limits: &Limits) -> Result<Template, Vec<Diagnostic>> {
    let diag = |line: Option<usize>, path: &str, message: String| Diagnostic { file: file.to_string(), line, path: path.to_string(), message };
    if text.len() > limits.file_bytes_max {
        return Err(vec![diag(None, "", format!("the file is {} bytes, more than file_bytes_max ({}): split it", text.len(), limits.file_bytes_max))]);
    }
    let (value, lines) = crate::source::load(text).map_err(|e| {
        let quoted = text.lines().nth(e.line.saturating_sub(1)).is_some_and(|l| l.contains("{{") || l.contains("{%"));
        let hint = if quoted { " (a value that starts with {{ or {% must be quoted: subject: \"{{ profile.first_name }}\")" } else { "" };
        vec![diag(Some(e.line), "", format!("{}{hint}", e.message))]
    })?;
    let bounds = Bounds { loop_iterations_max: limits.loop_iterations_max, output_bytes_max: limits.output_bytes_max };
    let lang = engine::language(bounds);
    let mut filter_names: Vec<&'static str> = engine::FILTERS.to_vec();
    filter_names.sort_unstable();
    let mut p = Parser {
        limits,
        lines: &lines,
        lang,
        filter_names,
        problems: Vec::new(),
        strict: true,
        category: Category::Marketing,
        sms_segments_max: limits.sms_segments_max,
    };
    let template = p.template(&value, file);
    if p.problems.is_empty()
        && let Some(t) = template
    {
        return Ok(t);
    }
    let mut diags: Vec<Diagnostic> = p
        .problems
        .into_iter()
        .map(|pr| {
            let line = pr.line.or_else(|| lines.line_of(&pr.path));
            diag(line, &pr.path, pr.message)
        })
        .collect();
    if diags.is_empty() {
        diags.push(diag(None, "", "the template is incomplete".into()));
    }
    diags.sort_by_key(|d| d.line.unwrap_or(0));
    Err(diags)
}

impl Parser<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem { path: path.to_string(), line: None, message: message.into() });
    }

    fn err_at(&mut self, path: &str, line: usize, message: impl Into<String>) {
        self.problems.push(Problem { path: path.to_string(), line: Some(line), message: message.into() });
    }

    fn unknown_keys(&mut self, m: &Map<String, Value>, path: &str, allowed: &[&str]) {
        for k in m.keys() {
            if !allowed.contains(&k.as_str()) {
                let hint = closest(k, allowed).map(|c| format!(" (did you mean {c:?}?)")).unwrap_or_default();
                self.err(&child(path, k), format!("unknown field {k:?}{hint}; allowed here: {}", allowed.join(", ")));
            }
        }
    }

    fn plain_string(&mut self, m: &Map<String, Value>, path: &str, key: &str) -> Option<String> {
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(Value::String(_)) => {
                self.err(&child(path, key), format!("{key} must not be empty"));
                None
            }
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                self.err(&child(path, key), format!("{key} must be a string, got {}", json_kind(other)));
                None
            }
        }
    }

    fn template(&mut self, v: &Value, file: &str) -> Option<Template> {
        let Value::Object(m) = v else {
            self.err("", format!("a template must be a mapping with id and channel variants, got {}", json_kind(v)));
            return None;
        };
        self.unknown_keys(m, "", TOP_KEYS);
        let id = self.plain_string(m, "", "id");
        match &id {
            None if !m.contains_key("id") => self.err("id", "id is required: name the template as journeys refer to it, e.g. id: browse-recos"),
            Some(id) if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') => {
                self.err("id", format!("{id:?} is not a valid template id: use at most 64 lower-case letters, digits, - and _"))
            }
            _ => {}
        }
        let name = self.plain_string(m, "", "name").or_else(|| id.clone()).unwrap_or_default();
        let _ = self.plain_string(m, "", "description");
        match self.plain_string(m, "", "category").as_deref() {
            None | Some("marketing") => self.category = Category::Marketing,
            Some("transactional") => self.category = Category::Transactional,
            Some(other) => self.err("category", format!("{other:?} is not a category: use marketing or transactional")),
        }
        match m.get("strict") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => self.strict = *b,
            Some(other) => self.err("strict", format!("strict must be true or false, got {other}")),
        }
        match m.get("sms_segments_max") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some_and(|s| (1..=u64::from(SMS_SEGMENTS_MAX)).contains(&s)) => {
                self.sms_segments_max = n.as_u64().unwrap_or(1) as u32;
            }
            Some(other) => self.err("sms_segments_max", format!("sms_segments_max must be a whole number from 1 to {SMS_SEGMENTS_MAX}, got {other}")),
        }
        let mut variants = BTreeMap::new();
        for (channel, fields) in CHANNEL_FIELDS {
            if let Some(v) = m.get(*channel)
                && let Some(variant) = self.variant(v, channel, channel, fields, true)
            {
                variants.insert(*channel, variant);
            }
        }
        if variants.is_empty() && !CHANNEL_FIELDS.iter().any(|(c, _)| m.contains_key(*c)) {
            self.err("", "a template needs at least one channel variant: email, sms, mms, push, in_app or webhook");
        }
        let locales = match m.get("locales") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(ls)) => self.locales(ls, &variants, m),
            Some(other) => {
                self.err(
                    "locales",
                    format!("locales must be a mapping of locale → overrides, e.g. fr: {{ sms: {{ body: \"…\" }} }}, got {}", json_kind(other)),
                );
                Vec::new()
            }
        };
        Some(Template {
            id: id?,
            name,
            file: file.to_string(),
            category: self.category,
            strict: self.strict,
            sms_segments_max: self.sms_segments_max,
            limits: *self.limits,
            variants,
            locales,
        })
    }

    fn locales(
        &mut self,
        ls: &Map<String, Value>,
        defaults: &BTreeMap<&'static str, Variant>,
        top: &Map<String, Value>,
    ) -> Vec<(String, String, BTreeMap<&'static str, Variant>)> {
        let mut out: Vec<(String, String, BTreeMap<&'static str, Variant>)> = Vec::new();
        if ls.len() > self.limits.locales_max {
            self.err("locales", format!("{} locales, more than locales_max ({})", ls.len(), self.limits.locales_max));
            return out;
        }
        for (tag, v) in ls {
            let path = child("locales", tag);
            if !valid_locale(tag) {
                self.err(&path, format!("{tag:?} is not a locale: use a language code with an optional region, e.g. fr or fr-CA"));
                continue;
            }
            let norm = normalize_locale(tag);
            if let Some((other, _, _)) = out.iter().find(|(_, n, _)| *n == norm) {
                self.err(&path, format!("locale {tag:?} is the same as {other:?}: keep one"));
                continue;
            }
            let Value::Object(channels) = v else {
                self.err(&path, format!("a locale must be a mapping of channel → fields, e.g. {tag}: {{ email: {{ subject: \"…\" }} }}, got {}", json_kind(v)));
                continue;
            };
            let names: Vec<&str> = CHANNEL_FIELDS.iter().map(|(c, _)| *c).collect();
            self.unknown_keys(channels, &path, &names);
            let mut per = BTreeMap::new();
            for (channel, fields) in CHANNEL_FIELDS {
                let Some(cv) = channels.get(*channel) else {
                    continue;
                };
                let cpath = child(&path, channel);
                if !defaults.contains_key(channel) && !top.contains_key(*channel) {
                    self.err(&cpath, format!("there is no default {channel} variant to localize: add {channel} at the top level first"));
                    continue;
                }
                if let Some(variant) = self.variant(cv, &cpath, channel, fields, false) {
                    per.insert(*channel, variant);
                }
            }
            out.push((tag.clone(), norm, per));
        }
        out
    }

    /// One channel variant at `path` (the default when `is_default`, else a locale's
    /// overrides, where nothing is required).
    fn variant(&mut self, v: &Value, path: &str, channel: &str, fields: &[FieldSpec], is_default: bool) -> Option<Variant> {
        let Value::Object(m) = v else {
            self.err(
                path,
                format!("{channel} must be a mapping of its fields ({}), got {}", fields.iter().map(|f| f.0).collect::<Vec<_>>().join(", "), json_kind(v)),
            );
            return None;
        };
        let names: Vec<&str> = fields.iter().map(|f| f.0).collect();
        self.unknown_keys(m, path, &names);
        let mut out = Variant::new();
        for (name, kind, required) in fields {
            let fpath = child(path, name);
            match m.get(*name) {
                None | Some(Value::Null) => {
                    if *required && is_default {
                        self.err(&fpath, format!("{channel}.{name} is required"));
                    }
                }
                Some(fv) => {
                    if let Some(slot) = self.slot(fv, &fpath, channel, name, *kind) {
                        out.insert(*name, slot);
                    }
                }
            }
        }
        if channel == "email" && is_default && !m.contains_key("html") && !m.contains_key("text") {
            self.err(path, "an email needs html or text (or both)");
        }
        Some(out)
    }

    fn slot(&mut self, v: &Value, path: &str, channel: &str, name: &str, kind: Kind) -> Option<Slot> {
        match kind {
            Kind::Text => self.text(v, path, channel, name).map(Slot::Text),
            Kind::Method => {
                let s = match v {
                    Value::String(s) => s.trim().to_ascii_uppercase(),
                    other => {
                        self.err(path, format!("method must be one of {}, got {}", METHODS.join(", "), json_kind(other)));
                        return None;
                    }
                };
                if !METHODS.contains(&s.as_str()) {
                    self.err(path, format!("{s:?} is not a method: use one of {}", METHODS.join(", ")));
                    return None;
                }
                Some(Slot::Method(s))
            }
            Kind::Headers => {
                let Value::Object(hs) = v else {
                    self.err(path, format!("headers must be a mapping of header name → value, got {}", json_kind(v)));
                    return None;
                };
                if hs.len() > self.limits.webhook_headers_max {
                    self.err(path, format!("{} headers, more than webhook_headers_max ({})", hs.len(), self.limits.webhook_headers_max));
                    return None;
                }
                let mut out = Vec::new();
                for (h, hv) in hs {
                    let hpath = child(path, h);
                    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b)) {
                        self.err(&hpath, format!("{h:?} is not a valid header name: use letters, digits and - (e.g. X-Api-Key)"));
                        continue;
                    }
                    if let Some(t) = self.text(hv, &hpath, channel, "headers") {
                        out.push((h.clone(), t));
                    }
                }
                Some(Slot::Headers(out))
            }
            Kind::Buttons => {
                let Value::Array(items) = v else {
                    self.err(path, format!("buttons must be a list of {{label, action}}, got {}", json_kind(v)));
                    return None;
                };
                if items.len() > self.limits.in_app_buttons_max {
                    self.err(path, format!("{} buttons, more than in_app_buttons_max ({})", items.len(), self.limits.in_app_buttons_max));
                    return None;
                }
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let bpath = index_path(path, i);
                    let Value::Object(b) = item else {
                        self.err(&bpath, format!("a button must be a mapping {{label, action}}, got {}", json_kind(item)));
                        continue;
                    };
                    self.unknown_keys(b, &bpath, &["label", "action"]);
                    let get = |p: &mut Self, key: &str| match b.get(key) {
                        None | Some(Value::Null) => {
                            p.err(&child(&bpath, key), format!("a button needs a {key}"));
                            None
                        }
                        Some(x) => p.text(x, &child(&bpath, key), channel, key),
                    };
                    let label = get(self, "label");
                    let action = get(self, "action");
                    if let (Some(label), Some(action)) = (label, action) {
                        out.push(Button { label, action });
                    }
                }
                Some(Slot::Buttons(out))
            }
        }
    }

    /// A template text: compiled, scanned and checked.
    fn text(&mut self, v: &Value, path: &str, channel: &str, name: &str) -> Option<Text> {
        let source = match v {
            Value::String(s) if s.trim().is_empty() => {
                self.err(path, format!("{name} must not be empty (remove the field instead)"));
                return None;
            }
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Object(_) => {
                self.err(
                    path,
                    format!("{name} must be text, got a mapping: quote a value that starts with {{{{, e.g. {name}: \"{{{{ profile.first_name }}}}\""),
                );
                return None;
            }
            other => {
                self.err(path, format!("{name} must be text, got {}", json_kind(other)));
                return None;
            }
        };
        if source.len() > self.limits.field_bytes_max {
            self.err(path, format!("{name} is {} bytes, more than field_bytes_max ({})", source.len(), self.limits.field_bytes_max));
            return None;
        }
        let (first_line, literal_block) = self.lines.value_start(path).unwrap_or((self.lines.line_of(path).unwrap_or(1), false));
        let at = |n: usize| {
            if literal_block { first_line + n.saturating_sub(1) } else { first_line }
        };
        let scan = scan::scan(&source, &self.filter_names, self.limits.nesting_depth_max);
        let scan_ok = scan.problems.is_empty();
        for (line, message) in &scan.problems {
            self.err_at(path, at(*line), message.clone());
        }
        self.check_variables(&scan, path, &at);
        let compiled = if scan_ok {
            match engine::compile(&source, &self.lang) {
                Ok((c, filters)) => Some((c, filters == scan.filters.len())),
                Err(e) => {
                    let (line, message) = liquid_error(&e);
                    self.err_at(path, at(line.unwrap_or(1)), format!("liquid: {message}"));
                    None
                }
            }
        } else {
            None
        };
        self.check_rules(&scan, path, channel, name, first_line);
        let (compiled, chains_known) = compiled?;
        Some(Text { compiled, chains_known, scan, path: path.to_string(), first_line, literal_block })
    }

    /// Strict mode: every variable is a template variable (or one the template sets),
    /// and the fixed-shape ones have the field named.
    fn check_variables(&mut self, scan: &Scan, path: &str, at: &dyn Fn(usize) -> usize) {
        for r in &scan.refs {
            if scan.locals.contains(&r.root) || !self.strict {
                continue;
            }
            let shown = path_text(&r.root, &r.segs);
            if !ROOTS.contains(&r.root.as_str()) {
                let hint = closest(&r.root, ROOTS).map(|c| format!(" (did you mean {c}?)")).unwrap_or_default();
                self.err_at(
                    path,
                    at(r.line),
                    format!("unknown variable {shown}{hint}: use profile, event, vars, journey, message or links (or set strict: false to render unknown variables empty)"),
                );
                continue;
            }
            if let Some((_, fields)) = SHAPES.iter().find(|(root, _)| *root == r.root) {
                match r.segs.first() {
                    Some(Seg::Key(k)) if fields.contains(&k.as_str()) => {}
                    None if r.dynamic => {}
                    None => {}
                    Some(seg) => {
                        let k = match seg {
                            Seg::Key(k) => k.clone(),
                            Seg::Index(i) => i.to_string(),
                        };
                        let hint = closest(&k, fields).map(|c| format!(" (did you mean {}.{c}?)", r.root)).unwrap_or_default();
                        self.err_at(path, at(r.line), format!("{} has no field {k:?}{hint}; it has: {}", r.root, fields.join(", ")));
                    }
                }
            }
        }
    }

    /// Channel rules on what the text is known to contain before rendering.
    fn check_rules(&mut self, scan: &Scan, path: &str, channel: &str, name: &str, first_line: usize) {
        let literal = scan.literal.trim();
        match (channel, name) {
            ("email", "html" | "text") if self.category == Category::Marketing => {
                let has = scan.refs.iter().any(|r| r.root == "links" && r.segs.first() == Some(&Seg::Key("unsubscribe".into())));
                if !has {
                    self.err_at(
                        path,
                        first_line,
                        format!("a marketing email must carry an unsubscribe link: add {{{{ links.unsubscribe }}}} to the {name} (e.g. <a href=\"{{{{ links.unsubscribe }}}}\">Unsubscribe</a>), or set category: transactional"),
                    );
                }
            }
            ("sms", "body") => {
                let len = sms_length(literal);
                if len.segments > self.sms_segments_max {
                    self.err_at(
                        path,
                        first_line,
                        format!(
                            "the fixed text alone is {} SMS segments ({}, {} units), more than sms_segments_max ({}): shorten it{}",
                            len.segments,
                            len.encoding,
                            len.units,
                            self.sms_segments_max,
                            ucs2_hint(len.ucs2_because)
                        ),
                    );
                }
            }
            ("push", "title" | "body") => {
                let max = if name == "title" { self.limits.push_title_chars_max } else { self.limits.push_body_chars_max };
                let n = literal.chars().count();
                if n > max {
                    self.err_at(path, first_line, format!("the fixed text alone is {n} characters, more than a push {name} may have ({max}): shorten it"));
                }
            }
            ("webhook", "url") | ("mms", "media_url") | ("push", "image") if scan.refs.is_empty() => {
                let l = literal.to_ascii_lowercase();
                if !(l.starts_with("https://") || l.starts_with("http://")) {
                    self.err_at(path, first_line, format!("{literal:?} is not an http(s) URL"));
                }
            }
            _ => {}
        }
    }
}

/// Why a message became UCS-2, for error messages.
pub(crate) fn ucs2_hint(because: Option<char>) -> String {
    match because {
        Some(c) => format!(" ({c:?} is not in the GSM-7 alphabet, so the message is UCS-2: 70 characters per segment instead of 160)"),
        None => String::new(),
    }
}

/// Liquid's error text → (line within the template, one-line message).
pub(crate) fn liquid_error(e: &str) -> (Option<usize>, String) {
    let line = e.split_once("-->").and_then(|(_, rest)| rest.trim_start().split(':').next()).and_then(|n| n.trim().parse::<usize>().ok());
    let mut parts: Vec<String> = Vec::new();
    for l in e.lines() {
        let t = l.trim();
        if let Some(m) = t.strip_prefix("= ") {
            parts.push(m.trim_end_matches('.').to_string());
        } else if let Some(m) = t.strip_prefix("liquid:") {
            let m = m.trim();
            if !m.is_empty() && !m.starts_with("-->") {
                parts.push(m.trim_end_matches('.').to_string());
            }
        } else if t.contains('=') && !t.starts_with('|') && !t.contains(" | ") && !t.starts_with("available") {
            parts.push(t.to_string());
        } else if let Some(m) = t.strip_prefix("from: ") {
            parts.push(format!("in {m}"));
        }
    }
    (line, parts.join("; "))
}
