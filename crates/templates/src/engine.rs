//! Liquid with bounds (liquid 0.26's engine and standard library): the language we
//! register, a bounded `for` loop, size-checked and numbered filters, a lenient
//! runtime that turns a missing variable into nil (so `| default:` works) and records
//! where it was looked up (in or just before which filter) for the strict rule, and
//! an output writer with a cap.
//!
//! Why not the `liquid` facade: it renders only with its own runtime, and the bounds
//! and the missing-variable rules live in the runtime. What is bounded, and how:
//! - output: the writer refuses to grow past `output_bytes_max` (the render stops);
//! - loops: every `for` iteration of one render draws from `loop_iterations_max`, and a
//!   range `(a..b)` larger than what is left is refused before it is built;
//! - values: `assign`/`capture` results and every filter result are at most
//!   `output_bytes_max` bytes; `replace` and `join` are checked before they run, as
//!   they are the two filters whose result can be much larger than their inputs;
//! - `include`, `render` and `tablerow` are not registered (no partials; tables are
//!   written with `for`). Template size and nesting are bounded by the parser
//!   (`scan`), so parsing and the recursion of rendering are bounded too.
//!
//! Must not: read files or clocks, or depend on anything but the values handed in.

use liquid_core::error::ResultLiquidExt;
use liquid_core::model::{KString, Object, ObjectView, ScalarCow, Value, ValueCow, ValueView};
use liquid_core::parser::{BlockElement, FilterArguments, FilterReflection, ParameterReflection, TryMatchToken};
use liquid_core::runtime::{Interrupt, InterruptRegister, PartialStore, Registers, RuntimeBuilder};
use liquid_core::{
    BlockReflection, Error, Expression, Filter, Language, ParseBlock, ParseFilter, Renderable, Result, Runtime, TagBlock, TagTokenIter, Template,
};
use liquid_lib::stdlib;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A static path segment of a variable: `.name`, `["name"]` or `[0]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(i64),
}

/// Print a path the way a template writes it: `profile.items[0].name`.
pub fn path_text(root: &str, segs: &[Seg]) -> String {
    let mut s = root.to_string();
    for seg in segs {
        match seg {
            Seg::Key(k) if k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Key(k) => s.push_str(&format!("[{k:?}]")),
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The bounds one compiled template renders under.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub loop_iterations_max: u64,
    pub output_bytes_max: usize,
}

/// Most distinct missing lookups remembered per render; beyond it, further ones are
/// not kept (so not checked by the strict rule).
const MISSES_MAX: usize = 1024;

/// A lookup that found nothing (and gave nil), with where it happened: inside the
/// evaluation of filter `inside` (its arguments), or just before filter `before`
/// started (the value a filter chain starts from). Filters are numbered in the order
/// they appear in the template text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Miss {
    pub root: String,
    pub segs: Vec<Seg>,
    pub inside: Option<usize>,
    pub before: Option<usize>,
}

/// Per-render state, kept in liquid's registers (shared by every frame of a render).
#[derive(Default, Debug)]
struct State {
    iterations: u64,
    loops_exceeded: bool,
    value_exceeded: bool,
    /// Filters being evaluated (innermost last).
    filters: Vec<usize>,
    /// Misses outside any filter not yet followed by a filter.
    tail: Vec<(String, Vec<Seg>)>,
    misses: std::collections::BTreeSet<Miss>,
}

impl State {
    fn keep(&mut self, m: Miss) {
        if self.misses.len() < MISSES_MAX {
            self.misses.insert(m);
        }
    }

    fn miss(&mut self, root: String, segs: Vec<Seg>) {
        if let Some(&f) = self.filters.last() {
            self.keep(Miss { root, segs, inside: Some(f), before: None });
        } else if self.tail.len() < MISSES_MAX && !self.tail.iter().any(|(r, s)| *r == root && *s == segs) {
            self.tail.push((root, segs));
        }
    }

    fn filter_start(&mut self, id: usize) {
        for (root, segs) in std::mem::take(&mut self.tail) {
            self.keep(Miss { root, segs, inside: None, before: Some(id) });
        }
        self.filters.push(id);
    }

    fn filter_end(&mut self) {
        self.filters.pop();
    }

    fn finish(&mut self) -> Vec<Miss> {
        for (root, segs) in std::mem::take(&mut self.tail) {
            self.keep(Miss { root, segs, inside: None, before: None });
        }
        std::mem::take(&mut self.misses).into_iter().collect()
    }
}

fn record_miss(registers: &Registers, path: &[ScalarCow<'_>]) {
    let Some(first) = path.first() else { return };
    let root = first.to_kstr().to_string();
    let segs: Vec<Seg> = path[1..]
        .iter()
        .map(|s| match (s.as_view().type_name(), s.to_integer()) {
            ("whole number", Some(i)) => Seg::Index(i),
            _ => Seg::Key(s.to_kstr().to_string()),
        })
        .collect();
    registers.get_mut::<State>().miss(root, segs);
}

/// The filters of [`language`] (liquid's standard filters).
pub const FILTERS: &[&str] = &[
    "abs",
    "append",
    "at_least",
    "at_most",
    "capitalize",
    "ceil",
    "compact",
    "concat",
    "date",
    "default",
    "divided_by",
    "downcase",
    "escape",
    "escape_once",
    "first",
    "floor",
    "join",
    "last",
    "lstrip",
    "map",
    "minus",
    "modulo",
    "newline_to_br",
    "plus",
    "prepend",
    "remove",
    "remove_first",
    "replace",
    "replace_first",
    "reverse",
    "round",
    "rstrip",
    "size",
    "slice",
    "sort",
    "sort_natural",
    "split",
    "strip",
    "strip_html",
    "strip_newlines",
    "times",
    "truncate",
    "truncatewords",
    "uniq",
    "upcase",
    "url_decode",
    "url_encode",
    "where",
];

/// The language and the numbering of the filters it parses.
pub struct Lang {
    language: Language,
    filter_ids: Arc<AtomicUsize>,
}

/// Build the language: liquid's standard tags and blocks (except `include`, `render`,
/// `tablerow`; `for` is [`BoundedFor`], `comment` does not parse its content) and its
/// filters, size-checked and numbered.
pub fn language(bounds: Bounds) -> Lang {
    let filter_ids = Arc::new(AtomicUsize::new(0));
    let mut lang = Language::empty();
    let tags: Vec<Box<dyn liquid_core::ParseTag>> = vec![
        Box::new(stdlib::AssignTag),
        Box::new(stdlib::BreakTag),
        Box::new(stdlib::ContinueTag),
        Box::new(stdlib::CycleTag),
        Box::new(stdlib::IncrementTag),
        Box::new(stdlib::DecrementTag),
    ];
    for t in tags {
        lang.tags.register(t.reflection().tag().to_string(), t);
    }
    let blocks: Vec<Box<dyn ParseBlock>> = vec![
        Box::new(stdlib::RawBlock),
        Box::new(stdlib::IfBlock),
        Box::new(stdlib::UnlessBlock),
        Box::new(stdlib::IfChangedBlock),
        Box::new(BoundedFor { loop_iterations_max: bounds.loop_iterations_max }),
        Box::new(Comment),
        Box::new(stdlib::CaptureBlock),
        Box::new(stdlib::CaseBlock),
    ];
    for b in blocks {
        lang.blocks.register(b.reflection().start_tag().to_string(), b);
    }
    let filters: Vec<Box<dyn ParseFilter>> = vec![
        Box::new(stdlib::Abs),
        Box::new(stdlib::Append),
        Box::new(stdlib::AtLeast),
        Box::new(stdlib::AtMost),
        Box::new(stdlib::Capitalize),
        Box::new(stdlib::Ceil),
        Box::new(stdlib::Compact),
        Box::new(stdlib::Concat),
        Box::new(stdlib::Date),
        Box::new(stdlib::Default),
        Box::new(stdlib::DividedBy),
        Box::new(stdlib::Downcase),
        Box::new(stdlib::Escape),
        Box::new(stdlib::EscapeOnce),
        Box::new(stdlib::First),
        Box::new(stdlib::Floor),
        Box::new(stdlib::Join),
        Box::new(stdlib::Last),
        Box::new(stdlib::Lstrip),
        Box::new(stdlib::Map),
        Box::new(stdlib::Minus),
        Box::new(stdlib::Modulo),
        Box::new(stdlib::NewlineToBr),
        Box::new(stdlib::Plus),
        Box::new(stdlib::Prepend),
        Box::new(stdlib::Remove),
        Box::new(stdlib::RemoveFirst),
        Box::new(stdlib::Replace),
        Box::new(stdlib::ReplaceFirst),
        Box::new(stdlib::Reverse),
        Box::new(stdlib::Round),
        Box::new(stdlib::Rstrip),
        Box::new(stdlib::Size),
        Box::new(stdlib::Slice),
        Box::new(stdlib::Sort),
        Box::new(stdlib::SortNatural),
        Box::new(stdlib::Split),
        Box::new(stdlib::Strip),
        Box::new(stdlib::StripHtml),
        Box::new(stdlib::StripNewlines),
        Box::new(stdlib::Times),
        Box::new(stdlib::Truncate),
        Box::new(stdlib::TruncateWords),
        Box::new(stdlib::Uniq),
        Box::new(stdlib::Upcase),
        Box::new(stdlib::UrlDecode),
        Box::new(stdlib::UrlEncode),
        Box::new(stdlib::Where),
    ];
    for f in filters {
        let name = f.reflection().name().to_string();
        let sized = SizedFilter { inner: f, value_bytes_max: bounds.output_bytes_max, ids: filter_ids.clone() };
        lang.filters.register(name, Box::new(sized));
    }
    Lang { language: lang, filter_ids }
}

/// Compile template text: the template and how many filters it has (numbered from 0
/// in text order); the error is liquid's own message.
pub fn compile(text: &str, lang: &Lang) -> std::result::Result<(Template, usize), String> {
    lang.filter_ids.store(0, Ordering::SeqCst);
    let t = liquid_core::parser::parse(text, &lang.language).map(Template::new).map_err(|e| e.to_string())?;
    Ok((t, lang.filter_ids.load(Ordering::SeqCst)))
}

/// `{% comment %}…{% endcomment %}` whose content is skipped, not parsed (comments
/// nest), so it holds no filters.
#[derive(Clone, Copy, Debug)]
struct Comment;

impl BlockReflection for Comment {
    fn start_tag(&self) -> &str {
        "comment"
    }
    fn end_tag(&self) -> &str {
        "endcomment"
    }
    fn description(&self) -> &str {
        "text that is not rendered"
    }
}

#[derive(Debug)]
struct Nothing;

impl Renderable for Nothing {
    fn render_to(&self, _writer: &mut dyn Write, _runtime: &dyn Runtime) -> Result<()> {
        Ok(())
    }
}

impl ParseBlock for Comment {
    fn parse(&self, mut args: TagTokenIter<'_>, mut tokens: TagBlock<'_, '_>, _options: &Language) -> Result<Box<dyn Renderable>> {
        args.expect_nothing()?;
        tokens.escape_liquid(true)?;
        tokens.assert_empty();
        Ok(Box::new(Nothing))
    }
    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

/// Why a render failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    OutputTooLarge,
    LoopsExceeded,
    ValueTooLarge,
    Liquid(String),
}

/// A finished render: the text and the lookups that found nothing (rendered as nil).
#[derive(Debug)]
pub struct Outcome {
    pub text: String,
    pub misses: Vec<Miss>,
}

/// Render `template` with `globals` under `bounds`.
pub fn render(template: &Template, globals: &Object, bounds: Bounds) -> std::result::Result<Outcome, Failure> {
    let base = RuntimeBuilder::new().set_globals(globals).build();
    let root = Lenient { inner: &base, value_bytes_max: bounds.output_bytes_max };
    let mut out = CappedWriter { buf: Vec::new(), max: bounds.output_bytes_max, exceeded: false };
    let result = template.render_to(&mut out, &root);
    let mut st = base.registers().get_mut::<State>();
    if out.exceeded {
        return Err(Failure::OutputTooLarge);
    }
    if st.loops_exceeded {
        return Err(Failure::LoopsExceeded);
    }
    if st.value_exceeded {
        return Err(Failure::ValueTooLarge);
    }
    result.map_err(|e| Failure::Liquid(e.to_string()))?;
    let text = String::from_utf8(out.buf).map_err(|_| Failure::Liquid("the output is not valid UTF-8".into()))?;
    let misses = st.finish();
    Ok(Outcome { text, misses })
}

/// An output buffer that refuses to grow past `max` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    max: usize,
    exceeded: bool,
}

impl Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.max {
            self.exceeded = true;
            return Err(std::io::Error::other("output_bytes_max exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Approximate size of a value in bytes (strings by length, containers summed).
fn value_bytes(v: &dyn ValueView) -> usize {
    if let Some(a) = v.as_array() {
        a.values().map(value_bytes).fold(0usize, usize::saturating_add)
    } else if let Some(o) = v.as_object() {
        o.iter().map(|(k, v)| k.len().saturating_add(value_bytes(v))).fold(0usize, usize::saturating_add)
    } else {
        v.to_kstr().len()
    }
}

/// The root runtime of a render: a missing variable is nil (and recorded), assigned
/// values are size-checked.
struct Lenient<'r, R: Runtime> {
    inner: &'r R,
    value_bytes_max: usize,
}

impl<R: Runtime> Runtime for Lenient<'_, R> {
    fn partials(&self) -> &dyn PartialStore {
        self.inner.partials()
    }
    fn name(&self) -> Option<liquid_core::model::KStringRef<'_>> {
        self.inner.name()
    }
    fn roots(&self) -> std::collections::BTreeSet<liquid_core::model::KStringCow<'_>> {
        self.inner.roots()
    }
    fn try_get(&self, path: &[ScalarCow<'_>]) -> Option<ValueCow<'_>> {
        self.inner.try_get(path)
    }
    fn get(&self, path: &[ScalarCow<'_>]) -> Result<ValueCow<'_>> {
        match self.inner.get(path) {
            Ok(v) => Ok(v),
            Err(_) => {
                record_miss(self.registers(), path);
                Ok(ValueCow::Owned(Value::Nil))
            }
        }
    }
    fn set_global(&self, name: KString, val: Value) -> Option<Value> {
        if value_bytes(&val) > self.value_bytes_max {
            self.registers().get_mut::<State>().value_exceeded = true;
            self.registers().get_mut::<InterruptRegister>().set(Interrupt::Break);
            return self.inner.set_global(name, Value::Nil);
        }
        self.inner.set_global(name, val)
    }
    fn set_index(&self, name: KString, val: Value) -> Option<Value> {
        self.inner.set_index(name, val)
    }
    fn get_index<'a>(&'a self, name: &str) -> Option<ValueCow<'a>> {
        self.inner.get_index(name)
    }
    fn registers(&self) -> &Registers {
        self.inner.registers()
    }
}

/// One iteration of a loop: the loop variable and `forloop`, over the parent runtime.
/// A missing field of the loop variable is nil and recorded, like at the root.
struct LoopFrame<'p> {
    parent: &'p dyn Runtime,
    data: Object,
}

impl Runtime for LoopFrame<'_> {
    fn partials(&self) -> &dyn PartialStore {
        self.parent.partials()
    }
    fn name(&self) -> Option<liquid_core::model::KStringRef<'_>> {
        self.parent.name()
    }
    fn roots(&self) -> std::collections::BTreeSet<liquid_core::model::KStringCow<'_>> {
        let mut roots = self.parent.roots();
        roots.extend(self.data.keys().map(|k| k.clone().into()));
        roots
    }
    fn try_get(&self, path: &[ScalarCow<'_>]) -> Option<ValueCow<'_>> {
        let key = path.first()?.to_kstr();
        if self.data.contains_key(key.as_str()) { liquid_core::model::try_find(self.data.as_value(), path) } else { self.parent.try_get(path) }
    }
    fn get(&self, path: &[ScalarCow<'_>]) -> Result<ValueCow<'_>> {
        let Some(first) = path.first() else {
            return Ok(ValueCow::Owned(Value::Nil));
        };
        if self.data.contains_key(first.to_kstr().as_str()) {
            match liquid_core::model::try_find(self.data.as_value(), path) {
                Some(v) => Ok(v),
                None => {
                    record_miss(self.registers(), path);
                    Ok(ValueCow::Owned(Value::Nil))
                }
            }
        } else {
            self.parent.get(path)
        }
    }
    fn set_global(&self, name: KString, val: Value) -> Option<Value> {
        self.parent.set_global(name, val)
    }
    fn set_index(&self, name: KString, val: Value) -> Option<Value> {
        self.parent.set_index(name, val)
    }
    fn get_index<'a>(&'a self, name: &str) -> Option<ValueCow<'a>> {
        self.parent.get_index(name)
    }
    fn registers(&self) -> &Registers {
        self.parent.registers()
    }
}

/// `{% for x in collection [limit: n] [offset: n] [reversed] %}…{% else %}…{% endfor %}`
/// with a per-render iteration budget.
#[derive(Clone, Copy, Debug)]
struct BoundedFor {
    loop_iterations_max: u64,
}

impl BlockReflection for BoundedFor {
    fn start_tag(&self) -> &str {
        "for"
    }
    fn end_tag(&self) -> &str {
        "endfor"
    }
    fn description(&self) -> &str {
        "a loop whose iterations draw from the render's loop_iterations_max"
    }
}

#[derive(Debug)]
enum Collection {
    Values(Expression),
    Range(Expression, Expression),
}

#[derive(Debug)]
struct For {
    var: KString,
    collection: Collection,
    body: Template,
    otherwise: Option<Template>,
    limit: Option<Expression>,
    offset: Option<Expression>,
    reversed: bool,
    loop_iterations_max: u64,
}

fn parse_attr(args: &mut TagTokenIter<'_>) -> Result<Expression> {
    args.expect_next("\":\" expected.")?.expect_str(":").into_result_custom_msg("\":\" expected.")?;
    args.expect_next("Value expected.")?.expect_value().into_result()
}

impl ParseBlock for BoundedFor {
    fn parse(&self, mut args: TagTokenIter<'_>, mut tokens: TagBlock<'_, '_>, options: &Language) -> Result<Box<dyn Renderable>> {
        let var = args.expect_next("Identifier expected.")?.expect_identifier().into_result()?;
        args.expect_next("\"in\" expected.")?.expect_str("in").into_result_custom_msg("\"in\" expected.")?;
        let token = args.expect_next("Array or range expected.")?;
        let collection = match token.expect_value() {
            TryMatchToken::Matches(v) => Collection::Values(v),
            TryMatchToken::Fails(token) => match token.expect_range() {
                TryMatchToken::Matches((a, b)) => Collection::Range(a, b),
                TryMatchToken::Fails(token) => return token.raise_error().into_err(),
            },
        };
        let (mut limit, mut offset, mut reversed) = (None, None, false);
        while let Some(token) = args.next() {
            match token.as_str() {
                "limit" => limit = Some(parse_attr(&mut args)?),
                "offset" => offset = Some(parse_attr(&mut args)?),
                "reversed" => reversed = true,
                _ => {
                    return token.raise_custom_error("\"limit\", \"offset\" or \"reversed\" expected.").into_err();
                }
            }
        }
        args.expect_nothing()?;
        let mut body = Vec::new();
        let mut otherwise = None;
        while let Some(element) = tokens.next()? {
            match element {
                BlockElement::Tag(mut tag) if tag.name() == "else" => {
                    tag.tokens().expect_nothing()?;
                    otherwise = Some(Template::new(tokens.parse_all(options)?));
                    break;
                }
                BlockElement::Tag(tag) => body.push(tag.parse(&mut tokens, options)?),
                element => body.push(element.parse(&mut tokens, options)?),
            }
        }
        tokens.assert_empty();
        Ok(Box::new(For {
            var: KString::from_ref(var),
            collection,
            body: Template::new(body),
            otherwise,
            limit,
            offset,
            reversed,
            loop_iterations_max: self.loop_iterations_max,
        }))
    }
    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

fn whole_number(e: &Expression, runtime: &dyn Runtime, what: &str) -> Result<i64> {
    let v = e.evaluate(runtime)?;
    v.as_scalar().and_then(|s| s.to_integer()).ok_or_else(|| Error::with_msg(format!("{what} must be a whole number, found `{}`", v.source())))
}

fn loop_budget_error(max: u64) -> Error {
    Error::with_msg(format!("loops ran more than {max} iterations (loop_iterations_max)"))
}

impl For {
    fn items(&self, runtime: &dyn Runtime) -> Result<Vec<Value>> {
        Ok(match &self.collection {
            Collection::Values(e) => {
                let v = e.evaluate(runtime)?;
                if let Some(a) = v.as_array() {
                    a.values().map(|x| x.to_value()).collect()
                } else if let Some(o) = v.as_object() {
                    o.iter().map(|(k, v)| Value::Array(vec![Value::scalar(k.into_owned()), v.to_value()])).collect()
                } else if v.is_nil() || v.is_state() {
                    Vec::new()
                } else {
                    return Error::with_msg(format!("`for` needs a list, found `{}`", v.source())).into_err();
                }
            }
            Collection::Range(a, b) => {
                let start = whole_number(a, runtime, "a range start")?;
                let stop = whole_number(b, runtime, "a range end")?;
                let len = (stop as i128) - (start as i128) + 1;
                let used = runtime.registers().get_mut::<State>().iterations;
                if len > i128::from(self.loop_iterations_max.saturating_sub(used)) {
                    runtime.registers().get_mut::<State>().loops_exceeded = true;
                    return loop_budget_error(self.loop_iterations_max).into_err();
                }
                if len <= 0 { Vec::new() } else { (start..=stop).map(Value::scalar).collect() }
            }
        })
    }
}

impl Renderable for For {
    fn render_to(&self, writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<()> {
        let items = self.items(runtime)?;
        let limit = match &self.limit {
            Some(e) => usize::try_from(whole_number(e, runtime, "limit")?.max(0)).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let offset = match &self.offset {
            Some(e) => usize::try_from(whole_number(e, runtime, "offset")?.max(0)).unwrap_or(usize::MAX),
            None => 0,
        };
        let mut items: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
        if self.reversed {
            items.reverse();
        }
        if items.is_empty() {
            if let Some(t) = &self.otherwise {
                t.render_to(writer, runtime)?;
            }
            return Ok(());
        }
        let parent_loop = runtime.try_get(&[ScalarCow::new("forloop")]).map(|v| v.to_value());
        let len = items.len() as i64;
        for (i, item) in items.into_iter().enumerate() {
            {
                let mut st = runtime.registers().get_mut::<State>();
                st.iterations += 1;
                if st.iterations > self.loop_iterations_max {
                    st.loops_exceeded = true;
                    return loop_budget_error(self.loop_iterations_max).into_err();
                }
            }
            let i = i as i64;
            let mut forloop = Object::new();
            forloop.insert("length".into(), Value::scalar(len));
            forloop.insert("index".into(), Value::scalar(i + 1));
            forloop.insert("index0".into(), Value::scalar(i));
            forloop.insert("rindex".into(), Value::scalar(len - i));
            forloop.insert("rindex0".into(), Value::scalar(len - i - 1));
            forloop.insert("first".into(), Value::scalar(i == 0));
            forloop.insert("last".into(), Value::scalar(i == len - 1));
            if let Some(p) = &parent_loop {
                forloop.insert("parentloop".into(), p.clone());
            }
            let mut data = Object::new();
            data.insert("forloop".into(), Value::Object(forloop));
            data.insert(self.var.clone(), item);
            let frame = LoopFrame { parent: runtime, data };
            self.body.render_to(writer, &frame).trace_with(|| format!("{{% for {} %}}", self.var).into())?;
            if let Some(Interrupt::Break) = runtime.registers().get_mut::<InterruptRegister>().reset() {
                break;
            }
        }
        Ok(())
    }
}

/// A standard filter whose result (and, for `replace` and `join`, whose predicted
/// result) is at most `value_bytes_max` bytes.
#[derive(Clone)]
struct SizedFilter {
    inner: Box<dyn ParseFilter>,
    value_bytes_max: usize,
    /// The next filter number of the template being compiled.
    ids: Arc<AtomicUsize>,
}

impl ParseFilter for SizedFilter {
    fn parse(&self, arguments: FilterArguments<'_>) -> Result<Box<dyn Filter>> {
        let positional: Vec<Expression> = arguments.positional.collect();
        let keyword: Vec<(&str, Expression)> = arguments.keyword.collect();
        let inner = self.inner.parse(FilterArguments { positional: Box::new(positional.clone().into_iter()), keyword: Box::new(keyword.into_iter()) })?;
        Ok(Box::new(Sized_ {
            inner,
            id: self.ids.fetch_add(1, Ordering::SeqCst),
            name: self.inner.reflection().name().to_string(),
            args: positional,
            value_bytes_max: self.value_bytes_max,
        }))
    }
    fn reflection(&self) -> &dyn FilterReflection {
        self
    }
}

impl FilterReflection for SizedFilter {
    fn name(&self) -> &str {
        self.inner.reflection().name()
    }
    fn description(&self) -> &str {
        self.inner.reflection().description()
    }
    fn positional_parameters(&self) -> &'static [ParameterReflection] {
        self.inner.reflection().positional_parameters()
    }
    fn keyword_parameters(&self) -> &'static [ParameterReflection] {
        self.inner.reflection().keyword_parameters()
    }
}

#[derive(Debug)]
struct Sized_ {
    inner: Box<dyn Filter>,
    id: usize,
    name: String,
    args: Vec<Expression>,
    value_bytes_max: usize,
}

impl std::fmt::Display for Sized_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Sized_ {
    /// An upper bound of the result's size, for filters that multiply their input.
    fn predicted_bytes(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<usize> {
        let arg = |i: usize| -> Result<String> {
            match self.args.get(i) {
                Some(e) => Ok(e.evaluate(runtime)?.to_kstr().to_string()),
                None => Ok(String::new()),
            }
        };
        Ok(match self.name.as_str() {
            "replace" => {
                let s = input.to_kstr();
                let (needle, with) = (arg(0)?, arg(1)?);
                let n = if needle.is_empty() { s.chars().count() + 1 } else { s.matches(needle.as_str()).count() };
                s.len().saturating_add(n.saturating_mul(with.len()))
            }
            "join" => match input.as_array() {
                Some(a) => {
                    let sep = if self.args.is_empty() { 1 } else { arg(0)?.len() };
                    let items: usize = a.values().map(|v| v.to_kstr().len()).fold(0, usize::saturating_add);
                    items.saturating_add(a.size().max(0) as usize * sep)
                }
                None => 0,
            },
            _ => 0,
        })
    }
}

impl Filter for Sized_ {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value> {
        let too_big = |runtime: &dyn Runtime| {
            runtime.registers().get_mut::<State>().value_exceeded = true;
            Error::with_msg(format!("the result of `{}` would exceed output_bytes_max", self.name))
        };
        runtime.registers().get_mut::<State>().filter_start(self.id);
        if self.predicted_bytes(input, runtime)? > self.value_bytes_max {
            return Err(too_big(runtime));
        }
        let out = self.inner.evaluate(input, runtime)?;
        runtime.registers().get_mut::<State>().filter_end();
        if value_bytes(&out) > self.value_bytes_max {
            return Err(too_big(runtime));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lang() -> Lang {
        language(Bounds { loop_iterations_max: 100, output_bytes_max: 1000 })
    }

    fn miss(root: &str, key: &str, inside: Option<usize>, before: Option<usize>) -> Miss {
        Miss { root: root.into(), segs: vec![Seg::Key(key.into())], inside, before }
    }

    fn run(text: &str, globals: Object) -> std::result::Result<Outcome, Failure> {
        let (t, _) = compile(text, &lang()).unwrap();
        render(&t, &globals, Bounds { loop_iterations_max: 100, output_bytes_max: 1000 })
    }

    #[test]
    fn the_filter_list_is_the_registered_filters() {
        let lang = lang();
        let mut registered: Vec<&str> = lang.language.filters.plugin_names().collect();
        registered.sort_unstable();
        assert_eq!(registered, FILTERS);
    }

    #[test]
    fn missing_values_are_nil_and_recorded() {
        let g = liquid_core::object!({"profile": {"first_name": "Ada"}});
        let text = "Hi {{ profile.first_name }} {{ profile.last | default: 'x' }}{% if profile.vip %}!{% endif %}{% if profile.a == 1 %}{% endif %}{{ 'x' | append: profile.b | upcase }}{% comment %}{{ x | upcase }}{% endcomment %}";
        assert_eq!(compile(text, &lang()).unwrap().1, 3, "filters are numbered; comments hold none");
        let o = run(text, g).unwrap();
        assert_eq!(o.text, "Hi Ada xX");
        assert_eq!(o.misses, vec![miss("profile", "a", None, Some(1)), miss("profile", "b", Some(1), None), miss("profile", "last", None, Some(0))]);
    }

    #[test]
    fn loops_are_bounded() {
        let o = run("{% for i in (1..5) %}{{ i }}{% endfor %}", Object::new()).unwrap();
        assert_eq!(o.text, "12345");
        assert_eq!(run("{% for i in (1..1000000000000) %}{% endfor %}", Object::new()).unwrap_err(), Failure::LoopsExceeded);
        assert_eq!(run("{% for i in (1..50) %}{% for j in (1..50) %}{% endfor %}{% endfor %}", Object::new()).unwrap_err(), Failure::LoopsExceeded);
        let g = liquid_core::object!({"xs": [{"a": 1}, {"b": 2}]});
        let o = run("{% for x in xs %}{{ forloop.index }}:{{ x.a }};{% endfor %}", g).unwrap();
        assert_eq!(o.text, "1:1;2:;");
        assert_eq!(o.misses, vec![miss("x", "a", None, None)]);
    }

    #[test]
    fn values_and_output_are_bounded() {
        assert_eq!(run("{% for i in (1..99) %}0123456789X{% endfor %}", Object::new()).unwrap_err(), Failure::OutputTooLarge);
        assert_eq!(
            run("{% assign s = 'xxxxxxxxxx' %}{% for i in (1..20) %}{% assign s = s | append: s %}{% endfor %}", Object::new()).unwrap_err(),
            Failure::ValueTooLarge
        );
        assert_eq!(
            run("{{ 'aaaaaaaaaaaaaaaaaaaa' | replace: 'a', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb' }}", Object::new())
                .unwrap_err(),
            Failure::ValueTooLarge
        );
    }
}
