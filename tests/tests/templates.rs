//! `chorusctl template validate` and `template render` as a user runs them, offline (no
//! node): the example templates of the browse-abandonment journey are valid, a broken
//! file is reported as FILE:LINE: FIELD: MESSAGE with exit code 1 (and as JSON), and a
//! render for a sample customer prints exactly the message that would be sent.

use chorus_tests::*;
use serde_json::json;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/templates");

fn example(name: &str) -> String {
    format!("{EXAMPLES}/{name}.yaml")
}

async fn ctl(args: &[&str]) -> CtlOutput {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    chorusctl(&args, &[], None).await
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write a test file");
    path.to_str().expect("utf-8 path").to_string()
}

const BROKEN: &str = r#"id: broken
sms:
  body: "Hi {{ custmer.first_name }}"
email:
  sbject: Hello
  html: |
    <p>Hello {{ profile.first_name | default: "there" }}</p>
    {% if profile.vip %}
    <p>VIP</p>
"#;

#[tokio::test]
async fn template_validate_reports_files_lines_and_exit_codes() {
    let files = tempfile::tempdir().unwrap();
    let names = ["browse-recos", "tighter-benefit", "direct-incentive", "meta-retargeting-add"];

    phase("the templates the browse-abandon journey sends are valid");
    let paths: Vec<String> = names.iter().map(|n| example(n)).collect();
    let mut args = vec!["template", "validate"];
    args.extend(paths.iter().map(String::as_str));
    let out = ctl(&args).await;
    out.ok();
    assert_eq!(
        out.stdout,
        format!(
            "{}: ok — template \"browse-recos\" (marketing), channels email, locales fr\n\
             {}: ok — template \"tighter-benefit\" (marketing), channels email, push\n\
             {}: ok — template \"direct-incentive\" (marketing), channels sms, locales fr\n\
             {}: ok — template \"meta-retargeting-add\" (marketing), channels webhook\n",
            paths[0], paths[1], paths[2], paths[3]
        )
    );

    phase("a broken file: every problem with its line, exit code 1");
    let bad = write(&files, "broken.yaml", BROKEN);
    let out = ctl(&["template", "validate", &bad, &paths[0]]).await;
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert_eq!(out.stdout, format!("{}: ok — template \"browse-recos\" (marketing), channels email, locales fr\n", paths[0]));
    assert_eq!(
        out.stderr,
        format!(
            "{bad}:3: sms.body: unknown variable custmer.first_name: use profile, event, vars, journey, message or links (or set strict: false to render unknown variables empty)\n\
             {bad}:4: email.subject: email.subject is required\n\
             {bad}:5: email.sbject: unknown field \"sbject\" (did you mean \"subject\"?); allowed here: subject, preheader, html, text\n\
             {bad}:7: email.html: a marketing email must carry an unsubscribe link: add {{{{ links.unsubscribe }}}} to the html (e.g. <a href=\"{{{{ links.unsubscribe }}}}\">Unsubscribe</a>), or set category: transactional\n\
             {bad}:8: email.html: {{% if %}} is never closed: add {{% endif %}}\n\
             1 of 2 files have problems\n"
        )
    );

    phase("-o json: one report per file");
    let out = ctl(&["-o", "json", "template", "validate", &bad, &paths[2]]).await;
    assert_eq!(out.code(), Some(1), "{out:#?}");
    let j = out.json();
    assert_eq!(j[0]["valid"], false);
    assert_eq!(
        j[0]["problems"][0],
        json!({"line": 3, "path": "sms.body", "message": "unknown variable custmer.first_name: use profile, event, vars, journey, message or links (or set strict: false to render unknown variables empty)"})
    );
    assert_eq!(j[0]["problems"].as_array().unwrap().len(), 5);
    assert_eq!(j[1], json!({"file": paths[2], "valid": true, "template": "direct-incentive", "channels": ["sms"], "locales": ["fr"], "problems": []}));

    phase("a file that is not there: exit code 2");
    let out = ctl(&["template", "validate", &format!("{EXAMPLES}/no-such.yaml")]).await;
    assert_eq!(out.code(), Some(2), "{out:#?}");
    assert!(out.stderr.starts_with("error: cannot read "), "{}", out.stderr);
}

#[tokio::test]
async fn template_render_prints_the_message_for_a_sample_customer() {
    let files = tempfile::tempdir().unwrap();
    let profile = write(&files, "ada.json", r#"{"customer_id": "cu_0001000000000042", "attributes": {"first_name": "Ada", "locale": "en-GB", "ltv": 900}}"#);
    let event = write(&files, "event.json", r#"{"sku": "SKU 1", "name": "Desk lamp"}"#);
    let vars = write(&files, "vars.json", r#"{"recommendations": [{"sku": "A-2", "name": "Lamp shade"}, {"sku": "B-3"}]}"#);
    let recos = example("browse-recos");

    phase("email, -o json: every field, links and one-click unsubscribe headers");
    let out = ctl(&["-o", "json", "template", "render", &recos, "--channel", "email", "--profile", &profile, "--event", &event, "--vars", &vars]).await;
    out.ok();
    assert_eq!(
        out.json(),
        json!({
            "template": "browse-recos",
            "locale": null,
            "channel": "email",
            "subject": "Ada, still thinking about Desk lamp?",
            "preheader": "Picked for you, based on what you viewed",
            "html": concat!(
                "<html>\n<body>\n<p>Hi Ada,</p>\n",
                "<p>You were looking at <a href=\"https://shop.example.com/p/SKU%201\">Desk lamp</a>. It is still in stock.</p>\n",
                "<p><a href=\"https://shop.example.com/p/A-2\">Lamp shade</a></p>\n",
                "<p><a href=\"https://shop.example.com/p/B-3\">B-3</a></p>\n",
                "<p style=\"font-size:12px\"><a href=\"https://chorus.invalid/preferences/preview\">Email preferences</a> · ",
                "<a href=\"https://chorus.invalid/unsubscribe/preview\">Unsubscribe</a></p>\n</body>\n</html>\n"
            ),
            "text": "Hi Ada,\nYou were looking at Desk lamp: https://shop.example.com/p/SKU%201\nUnsubscribe: https://chorus.invalid/unsubscribe/preview\n",
            "headers": {
                "List-Unsubscribe": "<https://chorus.invalid/unsubscribe/preview>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"
            }
        })
    );

    phase("email in French: the overridden fields in French, the HTML from the default");
    let out = ctl(&["template", "render", &recos, "--channel", "email", "--profile", &profile, "--event", &event, "--locale", "fr-FR"]).await;
    out.ok();
    assert_eq!(
        out.stdout,
        concat!(
            "template   browse-recos\n",
            "locale     fr\n",
            "channel    email\n",
            "subject    Ada, vous hésitez encore ?\n",
            "preheader  Choisi pour vous, d'après ce que vous avez regardé\n",
            "html       <html>\n",
            "           <body>\n",
            "           <p>Hi Ada,</p>\n",
            "           <p>You were looking at <a href=\"https://shop.example.com/p/SKU%201\">Desk lamp</a>. It is still in stock.</p>\n",
            "           <p><a href=\"https://shop.example.com/new\">See what is new this week</a></p>\n",
            "           <p style=\"font-size:12px\"><a href=\"https://chorus.invalid/preferences/preview\">Email preferences</a> · <a href=\"https://chorus.invalid/unsubscribe/preview\">Unsubscribe</a></p>\n",
            "           </body>\n",
            "           </html>\n",
            "text       Bonjour Ada,\n",
            "           Vous regardiez Desk lamp : https://shop.example.com/p/SKU%201\n",
            "           Se désabonner : https://chorus.invalid/unsubscribe/preview\n",
            "headers    List-Unsubscribe: <https://chorus.invalid/unsubscribe/preview>\n",
            "           List-Unsubscribe-Post: List-Unsubscribe=One-Click\n",
        )
    );

    phase("sms: encoding and segments (the French text is UCS-2)");
    let incentive = example("direct-incentive");
    let out = ctl(&["-o", "json", "template", "render", &incentive, "--channel", "sms", "--profile", &profile, "--event", &event]).await;
    out.ok();
    assert_eq!(
        out.json(),
        json!({"template": "direct-incentive", "locale": null, "channel": "sms",
               "body": "Ada, 10% off what you viewed with code BACK10 until Sunday: shop.example.com/p/SKU 1 Reply STOP to opt out",
               "encoding": "GSM-7", "units": 106, "segments": 1})
    );
    let out = ctl(&["template", "render", &incentive, "--channel", "sms", "--profile", &profile, "--event", &event, "--locale", "fr"]).await;
    out.ok();
    assert_eq!(
        out.stdout,
        "template  direct-incentive\nlocale    fr\nchannel   sms\n\
         body      Ada, -10% sur l'article consulté avec le code BACK10 jusqu'à dimanche. STOP pour arrêter\n\
         encoding  UCS-2\nunits     88\nsegments  2\n"
    );

    phase("push and webhook");
    let out = ctl(&["-o", "json", "template", "render", &example("tighter-benefit"), "--channel", "push", "--profile", &profile, "--event", &event]).await;
    out.ok();
    assert_eq!(
        out.json(),
        json!({"template": "tighter-benefit", "locale": null, "channel": "push", "title": "Desk lamp is waiting",
               "body": "Free delivery on it until midnight, Ada.", "image": null, "deep_link": "shop://product/SKU%201"})
    );
    let out =
        ctl(&["-o", "json", "template", "render", &example("meta-retargeting-add"), "--channel", "webhook", "--profile", &profile, "--event", &event]).await;
    out.ok();
    assert_eq!(
        out.json(),
        json!({"template": "meta-retargeting-add", "locale": null, "channel": "webhook",
               "url": "https://ads.example.com/v1/audiences/browse-abandoners/members", "method": "POST",
               "headers": {"Content-Type": "application/json", "Idempotency-Key": "preview"},
               "body": "{\"customer\": \"cu_0001000000000042\", \"sku\": \"SKU 1\"}"})
    );

    phase("strict mode: a value the template needs and the customer lacks is an error naming it (exit 1)");
    let out = ctl(&["template", "render", &recos, "--channel", "email", "--profile", &profile]).await;
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert_eq!(
        out.stderr,
        format!(
            "error: {recos}:17: email.html: event.sku is not set for this customer: give it a default ({{{{ event.sku | default: \"…\" }}}}) or set strict: false\n"
        )
    );

    phase("a channel the template has no variant for (exit 1); an invalid template (exit 2)");
    let out = ctl(&["template", "render", &incentive, "--channel", "push"]).await;
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert_eq!(out.stderr, "error: template \"direct-incentive\" has no push variant (it has: sms)\n");
    let bad = write(&files, "broken.yaml", BROKEN);
    let out = ctl(&["template", "render", &bad, "--channel", "sms"]).await;
    assert_eq!(out.code(), Some(2), "{out:#?}");
    assert!(out.stderr.ends_with(&format!("error: {bad} is not a valid template\nhint: fix it, then run `chorusctl template validate`\n")), "{}", out.stderr);
}
