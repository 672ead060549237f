//! A JSON object that survives non-self-describing encodings (postcard): it is carried
//! as its JSON text on the wire and on disk, and as a `serde_json::Map` in memory.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct JsonMap(pub Map<String, Value>);

impl JsonMap {
    pub fn new() -> Self {
        JsonMap(Map::new())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k)
    }
}

impl From<Map<String, Value>> for JsonMap {
    fn from(m: Map<String, Value>) -> Self {
        JsonMap(m)
    }
}

impl Serialize for JsonMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            let text = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        }
    }
}

impl<'de> Deserialize<'de> for JsonMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(JsonMap(Map::deserialize(d)?))
        } else {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            if text.is_empty() {
                return Ok(JsonMap::new());
            }
            serde_json::from_str(&text).map(JsonMap).map_err(serde::de::Error::custom)
        }
    }
}

/// A JSON value carried the same way as [`JsonMap`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JsonValue(pub Value);

impl Serialize for JsonValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            let text = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        }
    }
}

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(JsonValue(Value::deserialize(d)?))
        } else {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            serde_json::from_str(&text).map(JsonValue).map_err(serde::de::Error::custom)
        }
    }
}

/// "an array", "a string", ... for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
