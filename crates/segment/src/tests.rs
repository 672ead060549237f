//! Request-level tests: realistic payloads shaped like what analytics-python and
//! analytics-node send, through `decode_body` + `parse_request`, one test per rule.

use super::*;
use chorus_types::FieldError;
use serde_json::{Value, json};
use std::io::Write as _;

fn parse(endpoint: Endpoint, body: Value) -> ParsedRequest {
    parse_request(endpoint, body.to_string().as_bytes()).unwrap()
}

fn one(endpoint: Endpoint, body: Value) -> EventInput {
    let mut req = parse(endpoint, body);
    assert_eq!(req.items.len(), 1);
    req.items.pop().unwrap().unwrap()
}

fn one_err(endpoint: Endpoint, body: Value) -> SegmentItemError {
    let mut req = parse(endpoint, body);
    assert_eq!(req.items.len(), 1);
    req.items.pop().unwrap().unwrap_err()
}

fn ids(e: &EventInput) -> Vec<(&str, &str)> {
    e.identities.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A batch the way analytics-python 2.x posts it: every call carries `type`,
/// `messageId` (uuid4), `timestamp` with a `+00:00` offset, `context.library` and
/// `integrations`; the body adds `sentAt` and `writeKey`.
fn python_sdk_batch() -> Value {
    let library = json!({"library": {"name": "analytics-python", "version": "2.4.0"}});
    json!({
        "batch": [
            {"integrations": {}, "anonymousId": "a1f0c7e2-anon", "timestamp": "2026-11-27T10:00:00.120+00:00",
             "context": library, "type": "identify", "userId": "user-42",
             "traits": {"email": "Ada@Example.com", "first_name": "Ada", "plan": "pro"},
             "messageId": "6f3c2a10-0b7e-4c11-9d7a-1a2b3c4d5e01"},
            {"integrations": {}, "properties": {"product_id": "sku-9", "price": 19.99, "currency": "EUR"},
             "timestamp": "2026-11-27T10:00:01.000+00:00", "context": library, "userId": "user-42",
             "type": "track", "event": "Product Viewed", "messageId": "6f3c2a10-0b7e-4c11-9d7a-1a2b3c4d5e02"},
            {"integrations": {}, "properties": {"url": "https://shop.example/pricing", "title": "Pricing"},
             "timestamp": "2026-11-27T10:00:02.000+00:00", "category": "Docs", "context": library,
             "userId": "user-42", "type": "page", "name": "Pricing", "messageId": "6f3c2a10-0b7e-4c11-9d7a-1a2b3c4d5e03"},
            {"integrations": {}, "properties": {"from": "home"}, "timestamp": "2026-11-27T10:00:03.000+00:00",
             "context": library, "userId": "user-42", "type": "screen", "name": "Checkout",
             "messageId": "6f3c2a10-0b7e-4c11-9d7a-1a2b3c4d5e04"},
            {"integrations": {}, "timestamp": "2026-11-27T10:00:04.000+00:00", "groupId": "acme-co",
             "context": library, "userId": "user-42", "traits": {"name": "Acme", "email": "billing@acme.example", "employees": 120},
             "type": "group", "messageId": "6f3c2a10-0b7e-4c11-9d7a-1a2b3c4d5e05"},
            {"integrations": {}, "previousId": "a1f0c7e2-anon", "timestamp": "2026-11-27T10:00:05.000+00:00",
             "context": library, "userId": "user-42", "type": "alias", "messageId": "6f3c2a10-0b7e-4c11-9d7a-1a2b3c4d5e06"}
        ],
        "sentAt": "2026-11-27T10:00:06.000000+00:00",
        "writeKey": "wk_python"
    })
}

#[test]
fn batch_from_python_sdk_maps_every_call_type() {
    let req = parse(Endpoint::Batch, python_sdk_batch());
    assert_eq!(req.write_key.as_deref(), Some("wk_python"));
    let events: Vec<EventInput> = req.items.into_iter().map(Result::unwrap).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["identify", "track", "page", "screen", "group", "alias"]);
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["", "Product Viewed", "Docs Pricing", "Checkout", "", ""]);
    assert_eq!(events[1].message_id, "6f3c2a10-0b7e-4c11-9d7a-1a2b3c4d5e02");
    assert_eq!(events[1].timestamp, "2026-11-27T10:00:01.000+00:00");
    assert_eq!(events[1].timestamp_ms, 1_795_773_601_000);
    assert_eq!(events[1].properties["price"], json!(19.99));
    assert_eq!(events[1].context["library"]["name"], "analytics-python");
    assert!(!events[1].context.contains_key("integrations"));
    // Every mapped event passes the common validation of all ingest paths.
    for e in events {
        e.validate().unwrap();
    }
}

#[test]
fn track_from_node_sdk_shape_maps_event_properties_and_identities() {
    // analytics-node shape: `_metadata`, ISO timestamps with Z, library in context.
    let e = one(
        Endpoint::Track,
        json!({
            "userId": "u-1", "anonymousId": "anon-1", "event": "Order Completed", "type": "track",
            "properties": {"order_id": "o-77", "revenue": 42.5, "products": [{"sku": "a"}, {"sku": "b"}]},
            "context": {"library": {"name": "@segment/analytics-node", "version": "2.1.0"}, "ip": "203.0.113.9"},
            "messageId": "node-2d9c1f-1", "timestamp": "2026-11-27T10:00:00.250Z",
            "_metadata": {"jsRuntime": "node"}, "integrations": {"All": true}
        }),
    );
    assert_eq!(e.event_type, "track");
    assert_eq!(e.name, "Order Completed");
    assert_eq!(e.message_id, "node-2d9c1f-1");
    assert_eq!(ids(&e), [("user_id", "u-1"), ("anonymous_id", "anon-1")]);
    assert_eq!(e.properties["products"][1]["sku"], "b");
    assert_eq!(e.context["ip"], "203.0.113.9");
    assert_eq!(e.timestamp_ms, 1_795_773_600_250);
    assert!(e.traits.is_empty());
}

#[test]
fn track_requires_event_name() {
    let err = one_err(Endpoint::Track, json!({"userId": "u-1", "messageId": "m"}));
    assert_eq!(err.field, "event");
    let err = one_err(Endpoint::Track, json!({"userId": "u-1", "event": "  "}));
    assert_eq!(err.field, "event");
    let err = one_err(Endpoint::Track, json!({"userId": "u-1", "event": 7}));
    assert_eq!((err.field.as_str(), err.message.as_str()), ("event", "must be a string, got a number"));
}

#[test]
fn identify_takes_traits_and_contact_identities() {
    let e = one(
        Endpoint::Identify,
        json!({
            "userId": "user-42", "anonymousId": "anon-9",
            "traits": {"email": "ada@example.com", "phone": "+14155550123", "first_name": "Ada"},
            "context": {"device": {"id": "dev-1", "token": "apns-token-abc"}, "library": {"name": "analytics-python"}},
            "messageId": "m-1", "timestamp": "2026-11-27T10:00:00+00:00"
        }),
    );
    assert_eq!(e.event_type, "identify");
    assert_eq!(
        ids(&e),
        [
            ("user_id", "user-42"),
            ("anonymous_id", "anon-9"),
            ("email", "ada@example.com"),
            ("phone", "+14155550123"),
            ("device_id", "dev-1"),
            ("push_token", "apns-token-abc")
        ]
    );
    assert_eq!(e.traits["first_name"], "Ada");
}

#[test]
fn identify_falls_back_to_context_traits() {
    let e = one(Endpoint::Identify, json!({"anonymousId": "anon-9", "context": {"traits": {"email": "bo@example.com", "tier": "gold"}}, "messageId": "m"}));
    assert_eq!(e.traits["tier"], "gold");
    assert_eq!(ids(&e), [("anonymous_id", "anon-9"), ("email", "bo@example.com")]);
}

#[test]
fn track_takes_email_from_context_traits_but_keeps_traits_in_context() {
    let e = one(Endpoint::Track, json!({"anonymousId": "anon-9", "event": "Viewed", "context": {"traits": {"email": "bo@example.com"}}}));
    assert_eq!(ids(&e), [("anonymous_id", "anon-9"), ("email", "bo@example.com")]);
    assert!(e.traits.is_empty());
    assert_eq!(e.context["traits"]["email"], "bo@example.com");
}

#[test]
fn identities_that_validation_would_reject_name_their_segment_field() {
    let err = one_err(Endpoint::Identify, json!({"userId": "u", "traits": {"email": "not-an-email"}}));
    assert_eq!(err.field, "traits.email");
    let err = one_err(Endpoint::Identify, json!({"userId": "u", "context": {"traits": {"phone": "555-1234"}}}));
    assert_eq!(err.field, "context.traits.phone");
    assert!(err.message.contains("E.164"), "{}", err.message);
    let err = one_err(Endpoint::Identify, json!({"userId": "u", "traits": {"email": ["a@b.co"]}}));
    assert_eq!((err.field.as_str(), err.message.as_str()), ("traits.email", "must be a string, got an array"));
    // Empty values count as absent, as SDKs often send them.
    let e = one(Endpoint::Identify, json!({"userId": "u", "traits": {"email": "", "phone": null}}));
    assert_eq!(ids(&e), [("user_id", "u")]);
}

#[test]
fn user_or_anonymous_id_is_required_and_the_error_names_the_field() {
    let err = one_err(Endpoint::Track, json!({"event": "E", "traits": {"email": "a@example.com"}}));
    assert_eq!(err.field, "userId");
    assert!(err.message.contains("anonymousId"), "{}", err.message);
    let err = one_err(Endpoint::Track, json!({"event": "E", "userId": "", "anonymousId": null}));
    assert_eq!(err.field, "userId");
    let err = one_err(Endpoint::Track, json!({"event": "E", "userId": true}));
    assert_eq!((err.field.as_str(), err.message.as_str()), ("userId", "must be a string or a number, got a boolean"));
}

#[test]
fn numeric_user_id_is_stringified() {
    let e = one(Endpoint::Track, json!({"event": "E", "userId": 12345, "anonymousId": 7.5}));
    assert_eq!(ids(&e), [("user_id", "12345"), ("anonymous_id", "7.5")]);
    let e = one(Endpoint::Group, json!({"userId": 1, "groupId": 99}));
    assert_eq!(e.properties["group_id"], "99");
}

#[test]
fn alias_links_previous_id_as_anonymous_id_to_user_id() {
    let e = one(Endpoint::Alias, json!({"previousId": "anon-123", "userId": "user-42", "messageId": "m"}));
    assert_eq!(e.event_type, "alias");
    assert_eq!(ids(&e), [("user_id", "user-42"), ("anonymous_id", "anon-123")]);
    assert_eq!(e.properties["previous_id"], "anon-123");
    assert_eq!(one_err(Endpoint::Alias, json!({"userId": "user-42"})).field, "previousId");
    assert_eq!(one_err(Endpoint::Alias, json!({"previousId": "anon-123", "anonymousId": "x"})).field, "userId");
}

#[test]
fn page_name_joins_category_and_name() {
    let e = one(Endpoint::Page, json!({"anonymousId": "a", "category": "Docs", "name": "Setup", "properties": {"path": "/docs/setup"}}));
    assert_eq!((e.event_type.as_str(), e.name.as_str()), ("page", "Docs Setup"));
    assert_eq!(e.properties["path"], "/docs/setup");
    assert_eq!(one(Endpoint::Page, json!({"anonymousId": "a", "name": "Home"})).name, "Home");
    assert_eq!(one(Endpoint::Page, json!({"anonymousId": "a", "category": "Docs"})).name, "Docs");
    assert_eq!(one(Endpoint::Page, json!({"anonymousId": "a"})).name, "");
}

#[test]
fn screen_maps_name_and_device_identities() {
    let e = one(
        Endpoint::Screen,
        json!({"userId": "u", "name": "Cart", "properties": {"items": 3},
               "context": {"device": {"id": "B5372DB0-C21E", "token": "fcm-abc", "type": "ios"}}}),
    );
    assert_eq!((e.event_type.as_str(), e.name.as_str()), ("screen", "Cart"));
    assert_eq!(ids(&e), [("user_id", "u"), ("device_id", "B5372DB0-C21E"), ("push_token", "fcm-abc")]);
}

#[test]
fn group_stores_group_id_and_does_not_take_group_email_as_the_users() {
    let e = one(
        Endpoint::Group,
        json!({"userId": "u", "groupId": "acme", "traits": {"name": "Acme", "email": "billing@acme.example"},
               "context": {"traits": {"email": "ada@example.com"}}}),
    );
    assert_eq!(e.event_type, "group");
    assert_eq!(e.properties["group_id"], "acme");
    assert_eq!(e.traits["name"], "Acme");
    assert_eq!(ids(&e), [("user_id", "u"), ("email", "ada@example.com")]);
    assert_eq!(one_err(Endpoint::Group, json!({"userId": "u"})).field, "groupId");
}

#[test]
fn consent_category_preferences_become_the_consent_trait() {
    let e = one(
        Endpoint::Identify,
        json!({"userId": "u", "traits": {"consent": {"sms": "opted_out", "topics": {"advertising": "opted_out"}}},
               "context": {"consent": {"categoryPreferences": {"Advertising": true, "Product News": true, "Analytics": false}}}}),
    );
    assert_eq!(e.traits["consent"], json!({"sms": "opted_out", "topics": {"advertising": "opted_out", "product_news": "opted_in", "analytics": "opted_out"}}));
    // Any call type carries it; errors name the Segment path.
    let e = one(Endpoint::Track, json!({"userId": "u", "event": "E", "context": {"consent": {"categoryPreferences": {"Ads": false}}}}));
    assert_eq!(e.traits["consent"], json!({"topics": {"ads": "opted_out"}}));
    let err = one_err(Endpoint::Track, json!({"userId": "u", "event": "E", "context": {"consent": {"categoryPreferences": {"Ads": 1}}}}));
    assert_eq!(err.field, "context.consent.categoryPreferences.Ads");
}

#[test]
fn missing_message_id_is_derived_and_stable_across_retries() {
    let first = json!({"userId": "u", "event": "Clicked", "properties": {"b": 2, "a": 1}, "sentAt": "2026-11-27T10:00:00Z", "writeKey": "k"});
    let retry = json!({"writeKey": "k", "sentAt": "2026-11-27T10:00:30Z", "properties": {"a": 1, "b": 2}, "event": "Clicked", "userId": "u"});
    let a = one(Endpoint::Track, first);
    let b = one(Endpoint::Track, retry);
    assert!(a.message_id.starts_with(DERIVED_MESSAGE_ID_PREFIX), "{}", a.message_id);
    assert_eq!(a.message_id, b.message_id);
    let other = one(Endpoint::Track, json!({"userId": "u", "event": "Clicked", "properties": {"a": 1, "b": 3}}));
    assert_ne!(a.message_id, other.message_id);
    // Empty counts as absent; numbers are stringified; too long is an error.
    assert!(one(Endpoint::Track, json!({"userId": "u", "event": "E", "messageId": ""})).message_id.starts_with("seg-"));
    assert_eq!(one(Endpoint::Track, json!({"userId": "u", "event": "E", "messageId": 17})).message_id, "17");
    assert_eq!(one_err(Endpoint::Track, json!({"userId": "u", "event": "E", "messageId": "x".repeat(300)})).field, "messageId");
}

#[test]
fn timestamp_falls_back_to_original_timestamp_and_bad_ones_are_rejected() {
    let e = one(Endpoint::Track, json!({"userId": "u", "event": "E", "originalTimestamp": "2026-11-27T11:00:00+01:00"}));
    assert_eq!((e.timestamp.as_str(), e.timestamp_ms), ("2026-11-27T11:00:00+01:00", 1_795_773_600_000));
    let e = one(Endpoint::Track, json!({"userId": "u", "event": "E"}));
    assert_eq!((e.timestamp.as_str(), e.timestamp_ms), ("", 0));
    let err = one_err(Endpoint::Track, json!({"userId": "u", "event": "E", "timestamp": "yesterday"}));
    assert_eq!(err.field, "timestamp");
    let err = parse(Endpoint::Batch, json!({"batch": [{"type": "track", "userId": "u", "event": "E", "originalTimestamp": "2026-11-27"}]}));
    assert_eq!(err.items[0].as_ref().unwrap_err().field, "batch[0].originalTimestamp");
}

#[test]
fn batch_one_bad_item_does_not_reject_the_good_ones() {
    let req = parse(
        Endpoint::Batch,
        json!({"batch": [
            {"type": "track", "userId": "u1", "event": "A", "messageId": "m0"},
            {"type": "track", "event": "B", "messageId": "m1"},
            "not a call",
            {"type": "identify", "userId": "u2", "traits": {"email": "x@example.com"}, "messageId": "m3"},
            {"type": "purchase", "userId": "u3", "messageId": "m4"},
            {"userId": "u3", "event": "C", "messageId": "m5"},
            {"type": "track", "userId": "u4", "event": "D", "properties": [1, 2], "messageId": "m6"}
        ]}),
    );
    assert_eq!(req.items.len(), 7);
    let errors: Vec<(usize, &str)> = req.items.iter().filter_map(|r| r.as_ref().err()).map(|e| (e.index, e.field.as_str())).collect();
    assert_eq!(errors, [(1, "batch[1].userId"), (2, "batch[2]"), (4, "batch[4].type"), (5, "batch[5].type"), (6, "batch[6].properties")]);
    let good: Vec<&str> = req.items.iter().filter_map(|r| r.as_ref().ok()).map(|e| e.message_id.as_str()).collect();
    assert_eq!(good, ["m0", "m3"]);
    let e = req.items[1].as_ref().unwrap_err();
    assert!(e.to_string().starts_with("batch[1].userId: userId or anonymousId is required"), "{e}");
}

#[test]
fn batch_context_is_merged_into_each_call_whose_own_keys_win() {
    let req = parse(
        Endpoint::Batch,
        json!({"context": {"library": {"name": "custom"}, "ip": "198.51.100.1"},
               "batch": [{"type": "track", "userId": "u", "event": "A", "context": {"ip": "203.0.113.2"}},
                         {"type": "track", "userId": "u", "event": "B"}]}),
    );
    let a = req.items[0].as_ref().unwrap();
    let b = req.items[1].as_ref().unwrap();
    assert_eq!((a.context["ip"].as_str(), a.context["library"]["name"].as_str()), (Some("203.0.113.2"), Some("custom")));
    assert_eq!(b.context["ip"], "198.51.100.1");
}

#[test]
fn gzip_batch_body_is_decoded_and_parsed() {
    let body = gzip(python_sdk_batch().to_string().as_bytes());
    let json = decode_body(&body, Some("gzip"), Endpoint::Batch.body_bytes_max()).unwrap();
    let req = parse_request(Endpoint::Batch, &json).unwrap();
    assert_eq!(req.items.len(), 6);
    assert!(req.items.iter().all(Result::is_ok));
}

#[test]
fn size_limits_follow_segment_per_endpoint() {
    assert_eq!(Endpoint::Track.body_bytes_max(), 32 * 1024);
    assert_eq!(Endpoint::Batch.body_bytes_max(), 500 * 1024);
    let big = json!({"userId": "u", "event": "E", "properties": {"blob": "x".repeat(40 * 1024)}}).to_string();
    let e = decode_body(big.as_bytes(), None, Endpoint::Track.body_bytes_max()).unwrap_err();
    assert_eq!((e.http_status(), e.code()), (413, "too_large"));
    assert!(e.to_string().contains("32768 bytes"), "{e}");
    assert!(decode_body(big.as_bytes(), None, Endpoint::Batch.body_bytes_max()).is_ok());
}

#[test]
fn batch_with_too_many_calls_is_rejected_whole() {
    let calls: Vec<Value> = (0..=BATCH_ITEMS_MAX).map(|i| json!({"type": "track", "userId": i, "event": "E"})).collect();
    let e = parse_request(Endpoint::Batch, json!({"batch": calls}).to_string().as_bytes()).unwrap_err();
    assert_eq!(e, SegmentError::TooManyItems { count: BATCH_ITEMS_MAX + 1, limit: BATCH_ITEMS_MAX });
    assert_eq!(e.http_status(), 400);
}

#[test]
fn whole_request_errors_are_distinguished_from_item_errors() {
    let e = parse_request(Endpoint::Track, b"{\"userId\": ").unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("bad_json", 400));
    let e = parse_request(Endpoint::Track, b"[1,2]").unwrap_err();
    assert_eq!(e, SegmentError::BadRequest { field: "body".into(), message: "must be a JSON object, got an array".into() });
    let e = parse_request(Endpoint::Batch, b"{\"writeKey\": \"k\"}").unwrap_err();
    assert!(matches!(&e, SegmentError::BadRequest { field, .. } if field == "batch"), "{e:?}");
    let e = parse_request(Endpoint::Batch, b"{\"batch\": {}}").unwrap_err();
    assert!(e.to_string().starts_with("batch: must be an array"), "{e}");
    let e = parse_request(Endpoint::Track, b"{\"writeKey\": 5}").unwrap_err();
    assert!(matches!(&e, SegmentError::BadRequest { field, .. } if field == "writeKey"), "{e:?}");
    // An empty batch is fine: nothing to ingest.
    assert!(parse_request(Endpoint::Batch, b"{\"batch\": []}").unwrap().items.is_empty());
}

#[test]
fn write_key_comes_from_the_header_else_the_body() {
    let req = parse(Endpoint::Track, json!({"writeKey": "body-key", "userId": "u", "event": "E"}));
    assert_eq!(req.resolve_write_key(Some("header-key".into())).unwrap(), "header-key");
    assert_eq!(req.resolve_write_key(None).unwrap(), "body-key");
    let req = parse(Endpoint::Track, json!({"userId": "u", "event": "E"}));
    let e = req.resolve_write_key(None).unwrap_err();
    assert_eq!((e, req.resolve_write_key(None).unwrap_err().http_status()), (SegmentError::MissingWriteKey, 401));
}

#[test]
fn endpoints_are_recognized_from_paths_including_short_forms() {
    assert_eq!(Endpoint::from_path("/v1/track"), Some(Endpoint::Track));
    assert_eq!(Endpoint::from_path("/v1/identify/"), Some(Endpoint::Identify));
    assert_eq!(Endpoint::from_path("v1/b"), Some(Endpoint::Batch));
    assert_eq!(Endpoint::from_path("/v1/import"), Some(Endpoint::Batch));
    assert_eq!(Endpoint::from_path("/v1/s"), Some(Endpoint::Screen));
    assert_eq!(Endpoint::from_path("/v1/unknown"), None);
    assert_eq!(Endpoint::Batch.event_type(), None);
}

#[test]
fn validation_errors_are_readdressed_to_segment_fields() {
    let e = SegmentItemError::from_validation(Endpoint::Batch, 3, FieldError::new("message_id", "is required"));
    assert_eq!(e.to_string(), "batch[3].messageId: is required");
    let e = SegmentItemError::from_validation(Endpoint::Track, 0, FieldError::new("properties", "too big"));
    assert_eq!((e.index, e.field.as_str()), (0, "properties"));
}

#[test]
fn single_call_type_comes_from_the_endpoint_not_the_body() {
    let e = one(Endpoint::Page, json!({"type": "track", "anonymousId": "a", "name": "Home"}));
    assert_eq!(e.event_type, "page");
}

/// A call nested deeper than `CALL_DEPTH_MAX` (here 200 levels, past serde_json's own
/// recursion limit) is rejected alone; the other calls of its batch are kept.
#[test]
fn one_deep_call_is_rejected_alone_and_its_batch_kept() {
    let deep = format!(r#"{{"type":"track","userId":"u9","event":"Deep","messageId":"m-deep","properties":{{"x":{}1{}}}}}"#, "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"{{"batch":[{{"type":"track","userId":"u1","event":"A","messageId":"m0"}},{deep},{{"type":"track","userId":"u2","event":"B","messageId":"m2","properties":{{"ok":{{"a":[1,[2]]}}}}}}]}}"#
    );
    let req = parse_request(Endpoint::Batch, body.as_bytes()).expect("the batch is not refused whole");
    assert_eq!(req.items.len(), 3);
    let good: Vec<&str> = req.items.iter().filter_map(|r| r.as_ref().ok()).map(|e| e.message_id.as_str()).collect();
    assert_eq!(good, ["m0", "m2"]);
    let e = req.items[1].as_ref().unwrap_err();
    assert_eq!(e.field, "batch[1]");
    assert!(e.message.contains("202 levels") && e.message.contains(&CALL_DEPTH_MAX.to_string()), "{e}");

    // A single call that deep is the whole request: 400 too_deep, not bad_json.
    let single = parse_request(Endpoint::Track, deep.as_bytes()).unwrap_err();
    assert_eq!((single.http_status(), single.code()), (400, "too_deep"), "{single}");
    // A batch envelope nested too deep outside its calls is refused whole, clearly.
    let envelope = format!(r#"{{"batch":[],"context":{{"x":{}1{}}}}}"#, "[".repeat(100), "]".repeat(100));
    assert_eq!(parse_request(Endpoint::Batch, envelope.as_bytes()).unwrap_err().code(), "too_deep");
}
