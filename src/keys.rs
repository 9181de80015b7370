//! Which encryption keys the stored secrets need: `oath-service keys status`, and the check
//! `serve` makes before it serves (a secret sealed with a key id that is not configured could
//! never be opened: every validation of its token would fail).

use serde::Serialize;

use crate::crypto::SecretCipher;
use crate::store::secrets::KeyUse;

/// One key id: whether it is configured and active, and what it seals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub id: String,
    pub active: bool,
    pub configured: bool,
    pub token_secrets: i64,
    pub queued_job_items: i64,
    pub subscription_secrets: i64,
}

/// Every configured key id and every key id the database uses, sorted by id.
pub fn statuses(cipher: &SecretCipher, uses: &[KeyUse]) -> Vec<KeyStatus> {
    let mut all: Vec<KeyStatus> = cipher
        .key_ids()
        .into_iter()
        .map(|id| KeyStatus {
            id: id.to_string(),
            active: id == cipher.active_key_id(),
            configured: true,
            token_secrets: 0,
            queued_job_items: 0,
            subscription_secrets: 0,
        })
        .collect();
    for used in uses {
        match all.iter_mut().find(|k| k.id == used.key_id) {
            Some(known) => {
                known.token_secrets = used.token_secrets;
                known.queued_job_items = used.queued_job_items;
                known.subscription_secrets = used.subscription_secrets;
            }
            None => all.push(KeyStatus {
                id: used.key_id.clone(),
                active: false,
                configured: false,
                token_secrets: used.token_secrets,
                queued_job_items: used.queued_job_items,
                subscription_secrets: used.subscription_secrets,
            }),
        }
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all
}

/// The key ids the database uses that are not configured.
pub fn unconfigured(statuses: &[KeyStatus]) -> Vec<&str> {
    statuses
        .iter()
        .filter(|k| !k.configured)
        .map(|k| k.id.as_str())
        .collect()
}

/// The start-up error for key ids in use that are not configured.
pub fn unconfigured_error(ids: &[&str]) -> String {
    format!(
        "configuration error: the database holds secrets sealed with key id(s) {} that \
         crypto.keys does not configure; add them (oath-service keys status lists every key id)",
        ids.join(", ")
    )
}

/// A table for people: one line per key id.
pub fn table(statuses: &[KeyStatus]) -> String {
    let width = statuses
        .iter()
        .map(|k| k.id.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut out = format!(
        "{:width$}  {:6}  {:10}  {:>13}  {:>16}  {:>20}\n",
        "key id",
        "active",
        "configured",
        "token secrets",
        "queued job items",
        "subscription secrets"
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for k in statuses {
        out.push_str(&format!(
            "{:width$}  {:6}  {:10}  {:>13}  {:>16}  {:>20}\n",
            k.id,
            yes(k.active),
            yes(k.configured),
            k.token_secrets,
            k.queued_job_items,
            k.subscription_secrets
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn used(id: &str, tokens: i64, items: i64) -> KeyUse {
        KeyUse {
            key_id: id.into(),
            token_secrets: tokens,
            queued_job_items: items,
            subscription_secrets: 0,
        }
    }

    #[test]
    fn configured_and_used_keys_are_listed_together() {
        let keys: HashMap<String, [u8; 32]> =
            [("new".to_string(), [1; 32]), ("old".to_string(), [2; 32])].into();
        let cipher = SecretCipher::new("new".into(), &keys).unwrap();
        let all = statuses(&cipher, &[used("gone", 3, 0), used("old", 5, 7)]);
        let ids: Vec<(&str, bool, bool, i64, i64)> = all
            .iter()
            .map(|k| {
                (
                    k.id.as_str(),
                    k.active,
                    k.configured,
                    k.token_secrets,
                    k.queued_job_items,
                )
            })
            .collect();
        assert_eq!(
            ids,
            [
                ("gone", false, false, 3, 0),
                ("new", true, true, 0, 0),
                ("old", false, true, 5, 7)
            ]
        );
        assert_eq!(unconfigured(&all), ["gone"]);
        let text = table(&all);
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.lines().nth(1).unwrap().starts_with("gone    no "),
            "{text}"
        );
    }
}
