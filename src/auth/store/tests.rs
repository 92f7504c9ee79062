//! Checks etcd 3.4's auth rules and texts on an in-memory backend, and that what is
//! written to the backend restores the same state (restart, snapshot install).
use super::*;
use crate::auth::AuthInfo;
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

#[test]
fn a_certificate_name_is_the_user_and_unapplied_tokens_are_told_apart() {
    use crate::auth::Credential;
    let mut f = Fixture::new();
    f.user("root");
    f.grant("root", "root").unwrap();
    f.user("alice");
    f.role("reader");
    f.permit("reader", Type::Read, "foo", "");
    f.grant("alice", "reader").unwrap();
    f.enable().unwrap();
    let now = Instant::now();
    let as_cn = |f: &mut Fixture, name: &str| {
        let info = f
            .store
            .info_from(Some(&Credential::CommonName(name.into())), now)
            .unwrap();
        Caller::Client(info)
    };
    let alice = as_cn(&mut f, "alice");
    assert!(f
        .store
        .check_keys(&alice, b"foo", b"", Access::Read)
        .is_ok());
    assert_eq!(
        f.store.check_keys(&alice, b"bar", b"", Access::Read),
        Err(EtcdError::PermissionDenied)
    );
    // A certificate without a CN names the user "": no such user, as in etcd.
    let nameless = as_cn(&mut f, "");
    assert_eq!(
        f.store.check_keys(&nameless, b"foo", b"", Access::Read),
        Err(EtcdError::PermissionDenied)
    );
    assert_eq!(f.store.check_admin(&nameless), Err(EtcdError::UserEmpty));
    let root = as_cn(&mut f, "root");
    assert!(f.store.check_admin(&root).is_ok());

    let token = |t: &str| Credential::Token(t.into());
    assert_eq!(
        f.store.unapplied_token_index(&token("abc.90"), 80),
        Some(90)
    );
    assert_eq!(f.store.unapplied_token_index(&token("abc.90"), 90), None);
    assert_eq!(f.store.unapplied_token_index(&token("no-index"), 0), None);
    assert_eq!(
        f.store
            .unapplied_token_index(&Credential::CommonName("abc.90".into()), 0),
        None
    );
    let Ok(AuthReply::Authenticate(login)) = f.run(AuthOp::Authenticate(
        crate::auth::request::InternalAuthenticate {
            name: "alice".into(),
            simple_token_prefix: "abcdefghijklmnop".into(),
            checked_auth_revision: f.store.revision(),
        },
    )) else {
        panic!("authenticate")
    };
    // A token this member issued is known, whatever index it names.
    assert_eq!(f.store.unapplied_token_index(&token(&login.token), 0), None);
}
