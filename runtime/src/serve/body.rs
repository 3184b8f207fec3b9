//! A request body as a JSON object whose fields are read one by one, so a wrong type or
//! value is refused with the field's name (OpenAI's `param`) instead of a serde position.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::ApiError;

/// The fields of a JSON request body.
#[derive(Debug, Clone)]
pub struct Body {
    fields: Map<String, Value>,
}

impl Body {
    /// Parses bytes that must hold one JSON object (UTF-8, at most serde_json's nesting
    /// depth of 128).
    pub fn parse(bytes: &[u8]) -> Result<Body, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_body(
                "The request body is empty; send a JSON object",
            ));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(fields)) => Ok(Body { fields }),
            Ok(other) => Err(ApiError::bad_body(format!(
                "The request body must be a JSON object, not {}",
                json_kind(&other)
            ))),
            Err(e) => Err(ApiError::bad_body(format!(
                "The request body is not valid JSON: {e}"
            ))),
        }
    }

    /// A field that may be absent or null.
    pub fn opt<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => T::deserialize(v)
                .map(Some)
                .map_err(|e| ApiError::invalid(name, format!("Invalid type for '{name}': {e}"))),
        }
    }

    /// A field that must be present.
    pub fn required<T: DeserializeOwned>(&self, name: &str) -> Result<T, ApiError> {
        self.opt(name)?
            .ok_or_else(|| ApiError::invalid(name, format!("Missing required parameter: '{name}'")))
    }

    /// The raw value of a field (for fields with several accepted shapes).
    pub fn raw(&self, name: &str) -> Option<&Value> {
        self.fields.get(name).filter(|v| !v.is_null())
    }
}

/// "a string", "an array", ... for messages about a value's type.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_name_the_field() {
        let b = Body::parse(br#"{"temperature": "hot", "n": null}"#).unwrap();
        let e = b.opt::<f64>("temperature").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert_eq!(b.opt::<u32>("n").unwrap(), None);
        assert_eq!(
            b.required::<String>("model").unwrap_err().param.as_deref(),
            Some("model")
        );
    }

    #[test]
    fn non_objects_and_garbage_are_refused() {
        for bad in [
            &b"[1]"[..],
            b"",
            b"  ",
            b"{",
            b"\xff\xfe",
            b"null",
            b"\"x\"",
        ] {
            let e = Body::parse(bad).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let deep = format!("{{\"a\": {deep}}}");
        assert!(Body::parse(deep.as_bytes()).is_err());
    }
}
