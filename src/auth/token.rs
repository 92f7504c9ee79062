//! etcd's simple tokens: `<16 random letters>.<raft index of the Authenticate entry>`.
//!
//! The proposing member picks the random prefix before proposing; every member that
//! applies the entry appends the entry's raft index and records the token for the user,
//! so a token issued through one member is valid on all of them. Each member keeps its
//! own deadlines: a token lives `--auth-token-ttl` after its last use on that member
//! (etcd's `simpleTokenTTLKeeper`), and disabling auth, deleting the user or changing
//! its password forgets its tokens.
//!
//! Invariants: at most [`SIMPLE_TOKENS_MAX`] tokens are held; past that the one closest
//! to expiry is forgotten first (its client authenticates again).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// etcd's default --auth-token-ttl.
pub const SIMPLE_TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(300);
/// Letters in a token's random prefix (etcd's `defaultSimpleTokenLength`).
pub const SIMPLE_TOKEN_PREFIX_LEN: usize = 16;
/// Bound on tokens one member holds. Each costs a bcrypt check to obtain, so reaching it
/// takes a determined client; it then loses the tokens nearest to expiry, never memory.
pub const SIMPLE_TOKENS_MAX: usize = 256 * 1024;

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A fresh random token prefix (the proposer's part of a token).
pub fn new_prefix() -> Result<String, String> {
    let mut bytes = [0u8; SIMPLE_TOKEN_PREFIX_LEN];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random bytes for a token: {e}"))?;
    // 256 is not a multiple of 52: the modulo slightly favours the first letters, which
    // costs a fraction of a bit of the 91 bits a prefix holds.
    Ok(bytes
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect())
}

struct Held {
    user: String,
    expires_at: Instant,
}

/// The tokens this member honours.
pub struct SimpleTokens {
    ttl: Duration,
    tokens: HashMap<String, Held>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl: if ttl.is_zero() {
                SIMPLE_TOKEN_TTL_DEFAULT
            } else {
                ttl
            },
            tokens: HashMap::new(),
        }
    }

    /// The token the Authenticate entry at `raft_index` issues for `prefix`.
    pub fn token_for(prefix: &str, raft_index: u64) -> String {
        format!("{prefix}.{raft_index}")
    }

    /// The raft index a token names (etcd's `isValidSimpleToken` split: exactly one
    /// dot, a decimal index after it); None for anything else.
    pub fn index_of(token: &str) -> Option<u64> {
        let (prefix, index) = token.split_once('.')?;
        if prefix.contains('.') || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        index.parse().ok()
    }

    /// Whether this member assigned `token` (live or not yet found expired).
    pub fn holds(&self, token: &str) -> bool {
        self.tokens.contains_key(token)
    }

    pub fn assign(&mut self, token: String, user: &str, now: Instant) {
        if self.tokens.len() >= SIMPLE_TOKENS_MAX && !self.tokens.contains_key(&token) {
            self.tokens.retain(|_, held| held.expires_at > now);
            if self.tokens.len() >= SIMPLE_TOKENS_MAX {
                let soonest = self
                    .tokens
                    .iter()
                    .min_by_key(|(_, held)| held.expires_at)
                    .map(|(t, _)| t.clone());
                if let Some(soonest) = soonest {
                    self.tokens.remove(&soonest);
                }
            }
        }
        self.tokens.insert(
            token,
            Held {
                user: user.to_string(),
                expires_at: now + self.ttl,
            },
        );
    }

    /// The user a live token names; using it extends its life by the TTL.
    pub fn user_of(&mut self, token: &str, now: Instant) -> Option<&str> {
        let expired = self.tokens.get(token)?.expires_at <= now;
        if expired {
            self.tokens.remove(token);
            return None;
        }
        let ttl = self.ttl;
        let held = self.tokens.get_mut(token)?;
        held.expires_at = now + ttl;
        Some(&held.user)
    }

    pub fn forget_user(&mut self, user: &str) {
        self.tokens.retain(|_, held| held.user != user);
    }

    pub fn forget_all(&mut self) {
        self.tokens.clear();
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    //! Checks token lifetimes on a fake clock: use extends, expiry forgets, user and
    //! global invalidation, and the bound on held tokens.
    use super::*;

    #[test]
    fn prefixes_are_letters_of_the_right_length() {
        let p = new_prefix().unwrap();
        assert_eq!(p.len(), SIMPLE_TOKEN_PREFIX_LEN);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_ne!(p, new_prefix().unwrap());
        assert_eq!(SimpleTokens::token_for("abc", 42), "abc.42");
        assert_eq!(SimpleTokens::index_of("abc.42"), Some(42));
        for bad in [
            "abc",
            "abc.",
            "a.b.42",
            "abc.-1",
            "abc.4x",
            "abc.99999999999999999999",
        ] {
            assert_eq!(SimpleTokens::index_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn use_extends_and_expiry_forgets() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut tokens = SimpleTokens::new(ttl);
        tokens.assign("a.1".into(), "alice", t0);
        assert_eq!(
            tokens.user_of("a.1", t0 + Duration::from_secs(9)),
            Some("alice")
        );
        // Used at 9 s: now lives until 19 s.
        assert_eq!(
            tokens.user_of("a.1", t0 + Duration::from_secs(18)),
            Some("alice")
        );
        assert_eq!(tokens.user_of("a.1", t0 + Duration::from_secs(29)), None);
        assert!(tokens.is_empty());
        assert_eq!(tokens.user_of("nosuch.1", t0), None);
    }

    #[test]
    fn invalidation() {
        let now = Instant::now();
        let mut tokens = SimpleTokens::new(Duration::ZERO);
        tokens.assign("a.1".into(), "alice", now);
        tokens.assign("b.2".into(), "bob", now);
        tokens.forget_user("alice");
        assert_eq!(tokens.user_of("a.1", now), None);
        assert_eq!(tokens.user_of("b.2", now), Some("bob"));
        tokens.forget_all();
        assert_eq!(tokens.len(), 0);
    }
}
