//! Nesting depth of request bodies, measured on the raw bytes before any JSON parser
//! recurses into them, so one call nested too deep rejects only that call (SPEC §9), not
//! its whole batch. Must not allocate per byte or recurse: the input is untrusted.

/// How deeply one call may nest, the call object itself counting as level 1: the call
/// plus `EVENT_JSON_DEPTH_MAX` levels of properties, traits or context.
pub const CALL_DEPTH_MAX: usize = chorus_types::EVENT_JSON_DEPTH_MAX + 1;

/// What the scan found in a body.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Depths {
    /// The deepest nesting anywhere (the body's own object is level 1).
    pub max: usize,
    /// Elements of the top-level `batch` array nested deeper than [`CALL_DEPTH_MAX`]:
    /// (index in the array, byte range of the element, its depth).
    pub deep_calls: Vec<(usize, std::ops::Range<usize>, usize)>,
}

/// Scan `json` once: its deepest nesting, and which `batch` calls are too deep. Bytes
/// that are not valid JSON are left for the parser to report.
pub(crate) fn scan(json: &[u8]) -> Depths {
    let mut out = Depths::default();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // The last string that ended at depth 1 (a key of the body object, when a ':' follows).
    let mut string_start = 0usize;
    let mut last_key_is_batch = false;
    // Inside the body's "batch" array (depth 2): the element being read.
    let mut in_batch = false;
    let mut element_index = 0usize;
    let mut element: Option<(usize, usize)> = None; // (start byte, max depth)
    for (i, &b) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                if depth == 1 {
                    last_key_is_batch = &json[string_start..i] == b"batch";
                }
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b'{' | b'[' => {
                depth += 1;
                out.max = out.max.max(depth);
                if depth == 2 && b == b'[' && last_key_is_batch {
                    in_batch = true;
                    element_index = 0;
                } else if in_batch && depth == 3 && element.is_none() {
                    element = Some((i, 3));
                }
                if let Some((_, m)) = element.as_mut() {
                    *m = (*m).max(depth);
                }
            }
            b'}' | b']' => {
                if in_batch && depth == 3 {
                    if let Some((start, m)) = element.take() {
                        let call_depth = m - 2;
                        if call_depth > CALL_DEPTH_MAX {
                            out.deep_calls.push((element_index, start..i + 1, call_depth));
                        }
                    }
                }
                if in_batch && depth == 2 {
                    in_batch = false;
                }
                depth = depth.saturating_sub(1);
                if depth <= 1 {
                    last_key_is_batch = false;
                }
            }
            b',' if in_batch && depth == 2 => element_index += 1,
            b':' => {}
            _ if depth == 1 && !b.is_ascii_whitespace() => last_key_is_batch = false,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_of_plain_bodies() {
        assert_eq!(scan(br#"{"a":1}"#).max, 1);
        assert_eq!(scan(br#"{"a":{"b":[1,{"c":2}]}}"#).max, 4);
        assert_eq!(scan(br#"{"a":"{{{{[[[["}"#).max, 1, "brackets in strings do not count");
        assert_eq!(scan(br#"{"a":"\"{{{"}"#).max, 1, "escaped quotes do not end a string");
    }

    #[test]
    fn deep_batch_calls_are_found_by_index_and_range() {
        let deep = format!(r#"{{"type":"track","properties":{{"x":{}}}}}"#, nested(CALL_DEPTH_MAX));
        let body = format!(r#"{{"batch":[{{"type":"track"}}, {deep} ,{{"type":"track","properties":{{"ok":[1,2]}}}},{deep}],"context":{{"a":{{}}}}}}"#);
        let d = scan(body.as_bytes());
        assert_eq!(d.deep_calls.len(), 2, "{d:?}");
        assert_eq!(d.deep_calls[0].0, 1);
        assert_eq!(d.deep_calls[1].0, 3);
        assert_eq!(&body[d.deep_calls[0].1.clone()], deep);
        assert_eq!(d.deep_calls[0].2, CALL_DEPTH_MAX + 2);
    }

    #[test]
    fn a_call_at_the_limit_is_not_deep_and_other_arrays_are_not_batches() {
        // call (1) → properties (2) → CALL_DEPTH_MAX - 2 arrays: exactly CALL_DEPTH_MAX.
        let at_limit = format!(r#"{{"properties":{{"x":{}}}}}"#, nested(CALL_DEPTH_MAX - 2));
        let d = scan(format!(r#"{{"batch":[{at_limit}]}}"#).as_bytes());
        assert!(d.deep_calls.is_empty(), "{d:?}");
        let d = scan(format!(r#"{{"other":[{{"x":{}}}]}}"#, nested(60)).as_bytes());
        assert!(d.deep_calls.is_empty() && d.max == 63, "{d:?}");
        let d = scan(format!(r#"{{"batchx":1,"y":[{{"x":{}}}]}}"#, nested(60)).as_bytes());
        assert!(d.deep_calls.is_empty(), "{d:?}");
    }
}
