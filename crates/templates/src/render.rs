//! Rendering a [`Template`] for one customer and channel: choosing each field's
//! locale (exact locale, then its language, then the default, field by field), the
//! Liquid variables, the strict rule for missing values, and each channel's rules
//! on the result (SMS segments, push lengths, URLs, the unsubscribe link, tracking).

use crate::email::{contains_url, insert_open_pixel, track_links};
use crate::engine::{self, Bounds, Failure, Miss, path_text};
use crate::output::*;
use crate::parse::{Slot, Template, Text, Variant, normalize_locale, ucs2_hint};
use crate::scan::Ref;
use crate::sms::sms_length;
use crate::{At, RenderError};
use chorus_types::Category;
use liquid_core::model::Object;
use std::collections::BTreeMap;

impl Template {
    /// Render the `channel` variant for the customer in `ctx`. `tracking` rewrites
    /// email links and adds the open pixel (`Tracking::default()` for none).
    pub fn render(&self, channel: &str, ctx: &Context, tracking: &Tracking<'_>) -> Result<Rendered, RenderError> {
        let Some(default) = self.variants.get(channel) else {
            return Err(RenderError::NoVariant { template: self.id.clone(), channel: channel.to_string(), available: self.channels().join(", ") });
        };
        let locale = ctx.locale.clone().or_else(|| ctx.profile.get("locale").and_then(|v| v.as_str()).map(str::to_string));
        let overrides = self.overrides(channel, locale.as_deref());
        let mut r = Run { t: self, globals: globals(ctx)?, default, overrides: &overrides, used: None };
        let content = match channel {
            "email" => Content::Email(r.email(ctx, tracking)?),
            "sms" => Content::Sms(r.sms()?),
            "mms" => Content::Mms(Mms { body: r.optional("body")?, media_url: r.url("media_url")? }),
            "push" => Content::Push(r.push()?),
            "in_app" => Content::InApp(r.in_app()?),
            _ => Content::Webhook(r.webhook()?),
        };
        let locale = r.used.map(|i| overrides[i].0.to_string());
        Ok(Rendered { template: self.id.clone(), locale, content })
    }

    /// The locales that override `channel` for `locale`, most specific first.
    fn overrides(&self, channel: &str, locale: Option<&str>) -> Vec<(&str, &Variant)> {
        let Some(locale) = locale.map(normalize_locale).filter(|l| !l.is_empty()) else {
            return Vec::new();
        };
        let language = locale.split('-').next().unwrap_or("").to_string();
        let mut out = Vec::new();
        for want in [&locale, &language] {
            if let Some((written, _, per)) = self.locales.iter().find(|(_, n, _)| n == want)
                && let Some(v) = per.get(channel)
                && !out.iter().any(|(w, _)| *w == written.as_str())
            {
                out.push((written.as_str(), v));
            }
        }
        out
    }

    fn bounds(&self) -> Bounds {
        Bounds { loop_iterations_max: self.limits.loop_iterations_max, output_bytes_max: self.limits.output_bytes_max }
    }

    fn at(&self, text: &Text, line: usize) -> At {
        At { file: self.file.clone(), line: Some(text.file_line(line)), field: text.path.clone() }
    }

    /// Render one text, applying the strict rule to the values that were missing.
    fn render_text(&self, text: &Text, globals: &Object) -> Result<String, RenderError> {
        let out = engine::render(&text.compiled, globals, self.bounds()).map_err(|f| match f {
            Failure::OutputTooLarge => RenderError::OutputTooLarge { at: self.at(text, 1), max: self.limits.output_bytes_max },
            Failure::LoopsExceeded => RenderError::LoopsExceeded { at: self.at(text, 1), max: self.limits.loop_iterations_max },
            Failure::ValueTooLarge => RenderError::ValueTooLarge { at: self.at(text, 1), max: self.limits.output_bytes_max },
            Failure::Liquid(e) => {
                let (line, message) = crate::parse::liquid_error(&e);
                RenderError::Liquid { at: self.at(text, line.unwrap_or(1)), message }
            }
        })?;
        if self.strict {
            for miss in &out.misses {
                if let Some(r) = violation(text, miss) {
                    return Err(RenderError::Missing { at: self.at(text, r.line), variable: path_text(&miss.root, &miss.segs) });
                }
            }
        }
        Ok(out.text)
    }
}

/// In strict mode, whether a lookup that found nothing breaks the rule, and at which
/// reference: it does when it was made for a filter chain without `default` (the
/// value it starts from or a filter's argument). A lookup made outside any filter
/// chain with filters (a plain `{{ x }}`, an `assign`, a test) breaks it when the
/// variable is printed plainly somewhere and never tested: when it is also tested
/// (`{% if x == 1 %}…{{ x }}…`) the miss is taken to be the test's.
fn violation<'s>(text: &'s Text, miss: &Miss) -> Option<&'s Ref> {
    let scan = &text.scan;
    let matching: Vec<&Ref> =
        scan.refs.iter().filter(|r| r.root == miss.root && if r.dynamic { miss.segs.starts_with(&r.segs) } else { r.segs == miss.segs }).collect();
    if !text.chains_known {
        return if matching.iter().any(|r| scan.excused(r)) { None } else { matching.first().copied() };
    }
    let chain = match (miss.inside, miss.before) {
        (Some(f), _) => scan.filters.get(f).map(|u| u.chain),
        (None, Some(f)) => scan.filters.get(f).filter(|u| u.first).map(|u| u.chain),
        (None, None) => None,
    };
    if let Some(c) = chain
        && let Some(r) = matching.iter().find(|r| r.chain == Some(c))
    {
        return if scan.chains[c].has_default { None } else { Some(r) };
    }
    let plain: Vec<&Ref> = matching.into_iter().filter(|r| r.chain.is_none_or(|c| !scan.chains[c].has_filters)).collect();
    if plain.iter().any(|r| r.chain.is_none()) { None } else { plain.first().copied() }
}

/// The Liquid variables for `ctx`.
fn globals(ctx: &Context) -> Result<Object, RenderError> {
    let conv = |v: serde_json::Value| {
        liquid_core::model::to_value(&v).map_err(|e| RenderError::Context { message: e.to_string().lines().next().unwrap_or("").to_string() })
    };
    let mut profile = ctx.profile.clone();
    profile.insert("id".into(), ctx.customer_id.clone().into());
    let journey = match &ctx.journey {
        Some(j) => serde_json::json!({"id": j.id, "step": j.step}),
        None => serde_json::json!({"id": null, "step": null}),
    };
    let mut g = Object::new();
    g.insert("profile".into(), conv(profile.into())?);
    g.insert("event".into(), conv(ctx.event.clone().into())?);
    g.insert("vars".into(), conv(ctx.vars.clone().into())?);
    g.insert("journey".into(), conv(journey)?);
    g.insert("message".into(), conv(serde_json::json!({"id": ctx.message_id}))?);
    g.insert("links".into(), conv(serde_json::json!({"unsubscribe": ctx.links.unsubscribe, "preferences": ctx.links.preferences}))?);
    Ok(g)
}

/// One render in progress.
struct Run<'t> {
    t: &'t Template,
    globals: Object,
    default: &'t Variant,
    overrides: &'t [(&'t str, &'t Variant)],
    /// The most specific override used (index into `overrides`).
    used: Option<usize>,
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ").split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

fn is_http_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    (l.starts_with("https://") || l.starts_with("http://")) && !s.contains(char::is_whitespace) && s.len() > 8
}

impl<'t> Run<'t> {
    /// The slot for `field`: from the most specific locale that has it, else the default.
    fn slot(&mut self, field: &str) -> Option<&'t Slot> {
        for (i, (_, v)) in self.overrides.iter().enumerate() {
            if let Some(s) = v.get(field) {
                self.used = Some(self.used.map_or(i, |u| u.min(i)));
                return Some(s);
            }
        }
        self.default.get(field)
    }

    fn text_slot(&mut self, field: &str) -> Option<&'t Text> {
        match self.slot(field) {
            Some(Slot::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// A rendered text field, trimmed; None when absent or rendered empty.
    fn optional(&mut self, field: &str) -> Result<Option<String>, RenderError> {
        let Some(t) = self.text_slot(field) else {
            return Ok(None);
        };
        let s = self.t.render_text(t, &self.globals)?;
        let s = s.trim();
        Ok(if s.is_empty() { None } else { Some(s.to_string()) })
    }

    /// A rendered text field that must not come out empty.
    fn required(&mut self, field: &str) -> Result<(String, &'t Text), RenderError> {
        let t = self.text_slot(field).ok_or_else(|| RenderError::Context { message: format!("{field} is missing") })?;
        let s = self.t.render_text(t, &self.globals)?;
        let s = s.trim();
        if s.is_empty() {
            return Err(RenderError::Empty { at: self.t.at(t, 1) });
        }
        Ok((s.to_string(), t))
    }

    fn url(&mut self, field: &str) -> Result<String, RenderError> {
        let (s, t) = self.required(field)?;
        if !is_http_url(&s) {
            return Err(RenderError::BadUrl { at: self.t.at(t, 1), url: s });
        }
        Ok(s)
    }

    fn email(&mut self, ctx: &Context, tracking: &Tracking<'_>) -> Result<Email, RenderError> {
        let (subject, _) = self.required("subject")?;
        let subject = one_line(&subject);
        let preheader = self.optional("preheader")?.map(|p| one_line(&p));
        let marketing = self.t.category == Category::Marketing;
        if marketing && ctx.links.unsubscribe.trim().is_empty() {
            return Err(RenderError::NoUnsubscribeUrl { template: self.t.id.clone() });
        }
        let body = |run: &mut Self, field: &str| -> Result<Option<(String, &'t Text)>, RenderError> {
            let Some(t) = run.text_slot(field) else {
                return Ok(None);
            };
            let s = run.t.render_text(t, &run.globals)?;
            Ok(if s.trim().is_empty() { None } else { Some((s, t)) })
        };
        let html = body(self, "html")?;
        let text = body(self, "text")?;
        if html.is_none() && text.is_none() {
            let t = self.text_slot("html").or_else(|| self.text_slot("text"));
            return Err(match t {
                Some(t) => RenderError::Empty { at: self.t.at(t, 1) },
                None => RenderError::Context { message: "the email has neither html nor text".into() },
            });
        }
        let max = self.t.limits.output_bytes_max;
        let html = match html {
            None => None,
            Some((mut h, t)) => {
                if let Some(click) = tracking.click {
                    h = track_links(&h, ctx.links.unsubscribe.trim(), click);
                }
                if let Some(pixel) = tracking.open_pixel {
                    h = insert_open_pixel(&h, pixel);
                }
                if h.len() > max {
                    return Err(RenderError::OutputTooLarge { at: self.t.at(t, 1), max });
                }
                Some((h, t))
            }
        };
        if marketing {
            for (s, t) in html.iter().chain(text.iter()) {
                if !contains_url(s, ctx.links.unsubscribe.trim()) {
                    return Err(RenderError::NoUnsubscribe { at: self.t.at(t, 1) });
                }
            }
        }
        let mut headers = BTreeMap::new();
        if marketing {
            headers.insert("List-Unsubscribe".to_string(), format!("<{}>", ctx.links.unsubscribe.trim()));
            headers.insert("List-Unsubscribe-Post".to_string(), "List-Unsubscribe=One-Click".to_string());
        }
        Ok(Email { subject, preheader, html: html.map(|h| h.0), text: text.map(|t| t.0), headers })
    }

    fn sms(&mut self) -> Result<Sms, RenderError> {
        let (body, t) = self.required("body")?;
        let len = sms_length(&body);
        if len.segments > self.t.sms_segments_max {
            return Err(RenderError::SmsTooLong {
                at: self.t.at(t, 1),
                segments: len.segments,
                max: self.t.sms_segments_max,
                encoding: len.encoding.as_str(),
                units: len.units,
                hint: ucs2_hint(len.ucs2_because),
            });
        }
        Ok(Sms { body, encoding: len.encoding, units: len.units, segments: len.segments })
    }

    fn push(&mut self) -> Result<Push, RenderError> {
        let limits = self.t.limits;
        let title = self.optional("title")?.map(|s| one_line(&s));
        if let Some(title) = &title
            && let Some(t) = self.text_slot("title")
        {
            let n = title.chars().count();
            if n > limits.push_title_chars_max {
                return Err(RenderError::PushTooLong { at: self.t.at(t, 1), field: "title", chars: n, max: limits.push_title_chars_max });
            }
        }
        let (body, t) = self.required("body")?;
        let n = body.chars().count();
        if n > limits.push_body_chars_max {
            return Err(RenderError::PushTooLong { at: self.t.at(t, 1), field: "body", chars: n, max: limits.push_body_chars_max });
        }
        let image = match self.text_slot("image") {
            None => None,
            Some(_) => Some(self.url("image")?),
        };
        Ok(Push { title, body, image, deep_link: self.optional("deep_link")? })
    }

    fn in_app(&mut self) -> Result<InApp, RenderError> {
        let title = self.optional("title")?;
        let (body, _) = self.required("body")?;
        let mut buttons = Vec::new();
        if let Some(Slot::Buttons(bs)) = self.slot("buttons") {
            for b in bs {
                let label = self.t.render_text(&b.label, &self.globals)?.trim().to_string();
                let action = self.t.render_text(&b.action, &self.globals)?.trim().to_string();
                for (s, t) in [(&label, &b.label), (&action, &b.action)] {
                    if s.is_empty() {
                        return Err(RenderError::Empty { at: self.t.at(t, 1) });
                    }
                }
                buttons.push(Button { label, action });
            }
        }
        Ok(InApp { title, body, buttons })
    }

    fn webhook(&mut self) -> Result<Webhook, RenderError> {
        let url = self.url("url")?;
        let method = match self.slot("method") {
            Some(Slot::Method(m)) => m.clone(),
            _ => "POST".to_string(),
        };
        let mut headers = BTreeMap::new();
        if let Some(Slot::Headers(hs)) = self.slot("headers") {
            for (name, t) in hs {
                let v = self.t.render_text(t, &self.globals)?.trim().to_string();
                if v.contains(['\r', '\n']) {
                    return Err(RenderError::Liquid { at: self.t.at(t, 1), message: "a header value must be one line".into() });
                }
                headers.insert(name.clone(), v);
            }
        }
        let body = match self.text_slot("body") {
            None => None,
            Some(t) => Some(self.t.render_text(t, &self.globals)?).filter(|b| !b.trim().is_empty()),
        };
        Ok(Webhook { url, method, headers, body })
    }
}
