//! The body of `PATCH .../oathTokens/{id}` (JSON or JSON merge patch, RFC 7396): only `enabled`
//! can change. Every other property, and a missing or non-boolean `enabled`, is reported.

use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{shown_name, FieldError};

/// `{"enabled": true | false}`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPatch {
    pub enabled: bool,
}

impl TokenPatch {
    pub fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors: Vec<FieldError> = body
            .keys()
            .filter(|k| k.as_str() != "enabled")
            .map(|k| {
                let name = shown_name(k);
                FieldError::invalid(
                    name.clone(),
                    format!("{name} cannot be changed; only enabled can"),
                )
            })
            .collect();
        let enabled = match body.get("enabled") {
            None => {
                errors.push(FieldError::required("enabled"));
                None
            }
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                errors.push(FieldError::invalid(
                    "enabled",
                    "enabled must be true or false",
                ));
                None
            }
        };
        match enabled {
            Some(enabled) if errors.is_empty() => Ok(Self { enabled }),
            _ => Err(errors),
        }
    }
}

// What `TokenPatch::parse` accepts, for the OpenAPI document.
/// The change: `enabled` only.
#[derive(ToSchema)]
#[schema(as = TokenPatch, example = json!({"enabled": false}))]
pub struct TokenPatchDoc {
    /// False disables the token (checks answer `DISABLED`; resync and pairing are refused);
    /// true enables it again.
    pub enabled: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<TokenPatch, Vec<(String, String)>> {
        TokenPatch::parse(v.as_object().unwrap()).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| (format!("{:?}", e.code), e.target))
                .collect()
        })
    }

    #[test]
    fn only_enabled_as_a_boolean() {
        assert_eq!(
            parse(json!({"enabled": false})),
            Ok(TokenPatch { enabled: false })
        );
        assert_eq!(
            parse(json!({"enabled": true})),
            Ok(TokenPatch { enabled: true })
        );
        let invalid = |t: &str| ("InvalidValue".to_string(), t.to_string());
        assert_eq!(
            parse(json!({})),
            Err(vec![("RequiredValue".into(), "enabled".into())])
        );
        assert_eq!(
            parse(json!({"enabled": null})),
            Err(vec![invalid("enabled")])
        );
        assert_eq!(parse(json!({"enabled": 0})), Err(vec![invalid("enabled")]));
        assert_eq!(
            parse(json!({"enabled": true, "status": "PAIRED"})),
            Err(vec![invalid("status")])
        );
    }
}
