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
use super::request::{AuthInfo, AuthOp, AuthReply, Caller, StoredPassword};
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
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, authpb::User>,
    roles: BTreeMap<String, authpb::Role>,
    perms: HashMap<String, UserPerms>,
    tokens: SimpleTokens,
    /// `--auth-token jwt,...`: tokens are JWTs (nothing kept but a verification cache).
    jwt: Option<std::sync::Arc<JwtKeys>>,
    jwt_cache: JwtCache,
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

    fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
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

fn has_root_role(user: &authpb::User) -> bool {
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
mod tests {
    //! Checks etcd 3.4's auth rules and texts on an in-memory backend, and that what is
    //! written to the backend restores the same state (restart, snapshot install).
    use super::*;
    use crate::mvcc::MemBackend;
    use authpb::permission::Type;

    struct Fixture {
        store: AuthStore,
        backend: MemBackend,
        raft_index: u64,
    }

    impl Fixture {
        fn new() -> Fixture {
            let backend = MemBackend::new();
            Fixture {
                store: AuthStore::load(&backend, Duration::from_secs(300)).unwrap(),
                backend,
                raft_index: 0,
            }
        }

        fn run_as(&mut self, caller: &Caller, op: AuthOp) -> Result<AuthReply, EtcdError> {
            self.raft_index += 1;
            self.store.apply(
                &mut self.backend,
                caller,
                op,
                self.raft_index,
                Instant::now(),
            )
        }

        fn run(&mut self, op: AuthOp) -> Result<AuthReply, EtcdError> {
            self.run_as(&Caller::Internal, op)
        }

        fn user(&mut self, name: &str) {
            self.run(AuthOp::UserAdd(pb::AuthUserAddRequest {
                name: name.into(),
                hashed_password: format!("hash-of-{name}"),
                ..Default::default()
            }))
            .unwrap();
        }

        fn role(&mut self, name: &str) {
            self.run(AuthOp::RoleAdd(pb::AuthRoleAddRequest {
                name: name.into(),
            }))
            .unwrap();
        }

        fn grant(&mut self, user: &str, role: &str) -> Result<AuthReply, EtcdError> {
            self.run(AuthOp::UserGrantRole(pb::AuthUserGrantRoleRequest {
                user: user.into(),
                role: role.into(),
            }))
        }

        fn permit(&mut self, role: &str, kind: Type, key: &str, end: &str) {
            self.run(AuthOp::RoleGrantPermission(
                pb::AuthRoleGrantPermissionRequest {
                    name: role.into(),
                    perm: Some(authpb::Permission {
                        perm_type: kind as i32,
                        key: Bytes::from(key.to_string()),
                        range_end: Bytes::from(end.to_string()),
                    }),
                },
            ))
            .unwrap();
        }

        fn enable(&mut self) -> Result<AuthReply, EtcdError> {
            self.run(AuthOp::Enable(Default::default()))
        }

        fn as_user(&self, name: &str) -> Caller {
            Caller::Client(AuthInfo {
                username: name.into(),
                auth_revision: self.store.revision(),
            })
        }
    }

    #[test]
    fn enable_needs_root_with_the_root_role() {
        let mut f = Fixture::new();
        assert_eq!(f.enable(), Err(EtcdError::RootUserNotExist));
        f.user("root");
        assert_eq!(f.enable(), Err(EtcdError::RootRoleNotExist));
        // The root role need not exist to be granted (etcdctl creates it anyway).
        f.grant("root", "root").unwrap();
        f.enable().unwrap();
        assert!(f.store.is_enabled());
        // Again: no error, no change.
        f.enable().unwrap();
    }

    #[test]
    fn user_and_role_errors_are_etcds() {
        let mut f = Fixture::new();
        f.user("alice");
        let add = |name: &str| {
            AuthOp::UserAdd(pb::AuthUserAddRequest {
                name: name.into(),
                ..Default::default()
            })
        };
        assert_eq!(f.run(add("alice")), Err(EtcdError::UserAlreadyExist));
        assert_eq!(f.run(add("")), Err(EtcdError::UserEmpty));
        assert_eq!(
            f.run(AuthOp::RoleAdd(pb::AuthRoleAddRequest { name: "".into() })),
            Err(EtcdError::RoleEmpty)
        );
        f.role("r");
        assert_eq!(
            f.run(AuthOp::RoleAdd(pb::AuthRoleAddRequest { name: "r".into() })),
            Err(EtcdError::RoleAlreadyExist)
        );
        assert_eq!(f.grant("alice", "nosuch"), Err(EtcdError::RoleNotFound));
        assert_eq!(f.grant("nosuch", "r"), Err(EtcdError::UserNotFound));
        f.grant("alice", "r").unwrap();
        let revision = f.store.revision();
        f.grant("alice", "r").unwrap();
        assert_eq!(
            f.store.revision(),
            revision,
            "a repeated grant changes nothing"
        );
        let revoke = AuthOp::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
            name: "alice".into(),
            role: "r".into(),
        });
        f.run(revoke.clone()).unwrap();
        assert_eq!(f.run(revoke), Err(EtcdError::RoleNotGranted));
        let revoke_perm = AuthOp::RoleRevokePermission(pb::AuthRoleRevokePermissionRequest {
            role: "r".into(),
            key: "k".into(),
            range_end: "".into(),
        });
        assert_eq!(f.run(revoke_perm), Err(EtcdError::PermissionNotGranted));
        assert_eq!(
            f.run(AuthOp::UserGet(pb::AuthUserGetRequest {
                name: "nosuch".into()
            })),
            Err(EtcdError::UserNotFound)
        );
    }

    #[test]
    fn root_is_protected_while_auth_is_on() {
        let mut f = Fixture::new();
        f.user("root");
        f.grant("root", "root").unwrap();
        f.role("root");
        f.enable().unwrap();
        let root = f.as_user("root");
        let revoke = AuthOp::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
            name: "root".into(),
            role: "root".into(),
        });
        assert_eq!(f.run_as(&root, revoke), Err(EtcdError::InvalidAuthMgmt));
        let delete = AuthOp::UserDelete(pb::AuthUserDeleteRequest {
            name: "root".into(),
        });
        assert_eq!(
            f.run_as(&root, delete.clone()),
            Err(EtcdError::InvalidAuthMgmt)
        );
        let delete_role = AuthOp::RoleDelete(pb::AuthRoleDeleteRequest {
            role: "root".into(),
        });
        assert_eq!(
            f.run_as(&root, delete_role),
            Err(EtcdError::InvalidAuthMgmt)
        );
        f.run_as(&root, AuthOp::Disable(Default::default()))
            .unwrap();
        f.run(delete).unwrap();
    }

    #[test]
    fn admin_ops_need_the_root_role() {
        let mut f = Fixture::new();
        f.user("root");
        f.grant("root", "root").unwrap();
        f.user("alice");
        f.role("reader");
        f.grant("alice", "reader").unwrap();
        f.enable().unwrap();
        let list = AuthOp::UserList(Default::default());
        assert_eq!(
            f.run_as(&Caller::anonymous(), list.clone()),
            Err(EtcdError::UserEmpty)
        );
        let alice = f.as_user("alice");
        assert_eq!(
            f.run_as(&alice, list.clone()),
            Err(EtcdError::PermissionDenied)
        );
        let ghost = f.as_user("ghost");
        assert_eq!(f.run_as(&ghost, list.clone()), Err(EtcdError::UserNotFound));
        let root = f.as_user("root");
        assert!(f.run_as(&root, list).is_ok());
        // One's own user and roles are readable without the root role.
        let own = AuthOp::UserGet(pb::AuthUserGetRequest {
            name: "alice".into(),
        });
        assert!(f.run_as(&alice, own).is_ok());
        let other = AuthOp::UserGet(pb::AuthUserGetRequest {
            name: "root".into(),
        });
        assert_eq!(f.run_as(&alice, other), Err(EtcdError::PermissionDenied));
        let own_role = AuthOp::RoleGet(pb::AuthRoleGetRequest {
            role: "reader".into(),
        });
        assert!(f.run_as(&alice, own_role).is_ok());
    }

    #[test]
    fn key_checks_follow_roles_and_revisions() {
        let mut f = Fixture::new();
        f.user("root");
        f.grant("root", "root").unwrap();
        f.user("alice");
        f.role("reader");
        f.permit("reader", Type::Read, "foo", "");
        f.permit("reader", Type::Readwrite, "pre/", "pre0");
        f.grant("alice", "reader").unwrap();
        // Auth off: everyone may do everything.
        let nobody = Caller::anonymous();
        assert!(f
            .store
            .check_keys(&nobody, b"x", b"", Access::Write)
            .is_ok());
        f.enable().unwrap();
        assert_eq!(
            f.store.check_keys(&nobody, b"foo", b"", Access::Read),
            Err(EtcdError::UserEmpty)
        );
        let alice = f.as_user("alice");
        assert!(f
            .store
            .check_keys(&alice, b"foo", b"", Access::Read)
            .is_ok());
        assert_eq!(
            f.store.check_keys(&alice, b"foo", b"", Access::Write),
            Err(EtcdError::PermissionDenied)
        );
        assert!(f
            .store
            .check_keys(&alice, b"pre/x", b"", Access::Write)
            .is_ok());
        assert_eq!(
            f.store.check_keys(&alice, b"pre/", b"\0", Access::Read),
            Err(EtcdError::PermissionDenied)
        );
        let root = f.as_user("root");
        assert!(f
            .store
            .check_keys(&root, b"\0", b"\0", Access::Write)
            .is_ok());
        assert!(f
            .store
            .check_keys(&Caller::Internal, b"x", b"", Access::Write)
            .is_ok());
        // Any change to auth makes alice's checked identity stale.
        f.role("other");
        assert_eq!(
            f.store.check_keys(&alice, b"foo", b"", Access::Read),
            Err(EtcdError::AuthOldRevision)
        );
        let alice = f.as_user("alice");
        assert!(f
            .store
            .check_keys(&alice, b"foo", b"", Access::Read)
            .is_ok());
        // Revoking the role takes the permission away.
        f.run(AuthOp::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
            name: "alice".into(),
            role: "reader".into(),
        }))
        .unwrap();
        let alice = f.as_user("alice");
        assert_eq!(
            f.store.check_keys(&alice, b"foo", b"", Access::Read),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn grants_stay_sorted_and_replace_their_type() {
        let mut f = Fixture::new();
        f.role("w");
        f.permit("w", Type::Readwrite, "foo", "");
        f.permit("w", Type::Write, "k1", "k5");
        f.permit("w", Type::Readwrite, "pre/", "pre0");
        f.permit("w", Type::Read, "k1", "k5");
        let Ok(AuthReply::RoleGet(got)) =
            f.run(AuthOp::RoleGet(pb::AuthRoleGetRequest { role: "w".into() }))
        else {
            panic!("role get")
        };
        let keys: Vec<(&[u8], i32)> = got
            .perm
            .iter()
            .map(|p| (p.key.as_ref(), p.perm_type))
            .collect();
        assert_eq!(
            keys,
            vec![
                (&b"foo"[..], Type::Readwrite as i32),
                (&b"k1"[..], Type::Read as i32),
                (&b"pre/"[..], Type::Readwrite as i32)
            ]
        );
    }

    #[test]
    fn tokens_follow_users_and_the_enabled_flag() {
        let mut f = Fixture::new();
        f.user("root");
        f.grant("root", "root").unwrap();
        let login = |checked: u64| {
            AuthOp::Authenticate(crate::auth::request::InternalAuthenticate {
                name: "root".into(),
                simple_token_prefix: "abcdefghijklmnop".into(),
                checked_auth_revision: checked,
            })
        };
        assert_eq!(f.run(login(0)), Err(EtcdError::AuthNotEnabled));
        f.enable().unwrap();
        let revision = f.store.revision();
        assert_eq!(f.run(login(revision - 1)), Err(EtcdError::AuthOldRevision));
        let Ok(AuthReply::Authenticate(reply)) = f.run(login(revision)) else {
            panic!("authenticate")
        };
        assert_eq!(reply.token, format!("abcdefghijklmnop.{}", f.raft_index));
        let info = f
            .store
            .info_from_token(&reply.token, Instant::now())
            .unwrap();
        assert_eq!(info.username, "root");
        assert_eq!(
            f.store.info_from_token("bogus.1", Instant::now()),
            Err(EtcdError::InvalidAuthToken)
        );
        f.run(AuthOp::Disable(Default::default())).unwrap();
        assert_eq!(
            f.store.info_from_token(&reply.token, Instant::now()),
            Err(EtcdError::InvalidAuthToken)
        );
    }

    #[test]
    fn the_backend_restores_the_same_state() {
        let mut f = Fixture::new();
        f.user("root");
        f.grant("root", "root").unwrap();
        f.user("alice");
        f.run(AuthOp::UserAdd(pb::AuthUserAddRequest {
            name: "dave".into(),
            options: Some(authpb::UserAddOptions { no_password: true }),
            ..Default::default()
        }))
        .unwrap();
        f.role("reader");
        f.permit("reader", Type::Read, "foo", "");
        f.grant("alice", "reader").unwrap();
        f.enable().unwrap();
        let restored = AuthStore::load(&f.backend, Duration::from_secs(300)).unwrap();
        assert!(restored.is_enabled());
        assert_eq!(restored.revision(), f.store.revision());
        assert_eq!(restored.users, f.store.users);
        assert_eq!(restored.roles, f.store.roles);
        assert_eq!(restored.perms, f.store.perms);
        assert_eq!(
            restored.users["alice"].password.as_ref(),
            b"hash-of-alice",
            "the stored password is the hash the entry carried"
        );
        assert!(no_password(&restored.users["dave"]));
        // etcd's layout: one byte for the flag, eight for the revision.
        assert_eq!(
            f.backend.get(Bucket::Auth, ENABLED_KEY).unwrap(),
            Some(&[1][..])
        );
        assert_eq!(
            f.backend.get(Bucket::Auth, REVISION_KEY).unwrap(),
            Some(&f.store.revision().to_be_bytes()[..])
        );
        // A corrupt record is an error, never a panic.
        f.backend
            .put(Bucket::AuthUsers, b"bad", &[0xff, 0xff])
            .unwrap();
        assert!(matches!(
            AuthStore::load(&f.backend, Duration::ZERO),
            Err(BackendError::Corrupted(_))
        ));
    }
}
