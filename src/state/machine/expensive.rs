//! etcd's slow-apply warning: applying one request (a committed write, or a read served
//! by the state machine) that takes longer than [`WARN_APPLY_DURATION`] logs "apply
//! request took too long" with the fields of etcd 3.4's `warnOfExpensiveRequest` and
//! `warnOfExpensiveReadOnlyRangeRequest` (`etcdserver/util.go`): `took`,
//! `expected-duration`, `prefix` ("read-only range " for ranges and read-only txns, else
//! ""), `request`, `response`, and `error` when the request failed. Operators alert on that
//! message, so its words and field names are etcd's.
//!
//! `request` is the request in protobuf's compact text form, as Go's `proto.CompactTextString`
//! prints it (`key:"foo" value_size:3 `), with etcd's redactions: values are replaced by
//! their size. tern's entries carry no `RequestHeader`, so the `header:<ID:… >` part that
//! etcd prints before a write is absent.

use std::fmt::Write as _;
use std::time::Duration;

use crate::error::EtcdError;
use crate::log::{Field, Level, Value};
use crate::proto::etcdserverpb as pb;
use crate::state::LeaseCommand;

/// etcd's `warnApplyDuration` (3.4: fixed at 100 ms).
pub const WARN_APPLY_DURATION: Duration = Duration::from_millis(100);

/// What the warning says about one request; built only once it is known to be slow.
pub struct ExpensiveRequest<'a> {
    pub prefix: &'static str,
    pub request: String,
    pub response: String,
    pub error: Option<&'a EtcdError>,
}

/// The warning's fields, in etcd's order.
pub fn warning_fields(took: Duration, what: ExpensiveRequest<'_>) -> Vec<Field<'static>> {
    let mut fields: Vec<Field<'static>> = vec![
        ("took", Value::from(took)),
        ("expected-duration", Value::from(WARN_APPLY_DURATION)),
        ("prefix", Value::from(what.prefix)),
        ("request", Value::from(what.request)),
        ("response", Value::from(what.response)),
    ];
    if let Some(e) = what.error {
        fields.push(("error", Value::from(e.message())));
    }
    fields
}

/// Logs the warning if applying took longer than etcd's limit; `what` runs only then.
/// Returns whether it warned.
pub fn warn_if_expensive<'a>(took: Duration, what: impl FnOnce() -> ExpensiveRequest<'a>) -> bool {
    if took <= WARN_APPLY_DURATION {
        return false;
    }
    crate::metrics::STATE.slow_apply.add(1, false);
    crate::log::log(
        Level::Warn,
        concat!(file!(), ":", line!()),
        "apply request took too long",
        &warning_fields(took, what()),
    );
    true
}

/// etcd's response summary for a write: `size:N` (empty for an error).
pub fn write_response<T: prost::Message>(res: &Result<T, EtcdError>) -> String {
    res.as_ref()
        .map_or(String::new(), |r| format!("size:{}", r.encoded_len()))
}

/// etcd's response summary for a range: `range_response_count:N size:N`.
pub fn range_response(res: &Result<pb::RangeResponse, EtcdError>) -> String {
    res.as_ref().map_or(String::new(), |r| {
        format!(
            "range_response_count:{} size:{}",
            r.kvs.len(),
            prost::Message::encoded_len(r)
        )
    })
}

/// etcd's response summary for a read-only txn: `responses:<range_response_count:N …> size:N`.
pub fn read_only_txn_response(res: &Result<pb::TxnResponse, EtcdError>) -> String {
    use pb::response_op::Response;
    res.as_ref().map_or(String::new(), |r| {
        let counts: Vec<String> = r
            .responses
            .iter()
            .filter_map(|op| match &op.response {
                Some(Response::ResponseRange(range)) => {
                    Some(format!("range_response_count:{}", range.kvs.len()))
                }
                _ => None,
            })
            .collect();
        format!(
            "responses:<{}> size:{}",
            counts.join(" "),
            prost::Message::encoded_len(r)
        )
    })
}

/// Go's text-format string literal: printable ASCII as is, `\n \r \t \" \\` escaped, every
/// other byte as a three-digit octal escape.
fn push_quoted(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for &b in bytes {
        match b {
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03o}");
            }
        }
    }
    out.push('"');
}

/// Compact text writer: each field is `name:value ` and nested messages `name:<… > `;
/// proto3 zero values are left out, as Go leaves them out.
struct Text(String);

impl Text {
    fn bytes(&mut self, name: &str, v: &[u8]) -> &mut Self {
        if !v.is_empty() {
            let _ = write!(self.0, "{name}:");
            push_quoted(&mut self.0, v);
            self.0.push(' ');
        }
        self
    }
    fn int(&mut self, name: &str, v: i64) -> &mut Self {
        if v != 0 {
            let _ = write!(self.0, "{name}:{v} ");
        }
        self
    }
    fn uint(&mut self, name: &str, v: u64) -> &mut Self {
        if v != 0 {
            let _ = write!(self.0, "{name}:{v} ");
        }
        self
    }
    fn flag(&mut self, name: &str, v: bool) -> &mut Self {
        if v {
            let _ = write!(self.0, "{name}:true ");
        }
        self
    }
    /// An enum field, by its protobuf name (`v` itself if unknown).
    fn enumeration(&mut self, name: &str, v: i32, label: Option<&str>) -> &mut Self {
        if v != 0 {
            match label {
                Some(label) => {
                    let _ = write!(self.0, "{name}:{label} ");
                }
                None => {
                    let _ = write!(self.0, "{name}:{v} ");
                }
            }
        }
        self
    }
    fn message(&mut self, name: &str, body: impl FnOnce(&mut Text)) -> &mut Self {
        let _ = write!(self.0, "{name}:<");
        body(self);
        self.0.push_str("> ");
        self
    }
}

fn range_fields(t: &mut Text, r: &pb::RangeRequest) {
    use pb::range_request::{SortOrder, SortTarget};
    t.bytes("key", &r.key)
        .bytes("range_end", &r.range_end)
        .int("limit", r.limit)
        .int("revision", r.revision)
        .enumeration(
            "sort_order",
            r.sort_order,
            SortOrder::try_from(r.sort_order)
                .ok()
                .map(|e| e.as_str_name()),
        )
        .enumeration(
            "sort_target",
            r.sort_target,
            SortTarget::try_from(r.sort_target)
                .ok()
                .map(|e| e.as_str_name()),
        )
        .flag("serializable", r.serializable)
        .flag("keys_only", r.keys_only)
        .flag("count_only", r.count_only)
        .int("min_mod_revision", r.min_mod_revision)
        .int("max_mod_revision", r.max_mod_revision)
        .int("min_create_revision", r.min_create_revision)
        .int("max_create_revision", r.max_create_revision);
}

/// etcd's `loggablePutRequest`: the value replaced by its size.
fn put_fields(t: &mut Text, r: &pb::PutRequest) {
    t.bytes("key", &r.key)
        .int("value_size", r.value.len() as i64)
        .int("lease", r.lease)
        .flag("prev_kv", r.prev_kv)
        .flag("ignore_value", r.ignore_value)
        .flag("ignore_lease", r.ignore_lease);
}

fn delete_range_fields(t: &mut Text, r: &pb::DeleteRangeRequest) {
    t.bytes("key", &r.key)
        .bytes("range_end", &r.range_end)
        .flag("prev_kv", r.prev_kv);
}

fn txn_fields(t: &mut Text, r: &pb::TxnRequest) {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use pb::request_op::Request;
    for c in &r.compare {
        t.message("compare", |t| {
            t.enumeration(
                "result",
                c.result,
                CompareResult::try_from(c.result)
                    .ok()
                    .map(|e| e.as_str_name()),
            )
            .enumeration(
                "target",
                c.target,
                CompareTarget::try_from(c.target)
                    .ok()
                    .map(|e| e.as_str_name()),
            )
            .bytes("key", &c.key);
            // A oneof member is printed even when zero; a compared value shows its size.
            match &c.target_union {
                Some(TargetUnion::Version(v)) => {
                    let _ = write!(t.0, "version:{v} ");
                }
                Some(TargetUnion::CreateRevision(v)) => {
                    let _ = write!(t.0, "create_revision:{v} ");
                }
                Some(TargetUnion::ModRevision(v)) => {
                    let _ = write!(t.0, "mod_revision:{v} ");
                }
                Some(TargetUnion::Value(v)) => {
                    let _ = write!(t.0, "value_size:{} ", v.len());
                }
                Some(TargetUnion::Lease(v)) => {
                    let _ = write!(t.0, "lease:{v} ");
                }
                None => {}
            }
            t.bytes("range_end", &c.range_end);
        });
    }
    for (name, ops) in [("success", &r.success), ("failure", &r.failure)] {
        for op in ops {
            t.message(name, |t| match &op.request {
                Some(Request::RequestRange(r)) => {
                    t.message("request_range", |t| range_fields(t, r));
                }
                Some(Request::RequestPut(r)) => {
                    t.message("request_put", |t| put_fields(t, r));
                }
                Some(Request::RequestDeleteRange(r)) => {
                    t.message("request_delete_range", |t| delete_range_fields(t, r));
                }
                Some(Request::RequestTxn(r)) => {
                    t.message("request_txn", |t| txn_fields(t, r));
                }
                None => {}
            });
        }
    }
}

/// A range request as etcd logs it.
pub fn range_text(r: &pb::RangeRequest) -> String {
    let mut t = Text(String::new());
    range_fields(&mut t, r);
    t.0
}

pub fn put_text(r: &pb::PutRequest) -> String {
    let mut t = Text(String::new());
    t.message("put", |t| put_fields(t, r));
    t.0.trim_end().to_string()
}

pub fn delete_range_text(r: &pb::DeleteRangeRequest) -> String {
    let mut t = Text(String::new());
    t.message("delete_range", |t| delete_range_fields(t, r));
    t.0.trim_end().to_string()
}

/// A txn as etcd logs it: wrapped in `txn:<…>` when it writes (it is then an entry),
/// bare when it is a read-only txn served as a read.
pub fn txn_text(r: &pb::TxnRequest, read_only: bool) -> String {
    let mut t = Text(String::new());
    if read_only {
        txn_fields(&mut t, r);
        return t.0;
    }
    t.message("txn", |t| txn_fields(t, r));
    t.0.trim_end().to_string()
}

pub fn compaction_text(r: &pb::CompactionRequest) -> String {
    let mut t = Text(String::new());
    t.message("compaction", |t| {
        t.int("revision", r.revision).flag("physical", r.physical);
    });
    t.0.trim_end().to_string()
}

pub fn alarm_text(r: &pb::AlarmRequest) -> String {
    use pb::alarm_request::AlarmAction;
    let mut t = Text(String::new());
    t.message("alarm", |t| {
        t.enumeration(
            "action",
            r.action,
            AlarmAction::try_from(r.action)
                .ok()
                .map(|e| e.as_str_name()),
        )
        .uint("memberID", r.member_id)
        .enumeration(
            "alarm",
            r.alarm,
            pb::AlarmType::try_from(r.alarm)
                .ok()
                .map(|e| e.as_str_name()),
        );
    });
    t.0.trim_end().to_string()
}

/// A lease command that is a raft entry, kept for the warning.
pub enum LeaseEntry {
    Grant(pb::LeaseGrantRequest),
    Revoke(pb::LeaseRevokeRequest),
}

impl LeaseEntry {
    pub fn of(command: &LeaseCommand) -> Option<LeaseEntry> {
        match command {
            LeaseCommand::Grant(req, _) => Some(LeaseEntry::Grant(*req)),
            LeaseCommand::Revoke(req, _) => Some(LeaseEntry::Revoke(*req)),
            _ => None,
        }
    }

    /// etcd's own shapes for lease entries (`InternalRaftStringer`).
    pub fn text(&self) -> String {
        match self {
            LeaseEntry::Grant(r) => format!("lease_grant:<ttl:{}-second id:{:016x}>", r.ttl, r.id),
            LeaseEntry::Revoke(r) => format!("lease_revoke:<id:{:016x}>", r.id),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Checks the threshold (with injected durations, no clock), the fields, and the text
    //! forms of requests against what etcd 3.4 prints for the same requests.
    use super::*;

    fn put() -> pb::PutRequest {
        pb::PutRequest {
            key: b"foo".to_vec().into(),
            value: b"bar".to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn warns_only_past_100ms() {
        let asked = std::cell::Cell::new(0);
        let what = || {
            asked.set(asked.get() + 1);
            ExpensiveRequest {
                prefix: "",
                request: put_text(&put()),
                response: String::new(),
                error: None,
            }
        };
        assert!(!warn_if_expensive(Duration::from_millis(100), what));
        assert!(!warn_if_expensive(Duration::from_millis(3), what));
        assert_eq!(asked.get(), 0, "nothing is formatted for a fast apply");
        assert!(warn_if_expensive(Duration::from_millis(101), what));
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn fields_are_etcds() {
        let fields = warning_fields(
            Duration::from_micros(123_456),
            ExpensiveRequest {
                prefix: "read-only range ",
                request: range_text(&pb::RangeRequest {
                    key: b"a".to_vec().into(),
                    range_end: b"b".to_vec().into(),
                    ..Default::default()
                }),
                response: range_response(&Ok(pb::RangeResponse::default())),
                error: None,
            },
        );
        let rendered: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::Str(s) => s.clone(),
                    Value::Duration(d) => crate::log::format_duration(*d),
                    _ => unreachable!(),
                };
                (k.to_string(), text)
            })
            .collect();
        let expected = [
            ("took", "123.456ms"),
            ("expected-duration", "100ms"),
            ("prefix", "read-only range "),
            ("request", "key:\"a\" range_end:\"b\" "),
            ("response", "range_response_count:0 size:0"),
        ];
        assert_eq!(
            rendered,
            expected
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        );
        let failed = warning_fields(
            Duration::from_secs(1),
            ExpensiveRequest {
                prefix: "",
                request: String::new(),
                response: write_response::<pb::PutResponse>(&Err(EtcdError::Timeout)),
                error: Some(&EtcdError::Timeout),
            },
        );
        assert_eq!(failed.len(), 6);
        assert_eq!(failed[5].0, "error");
    }

    #[test]
    fn requests_print_as_etcd_prints_them() {
        assert_eq!(put_text(&put()), "put:<key:\"foo\" value_size:3 >");
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Value as i32,
                key: b"k".to_vec().into(),
                target_union: Some(pb::compare::TargetUnion::Value(b"vv".to_vec().into())),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put())),
            }],
            failure: vec![],
        };
        assert_eq!(
            txn_text(&txn, false),
            "txn:<compare:<target:VALUE key:\"k\" value_size:2 > success:<request_put:<key:\"foo\" value_size:3 > > >"
        );
        let binary = pb::RangeRequest {
            key: vec![0, b'"', b'\n', 0xff].into(),
            sort_order: 2,
            count_only: true,
            ..Default::default()
        };
        assert_eq!(
            range_text(&binary),
            "key:\"\\000\\\"\\n\\377\" sort_order:DESCEND count_only:true "
        );
        assert_eq!(
            LeaseEntry::Grant(pb::LeaseGrantRequest { ttl: 5, id: 0x1234 }).text(),
            "lease_grant:<ttl:5-second id:0000000000001234>"
        );
        assert_eq!(
            alarm_text(&pb::AlarmRequest {
                action: 1,
                member_id: 9,
                alarm: 1
            }),
            "alarm:<action:ACTIVATE memberID:9 alarm:NOSPACE >"
        );
    }
}
