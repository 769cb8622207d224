//! API keys, tenants and scopes. Each key (from `[[auth.keys]]`) belongs to
//! one tenant and grants scopes: `ingest` (write that tenant's spans),
//! `query` (read that tenant's data: SQL, stats) and `admin` (every tenant's
//! data, alerts, metrics). Keys arrive as `Authorization: Bearer <key>`,
//! `x-api-key: <key>` or HTTP Basic (the password, or the user name when the
//! password is empty, as Langfuse's public:secret pairs are sent).
//!
//! Keys are compared by SHA-256, and the config may hold only the hash
//! (`key_sha256`), so a leaked config file does not leak working keys.
//! Without any key configured the collector is open: everything is allowed
//! and spans go to the `default` tenant.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Ingest,
    Query,
    Admin,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
            Scope::Admin => "admin",
        })
    }
}

/// One configured key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// For logs: which key was used (never the key itself).
    pub name: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    /// The key itself; prefer `key_sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Lowercase hex SHA-256 of the key (`llmtrace auth hash-key KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub keys: Vec<KeyConfig>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials, or credentials that match no key: 401.
    #[error(
        "missing or unknown API key (send Authorization: Bearer <key>, x-api-key or Basic auth)"
    )]
    Unauthenticated,
    /// A valid key without the scope the request needs: 403.
    #[error("the API key {key:?} lacks the `{scope}` scope")]
    Forbidden { key: String, scope: Scope },
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key's name, or `None` on an open collector.
    pub key: Option<String>,
    pub tenant: Arc<str>,
    scopes: Vec<Scope>,
}

impl Principal {
    pub fn allows(&self, scope: Scope) -> bool {
        self.key.is_none() || self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Requires `scope`.
    pub fn require(&self, scope: Scope) -> Result<&Self, AuthError> {
        if self.allows(scope) {
            Ok(self)
        } else {
            Err(AuthError::Forbidden {
                key: self.key.clone().unwrap_or_default(),
                scope,
            })
        }
    }

    /// The tenant whose data this principal reads; `None` for all tenants
    /// (admin keys and open collectors).
    pub fn read_tenant(&self) -> Option<&str> {
        if self.key.is_none() || self.scopes.contains(&Scope::Admin) {
            None
        } else {
            Some(&self.tenant)
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex SHA-256 of `key`, as `key_sha256` wants it.
pub fn hash_key(key: &str) -> String {
    crate::record::hex(&sha256(key.as_bytes()))
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The configured keys, by hash.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    by_hash: HashMap<[u8; 32], Principal>,
}

impl Keys {
    /// Checks every key; errors name the key and what is wrong.
    pub fn from_config(config: &AuthConfig) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        for (i, k) in config.keys.iter().enumerate() {
            let at = format!("auth.keys[{i}] ({:?})", k.name);
            if k.name.trim().is_empty() {
                return Err(format!("{at}: `name` must not be empty"));
            }
            if k.tenant.trim().is_empty() {
                return Err(format!("{at}: `tenant` must not be empty"));
            }
            if k.scopes.is_empty() {
                return Err(format!(
                    "{at}: `scopes` must list ingest, query and/or admin"
                ));
            }
            let hash = match (&k.key, &k.key_sha256) {
                (Some(key), None) if key.len() >= 16 => sha256(key.as_bytes()),
                (Some(_), None) => {
                    return Err(format!("{at}: `key` must be at least 16 characters"))
                }
                (None, Some(hex)) => parse_hex32(&hex.to_ascii_lowercase()).ok_or_else(|| {
                    format!("{at}: `key_sha256` must be 64 hex digits (llmtrace auth hash-key KEY)")
                })?,
                _ => return Err(format!("{at}: set exactly one of `key` and `key_sha256`")),
            };
            let principal = Principal {
                key: Some(k.name.clone()),
                tenant: Arc::from(k.tenant.as_str()),
                scopes: k.scopes.clone(),
            };
            if by_hash.insert(hash, principal).is_some() {
                return Err(format!("{at}: the same key is configured twice"));
            }
        }
        Ok(Keys { by_hash })
    }

    pub fn is_open(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The principal of a request with these headers.
    pub fn authenticate(&self, headers: &axum::http::HeaderMap) -> Result<Principal, AuthError> {
        if self.is_open() {
            return Ok(Principal {
                key: None,
                tenant: Arc::from(crate::ingest::DEFAULT_TENANT),
                scopes: Vec::new(),
            });
        }
        let presented = presented_key(headers).ok_or(AuthError::Unauthenticated)?;
        self.by_hash
            .get(&sha256(presented.as_bytes()))
            .cloned()
            .ok_or(AuthError::Unauthenticated)
    }
}

/// The key a request carries, from whichever header it came in.
fn presented_key(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, value) = auth.split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(value.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':').unwrap_or((&text, ""));
        return Some(if password.is_empty() { user } else { password }.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACME: &str = "acme-key-0123456789";

    fn keys() -> Keys {
        Keys::from_config(&AuthConfig {
            keys: vec![
                KeyConfig {
                    name: "acme".into(),
                    tenant: "acme".into(),
                    scopes: vec![Scope::Ingest, Scope::Query],
                    key: None,
                    key_sha256: Some(hash_key(ACME)),
                },
                KeyConfig {
                    name: "ops".into(),
                    tenant: "ops".into(),
                    scopes: vec![Scope::Admin],
                    key: Some("ops-key-0123456789".into()),
                    key_sha256: None,
                },
            ],
        })
        .unwrap()
    }

    fn headers(name: &str, value: &str) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn keys_arrive_in_every_usual_header() {
        let keys = keys();
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        for h in [
            headers("authorization", &format!("Bearer {ACME}")),
            headers("authorization", &format!("bearer  {ACME} ")),
            headers("x-api-key", ACME),
            headers("authorization", &basic(&format!("pk-lf-public:{ACME}"))),
            headers("authorization", &basic(&format!("{ACME}:"))),
        ] {
            let p = keys.authenticate(&h).unwrap();
            assert_eq!(&*p.tenant, "acme", "{h:?}");
            assert_eq!(p.read_tenant(), Some("acme"));
        }
        assert_eq!(
            keys.authenticate(&axum::http::HeaderMap::new()),
            Err(AuthError::Unauthenticated)
        );
        assert_eq!(
            keys.authenticate(&headers("authorization", "Bearer wrong-key-0123456789")),
            Err(AuthError::Unauthenticated)
        );
        assert_eq!(
            keys.authenticate(&headers("authorization", "Digest abc")),
            Err(AuthError::Unauthenticated)
        );
    }

    #[test]
    fn scopes_and_tenants() {
        let keys = keys();
        let acme = keys.authenticate(&headers("x-api-key", ACME)).unwrap();
        assert!(acme.require(Scope::Ingest).is_ok());
        assert!(matches!(
            acme.require(Scope::Admin),
            Err(AuthError::Forbidden {
                scope: Scope::Admin,
                ..
            })
        ));
        let ops = keys
            .authenticate(&headers("x-api-key", "ops-key-0123456789"))
            .unwrap();
        assert!(
            ops.require(Scope::Query).is_ok(),
            "admin implies the others"
        );
        assert_eq!(ops.read_tenant(), None, "admin reads every tenant");

        let open = Keys::default()
            .authenticate(&axum::http::HeaderMap::new())
            .unwrap();
        assert!(open.require(Scope::Admin).is_ok());
        assert_eq!(&*open.tenant, "default");
        assert_eq!(open.read_tenant(), None);
    }

    #[test]
    fn bad_key_config_is_named() {
        let one = |k: KeyConfig| Keys::from_config(&AuthConfig { keys: vec![k] }).unwrap_err();
        let base = KeyConfig {
            name: "k".into(),
            tenant: "t".into(),
            scopes: vec![Scope::Ingest],
            key: None,
            key_sha256: None,
        };
        assert!(one(base.clone()).contains("exactly one of `key` and `key_sha256`"));
        assert!(one(KeyConfig {
            key: Some("short".into()),
            ..base.clone()
        })
        .contains("16 characters"));
        assert!(one(KeyConfig {
            key_sha256: Some("abc".into()),
            ..base.clone()
        })
        .contains("64 hex"));
        assert!(one(KeyConfig {
            scopes: vec![],
            key: Some(ACME.into()),
            ..base.clone()
        })
        .contains("scopes"));
        let twice = Keys::from_config(&AuthConfig {
            keys: vec![
                KeyConfig {
                    key: Some(ACME.into()),
                    ..base.clone()
                },
                KeyConfig {
                    key_sha256: Some(hash_key(ACME)),
                    ..base
                },
            ],
        });
        assert!(twice.unwrap_err().contains("twice"));
    }
}
