//! Segment consent (`context.consent.categoryPreferences`) → the reserved Chorus trait
//! `consent` (SPEC §4.3): each category becomes a topic. Must not override consent the
//! caller stated explicitly in `traits.consent`, and must not guess at non-boolean values.

use serde_json::{Map, Value};

/// The reserved trait that carries consent (SPEC §4.3).
pub const CONSENT_TRAIT: &str = "consent";

/// A consent problem: (field path inside the call, message).
pub(crate) type ConsentError = (String, String);

/// Topic name for a Segment consent category: lower-cased, whitespace and `-` → `_`
/// ("Advertising" → "advertising", "Data Sharing" → "data_sharing").
pub fn topic_for_category(category: &str) -> String {
    category.trim().chars().map(|c| if c.is_whitespace() || c == '-' { '_' } else { c }).collect::<String>().to_lowercase()
}

/// Merge `context.consent.categoryPreferences` into `traits.consent.topics`
/// (`true` → `"opted_in"`, `false` → `"opted_out"`); topics already present in
/// `traits.consent.topics` win. No preferences → traits untouched.
pub(crate) fn merge_category_preferences(context: &Map<String, Value>, traits: &mut Map<String, Value>) -> Result<(), ConsentError> {
    let consent = match context.get("consent") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(c)) => c,
        Some(_) => return Err(("context.consent".into(), "must be a JSON object".into())),
    };
    let prefs = match consent.get("categoryPreferences") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err((
                "context.consent.categoryPreferences".into(),
                "must be an object of category name to true or false, e.g. {\"Advertising\": true}".into(),
            ));
        }
    };
    let mut decided: Vec<(String, &'static str)> = Vec::with_capacity(prefs.len());
    for (category, v) in prefs {
        let field = || format!("context.consent.categoryPreferences.{category}");
        let Value::Bool(granted) = v else {
            return Err((field(), "must be true (consented) or false (declined)".into()));
        };
        let topic = topic_for_category(category);
        if topic.is_empty() {
            return Err((field(), "category name is empty".into()));
        }
        decided.push((topic, if *granted { "opted_in" } else { "opted_out" }));
    }
    if decided.is_empty() {
        return Ok(());
    }
    let consent = traits.entry(CONSENT_TRAIT).or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(consent) = consent else {
        return Err((
            format!("traits.{CONSENT_TRAIT}"),
            "must be a JSON object like {\"email\": \"opted_in\", \"topics\": {\"promotions\": \"opted_out\"}}".into(),
        ));
    };
    let topics = consent.entry("topics").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(topics) = topics else {
        return Err((format!("traits.{CONSENT_TRAIT}.topics"), "must be a JSON object of topic to \"opted_in\" or \"opted_out\"".into()));
    };
    for (topic, state) in decided {
        topics.entry(topic).or_insert_with(|| Value::String(state.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn consent_categories_become_topics_lower_cased_with_underscores() {
        let ctx = obj(json!({"consent": {"categoryPreferences": {"Advertising": true, "Data Sharing": false, "Functional": true}}}));
        let mut traits = Map::new();
        merge_category_preferences(&ctx, &mut traits).unwrap();
        assert_eq!(Value::Object(traits), json!({"consent": {"topics": {"advertising": "opted_in", "data_sharing": "opted_out", "functional": "opted_in"}}}));
    }

    #[test]
    fn consent_explicit_trait_values_win_over_category_preferences() {
        let ctx = obj(json!({"consent": {"categoryPreferences": {"Advertising": true, "Analytics": false}}}));
        let mut traits = obj(json!({"plan": "pro", "consent": {"email": "opted_in", "topics": {"advertising": "opted_out"}}}));
        merge_category_preferences(&ctx, &mut traits).unwrap();
        assert_eq!(
            Value::Object(traits),
            json!({"plan": "pro", "consent": {"email": "opted_in", "topics": {"advertising": "opted_out", "analytics": "opted_out"}}})
        );
    }

    #[test]
    fn consent_absent_or_empty_leaves_traits_untouched() {
        let mut traits = Map::new();
        merge_category_preferences(&Map::new(), &mut traits).unwrap();
        merge_category_preferences(&obj(json!({"consent": {"categoryPreferences": {}}})), &mut traits).unwrap();
        merge_category_preferences(&obj(json!({"consent": {}})), &mut traits).unwrap();
        assert!(traits.is_empty());
    }

    #[test]
    fn consent_non_boolean_preferences_are_rejected_with_their_path() {
        let ctx = obj(json!({"consent": {"categoryPreferences": {"Advertising": "yes"}}}));
        let (field, _) = merge_category_preferences(&ctx, &mut Map::new()).unwrap_err();
        assert_eq!(field, "context.consent.categoryPreferences.Advertising");
        let ctx = obj(json!({"consent": {"categoryPreferences": {"Advertising": true}}}));
        let (field, _) = merge_category_preferences(&ctx, &mut obj(json!({"consent": "yes"}))).unwrap_err();
        assert_eq!(field, "traits.consent");
    }
}
