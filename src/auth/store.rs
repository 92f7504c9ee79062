//! The auth store: users, roles, the enabled flag and the auth revision, with etcd 3.4's
//! rules (`auth/store.go`), kept in memory and written through to the backend.
//!
//! Backend layout (etcd's):
//! - bucket `auth`: `authEnabled` → one byte, 1 or 0; `authRevision` → u64 big-endian;
//! - bucket `authUsers`: user name → marshaled `authpb.User` (password: bcrypt hash);
//! - bucket `authRoles`: role name → marshaled `authpb.Role`, permissions sorted by key.
//!
//! Invariants:
//! - every change is applied from a committed raft entry, in log order, on every member,
//!   and written to the backend in the same apply, so memory and the backend's next commit
//!   agree and a restart or a snapshot's database restores the same state ([`Self::load`]);
//! - every change that can narrow or widen someone's access bumps the auth revision
//!   (AuthEnable does not, as in etcd: nobody was checked before it); a request checked
//!   against an older revision is refused with "revision of auth store is old";
//! - `perms` holds the merged permissions of exactly the users in `users`, rebuilt after
//!   every change (`refresh_perms`), so checks never read roles on the hot path.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;

use super::jwt::{JwtCache, JwtKeys};
use super::perms::UserPerms;
use super::request::{AuthOp, AuthReply, Caller, StoredPassword};
use super::token::SimpleTokens;
use crate::error::EtcdError;
use crate::mvcc::{Backend, BackendError, Bucket, Direction};
use crate::proto::authpb;
use crate::proto::etcdserverpb as pb;

const ENABLED_KEY: &[u8] = b"authEnabled";
const REVISION_KEY: &[u8] = b"authRevision";
pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// Which access a key operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

pub struct AuthStore {
    pub(super) enabled: bool,
    pub(super) revision: u64,
    pub(super) users: BTreeMap<String, authpb::User>,
    pub(super) roles: BTreeMap<String, authpb::Role>,
    pub(super) perms: HashMap<String, UserPerms>,
    pub(super) tokens: SimpleTokens,
    /// `--auth-token jwt,...`: tokens are JWTs (nothing kept but a verification cache).
    pub(super) jwt: Option<std::sync::Arc<JwtKeys>>,
    pub(super) jwt_cache: JwtCache,
}

impl AuthStore {
    /// The auth state a backend holds (empty and disabled for a new one).
    pub fn load(backend: &impl Backend, token_ttl: Duration) -> Result<AuthStore, BackendError> {
        let mut store = AuthStore {
            enabled: false,
            revision: 0,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            perms: HashMap::new(),
            tokens: SimpleTokens::new(token_ttl),
            jwt: None,
            jwt_cache: JwtCache::default(),
        };
        store.reload(backend)?;
        Ok(store)
    }

    /// Replaces the state with what `backend` holds (after a snapshot's database was
    /// installed). Tokens stay valid only if auth stays enabled.
    pub fn reload(&mut self, backend: &impl Backend) -> Result<(), BackendError> {
        let enabled = backend.get(Bucket::Auth, ENABLED_KEY)? == Some(&[1][..]);
        let revision = match backend.get(Bucket::Auth, REVISION_KEY)? {
            None => 0,
            Some(bytes) => u64::from_be_bytes(bytes.try_into().map_err(|_| {
                BackendError::Corrupted(format!("auth revision of {} bytes", bytes.len()))
            })?),
        };
        let mut users = BTreeMap::new();
        let mut roles = BTreeMap::new();
        let mut failure = None;
        backend.scan(
            Bucket::AuthUsers,
            &[],
            None,
            Direction::Ascending,
            &mut |k, v| match authpb::User::decode(v) {
                Ok(user) => {
                    users.insert(String::from_utf8_lossy(k).into_owned(), user);
                    true
                }
                Err(e) => {
                    failure = Some(format!("user {:?}: {e}", String::from_utf8_lossy(k)));
                    false
                }
            },
        )?;
        backend.scan(
            Bucket::AuthRoles,
            &[],
            None,
            Direction::Ascending,
            &mut |k, v| match authpb::Role::decode(v) {
                Ok(role) => {
                    roles.insert(String::from_utf8_lossy(k).into_owned(), role);
                    true
                }
                Err(e) => {
                    failure = Some(format!("role {:?}: {e}", String::from_utf8_lossy(k)));
                    false
                }
            },
        )?;
        if let Some(what) = failure {
            return Err(BackendError::Corrupted(what));
        }
        if !enabled {
            self.tokens.forget_all();
        }
        self.enabled = enabled;
        // etcd commits revision 1 into a new store; the first change writes 2.
        self.revision = revision.max(1);
        self.users = users;
        self.roles = roles;
        self.refresh_perms();
        Ok(())
    }

    /// JWT tokens instead of simple ones.
    pub fn set_jwt(&mut self, keys: std::sync::Arc<JwtKeys>) {
        self.jwt = Some(keys);
    }

    /// --auth-token-ttl (zero: etcd's default). Tokens held so far are forgotten.
    pub fn set_token_ttl(&mut self, ttl: Duration) {
        self.tokens = SimpleTokens::new(ttl);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn tokens_held(&self) -> usize {
        self.tokens.len()
    }

    /// Runs `op` for `caller`: its admin check (etcd's `authApplierV3`), then the op.
    /// `raft_index` is the index of the entry carrying it (0 for reads).
    pub fn apply(
        &mut self,
        backend: &mut impl Backend,
        caller: &Caller,
        op: AuthOp,
        raft_index: u64,
        now: Instant,
    ) -> Result<AuthReply, EtcdError> {
        if op.needs_admin() {
            self.check_admin(caller)?;
        }
        let caller_name = match caller {
            Caller::Client(info) => Some(info.username.as_str()),
            Caller::Internal => None,
        };
        match op {
            AuthOp::Enable(_) => {
                if !self.enabled {
                    let root = self
                        .users
                        .get(ROOT_USER)
                        .ok_or(EtcdError::RootUserNotExist)?;
                    if !has_root_role(root) {
                        return Err(EtcdError::RootRoleNotExist);
                    }
                    backend_put(backend, Bucket::Auth, ENABLED_KEY, &[1])?;
                    self.enabled = true;
                    crate::info!("enabled authentication");
                }
                Ok(AuthReply::Enable(Default::default()))
            }
            AuthOp::Disable(_) => {
                if self.enabled {
                    backend_put(backend, Bucket::Auth, ENABLED_KEY, &[0])?;
                    self.enabled = false;
                    self.tokens.forget_all();
                    self.commit_revision(backend)?;
                    crate::info!("disabled authentication");
                }
                Ok(AuthReply::Disable(Default::default()))
            }
            AuthOp::Status(_) => Ok(AuthReply::Status(pb::AuthStatusResponse {
                header: None,
                enabled: self.enabled,
                auth_revision: self.revision,
            })),
            AuthOp::Authenticate(req) => {
                if !self.enabled {
                    return Err(EtcdError::AuthNotEnabled);
                }
                let user = self.users.get(&req.name).ok_or(EtcdError::AuthFailed)?;
                if no_password(user) {
                    return Err(EtcdError::AuthFailed);
                }
                // The password was checked at an older revision (it may have changed
                // since): the proposer checks again and proposes anew.
                if req.checked_auth_revision != self.revision {
                    return Err(EtcdError::AuthOldRevision);
                }
                // A JWT is signed by the proposer once this answers (`service::auth`).
                let token = if self.jwt.is_some() {
                    String::new()
                } else {
                    let token = SimpleTokens::token_for(&req.simple_token_prefix, raft_index);
                    self.tokens.assign(token.clone(), &req.name, now);
                    token
                };
                Ok(AuthReply::Authenticate(pb::AuthenticateResponse {
                    header: None,
                    token,
                }))
            }
            AuthOp::UserAdd(req) => {
                if req.name.is_empty() {
                    return Err(EtcdError::UserEmpty);
                }
                if self.users.contains_key(&req.name) {
                    return Err(EtcdError::UserAlreadyExist);
                }
                let options = req.options.unwrap_or_default();
                let password = if options.no_password {
                    Bytes::new()
                } else {
                    Bytes::from(req.hashed_password.into_bytes())
                };
                let user = authpb::User {
                    name: Bytes::from(req.name.clone().into_bytes()),
                    password,
                    roles: Vec::new(),
                    options: Some(options),
                };
                self.put_user(backend, user)?;
                self.commit_revision(backend)?;
                crate::info!("added a user", "user-name" => req.name);
                Ok(AuthReply::UserAdd(Default::default()))
            }
            AuthOp::UserGet(req) => {
                if let Err(e) = self.check_admin(caller) {
                    if caller_name != Some(req.name.as_str()) {
                        return Err(e);
                    }
                }
                let user = self.users.get(&req.name).ok_or(EtcdError::UserNotFound)?;
                Ok(AuthReply::UserGet(pb::AuthUserGetResponse {
                    header: None,
                    roles: user.roles.clone(),
                }))
            }
            AuthOp::UserList(_) => Ok(AuthReply::UserList(pb::AuthUserListResponse {
                header: None,
                users: self.users.keys().cloned().collect(),
            })),
            AuthOp::UserDelete(req) => {
                if self.enabled && req.name == ROOT_USER {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if self.users.remove(&req.name).is_none() {
                    return Err(EtcdError::UserNotFound);
                }
                backend
                    .delete(Bucket::AuthUsers, req.name.as_bytes())
                    .map_err(backend_failure)?;
                self.commit_revision(backend)?;
                self.refresh_perms();
                self.tokens.forget_user(&req.name);
                crate::info!("deleted a user", "user-name" => req.name);
                Ok(AuthReply::UserDelete(Default::default()))
            }
            AuthOp::UserChangePassword(req) => {
                let mut user = self
                    .users
                    .get(&req.name)
                    .cloned()
                    .ok_or(EtcdError::UserNotFound)?;
                user.password = Bytes::from(req.hashed_password.into_bytes());
                self.put_user(backend, user)?;
                self.commit_revision(backend)?;
                self.tokens.forget_user(&req.name);
                crate::info!("changed a password of a user", "user-name" => req.name);
                Ok(AuthReply::UserChangePassword(Default::default()))
            }
            AuthOp::UserGrantRole(req) => {
                let mut user = self
                    .users
                    .get(&req.user)
                    .cloned()
                    .ok_or(EtcdError::UserNotFound)?;
                if req.role != ROOT_ROLE && !self.roles.contains_key(&req.role) {
                    return Err(EtcdError::RoleNotFound);
                }
                match user.roles.binary_search(&req.role) {
                    // Granted already: nothing changes, the revision stays (as in etcd).
                    Ok(_) => {}
                    Err(at) => {
                        user.roles.insert(at, req.role.clone());
                        self.put_user(backend, user)?;
                        self.commit_revision(backend)?;
                        crate::info!("granted a role to a user", "user-name" => req.user, "role-name" => req.role);
                    }
                }
                Ok(AuthReply::UserGrantRole(Default::default()))
            }
            AuthOp::UserRevokeRole(req) => {
                if self.enabled && req.name == ROOT_USER && req.role == ROOT_ROLE {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let mut user = self
                    .users
                    .get(&req.name)
                    .cloned()
                    .ok_or(EtcdError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|r| *r != req.role);
                if user.roles.len() == before {
                    return Err(EtcdError::RoleNotGranted);
                }
                self.put_user(backend, user)?;
                self.commit_revision(backend)?;
                crate::info!("revoked a role from a user", "user-name" => req.name, "role-name" => req.role);
                Ok(AuthReply::UserRevokeRole(Default::default()))
            }
            AuthOp::RoleAdd(req) => {
                if req.name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if self.roles.contains_key(&req.name) {
                    return Err(EtcdError::RoleAlreadyExist);
                }
                let role = authpb::Role {
                    name: Bytes::from(req.name.clone().into_bytes()),
                    key_permission: Vec::new(),
                };
                self.put_role(backend, role)?;
                self.commit_revision(backend)?;
                crate::info!("created a role", "role-name" => req.name);
                Ok(AuthReply::RoleAdd(Default::default()))
            }
            AuthOp::RoleGet(req) => {
                if let Err(e) = self.check_admin(caller) {
                    if !caller_name.is_some_and(|u| self.has_role(u, &req.role)) {
                        return Err(e);
                    }
                }
                let role = self.roles.get(&req.role).ok_or(EtcdError::RoleNotFound)?;
                Ok(AuthReply::RoleGet(pb::AuthRoleGetResponse {
                    header: None,
                    perm: role.key_permission.clone(),
                }))
            }
            AuthOp::RoleList(_) => Ok(AuthReply::RoleList(pb::AuthRoleListResponse {
                header: None,
                roles: self.roles.keys().cloned().collect(),
            })),
            AuthOp::RoleDelete(req) => {
                if self.enabled && req.role == ROOT_ROLE {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if self.roles.remove(&req.role).is_none() {
                    return Err(EtcdError::RoleNotFound);
                }
                backend
                    .delete(Bucket::AuthRoles, req.role.as_bytes())
                    .map_err(backend_failure)?;
                let holders: Vec<authpb::User> = self
                    .users
                    .values()
                    .filter(|u| u.roles.contains(&req.role))
                    .cloned()
                    .collect();
                for mut user in holders {
                    user.roles.retain(|r| *r != req.role);
                    self.put_user(backend, user)?;
                }
                self.commit_revision(backend)?;
                self.refresh_perms();
                crate::info!("deleted a role", "role-name" => req.role);
                Ok(AuthReply::RoleDelete(Default::default()))
            }
            AuthOp::RoleGrantPermission(req) => {
                let mut role = self
                    .roles
                    .get(&req.name)
                    .cloned()
                    .ok_or(EtcdError::RoleNotFound)?;
                let perm = req.perm.ok_or(EtcdError::PermissionNotGiven)?;
                // etcd looks at the first permission whose key is not below the new one's:
                // same key and range end → its type is replaced; otherwise added, in key order.
                let at = role
                    .key_permission
                    .partition_point(|p| p.key.as_ref() < perm.key.as_ref());
                match role.key_permission.get_mut(at) {
                    Some(existing)
                        if existing.key == perm.key && existing.range_end == perm.range_end =>
                    {
                        existing.perm_type = perm.perm_type;
                    }
                    _ => {
                        role.key_permission.push(perm);
                        role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                self.put_role(backend, role)?;
                self.commit_revision(backend)?;
                crate::info!("granted/updated a permission to a user", "role-name" => req.name);
                Ok(AuthReply::RoleGrantPermission(Default::default()))
            }
            AuthOp::RoleRevokePermission(req) => {
                let mut role = self
                    .roles
                    .get(&req.role)
                    .cloned()
                    .ok_or(EtcdError::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| p.key != req.key || p.range_end != req.range_end);
                if role.key_permission.len() == before {
                    return Err(EtcdError::PermissionNotGranted);
                }
                self.put_role(backend, role)?;
                self.commit_revision(backend)?;
                crate::info!("revoked a permission on range", "role-name" => req.role);
                Ok(AuthReply::RoleRevokePermission(Default::default()))
            }
            AuthOp::PasswordOf(name) => {
                if !self.enabled {
                    return Err(EtcdError::AuthNotEnabled);
                }
                let user = self.users.get(&name).ok_or(EtcdError::AuthFailed)?;
                if no_password(user) {
                    return Err(EtcdError::NoPasswordUser);
                }
                Ok(AuthReply::PasswordOf(StoredPassword {
                    bcrypt_hash: user.password.to_vec(),
                    auth_revision: self.revision,
                }))
            }
            AuthOp::CheckRange(check) => {
                self.check_keys(caller, &check.key, &check.range_end, Access::Read)?;
                Ok(AuthReply::CheckRange)
            }
        }
    }

    fn put_user(
        &mut self,
        backend: &mut impl Backend,
        user: authpb::User,
    ) -> Result<(), EtcdError> {
        backend_put(
            backend,
            Bucket::AuthUsers,
            &user.name,
            &user.encode_to_vec(),
        )?;
        let name = String::from_utf8_lossy(&user.name).into_owned();
        self.users.insert(name, user);
        self.refresh_perms();
        Ok(())
    }

    fn put_role(
        &mut self,
        backend: &mut impl Backend,
        role: authpb::Role,
    ) -> Result<(), EtcdError> {
        backend_put(
            backend,
            Bucket::AuthRoles,
            &role.name,
            &role.encode_to_vec(),
        )?;
        let name = String::from_utf8_lossy(&role.name).into_owned();
        self.roles.insert(name, role);
        self.refresh_perms();
        Ok(())
    }

    fn commit_revision(&mut self, backend: &mut impl Backend) -> Result<(), EtcdError> {
        self.revision += 1;
        backend_put(
            backend,
            Bucket::Auth,
            REVISION_KEY,
            &self.revision.to_be_bytes(),
        )
    }

    fn refresh_perms(&mut self) {
        let roles = &self.roles;
        self.perms = self
            .users
            .iter()
            .map(|(name, user)| {
                let held = user.roles.iter().filter_map(|r| roles.get(r));
                (name.clone(), UserPerms::of(held))
            })
            .collect();
    }
}

pub(super) fn has_root_role(user: &authpb::User) -> bool {
    user.roles
        .binary_search_by(|r| r.as_str().cmp(ROOT_ROLE))
        .is_ok()
}

fn no_password(user: &authpb::User) -> bool {
    user.options.as_ref().is_some_and(|o| o.no_password)
}

fn backend_put(
    backend: &mut impl Backend,
    bucket: Bucket,
    key: &[u8],
    value: &[u8],
) -> Result<(), EtcdError> {
    backend.put(bucket, key, value).map_err(backend_failure)
}

/// A backend that refuses a write has lost agreement with memory: etcd panics; the
/// caller answers "corrupt" and the next commit makes the failure fatal.
fn backend_failure(e: BackendError) -> EtcdError {
    crate::error!("cannot write auth state", "error" => e.to_string());
    EtcdError::Corrupt
}

#[cfg(test)]
mod tests;
