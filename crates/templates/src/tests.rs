//! One test per rule of SPEC §7 as this crate implements it, named after the rule,
//! asserting exact outputs and exact messages.

use crate::*;
use serde_json::{Value, json};

fn ok(text: &str) -> Template {
    parse(text, "t.yaml").unwrap_or_else(|d| panic!("expected a valid template, got:\n{}", lines(&d)))
}

fn lines(d: &[Diagnostic]) -> String {
    d.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

fn errs(text: &str) -> Vec<String> {
    match parse(text, "t.yaml") {
        Ok(_) => panic!("expected problems"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

fn ctx(profile: Value) -> Context {
    Context {
        customer_id: "cu_0001000000000001".into(),
        profile: profile.as_object().cloned().unwrap_or_default(),
        message_id: "m-1".into(),
        links: Links { unsubscribe: "https://t.example/u/abc".into(), preferences: "https://t.example/p/abc".into() },
        ..Context::default()
    }
}

fn render(t: &Template, channel: &str, c: &Context) -> Result<Rendered, RenderError> {
    t.render(channel, c, &Tracking::default())
}

fn sms_body(t: &Template, c: &Context) -> String {
    match render(t, "sms", c).unwrap().content {
        Content::Sms(s) => s.body,
        other => panic!("not an sms: {other:?}"),
    }
}

fn email(t: &Template, c: &Context) -> Email {
    match render(t, "email", c).unwrap().content {
        Content::Email(e) => e,
        other => panic!("not an email: {other:?}"),
    }
}

// ---- file shape -----------------------------------------------------------------

#[test]
fn rule_unknown_keys_are_errors_with_lines() {
    let text = "id: t\nnmae: T\nsms:\n  body: hi\n  bdy: x\nlocales:\n  fr:\n    sms: { body: salut }\n    smss: { body: x }\n";
    assert_eq!(
        errs(text),
        vec![
            "t.yaml:2: nmae: unknown field \"nmae\" (did you mean \"name\"?); allowed here: id, name, description, category, strict, sms_segments_max, email, sms, mms, push, in_app, webhook, locales",
            "t.yaml:5: sms.bdy: unknown field \"bdy\" (did you mean \"body\"?); allowed here: body",
            "t.yaml:9: locales.fr.smss: unknown field \"smss\" (did you mean \"sms\"?); allowed here: email, sms, mms, push, in_app, webhook",
        ]
    );
}

#[test]
fn rule_at_least_one_channel_is_required() {
    assert_eq!(errs("id: t\nname: T\n"), vec!["t.yaml:1: a template needs at least one channel variant: email, sms, mms, push, in_app or webhook"]);
}

#[test]
fn rule_required_fields_per_variant() {
    let text = "id: t\nemail:\n  subject: S\nsms:\n  body: \"\"\nmms: { body: x }\npush: { title: T }\nin_app:\n  body: B\n  buttons:\n    - { label: OK }\nwebhook: { method: POST }\n";
    assert_eq!(
        errs(text),
        vec![
            "t.yaml:2: email: an email needs html or text (or both)",
            "t.yaml:5: sms.body: body must not be empty (remove the field instead)",
            "t.yaml:6: mms.media_url: mms.media_url is required",
            "t.yaml:7: push.body: push.body is required",
            "t.yaml:11: in_app.buttons[0].action: a button needs a action",
            "t.yaml:12: webhook.url: webhook.url is required",
        ]
    );
}

#[test]
fn rule_json_templates_are_accepted() {
    let t = ok("{\"id\": \"j\", \"strict\": false, \"sms\": {\"body\": \"Hi {{ profile.first_name }}\"}}");
    assert_eq!((t.id(), t.strict(), t.channels()), ("j", false, vec!["sms"]));
    assert_eq!(sms_body(&t, &ctx(json!({"first_name": "Ada"}))), "Hi Ada");
}

#[test]
fn rule_syntax_errors_carry_file_and_line() {
    assert_eq!(errs("id: t\nsms: { body: x\n"), vec!["t.yaml:3: while parsing a flow mapping, did not find expected ',' or '}'"]);
    let text = "id: t\ncategory: transactional\nemail:\n  subject: Hi\n  html: |\n    <p>one</p>\n    {% if profile.vip %}\n    <p>two</p>\n";
    assert_eq!(errs(text), vec!["t.yaml:7: email.html: {% if %} is never closed: add {% endif %}"]);
    assert_eq!(
        errs("id: t\nsms:\n  body: {{ profile.first_name }} hi\n"),
        vec![
            "t.yaml:3: while parsing a block mapping, did not find expected key (a value that starts with {{ or {% must be quoted: subject: \"{{ profile.first_name }}\")"
        ]
    );
    assert_eq!(
        errs("id: t\nsms:\n  body: {{ profile.first_name }}\n"),
        vec!["t.yaml:3: mapping keys must be plain scalars (a value that starts with {{ or {% must be quoted: subject: \"{{ profile.first_name }}\")"]
    );
}

#[test]
fn rule_unknown_filters_and_tags_are_rejected_with_line() {
    let text = "id: t\nsms:\n  body: |\n    Hi {{ profile.first_name | upcasee }}\n    {% include 'footer' %}\n";
    assert_eq!(
        errs(text),
        vec![
            "t.yaml:4: sms.body: unknown filter \"upcasee\" (did you mean \"upcase\"?)",
            "t.yaml:5: sms.body: {% include %} is not supported: a template cannot include other files",
        ]
    );
}

#[test]
fn rule_template_ids_are_lower_case_words() {
    assert_eq!(
        errs("id: Browse Recos\nsms: { body: x }\n"),
        vec!["t.yaml:1: id: \"Browse Recos\" is not a valid template id: use at most 64 lower-case letters, digits, - and _"]
    );
}

// ---- variables and strict mode --------------------------------------------------

#[test]
fn rule_variables_profile_event_vars_journey_message_links() {
    let t = ok(concat!(
        "id: t\ncategory: transactional\nwebhook:\n  url: \"https://h.example/{{ profile.id }}\"\n",
        "  body: \"{{ profile.first_name }}|{{ event.sku }}|{{ vars.code }}|{{ journey.id }}/{{ journey.step }}|{{ message.id }}|{{ links.unsubscribe }}|{{ links.preferences }}\"\n"
    ));
    let mut c = ctx(json!({"first_name": "Ada"}));
    c.event = json!({"sku": "SKU-1"}).as_object().cloned().unwrap();
    c.vars = json!({"code": "BACK10"}).as_object().cloned().unwrap();
    c.journey = Some(JourneyRef { id: "browse-abandon".into(), step: "recos_email".into() });
    let Content::Webhook(w) = render(&t, "webhook", &c).unwrap().content else { panic!() };
    assert_eq!(w.url, "https://h.example/cu_0001000000000001");
    assert_eq!(w.body.as_deref(), Some("Ada|SKU-1|BACK10|browse-abandon/recos_email|m-1|https://t.example/u/abc|https://t.example/p/abc"));
    c.journey = None;
    let t = ok("id: t\nsms: { body: \"[{{ journey.id }}]\" }\n");
    assert_eq!(sms_body(&t, &c), "[]");
}

#[test]
fn rule_strict_unknown_root_is_rejected_with_line() {
    let text = "id: t\nsms:\n  body: |\n    Hi {{ profile.first_name | default: 'x' }}\n    {{ custmer.name }} {{ evnt.sku }}\n";
    assert_eq!(
        errs(text),
        vec![
            "t.yaml:5: sms.body: unknown variable custmer.name: use profile, event, vars, journey, message or links (or set strict: false to render unknown variables empty)",
            "t.yaml:5: sms.body: unknown variable evnt.sku (did you mean event?): use profile, event, vars, journey, message or links (or set strict: false to render unknown variables empty)",
        ]
    );
}

#[test]
fn rule_strict_fixed_roots_have_known_fields() {
    assert_eq!(
        errs("id: t\nsms: { body: \"{{ links.unsubscrbe }} {{ message.id }} {{ journey.name }}\" }\n"),
        vec![
            "t.yaml:2: sms.body: links has no field \"unsubscrbe\" (did you mean links.unsubscribe?); it has: unsubscribe, preferences",
            "t.yaml:2: sms.body: journey has no field \"name\"; it has: id, step",
        ]
    );
}

#[test]
fn rule_strict_locals_may_not_hide_template_variables() {
    assert_eq!(
        errs("id: t\nsms: { body: \"{% assign profile = 1 %}{{ profile }}\" }\n"),
        vec!["t.yaml:2: sms.body: {% assign profile %} would hide the template variable profile: choose another name"]
    );
}

#[test]
fn rule_strict_missing_attribute_is_a_render_error_naming_it() {
    let t = ok("id: t\nsms:\n  body: |\n    Hello\n    {{ profile.first_name }}!\n");
    assert_eq!(sms_body(&t, &ctx(json!({"first_name": "Ada"}))), "Hello\nAda!");
    let err = render(&t, "sms", &ctx(json!({}))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "t.yaml:5: sms.body: profile.first_name is not set for this customer: give it a default ({{ profile.first_name | default: \"…\" }}) or set strict: false"
    );
    // The same for a field of a loop variable.
    let t = ok("id: t\nsms: { body: \"{% for p in event.products %}{{ p.nmae }}{% endfor %}\" }\n");
    let mut c = ctx(json!({}));
    c.event = json!({"products": [{"name": "Lamp"}]}).as_object().cloned().unwrap();
    assert_eq!(
        render(&t, "sms", &c).unwrap_err().to_string(),
        "t.yaml:2: sms.body: p.nmae is not set for this customer: give it a default ({{ p.nmae | default: \"…\" }}) or set strict: false"
    );
}

#[test]
fn rule_strict_applies_to_each_use_not_each_variable() {
    let t = ok(concat!(
        "id: t\nsms:\n  body: |\n",
        "    {{ event.name | default: event.sku }}\n",
        "    shop.example/p/{{ event.sku | url_encode }}\n",
        "    {% if profile.tier == 'gold' %}Gold {{ profile.tier }}{% endif %}\n"
    ));
    let mut c = ctx(json!({}));
    c.event = json!({"name": "Lamp"}).as_object().cloned().unwrap();
    assert_eq!(
        render(&t, "sms", &c).unwrap_err().to_string(),
        "t.yaml:5: sms.body: event.sku is not set for this customer: give it a default ({{ event.sku | default: \"…\" }}) or set strict: false"
    );
    c.event = json!({"sku": "S1"}).as_object().cloned().unwrap();
    assert_eq!(sms_body(&t, &c), "S1\nshop.example/p/S1");
    let t = ok("id: t\nsms: { body: \"{{ 'x' | append: profile.suffix | upcase }}\" }\n");
    assert_eq!(
        render(&t, "sms", &ctx(json!({}))).unwrap_err().to_string(),
        "t.yaml:2: sms.body: profile.suffix is not set for this customer: give it a default ({{ profile.suffix | default: \"…\" }}) or set strict: false"
    );
}

#[test]
fn rule_default_filter_covers_a_missing_attribute() {
    let t = ok("id: t\nsms: { body: \"Hi {{ profile.first_name | default: 'there' }}, {{ profile.city | upcase | default: 'friend' }}\" }\n");
    assert_eq!(sms_body(&t, &ctx(json!({}))), "Hi there, friend");
    assert_eq!(sms_body(&t, &ctx(json!({"first_name": "Ada", "city": "Paris"}))), "Hi Ada, PARIS");
}

#[test]
fn rule_conditions_and_loops_tolerate_missing_values() {
    let t = ok(concat!(
        "id: t\nsms: { body: \"",
        "{% if profile.vip %}VIP {{ profile.vip }}{% endif %}",
        "{% if profile.tier == 'gold' %}gold{% endif %}",
        "{% case profile.plan %}{% when 'pro' %}pro{% else %}basic{% endcase %}",
        "{% for x in vars.items %}{{ x }}{% else %} none{% endfor %}",
        "\" }\n"
    ));
    assert_eq!(sms_body(&t, &ctx(json!({}))), "basic none");
    assert_eq!(sms_body(&t, &ctx(json!({"vip": "yes", "plan": "pro"}))), "VIP yespro none");
}

#[test]
fn rule_non_strict_unknown_variables_render_empty() {
    let t = ok("id: t\nstrict: false\nsms: { body: \"Hi {{ profile.first_name }}{{ custmer.name }}!\" }\n");
    assert_eq!(sms_body(&t, &ctx(json!({}))), "Hi !");
}

// ---- localization ---------------------------------------------------------------

const LOCALIZED: &str = "id: t\ncategory: transactional\nemail:\n  subject: Hello\n  preheader: Pre\n  text: Text\nlocales:\n  fr:\n    email: { subject: Bonjour, text: Texte }\n  fr-CA:\n    email: { subject: Allo }\n  de:\n    email: { preheader: Vor }\n";

#[test]
fn rule_locale_falls_back_field_by_field() {
    let t = ok(LOCALIZED);
    let e = email(&t, &ctx(json!({"locale": "fr-CA"})));
    assert_eq!((e.subject.as_str(), e.preheader.as_deref(), e.text.as_deref()), ("Allo", Some("Pre"), Some("Texte")));
    let r = render(&t, "email", &ctx(json!({"locale": "fr-CA"}))).unwrap();
    assert_eq!(r.locale.as_deref(), Some("fr-CA"));
    let e = email(&t, &ctx(json!({"locale": "de"})));
    assert_eq!((e.subject.as_str(), e.preheader.as_deref(), e.text.as_deref()), ("Hello", Some("Vor"), Some("Text")));
}

#[test]
fn rule_locale_exact_then_language_then_default() {
    let t = ok(LOCALIZED);
    let subject = |c: &Context| (email(&t, c).subject, render(&t, "email", c).unwrap().locale);
    assert_eq!(subject(&ctx(json!({"locale": "fr_ca"}))), ("Allo".to_string(), Some("fr-CA".to_string())));
    assert_eq!(subject(&ctx(json!({"locale": "fr-BE"}))), ("Bonjour".to_string(), Some("fr".to_string())));
    assert_eq!(subject(&ctx(json!({"locale": "es"}))), ("Hello".to_string(), None));
    assert_eq!(subject(&ctx(json!({}))), ("Hello".to_string(), None));
    let mut c = ctx(json!({"locale": "es"}));
    c.locale = Some("fr".into());
    assert_eq!(subject(&c), ("Bonjour".to_string(), Some("fr".to_string())));
}

#[test]
fn rule_locale_overrides_need_a_default_variant() {
    assert_eq!(
        errs("id: t\nsms: { body: x }\nlocales:\n  fr:\n    push: { body: y }\n  french:\n    sms: { body: z }\n"),
        vec![
            "t.yaml:5: locales.fr.push: there is no default push variant to localize: add push at the top level first",
            "t.yaml:6: locales.french: \"french\" is not a locale: use a language code with an optional region, e.g. fr or fr-CA",
        ]
    );
}

// ---- bounds ---------------------------------------------------------------------

fn small(output_bytes_max: usize, loop_iterations_max: u64) -> Limits {
    Limits { output_bytes_max, loop_iterations_max, ..Limits::default() }
}

#[test]
fn rule_render_output_size_is_bounded() {
    let text = "id: t\ncategory: transactional\nemail:\n  subject: S\n  text: \"{% for i in (1..50) %}0123456789{% endfor %}\"\n";
    let t = parse_with(text, "t.yaml", &small(400, 1000)).unwrap();
    assert_eq!(render(&t, "email", &ctx(json!({}))).unwrap_err().to_string(), "t.yaml:5: email.text: the output is larger than 400 bytes (output_bytes_max)");
    let t = parse_with(text, "t.yaml", &small(500, 1000)).unwrap();
    assert_eq!(email(&t, &ctx(json!({}))).text.unwrap().len(), 500);
}

#[test]
fn rule_loop_iterations_are_bounded() {
    let text = "id: t\nsms: { body: \"{% for i in (1..30) %}{% for j in (1..30) %}{% endfor %}{% endfor %}x\" }\n";
    let t = parse_with(text, "t.yaml", &small(1000, 500)).unwrap();
    assert_eq!(render(&t, "sms", &ctx(json!({}))).unwrap_err().to_string(), "t.yaml:2: sms.body: loops ran more than 500 iterations (loop_iterations_max)");
    let t = parse_with(text, "t.yaml", &small(1000, 930)).unwrap();
    assert_eq!(sms_body(&t, &ctx(json!({}))), "x");
}

#[test]
fn rule_range_is_refused_before_it_is_built() {
    let t = ok("id: t\nsms: { body: \"{% for i in (1..vars.n) %}{% endfor %}x\" }\n");
    let mut c = ctx(json!({}));
    c.vars = json!({"n": 4_000_000_000_000i64}).as_object().cloned().unwrap();
    assert_eq!(render(&t, "sms", &c).unwrap_err().to_string(), "t.yaml:2: sms.body: loops ran more than 10000 iterations (loop_iterations_max)");
}

#[test]
fn rule_built_values_are_bounded() {
    let text = "id: t\nsms: { body: \"{% assign s = 'xxxxxxxxxx' %}{% for i in (1..30) %}{% assign s = s | append: s %}{% endfor %}{{ s | size }}\" }\n";
    let t = parse_with(text, "t.yaml", &small(10_000, 1000)).unwrap();
    assert_eq!(
        render(&t, "sms", &ctx(json!({}))).unwrap_err().to_string(),
        "t.yaml:2: sms.body: a value built by the template is larger than 10000 bytes (output_bytes_max)"
    );
    let t = parse_with("id: t\nsms: { body: \"{{ vars.s | replace: 'a', vars.s }}\" }\n", "t.yaml", &small(10_000, 1000)).unwrap();
    let mut c = ctx(json!({}));
    c.vars = json!({"s": "a".repeat(1000)}).as_object().cloned().unwrap();
    assert!(matches!(render(&t, "sms", &c).unwrap_err(), RenderError::ValueTooLarge { .. }));
}

#[test]
fn rule_template_size_and_nesting_are_bounded() {
    let limits = Limits { file_bytes_max: 100, field_bytes_max: 10, nesting_depth_max: 2, ..Limits::default() };
    let big = format!("id: t\nsms: {{ body: \"{}\" }}\n", "x".repeat(200));
    assert_eq!(parse_with(&big, "t.yaml", &limits).unwrap_err()[0].to_string(), "t.yaml: the file is 224 bytes, more than file_bytes_max (100): split it");
    assert_eq!(
        parse_with("id: t\nsms: { body: \"12345678901\" }\n", "t.yaml", &limits).unwrap_err()[0].to_string(),
        "t.yaml:2: sms.body: body is 11 bytes, more than field_bytes_max (10)"
    );
    let limits = Limits { nesting_depth_max: 2, ..Limits::default() };
    assert_eq!(
        parse_with("id: t\nsms: { body: \"{% if a %}{% if b %}{% if c %}x{% endif %}{% endif %}{% endif %}\" }\nstrict: false\n", "t.yaml", &limits)
            .unwrap_err()[0]
            .to_string(),
        "t.yaml:2: sms.body: blocks are nested more than 2 deep (nesting_depth_max): flatten the template"
    );
}

#[test]
fn rule_blocks_are_closed_in_order() {
    assert_eq!(
        errs(
            "id: t
sms:
  body: |\n    {% for x in vars.xs %}\n    {% if x %}{% endfor %}\n"
        ),
        vec!["t.yaml:5: sms.body: {% endfor %} does not close the open {% if %}: close that first with {% endif %}"]
    );
    assert_eq!(errs("id: t\nsms: { body: \"x{% endif %}\" }\n"), vec!["t.yaml:2: sms.body: {% endif %} closes no block"]);
}

#[test]
fn rule_limits_relate() {
    let l = Limits::default();
    assert!(l.field_bytes_max <= l.file_bytes_max);
    assert!(l.field_bytes_max <= l.output_bytes_max, "a template without markup must be renderable");
    assert!(l.sms_segments_max <= SMS_SEGMENTS_MAX);
}

// ---- SMS ------------------------------------------------------------------------

#[test]
fn rule_sms_gsm7_counts_160_then_153_per_segment() {
    let len = |n: usize| {
        let l = sms_length(&"a".repeat(n));
        (l.encoding, l.units, l.segments)
    };
    assert_eq!(len(0), (SmsEncoding::Gsm7, 0, 0));
    assert_eq!(len(160), (SmsEncoding::Gsm7, 160, 1));
    assert_eq!(len(161), (SmsEncoding::Gsm7, 161, 2));
    assert_eq!(len(306), (SmsEncoding::Gsm7, 306, 2));
    assert_eq!(len(307), (SmsEncoding::Gsm7, 307, 3));
}

#[test]
fn rule_sms_gsm7_extension_characters_count_double() {
    let l = sms_length("€[]{}^~|\\");
    assert_eq!((l.encoding, l.units, l.segments), (SmsEncoding::Gsm7, 18, 1));
    assert_eq!(sms_length(&"€".repeat(80)).segments, 1);
    assert_eq!(sms_length(&"€".repeat(81)).segments, 2);
    // An escape pair is not split: 152 septets then a 2-septet character start part 2.
    let l = sms_length(&format!("{}€{}", "a".repeat(152), "a".repeat(152)));
    assert_eq!((l.units, l.segments), (306, 3));
    let l = sms_length("Café à Paris: 10€ @ ÄÖÑÜ§¿");
    assert_eq!((l.encoding, l.units), (SmsEncoding::Gsm7, 27));
}

#[test]
fn rule_sms_ucs2_counts_67_per_segment() {
    let l = sms_length(&"é".repeat(69).replace('é', "ж"));
    assert_eq!((l.encoding, l.units, l.segments), (SmsEncoding::Ucs2, 69, 1));
    let l = sms_length(&format!("ж{}", "a".repeat(69)));
    assert_eq!((l.encoding, l.units, l.segments, l.ucs2_because), (SmsEncoding::Ucs2, 70, 1, Some('ж')));
    assert_eq!(sms_length(&format!("ж{}", "a".repeat(70))).segments, 2);
    assert_eq!(sms_length(&format!("ж{}", "a".repeat(133))).segments, 2);
    assert_eq!(sms_length(&format!("ж{}", "a".repeat(134))).segments, 3);
}

#[test]
fn rule_sms_ucs2_counts_utf16_code_units() {
    let l = sms_length("Hi 👋");
    assert_eq!((l.encoding, l.units, l.segments), (SmsEncoding::Ucs2, 5, 1));
    assert_eq!(sms_length(&"👋".repeat(35)).segments, 1);
    assert_eq!(sms_length(&"👋".repeat(36)).segments, 2);
    // A surrogate pair is not split: 66 units, then a pair starts part 2.
    let l = sms_length(&format!("{}👋{}", "ж".repeat(66), "ж".repeat(66)));
    assert_eq!((l.units, l.segments), (134, 3));
}

#[test]
fn rule_sms_segments_max_is_checked_on_the_literal_text_at_validate_time() {
    let text = format!(
        "id: t\nsms_segments_max: 1\nsms:\n  body: \"{}{{{{ profile.first_name | default: '' }}}}{{% if vars.x %}}{}{{% endif %}}\"\n",
        "a".repeat(161),
        "b".repeat(500)
    );
    assert_eq!(errs(&text), vec!["t.yaml:4: sms.body: the fixed text alone is 2 SMS segments (GSM-7, 161 units), more than sms_segments_max (1): shorten it"]);
    // Text inside a block may not be sent, so it does not count.
    ok(&format!("id: t\nsms_segments_max: 1\nsms: {{ body: \"{}{{% if vars.x %}}{}{{% endif %}}\" }}\n", "a".repeat(150), "b".repeat(500)));
    assert_eq!(
        errs("id: t\nsms_segments_max: 11\nsms: { body: x }\n"),
        vec!["t.yaml:2: sms_segments_max: sms_segments_max must be a whole number from 1 to 10, got 11"]
    );
}

#[test]
fn rule_sms_segments_max_is_checked_at_render_time() {
    let t = ok("id: t\nsms_segments_max: 1\nsms: { body: \"Bonjour {{ profile.first_name }}, à demain\" }\n");
    let Content::Sms(s) = render(&t, "sms", &ctx(json!({"first_name": "Zoé"}))).unwrap().content else { panic!() };
    assert_eq!((s.body.as_str(), s.encoding, s.units, s.segments), ("Bonjour Zoé, à demain", SmsEncoding::Gsm7, 21, 1));
    let Content::Sms(s) = render(&t, "sms", &ctx(json!({"first_name": "Zoë"}))).unwrap().content else { panic!() };
    assert_eq!((s.encoding, s.units, s.segments), (SmsEncoding::Ucs2, 21, 1));
    let long = "Ж".repeat(60);
    assert_eq!(
        render(&t, "sms", &ctx(json!({"first_name": long}))).unwrap_err().to_string(),
        "t.yaml:3: sms.body: the SMS is 2 segments (UCS-2, 78 units), more than sms_segments_max (1) ('Ж' is not in the GSM-7 alphabet, so the message is UCS-2: 70 characters per segment instead of 160)"
    );
}

// ---- push -----------------------------------------------------------------------

#[test]
fn rule_push_title_and_body_lengths_are_checked_at_render() {
    let t = ok("id: t\npush:\n  title: \"{{ vars.t }}\"\n  body: \"{{ vars.b }}\"\n  deep_link: \"shop://p/{{ vars.t | size }}\"\n");
    let with = |title: &str, body: &str| {
        let mut c = ctx(json!({}));
        c.vars = json!({"t": title, "b": body}).as_object().cloned().unwrap();
        render(&t, "push", &c)
    };
    let Content::Push(p) = with(&"t".repeat(65), &"ü".repeat(240)).unwrap().content else { panic!() };
    assert_eq!((p.title.unwrap().len(), p.body.chars().count(), p.deep_link.as_deref()), (65, 240, Some("shop://p/65")));
    assert_eq!(with(&"t".repeat(66), "b").unwrap_err().to_string(), "t.yaml:3: push.title: the push title is 66 characters, more than 65");
    assert_eq!(with("t", &"b".repeat(241)).unwrap_err().to_string(), "t.yaml:4: push.body: the push body is 241 characters, more than 240");
}

#[test]
fn rule_push_literal_text_over_the_limit_is_rejected() {
    assert_eq!(
        errs(&format!("id: t\npush: {{ title: \"{} {{{{ profile.first_name }}}}\", body: x }}\n", "t".repeat(66))),
        vec!["t.yaml:2: push.title: the fixed text alone is 66 characters, more than a push title may have (65): shorten it"]
    );
}

// ---- email ----------------------------------------------------------------------

#[test]
fn rule_marketing_email_needs_unsubscribe_link() {
    let text = "id: t\nemail:\n  subject: S\n  html: |\n    <p>Hi</p>\n  text: \"Bye {{ links.unsubscribe }}\"\nlocales:\n  fr:\n    email: { text: Salut }\n";
    assert_eq!(
        errs(text),
        vec![
            "t.yaml:5: email.html: a marketing email must carry an unsubscribe link: add {{ links.unsubscribe }} to the html (e.g. <a href=\"{{ links.unsubscribe }}\">Unsubscribe</a>), or set category: transactional",
            "t.yaml:9: locales.fr.email.text: a marketing email must carry an unsubscribe link: add {{ links.unsubscribe }} to the text (e.g. <a href=\"{{ links.unsubscribe }}\">Unsubscribe</a>), or set category: transactional",
        ]
    );
    // At render time the link must really be there (not hidden in a branch not taken).
    let t = ok("id: t\nemail:\n  subject: S\n  html: \"{% if vars.x %}{{ links.unsubscribe }}{% endif %}<p>Hi</p>\"\n");
    assert_eq!(
        render(&t, "email", &ctx(json!({}))).unwrap_err().to_string(),
        "t.yaml:4: email.html: a marketing email must contain the unsubscribe link (links.unsubscribe), but this rendering does not"
    );
    let mut c = ctx(json!({}));
    c.links.unsubscribe = String::new();
    assert_eq!(render(&t, "email", &c).unwrap_err().to_string(), "template \"t\" is a marketing email but no unsubscribe URL was supplied (links.unsubscribe)");
}

#[test]
fn rule_transactional_email_needs_no_unsubscribe_link() {
    let t = ok("id: t\ncategory: transactional\nemail: { subject: Receipt, text: Thanks }\n");
    let e = email(&t, &ctx(json!({})));
    assert_eq!((e.text.as_deref(), e.headers.len()), (Some("Thanks"), 0));
}

#[test]
fn rule_marketing_email_carries_one_click_unsubscribe_headers() {
    let t = ok("id: t\nemail:\n  subject: \"Hi\\n{{ profile.first_name }}\"\n  text: \"Bye {{ links.unsubscribe }}\"\n");
    let e = email(&t, &ctx(json!({"first_name": "Ada\r\nBcc: x@example.com"})));
    assert_eq!(e.subject, "Hi Ada Bcc: x@example.com", "a subject is one line");
    assert_eq!(
        e.headers.into_iter().collect::<Vec<_>>(),
        vec![
            ("List-Unsubscribe".to_string(), "<https://t.example/u/abc>".to_string()),
            ("List-Unsubscribe-Post".to_string(), "List-Unsubscribe=One-Click".to_string()),
        ]
    );
}

#[test]
fn rule_click_tracking_skips_mailto_tel_anchors_and_unsubscribe() {
    let t = ok(concat!(
        "id: t\nemail:\n  subject: S\n  html: |\n",
        "    <a href=\"https://shop.example/p?a=1&amp;b=2\">P</a> <a class=x href='mailto:help@example.com'>M</a>\n",
        "    <a href=\"tel:+331\">T</a> <a href=\"#top\">Top</a> <A HREF=https://shop.example/q>Q</A>\n",
        "    <!-- <a href=\"https://hidden.example\"> --> <a href=\"{{ links.unsubscribe }}?from=footer\">U</a></body>\n"
    ));
    let click = |url: &str, i: usize| format!("https://t.example/c/{i}?u={}", url.len());
    let Content::Email(e) = t.render("email", &ctx(json!({})), &Tracking { click: Some(&click), open_pixel: Some("https://t.example/o/1") }).unwrap().content
    else {
        panic!()
    };
    assert_eq!(
        e.html.unwrap(),
        concat!(
            "<a href=\"https://t.example/c/0?u=30\">P</a> <a class=x href='mailto:help@example.com'>M</a>\n",
            "<a href=\"tel:+331\">T</a> <a href=\"#top\">Top</a> <A HREF=https://t.example/c/1?u=22>Q</A>\n",
            "<!-- <a href=\"https://hidden.example\"> --> <a href=\"https://t.example/u/abc?from=footer\">U</a>",
            "<img src=\"https://t.example/o/1\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\"></body>\n"
        )
    );
}

#[test]
fn rule_open_pixel_goes_before_body_end_or_at_the_end() {
    let img = "<img src=\"https://t.example/o?a=1&amp;b=2\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">";
    assert_eq!(insert_open_pixel("<html><BODY>x</BODY></html>", "https://t.example/o?a=1&b=2"), format!("<html><BODY>x{img}</BODY></html>"));
    assert_eq!(insert_open_pixel("<p>x</p>", "https://t.example/o?a=1&b=2"), format!("<p>x</p>{img}"));
}

// ---- other channels -------------------------------------------------------------

#[test]
fn rule_webhook_renders_url_method_headers_body() {
    let t = ok(concat!(
        "id: t\nwebhook:\n  url: \"https://h.example/a/{{ vars.id }}\"\n  method: put\n",
        "  headers: { X-Key: \"k-{{ vars.id }}\", Content-Type: application/json }\n  body: '{\"id\": \"{{ vars.id }}\"}'\n"
    ));
    let mut c = ctx(json!({}));
    c.vars = json!({"id": 7}).as_object().cloned().unwrap();
    let r = render(&t, "webhook", &c).unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"template": "t", "locale": null, "channel": "webhook", "url": "https://h.example/a/7", "method": "PUT",
               "headers": {"Content-Type": "application/json", "X-Key": "k-7"}, "body": "{\"id\": \"7\"}"})
    );
    c.vars = json!({"id": "x y"}).as_object().cloned().unwrap();
    assert_eq!(render(&t, "webhook", &c).unwrap_err().to_string(), "t.yaml:3: webhook.url: \"https://h.example/a/x y\" is not an http(s) URL");
    assert_eq!(
        errs("id: t\nwebhook: { url: ftp://x, method: FETCH }\n"),
        vec![
            "t.yaml:2: webhook.url: \"ftp://x\" is not an http(s) URL",
            "t.yaml:2: webhook.method: \"FETCH\" is not a method: use one of GET, POST, PUT, PATCH, DELETE",
        ]
    );
}

#[test]
fn rule_in_app_mms_and_push_render_every_field() {
    let t = ok(concat!(
        "id: t\nin_app:\n  title: Hi\n  body: \"{{ profile.first_name }}\"\n  buttons:\n    - { label: Shop, action: \"app://shop\" }\n",
        "mms: { body: Look, media_url: \"https://cdn.example/{{ vars.img }}.png\" }\n",
        "push: { body: B, image: \"https://cdn.example/i.png\" }\n"
    ));
    let mut c = ctx(json!({"first_name": "Ada"}));
    c.vars = json!({"img": "lamp"}).as_object().cloned().unwrap();
    let v = |ch: &str| serde_json::to_value(render(&t, ch, &c).unwrap()).unwrap();
    assert_eq!(
        v("in_app"),
        json!({"template": "t", "locale": null, "channel": "in_app", "title": "Hi", "body": "Ada", "buttons": [{"label": "Shop", "action": "app://shop"}]})
    );
    assert_eq!(v("mms"), json!({"template": "t", "locale": null, "channel": "mms", "body": "Look", "media_url": "https://cdn.example/lamp.png"}));
    assert_eq!(
        v("push"),
        json!({"template": "t", "locale": null, "channel": "push", "title": null, "body": "B", "image": "https://cdn.example/i.png", "deep_link": null})
    );
    assert_eq!(render(&t, "sms", &c).unwrap_err().to_string(), "template \"t\" has no sms variant (it has: mms, push, in_app)");
}

#[test]
fn rule_rendered_sms_serializes_encoding_and_segments() {
    let t = ok("id: t\nsms: { body: \"Hi {{ profile.first_name }}\" }\n");
    let r = render(&t, "sms", &ctx(json!({"first_name": "Ada"}))).unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"template": "t", "locale": null, "channel": "sms", "body": "Hi Ada", "encoding": "GSM-7", "units": 6, "segments": 1})
    );
    let back: Rendered = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn rule_liquid_errors_at_render_name_the_field() {
    let t = ok("id: t\nsms:\n  body: |\n    x\n    {{ 'x' | truncate: 'a' }}\n");
    assert_eq!(
        render(&t, "sms", &ctx(json!({}))).unwrap_err().to_string(),
        "t.yaml:4: sms.body: Invalid argument; argument=length; cause=Whole number expected; in Filter error; filter=truncate : \"a\"; input=\"x\""
    );
}

#[test]
fn templates_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Template>();
    shared::<Rendered>();
}

// ---- the examples ---------------------------------------------------------------

#[test]
fn the_examples_are_valid() {
    for (file, text) in [
        ("browse-recos.yaml", include_str!("../../../examples/templates/browse-recos.yaml")),
        ("tighter-benefit.yaml", include_str!("../../../examples/templates/tighter-benefit.yaml")),
        ("direct-incentive.yaml", include_str!("../../../examples/templates/direct-incentive.yaml")),
        ("meta-retargeting-add.yaml", include_str!("../../../examples/templates/meta-retargeting-add.yaml")),
    ] {
        let t = parse(text, file).unwrap_or_else(|d| panic!("{}", lines(&d)));
        assert_eq!(format!("{}.yaml", t.id()), file);
    }
}
