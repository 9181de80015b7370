//! Pre-shared PSKC transport keys: the keys a request names by `X-PSKC-Key-Id`, each bound to
//! the environments that may use it, and the hex form a key is given in (configured, or sent by
//! a request as `X-PSKC-Key`). The settings (`import.pskc_keys`) build the keyring.

use std::collections::HashMap;
use std::fmt;

use uuid::Uuid;
use zeroize::Zeroizing;

/// Which environments may use a pre-shared PSKC key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// `["*"]`: every environment (logged as a warning at start-up).
    All,
    Environments(Vec<Uuid>),
}

impl KeyScope {
    /// The scope a list configures: `["*"]`, or one or more environment ids. None for an empty
    /// list or anything else.
    pub fn parse(listed: &[String]) -> Option<Self> {
        if listed == ["*"] {
            return Some(Self::All);
        }
        let envs: Option<Vec<Uuid>> = listed.iter().map(|e| Uuid::parse_str(e).ok()).collect();
        envs.filter(|envs| !envs.is_empty()).map(Self::Environments)
    }
}

/// The configured pre-shared PSKC keys, decoded and bound to their environments.
#[derive(Default)]
pub struct PskcKeyring {
    /// Lower-case id -> key and scope.
    keys: HashMap<String, (Zeroizing<Vec<u8>>, KeyScope)>,
}

impl fmt::Debug for PskcKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("PskcKeyring").field("ids", &ids).finish()
    }
}

impl PskcKeyring {
    /// Adds `key` under `id`, which is matched case-insensitively.
    pub fn insert(&mut self, id: &str, key: Zeroizing<Vec<u8>>, scope: KeyScope) {
        self.keys.insert(id.to_ascii_lowercase(), (key, scope));
    }

    /// The key with this id (case-insensitive, as environment variable names are) if `env` may
    /// use it. An unknown id and a key bound elsewhere look the same to the caller.
    pub fn key_for(&self, id: &str, env: Uuid) -> Option<Zeroizing<Vec<u8>>> {
        let (key, scope) = self.keys.get(&id.to_ascii_lowercase())?;
        let allowed = match scope {
            KeyScope::All => true,
            KeyScope::Environments(envs) => envs.contains(&env),
        };
        allowed.then(|| key.clone())
    }

    /// Ids of keys every environment may use.
    pub fn shared_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .keys
            .iter()
            .filter(|(_, (_, scope))| *scope == KeyScope::All)
            .map(|(id, _)| id.as_str())
            .collect();
        ids.sort();
        ids
    }
}

/// A PSKC transport key: hex of 16, 24 or 32 bytes.
pub fn decode_pskc_key(hex_digits: &str) -> Option<Zeroizing<Vec<u8>>> {
    hex::decode(hex_digits.trim())
        .ok()
        .map(Zeroizing::new)
        .filter(|k| matches!(k.len(), 16 | 24 | 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = "0193a0c4-0000-7000-8000-00000000000a";

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_scope_is_every_environment_or_a_list_of_ids() {
        assert_eq!(KeyScope::parse(&list(&["*"])), Some(KeyScope::All));
        let env = Uuid::parse_str(ENV).unwrap();
        assert_eq!(
            KeyScope::parse(&list(&[ENV])),
            Some(KeyScope::Environments(vec![env]))
        );
        for bad in [&[][..], &["*", ENV], &["not-a-uuid"]] {
            assert_eq!(KeyScope::parse(&list(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn a_key_is_hex_of_16_24_or_32_bytes() {
        for len in [16, 24, 32] {
            let key = decode_pskc_key(&format!(" {} ", "ab".repeat(len))).unwrap();
            assert_eq!(key.len(), len);
        }
        for bad in ["ab".repeat(15), "ab".repeat(33), "zz".repeat(16)] {
            assert!(decode_pskc_key(&bad).is_none(), "{bad}");
        }
    }
}
