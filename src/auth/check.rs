//! Who a request runs as and what it may do: credentials resolved into an [`AuthInfo`]
//! (etcd's `AuthInfoFromCtx` and `AuthInfoFromTLS`), and the key and admin checks (etcd's
//! `isOpPermitted` and `IsAdminPermitted`), over the state [`AuthStore`] holds.
//!
//! Invariants:
//! - nothing here changes auth state, except the simple tokens' use-extended deadlines;
//! - a credential resolves the same way on every member once that member has applied the
//!   entries up to it; a simple token from an entry not yet applied here is reported by
//!   [`AuthStore::unapplied_token_index`], so the raft node holds its request until it is
//!   (etcd's `isValidSimpleToken` waits the same way) instead of refusing it.

use std::time::Instant;

use super::request::{AuthInfo, Caller, Credential};
use super::store::{has_root_role, Access, AuthStore};
use super::token::SimpleTokens;
use crate::error::EtcdError;

impl AuthStore {
    /// Who a request presenting `credential` runs as (none: a client without
    /// credentials). A client certificate's name is taken as the user at the current auth
    /// revision, as etcd takes it, whether or not such a user exists: the checks refuse
    /// an unknown one.
    pub fn info_from(
        &mut self,
        credential: Option<&Credential>,
        now: Instant,
    ) -> Result<AuthInfo, EtcdError> {
        match credential {
            None => Ok(AuthInfo::default()),
            Some(Credential::Token(token)) => self.info_from_token(token, now),
            Some(Credential::CommonName(name)) => Ok(AuthInfo {
                username: name.to_string(),
                auth_revision: self.revision,
            }),
        }
    }

    /// The raft index of the Authenticate entry a simple token names, if this member has
    /// not applied it yet (`applied`) and so cannot know the token. None for JWTs, for
    /// tokens it holds, and for text that is no simple token.
    pub fn unapplied_token_index(&self, credential: &Credential, applied: u64) -> Option<u64> {
        let Credential::Token(token) = credential else {
            return None;
        };
        if self.jwt.is_some() {
            return None;
        }
        // The index first: for almost every token it is applied, and no lookup is needed.
        SimpleTokens::index_of(token).filter(|index| *index > applied && !self.tokens.holds(token))
    }

    /// Who a request carrying `token` runs as (etcd's `AuthInfoFromCtx`): an unknown or
    /// expired token is refused, whether auth is on or not, as etcd does.
    pub fn info_from_token(&mut self, token: &str, now: Instant) -> Result<AuthInfo, EtcdError> {
        if let Some(keys) = &self.jwt {
            // A JWT names the revision it was issued at (checks then compare it).
            return match self.jwt_cache.claims(keys, token) {
                Some(claims) => Ok(AuthInfo {
                    username: claims.username,
                    auth_revision: claims.revision,
                }),
                None => Err(EtcdError::InvalidAuthToken),
            };
        }
        match self.tokens.user_of(token, now) {
            Some(user) => Ok(AuthInfo {
                username: user.to_string(),
                auth_revision: self.revision,
            }),
            None => Err(EtcdError::InvalidAuthToken),
        }
    }

    /// etcd's `isOpPermitted`: may `caller` access every key `(key, range_end)` names?
    pub fn check_keys(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), EtcdError> {
        let Caller::Client(info) = caller else {
            return Ok(());
        };
        if !self.enabled {
            return Ok(());
        }
        if info.auth_revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if info.auth_revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        let Some(user) = self.users.get(&info.username) else {
            return Err(EtcdError::PermissionDenied);
        };
        if has_root_role(user) {
            return Ok(());
        }
        let Some(perms) = self.perms.get(&info.username) else {
            return Err(EtcdError::PermissionDenied);
        };
        let coverage = match access {
            Access::Read => &perms.read,
            Access::Write => &perms.write,
        };
        if coverage.covers(key, range_end) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's `IsAdminPermitted`: is `caller` a user with the root role (or auth off)?
    pub fn check_admin(&self, caller: &Caller) -> Result<(), EtcdError> {
        let Caller::Client(info) = caller else {
            return Ok(());
        };
        if !self.enabled {
            return Ok(());
        }
        if info.username.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        match self.users.get(&info.username) {
            None => Err(EtcdError::UserNotFound),
            Some(user) if has_root_role(user) => Ok(()),
            Some(_) => Err(EtcdError::PermissionDenied),
        }
    }

    pub(super) fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }
}
