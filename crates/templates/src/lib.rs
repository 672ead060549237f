//! Message templates (SPEC §7): one message per file with channel variants (email, sms,
//! mms, push, in_app, webhook) written in Liquid, localized field by field, validated
//! before anything is sent and rendered within bounds.
//!
//! - [`parse`] a template file's text (YAML or JSON) into a [`Template`]; problems come
//!   back as [`Diagnostic`]s with file, line, field and how to fix them.
//! - [`Template::render`] one channel for one customer ([`Context`]) into a
//!   [`Rendered`] message, or a [`RenderError`] naming the field, line and rule.
//! - Helpers: [`sms_length`] (GSM-7/UCS-2 segments), [`track_links`] and
//!   [`insert_open_pixel`] for email engagement tracking.
//!
//! Pure: no I/O, no clock. Callers hand in text and values; files are read by callers.
//! Every limit is in [`Limits`] and documented there.

mod email;
mod engine;
mod output;
mod parse;
mod render;
mod scan;
mod sms;
pub mod source;

#[cfg(test)]
mod tests;

pub use email::{insert_open_pixel, track_links};
pub use output::{Button, ClickTracker, Content, Context, Email, InApp, JourneyRef, Links, Mms, Push, Rendered, Sms, Tracking, Webhook};
pub use parse::{Template, parse_with};
pub use scan::ROOTS;
pub use sms::{GSM7_PART_MAX, GSM7_SINGLE_MAX, SmsEncoding, SmsLength, UCS2_PART_MAX, UCS2_SINGLE_MAX, sms_length};

use std::fmt;

/// The largest `sms_segments_max` a template may set.
pub const SMS_SEGMENTS_MAX: u32 = 10;

/// Bounds on template files and on rendering. What happens at each: parsing reports a
/// diagnostic, rendering returns a [`RenderError`]; nothing hangs or grows unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest template file.
    pub file_bytes_max: usize,
    /// Largest template text (one field) in a file.
    pub field_bytes_max: usize,
    /// Largest rendered field, and largest value a template builds (`assign`,
    /// `capture`, a filter's result). Rendering stops when the output reaches it.
    pub output_bytes_max: usize,
    /// Most `for` iterations in one render of one field, all loops together; a range
    /// `(a..b)` larger than what is left is refused before it is built.
    pub loop_iterations_max: u64,
    /// Deepest nesting of blocks (`if`, `for`, `case`, …); bounds the recursion of
    /// parsing and rendering.
    pub nesting_depth_max: usize,
    /// SMS segments when the template does not set `sms_segments_max`.
    pub sms_segments_max: u32,
    /// Characters (Unicode scalar values) in a push title.
    pub push_title_chars_max: usize,
    /// Characters in a push body.
    pub push_body_chars_max: usize,
    pub in_app_buttons_max: usize,
    pub webhook_headers_max: usize,
    pub locales_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            file_bytes_max: 1024 * 1024,
            field_bytes_max: 128 * 1024,
            output_bytes_max: 256 * 1024,
            loop_iterations_max: 10_000,
            nesting_depth_max: 16,
            sms_segments_max: 3,
            push_title_chars_max: 65,
            push_body_chars_max: 240,
            in_app_buttons_max: 4,
            webhook_headers_max: 32,
            locales_max: 64,
        }
    }
}

/// Parse and validate a template file with the default [`Limits`]. `file` names the
/// file in diagnostics and render errors.
pub fn parse(text: &str, file: &str) -> Result<Template, Vec<Diagnostic>> {
    parse_with(text, file, &Limits::default())
}

/// One problem in a template file, located and explained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: Option<usize>,
    /// The field concerned, e.g. `locales.fr.sms.body` (empty for the whole file).
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE: FIELD: MESSAGE`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Where a render error happened: file, line and field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At {
    pub file: String,
    pub line: Option<usize>,
    pub field: String,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.field),
            None => write!(f, "{}: {}", self.file, self.field),
        }
    }
}

/// Why a template could not be rendered for a customer. All are permanent for that
/// (template, customer, context): retrying gives the same result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("template {template:?} has no {channel} variant (it has: {available})")]
    NoVariant { template: String, channel: String, available: String },
    #[error("{at}: {variable} is not set for this customer: give it a default ({{{{ {variable} | default: \"…\" }}}}) or set strict: false")]
    Missing { at: At, variable: String },
    #[error("{at}: the output is larger than {max} bytes (output_bytes_max)")]
    OutputTooLarge { at: At, max: usize },
    #[error("{at}: loops ran more than {max} iterations (loop_iterations_max)")]
    LoopsExceeded { at: At, max: u64 },
    #[error("{at}: a value built by the template is larger than {max} bytes (output_bytes_max)")]
    ValueTooLarge { at: At, max: usize },
    #[error("{at}: {message}")]
    Liquid { at: At, message: String },
    #[error("{at}: rendered empty, but it is required")]
    Empty { at: At },
    #[error("{at}: {url:?} is not an http(s) URL")]
    BadUrl { at: At, url: String },
    #[error("{at}: the SMS is {segments} segments ({encoding}, {units} units), more than sms_segments_max ({max}){hint}")]
    SmsTooLong { at: At, segments: u32, max: u32, encoding: &'static str, units: u32, hint: String },
    #[error("{at}: the push {field} is {chars} characters, more than {max}")]
    PushTooLong { at: At, field: &'static str, chars: usize, max: usize },
    #[error("{at}: a marketing email must contain the unsubscribe link (links.unsubscribe), but this rendering does not")]
    NoUnsubscribe { at: At },
    #[error("template {template:?} is a marketing email but no unsubscribe URL was supplied (links.unsubscribe)")]
    NoUnsubscribeUrl { template: String },
    #[error("the rendering context is invalid: {message}")]
    Context { message: String },
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a
/// likely typo.
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates.iter().map(|c| (edit_distance(word, c), *c)).filter(|(d, _)| *d <= limit).min_by_key(|(d, _)| *d).map(|(_, c)| c)
}

/// Edit distance counting an adjacent transposition as one edit (optimal string
/// alignment), so `nmae` is one edit from `name`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}
