//! etcd's JWT tokens (`--auth-token jwt,sign-method=…,pub-key=…,priv-key=…,ttl=…`).
//!
//! A token is a JWS whose claims are etcd's: `username` (string), `revision` (the auth
//! revision at login, a number) and `exp` (Unix seconds, login time + ttl). Nothing about
//! it is kept: any member holding the key verifies it, and it names the auth revision it
//! was issued at, so after any change of auth state it is "revision of auth store is old"
//! until its holder logs in again (etcd's behaviour).
//!
//! Options, as etcd 3.4 reads them: `sign-method` is required (RS256/384/512,
//! PS256/384/512, ES256/384, HS256/384/512); `ttl` is a Go duration (default 5m);
//! `pub-key` and `priv-key` are PEM files (for HS* the private key file's bytes are the
//! secret). With only a public key the member verifies but cannot issue tokens (etcd's
//! "verify-only"). Differences from etcd: RSA/EC verification needs `pub-key` (etcd also
//! derives it from `priv-key`), EC private keys must be PKCS#8, and ES512 (P-521) is not
//! offered; each is refused at startup, never ignored.
//!
//! Signing (RSA: ~1 ms of CPU) runs on a network core's blocking thread, never on the
//! state core; verification runs where the token is resolved (the state core) once per
//! token: results are cached ([`JWT_CACHE_MAX`] tokens, then the cache starts over).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// etcd's default JWT ttl.
pub const JWT_TTL_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Verified tokens the state core remembers.
pub const JWT_CACHE_MAX: usize = 64 * 1024;

pub struct JwtKeys {
    algorithm: Algorithm,
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("algorithm", &self.algorithm)
            .field("verify_only", &self.signing.is_none())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A verified token's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtClaims {
    pub username: String,
    pub revision: u64,
    /// Unix seconds; 0 when the token has none (etcd accepts such tokens forever).
    pub expires_unix: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtKeys {
    /// The keys `--auth-token jwt,<options>` names; `options` is what follows `jwt,`.
    /// Reads the key files (startup only, on the main thread).
    pub fn from_options(options: &str) -> Result<JwtKeys, String> {
        let mut map: HashMap<&str, &str> = HashMap::new();
        for pair in options.split(',').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(format!(
                    "auth: invalid auth options ({pair:?} is not key=value)"
                ));
            };
            if map.insert(k, v).is_some() {
                return Err(format!("auth: invalid auth options ({k} given twice)"));
            }
        }
        for k in map.keys() {
            if !["sign-method", "pub-key", "priv-key", "ttl"].contains(k) {
                crate::warn!("unknown JWT options", "keys" => k.to_string());
            }
        }
        let ttl = match map.get("ttl") {
            None | Some(&"") => JWT_TTL_DEFAULT,
            Some(text) => crate::config::go::parse_duration(text)
                .map_err(|e| format!("auth: invalid JWT ttl {text:?}: {e}"))?,
        };
        let method = map.get("sign-method").copied().unwrap_or_default();
        let algorithm: Algorithm = match method {
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384"
            | "HS256" | "HS384" | "HS512" => method.parse().map_err(|e| format!("{e}"))?,
            _ => {
                return Err(format!(
                    "auth: invalid auth signature method {method:?} (tern offers RS*, PS*, ES256, ES384, HS*)"
                ))
            }
        };
        let read = |key: &str| -> Result<Option<Vec<u8>>, String> {
            match map.get(key) {
                None | Some(&"") => Ok(None),
                Some(path) => std::fs::read(path)
                    .map(Some)
                    .map_err(|e| format!("auth: cannot read {key} {path}: {e}")),
            }
        };
        let (public, private) = (read("pub-key")?, read("priv-key")?);
        let bad = |what: &str, e: jsonwebtoken::errors::Error| format!("auth: bad {what}: {e}");
        let (signing, verifying) = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = private.ok_or("auth: missing key data (priv-key)")?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let public = public.ok_or("auth: tern needs pub-key to verify ES* tokens")?;
                let signing = private
                    .map(|k| {
                        EncodingKey::from_ec_pem(&k).map_err(|e| bad("priv-key (PKCS#8 EC)", e))
                    })
                    .transpose()?;
                let verifying = DecodingKey::from_ec_pem(&public).map_err(|e| bad("pub-key", e))?;
                (signing, verifying)
            }
            _ => {
                let public = public.ok_or("auth: tern needs pub-key to verify RS*/PS* tokens")?;
                let signing = private
                    .map(|k| EncodingKey::from_rsa_pem(&k).map_err(|e| bad("priv-key", e)))
                    .transpose()?;
                let verifying =
                    DecodingKey::from_rsa_pem(&public).map_err(|e| bad("pub-key", e))?;
                (signing, verifying)
            }
        };
        let keys = JwtKeys {
            algorithm,
            signing,
            verifying,
            ttl,
        };
        // A key pair that does not belong together would issue tokens nobody accepts.
        if keys.signing.is_some() {
            let probe = keys
                .sign("probe", 1)
                .map_err(|e| format!("auth: cannot sign: {e}"))?;
            if keys.verify(&probe).is_none() {
                return Err("auth: public and private keys don't match".to_string());
            }
        }
        Ok(keys)
    }

    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    /// A token for `username` at auth revision `revision`, valid for the ttl.
    pub fn sign(&self, username: &str, revision: u64) -> Result<String, String> {
        let key = self
            .signing
            .as_ref()
            .ok_or("auth: token signing attempted with verify-only key")?;
        let claims = serde_json::json!({
            "username": username,
            "revision": revision,
            "exp": now_unix() + self.ttl.as_secs(),
        });
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).map_err(|e| e.to_string())
    }

    /// The claims of a token signed with this member's key and method, not expired.
    pub fn verify(&self, token: &str) -> Option<JwtClaims> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &self.verifying, &validation).ok()?;
        let claims = data.claims;
        let username = claims.get("username")?.as_str()?.to_string();
        // etcd reads the revision as a JSON number (float64), whatever its form.
        let revision = claims.get("revision")?.as_f64()?;
        if !(0.0..=u64::MAX as f64).contains(&revision) {
            return None;
        }
        let expires_unix = claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0);
        Some(JwtClaims {
            username,
            revision: revision as u64,
            expires_unix,
        })
    }
}

/// Tokens the state core verified, so each costs one signature check.
#[derive(Default)]
pub struct JwtCache {
    verified: HashMap<String, JwtClaims>,
}

impl JwtCache {
    /// The token's claims, verified now or earlier, unless it has expired since.
    pub fn claims(&mut self, keys: &JwtKeys, token: &str) -> Option<JwtClaims> {
        let now = now_unix();
        let live = |c: &JwtClaims| c.expires_unix == 0 || now < c.expires_unix;
        if let Some(claims) = self.verified.get(token) {
            if live(claims) {
                return Some(claims.clone());
            }
            self.verified.remove(token);
            return None;
        }
        let claims = keys.verify(token)?;
        if self.verified.len() >= JWT_CACHE_MAX {
            self.verified.clear();
        }
        self.verified.insert(token.to_string(), claims.clone());
        Some(claims)
    }
}

#[cfg(test)]
mod tests {
    //! Checks sign/verify round trips for an HMAC key (no key files needed), option
    //! parsing errors, tampering and wrong methods.
    use super::*;

    fn hs256(secret: &str) -> JwtKeys {
        let dir =
            std::env::temp_dir().join(format!("tern-jwt-test-{}-{secret}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, secret).unwrap();
        let keys = JwtKeys::from_options(&format!(
            "sign-method=HS256,priv-key={},ttl=1h",
            path.display()
        ))
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        keys
    }

    #[test]
    fn round_trip_carries_etcds_claims() {
        let keys = hs256("s3cret");
        let token = keys.sign("alice", 7).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.username, "alice");
        assert_eq!(claims.revision, 7);
        assert!(claims.expires_unix > now_unix() + 3500);
        let mut cache = JwtCache::default();
        assert_eq!(cache.claims(&keys, &token), Some(claims));
    }

    #[test]
    fn other_keys_and_tampering_are_refused() {
        let keys = hs256("one");
        let other = hs256("two");
        let token = keys.sign("alice", 1).unwrap();
        assert!(other.verify(&token).is_none());
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(keys.verify(&parts.join(".")).is_none());
        assert!(keys.verify("not a token").is_none());
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(JwtKeys::from_options("sign-method=none").is_err());
        assert!(JwtKeys::from_options("sign-method=ES512,pub-key=/x").is_err());
        assert!(JwtKeys::from_options("sign-method=RS256").is_err());
        assert!(JwtKeys::from_options("sign-method=HS256,priv-key=/nonexistent").is_err());
        assert!(JwtKeys::from_options("sign-method").is_err());
        assert!(JwtKeys::from_options("sign-method=HS256,sign-method=HS384").is_err());
    }
}
