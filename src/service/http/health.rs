//! etcd's health endpoints, with etcd 3.4's semantics and bodies (3.4.29's, which carries
//! the `/livez` and `/readyz` backport):
//!
//! - `/health`: `{"health":"true"}` (200) or `{"health":"false"}` and a newline (503).
//!   Unhealthy when an alarm not named by `?exclude=<ALARM>` is active, when this member
//!   knows no leader (skipped with `?serializable=true`), or when a one-key read fails
//!   (linearizable, or local with `?serializable=true`). The 3.5 `reason` is not in the
//!   body: 3.4 clients compare the body with `{"health":"true"}`.
//! - `/livez`: the local read works. `/readyz`: no CORRUPT alarm, the local read and a
//!   linearizable read work. Each answers `ok` (200), with one `[+]<check> ok` line per
//!   check before it under `?verbose`; a failure answers every check's line (503) with
//!   `[-]<check> failed: <error>`. `?exclude=<check>` skips a check; `/livez/<check>` and
//!   `/readyz/<check>` run one.

use crate::error::EtcdError;
use crate::http1::{Request, Response};
use crate::proto::etcdserverpb as pb;
use crate::service::ServiceContext;

use super::method_not_allowed;

/// The checks of `/livez` and `/readyz`, in the order they run and are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
        }
    }
}

const LIVEZ_CHECKS: &[Check] = &[Check::SerializableRead];
const READYZ_CHECKS: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
];

/// Which probe a path names: its checks, and the one check a sub-path selects.
fn probe_checks(path: &str) -> Option<(&'static [Check], Option<Check>)> {
    let (root, sub) = match path.split_once('/').map(|(_, rest)| rest.split_once('/')) {
        Some(Some((root, sub))) => (root, Some(sub)),
        _ => (path.trim_start_matches('/'), None),
    };
    let checks = match root {
        "livez" => LIVEZ_CHECKS,
        "readyz" => READYZ_CHECKS,
        _ => return None,
    };
    match sub {
        None => Some((checks, None)),
        Some(name) => checks
            .iter()
            .find(|c| c.name() == name)
            .map(|c| (checks, Some(*c))),
    }
}

pub fn is_probe_path(path: &str) -> bool {
    probe_checks(path).is_some()
}

/// `/livez`, `/readyz` and their per-check sub-paths.
pub async fn probe(context: &ServiceContext, request: &Request) -> Response {
    if let Some(refused) = method_not_allowed(request, "GET") {
        return refused;
    }
    let Some((checks, only)) = probe_checks(request.path()) else {
        return Response::error(404, "404 page not found");
    };
    let excluded = request.query_values("exclude");
    let mut report = String::new();
    let mut failed = false;
    for &check in checks {
        let selected = match only {
            Some(one) => one == check,
            None => !excluded.iter().any(|e| e == check.name()),
        };
        if !selected {
            continue;
        }
        match run_check(context, check).await {
            Ok(()) => report.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => {
                failed = true;
                report.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    if failed {
        // Go's http.Error appends a newline after the report's own.
        return Response::error(503, &report);
    }
    let mut body = String::new();
    if request.has_query("verbose") {
        body.push_str(&report);
    }
    body.push_str("ok\n");
    let mut response = Response::new(200, "text/plain; charset=utf-8", body);
    response.set_header("X-Content-Type-Options", "nosniff");
    response
}

async fn run_check(context: &ServiceContext, check: Check) -> Result<(), String> {
    match check {
        Check::DataCorruption => {
            let alarms = active_alarms(context).await.map_err(|e| e.to_string())?;
            if alarms.iter().any(|a| a == "CORRUPT") {
                return Err("alarm activated: CORRUPT".into());
            }
            Ok(())
        }
        Check::SerializableRead => read_one_key(context, true).await.map_err(|e| e.to_string()),
        Check::LinearizableRead => read_one_key(context, false)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// `/health`.
pub async fn health(context: &ServiceContext, request: &Request) -> Response {
    if let Some(refused) = method_not_allowed(request, "GET") {
        return refused;
    }
    let excluded = request.query_values("exclude");
    let serializable = request.query_value("serializable") == "true";
    let healthy = check_health(context, &excluded, serializable).await;
    crate::metrics::health_checked(healthy);
    if healthy {
        Response::new(200, "text/plain; charset=utf-8", "{\"health\":\"true\"}")
    } else {
        Response::error(503, "{\"health\":\"false\"}")
    }
}

async fn check_health(context: &ServiceContext, excluded: &[String], serializable: bool) -> bool {
    match active_alarms(context).await {
        Ok(alarms) if alarms.iter().all(|a| excluded.contains(a)) => {}
        _ => return false,
    }
    if !serializable {
        match context.state.status().await {
            Ok(status) if status.leader != 0 => {}
            _ => return false,
        }
    }
    read_one_key(context, serializable).await.is_ok()
}

/// The names of the alarms raised on any member ("NOSPACE", "CORRUPT").
async fn active_alarms(context: &ServiceContext) -> Result<Vec<String>, EtcdError> {
    let response = context
        .state
        .alarm(pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Get as i32,
            member_id: 0,
            alarm: pb::AlarmType::None as i32,
        })
        .await?;
    Ok(response
        .alarms
        .iter()
        .map(|member| {
            pb::AlarmType::try_from(member.alarm)
                .map_or("UNKNOWN", |a| a.as_str_name())
                .to_string()
        })
        .collect())
}

/// etcd's health read: one key, keys only, through the same path as a client's Range.
async fn read_one_key(context: &ServiceContext, serializable: bool) -> Result<(), EtcdError> {
    context
        .state
        .range(pb::RangeRequest {
            key: bytes::Bytes::from_static(b"\0"),
            keys_only: true,
            limit: 1,
            serializable,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_paths_name_their_checks() {
        assert_eq!(probe_checks("/livez"), Some((LIVEZ_CHECKS, None)));
        assert_eq!(
            probe_checks("/readyz/linearizable_read"),
            Some((READYZ_CHECKS, Some(Check::LinearizableRead)))
        );
        assert_eq!(probe_checks("/livez/linearizable_read"), None);
        assert_eq!(probe_checks("/readyz/"), None);
        assert_eq!(probe_checks("/health"), None);
    }
}
