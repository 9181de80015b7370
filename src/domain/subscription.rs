//! A webhook subscription's request body, parsed into what a create or an update stores.

use actix_web::http::header;
use serde_json::{Map, Value};

use super::event::EventType;
use super::FieldError;

/// Headers a subscription may set, at most.
const MAX_HEADERS: usize = 20;
/// Longest header value.
const MAX_HEADER_VALUE: usize = 4096;
/// Longest URL and name.
const MAX_URL: usize = 2048;
const MAX_NAME: usize = 100;
/// Headers the delivery sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "oath-signature",
    "oath-delivery-id",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

/// A subscription's body, parsed: every problem reported with its path.
pub struct SubscriptionRequest {
    pub name: String,
    pub enabled: bool,
    pub url: String,
    /// Names and values, in the order given.
    pub headers: Vec<(String, String)>,
    pub included_types: Option<Vec<String>>,
}

impl SubscriptionRequest {
    pub fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        for key in body.keys() {
            if !["name", "enabled", "httpEndpoint", "filterOptions"].contains(&key.as_str()) {
                errors.push(FieldError::invalid(key.as_str(), "unknown property"));
            }
        }
        let name = match body.get("name") {
            None => {
                errors.push(FieldError::required("name"));
                String::new()
            }
            Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_NAME => {
                s.clone()
            }
            Some(_) => {
                errors.push(FieldError::invalid(
                    "name",
                    format!("name must be a string of 1 to {MAX_NAME} characters"),
                ));
                String::new()
            }
        };
        let enabled = match body.get("enabled") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errors.push(FieldError::invalid(
                    "enabled",
                    "enabled must be true or false",
                ));
                true
            }
        };
        let (mut url, mut headers) = (String::new(), Vec::new());
        match body.get("httpEndpoint") {
            None => errors.push(FieldError::required("httpEndpoint")),
            Some(Value::Object(endpoint)) => {
                for key in endpoint.keys() {
                    if key != "url" && key != "headers" {
                        errors.push(FieldError::invalid(
                            format!("httpEndpoint.{key}"),
                            "unknown property",
                        ));
                    }
                }
                match endpoint.get("url") {
                    None => errors.push(FieldError::required("httpEndpoint.url")),
                    Some(Value::String(u)) if u.len() <= MAX_URL => url = u.clone(),
                    Some(_) => errors.push(FieldError::invalid(
                        "httpEndpoint.url",
                        format!("url must be a string of at most {MAX_URL} characters"),
                    )),
                }
                match endpoint.get("headers") {
                    None => {}
                    Some(Value::Object(h)) if h.len() <= MAX_HEADERS => {
                        for (name, value) in h {
                            let target = format!("httpEndpoint.headers.{name}");
                            let valid_name = header::HeaderName::from_bytes(name.as_bytes())
                                .is_ok()
                                && !RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str());
                            if !valid_name {
                                errors.push(FieldError::invalid(
                                    target,
                                    "not a header name the subscription may set",
                                ));
                                continue;
                            }
                            match value {
                                Value::String(v)
                                    if v.len() <= MAX_HEADER_VALUE
                                        && header::HeaderValue::from_str(v).is_ok() =>
                                {
                                    headers.push((name.clone(), v.clone()))
                                }
                                // The value is never echoed: it may be a credential.
                                _ => errors.push(FieldError::invalid(
                                    target,
                                    "a header value must be a string of visible characters",
                                )),
                            }
                        }
                    }
                    Some(_) => errors.push(FieldError::invalid(
                        "httpEndpoint.headers",
                        format!("headers must be an object of at most {MAX_HEADERS} names and string values"),
                    )),
                }
            }
            Some(_) => errors.push(FieldError::invalid(
                "httpEndpoint",
                "httpEndpoint must be an object",
            )),
        }
        let included_types = match body.get("filterOptions") {
            None | Some(Value::Null) => None,
            Some(Value::Object(options)) => {
                for key in options.keys() {
                    if key != "includedActionTypes" {
                        errors.push(FieldError::invalid(
                            format!("filterOptions.{key}"),
                            "unknown property",
                        ));
                    }
                }
                match options.get("includedActionTypes") {
                    Some(Value::Array(types)) if !types.is_empty() => {
                        let mut parsed = Vec::new();
                        for (i, t) in types.iter().enumerate() {
                            match t.as_str().and_then(EventType::parse) {
                                Some(t) if !parsed.contains(&t.as_str().to_string()) => {
                                    parsed.push(t.as_str().to_string())
                                }
                                Some(_) => {}
                                None => errors.push(FieldError::invalid(
                                    format!("filterOptions.includedActionTypes[{i}]"),
                                    "not an event type",
                                )),
                            }
                        }
                        Some(parsed)
                    }
                    _ => {
                        errors.push(FieldError::invalid(
                            "filterOptions.includedActionTypes",
                            "includedActionTypes must be a non-empty array of event types",
                        ));
                        None
                    }
                }
            }
            Some(_) => {
                errors.push(FieldError::invalid(
                    "filterOptions",
                    "filterOptions must be an object",
                ));
                None
            }
        };
        if errors.is_empty() {
            Ok(Self {
                name,
                enabled,
                url,
                headers,
                included_types,
            })
        } else {
            Err(errors)
        }
    }
}
