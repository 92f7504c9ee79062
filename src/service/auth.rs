//! etcdserverpb.Auth: every method of etcd's Auth service (`v3rpc/auth.go` and the
//! server side of `etcdserver/v3_server.go`), over the state core's auth store
//! (`crate::auth`, applied in `state/machine/auth.rs`).
//!
//! Passwords are bcrypt work: hashing (UserAdd, UserChangePassword, --bcrypt-cost) and
//! checking (Authenticate) run on this core's blocking thread, never on an executor, and
//! before anything is proposed, so no clear password ever reaches a raft entry or the
//! state core. With `--auth-token jwt,...` the token is signed there too, once the
//! Authenticate entry has applied. At most [`CRYPTO_JOBS_PER_CORE_MAX`] run at once per network core; more
//! wait for a slot.
//!
//! Authenticate, as etcd's: check the password against the stored hash at auth revision
//! R, then propose the token with R; if the auth state changed meanwhile the entry is
//! refused and the whole check runs again (at most [`AUTHENTICATE_ATTEMPTS_MAX`] times).

use std::rc::Rc;

use glommio::sync::Semaphore;

use crate::auth::request::InternalAuthenticate;
use crate::auth::{AuthOp, AuthReply};
use crate::error::EtcdError;
use crate::grpc::Call;
use crate::proto::etcdserverpb as pb;
use crate::service::call::unary;
use crate::service::{unknown_method, ServiceContext};

const SERVICE: &str = "etcdserverpb.Auth";

/// CPU-heavy auth jobs (a bcrypt hash or check, ~50-100 ms at the default cost; a JWT
/// signature) one network core runs at once.
pub const CRYPTO_JOBS_PER_CORE_MAX: usize = 4;
/// Password checks one Authenticate makes while the auth state keeps changing under it.
pub const AUTHENTICATE_ATTEMPTS_MAX: usize = 8;
/// etcd's --bcrypt-cost bounds (`bcrypt.MinCost`, `bcrypt.MaxCost`) and default.
pub const BCRYPT_COST_MIN: u32 = 4;
pub const BCRYPT_COST_MAX: u32 = 31;
pub const BCRYPT_COST_DEFAULT: u32 = 10;

thread_local! {
    /// Slots for crypto jobs on this network core (one executor per thread).
    static CRYPTO_SLOTS: Rc<Semaphore> = Rc::new(Semaphore::new(CRYPTO_JOBS_PER_CORE_MAX as u64));
}

/// Runs `job` on this executor's blocking pool once one of the core's bcrypt slots is
/// free. Waiting requests are bounded by the streams a connection may open.
async fn crypto_job<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EtcdError> {
    let slots = CRYPTO_SLOTS.with(Rc::clone);
    let _slot = slots
        .acquire_static_permit(1)
        .await
        .map_err(|_| EtcdError::Stopped)?;
    Ok(glommio::executor()
        .spawn_blocking(move || {
            crate::runtime::thread_name::prepare_blocking_thread(
                crate::runtime::thread_name::BlockingWork::Request,
            );
            job()
        })
        .await)
}

/// A bcrypt hash of `password` in the `$2a$` form Go's bcrypt (etcd's) writes and reads.
async fn hash_password(password: String, cost: u32) -> Result<String, EtcdError> {
    crypto_job(move || bcrypt::hash_with_result(password, cost))
        .await?
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| {
            crate::error!("failed to bcrypt hash password", "error" => e.to_string());
            EtcdError::AuthFailed
        })
}

/// The op's answer, of the kind the op asked for.
macro_rules! expect {
    ($reply:expr, $variant:ident) => {
        match $reply? {
            AuthReply::$variant(response) => Ok(response),
            other => unreachable!("an auth op answered with {other:?}"),
        }
    };
}

pub async fn serve(context: &ServiceContext, method: &str, call: Call) {
    let state = &context.state;
    match method {
        "AuthEnable" => {
            unary(call, |req: pb::AuthEnableRequest, _| async move {
                expect!(state.auth(AuthOp::Enable(req)).await, Enable)
            })
            .await
        }
        "AuthDisable" => {
            unary(call, |req: pb::AuthDisableRequest, _| async move {
                expect!(state.auth(AuthOp::Disable(req)).await, Disable)
            })
            .await
        }
        "AuthStatus" => {
            unary(call, |req: pb::AuthStatusRequest, _| async move {
                expect!(state.auth(AuthOp::Status(req)).await, Status)
            })
            .await
        }
        "Authenticate" => {
            unary(call, |req: pb::AuthenticateRequest, _| async move {
                authenticate(context, req).await
            })
            .await
        }
        "UserAdd" => {
            unary(call, |mut req: pb::AuthUserAddRequest, _| async move {
                let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
                if !no_password && req.hashed_password.is_empty() {
                    let password = std::mem::take(&mut req.password);
                    req.hashed_password = hash_password(password, context.bcrypt_cost).await?;
                }
                req.password.clear();
                expect!(state.auth(AuthOp::UserAdd(req)).await, UserAdd)
            })
            .await
        }
        "UserGet" => {
            unary(call, |req: pb::AuthUserGetRequest, _| async move {
                expect!(state.auth(AuthOp::UserGet(req)).await, UserGet)
            })
            .await
        }
        "UserList" => {
            unary(call, |req: pb::AuthUserListRequest, _| async move {
                expect!(state.auth(AuthOp::UserList(req)).await, UserList)
            })
            .await
        }
        "UserDelete" => {
            unary(call, |req: pb::AuthUserDeleteRequest, _| async move {
                expect!(state.auth(AuthOp::UserDelete(req)).await, UserDelete)
            })
            .await
        }
        "UserChangePassword" => {
            unary(
                call,
                |mut req: pb::AuthUserChangePasswordRequest, _| async move {
                    if req.hashed_password.is_empty() {
                        let password = std::mem::take(&mut req.password);
                        req.hashed_password = hash_password(password, context.bcrypt_cost).await?;
                    }
                    req.password.clear();
                    expect!(
                        state.auth(AuthOp::UserChangePassword(req)).await,
                        UserChangePassword
                    )
                },
            )
            .await
        }
        "UserGrantRole" => {
            unary(call, |req: pb::AuthUserGrantRoleRequest, _| async move {
                expect!(state.auth(AuthOp::UserGrantRole(req)).await, UserGrantRole)
            })
            .await
        }
        "UserRevokeRole" => {
            unary(call, |req: pb::AuthUserRevokeRoleRequest, _| async move {
                expect!(
                    state.auth(AuthOp::UserRevokeRole(req)).await,
                    UserRevokeRole
                )
            })
            .await
        }
        "RoleAdd" => {
            unary(call, |req: pb::AuthRoleAddRequest, _| async move {
                expect!(state.auth(AuthOp::RoleAdd(req)).await, RoleAdd)
            })
            .await
        }
        "RoleGet" => {
            unary(call, |req: pb::AuthRoleGetRequest, _| async move {
                expect!(state.auth(AuthOp::RoleGet(req)).await, RoleGet)
            })
            .await
        }
        "RoleList" => {
            unary(call, |req: pb::AuthRoleListRequest, _| async move {
                expect!(state.auth(AuthOp::RoleList(req)).await, RoleList)
            })
            .await
        }
        "RoleDelete" => {
            unary(call, |req: pb::AuthRoleDeleteRequest, _| async move {
                expect!(state.auth(AuthOp::RoleDelete(req)).await, RoleDelete)
            })
            .await
        }
        "RoleGrantPermission" => {
            unary(
                call,
                |req: pb::AuthRoleGrantPermissionRequest, _| async move {
                    expect!(
                        state.auth(AuthOp::RoleGrantPermission(req)).await,
                        RoleGrantPermission
                    )
                },
            )
            .await
        }
        "RoleRevokePermission" => {
            unary(
                call,
                |req: pb::AuthRoleRevokePermissionRequest, _| async move {
                    expect!(
                        state.auth(AuthOp::RoleRevokePermission(req)).await,
                        RoleRevokePermission
                    )
                },
            )
            .await
        }
        _ => call.responses.finish(unknown_method(SERVICE, method)),
    }
}

async fn authenticate(
    context: &ServiceContext,
    req: pb::AuthenticateRequest,
) -> Result<pb::AuthenticateResponse, EtcdError> {
    // A token the client still sends from an earlier session must not fail its login.
    let state = context.state.with_credential(None);
    for _ in 0..AUTHENTICATE_ATTEMPTS_MAX {
        let stored = expect!(
            state.auth(AuthOp::PasswordOf(req.name.clone())).await,
            PasswordOf
        )?;
        let password = req.password.clone();
        let matches = crypto_job(move || {
            let hash = String::from_utf8_lossy(&stored.bcrypt_hash);
            bcrypt::verify(password, &hash).unwrap_or(false)
        })
        .await?;
        if !matches {
            crate::warn!("invalid authentication was requested", "user" => req.name.as_str());
            return Err(EtcdError::AuthFailed);
        }
        let simple_token_prefix = crate::auth::token::new_prefix().map_err(|e| {
            crate::error!("cannot make a token", "error" => e);
            EtcdError::AuthFailed
        })?;
        let op = AuthOp::Authenticate(InternalAuthenticate {
            name: req.name.clone(),
            simple_token_prefix,
            checked_auth_revision: stored.auth_revision,
        });
        match state.auth(op).await {
            Err(EtcdError::AuthOldRevision) => {
                crate::info!("revision when password checked became stale; retrying");
            }
            reply => {
                let mut response = expect!(reply, Authenticate)?;
                if let Some(keys) = context.jwt.clone() {
                    // The entry applied at the revision the password was checked at.
                    let (name, revision) = (req.name.clone(), stored.auth_revision);
                    if !keys.can_sign() {
                        return Err(EtcdError::VerifyOnly);
                    }
                    response.token = crypto_job(move || keys.sign(&name, revision))
                        .await?
                        .map_err(|e| {
                            crate::error!("failed to sign a JWT token", "error" => e);
                            EtcdError::VerifyOnly
                        })?;
                }
                return Ok(response);
            }
        }
    }
    Err(EtcdError::AuthOldRevision)
}
