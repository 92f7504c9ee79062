//! Key permissions as merged intervals: what one user may read, and what it may write.
//!
//! A permission (and a request) names keys the way etcd's requests do:
//! - `range_end` empty: the one key `key`, i.e. the interval `[key, key + "\0")`;
//! - `range_end == "\0"`: every key from `key` on (`--from-key`, and `--prefix` of "");
//! - otherwise the half-open interval `[key, range_end)` (`--prefix` sends the prefix's
//!   successor as `range_end`).
//!
//! A user's grants of one kind (read, or write; readwrite counts as both) are merged into
//! sorted, disjoint, non-adjacent intervals ([`Coverage`]). A request is permitted when
//! ONE merged interval holds all of it, which is etcd's rule (its interval tree's
//! `Contains` for ranges, `Intersects` of the point for single keys): a range that is
//! covered only piecewise by grants that touch is still covered, because touching grants
//! merge.
//!
//! Invariants of a built [`Coverage`]: intervals are non-empty, sorted by `begin`, and
//! each one's `end` lies strictly below the next one's `begin`.

use crate::proto::authpb;

/// The upper end of an interval: a key (exclusive), or past every key. The derived order
/// puts every `Key` below `Unbounded`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Unbounded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: End,
}

impl Interval {
    /// The keys a `(key, range_end)` pair names (see the module comment).
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut next = key.to_vec();
                next.push(0);
                End::Key(next)
            }
            [0] => End::Unbounded,
            end => End::Key(end.to_vec()),
        };
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    fn is_empty(&self) -> bool {
        match &self.end {
            End::Key(end) => end.as_slice() <= self.begin.as_slice(),
            End::Unbounded => false,
        }
    }
}

/// The merged intervals of one kind of access for one user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    intervals: Vec<Interval>,
}

impl Coverage {
    /// Merges `(key, range_end)` grants into sorted, disjoint intervals.
    fn build(grants: impl Iterator<Item = (Vec<u8>, Vec<u8>)>) -> Coverage {
        let mut all: Vec<Interval> = grants
            .map(|(k, e)| Interval::of(&k, &e))
            .filter(|i| !i.is_empty())
            .collect();
        all.sort_by(|a, b| a.begin.cmp(&b.begin));
        let mut merged: Vec<Interval> = Vec::with_capacity(all.len());
        for next in all {
            if let Some(last) = merged.last_mut() {
                // Overlapping or touching: `next` starts at or before `last` ends.
                let touches = match &last.end {
                    End::Key(end) => next.begin.as_slice() <= end.as_slice(),
                    End::Unbounded => true,
                };
                if touches {
                    if next.end > last.end {
                        last.end = next.end;
                    }
                    continue;
                }
            }
            merged.push(next);
        }
        Coverage { intervals: merged }
    }

    /// Whether every key `(key, range_end)` names is granted. A request naming no key
    /// (`range_end` at or below `key`) is judged by its `key` alone, so it reveals
    /// nothing a user could not read anyway.
    pub fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        let mut wanted = Interval::of(key, range_end);
        if wanted.is_empty() {
            wanted = Interval::of(key, &[]);
        }
        // The last merged interval starting at or before the wanted begin is the only one
        // that can hold it (they are disjoint and sorted).
        let at = self
            .intervals
            .partition_point(|i| i.begin.as_slice() <= wanted.begin.as_slice());
        let Some(holder) = at.checked_sub(1).map(|i| &self.intervals[i]) else {
            return false;
        };
        wanted.end <= holder.end
    }
}

/// A user's merged permissions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserPerms {
    pub read: Coverage,
    pub write: Coverage,
}

impl UserPerms {
    /// Merges the grants of `roles` (roles that do not exist grant nothing).
    pub fn of<'a>(roles: impl Iterator<Item = &'a authpb::Role> + Clone) -> UserPerms {
        use authpb::permission::Type;
        let grants = |wanted: Type| {
            roles
                .clone()
                .flat_map(|r| r.key_permission.iter())
                .filter(move |p| {
                    let kind = Type::try_from(p.perm_type).unwrap_or(Type::Read);
                    kind == wanted || kind == Type::Readwrite
                })
                .map(|p| (p.key.to_vec(), p.range_end.to_vec()))
        };
        UserPerms {
            read: Coverage::build(grants(Type::Read)),
            write: Coverage::build(grants(Type::Write)),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Checks coverage against etcd's rules on hand-picked edges: single keys, prefixes,
    //! from-key, touching and overlapping grants, ranges that stick out by one key.
    use super::*;

    fn coverage(grants: &[(&[u8], &[u8])]) -> Coverage {
        Coverage::build(grants.iter().map(|(k, e)| (k.to_vec(), e.to_vec())))
    }

    #[test]
    fn single_key_grant_covers_only_that_key() {
        let c = coverage(&[(b"foo", b"")]);
        assert!(c.covers(b"foo", b""));
        assert!(!c.covers(b"fo", b""));
        assert!(!c.covers(b"foo\0", b""));
        assert!(!c.covers(b"foo", b"fop"), "a range starting at the key");
        assert!(c.covers(b"foo", b"foo\0"), "the range of exactly that key");
    }

    #[test]
    fn prefix_grant_stops_at_the_prefix_end() {
        let c = coverage(&[(b"pre/", b"pre0")]);
        assert!(c.covers(b"pre/", b"pre0"));
        assert!(c.covers(b"pre/a", b""));
        assert!(c.covers(b"pre/a", b"pre/b"));
        assert!(!c.covers(b"pre0", b""));
        assert!(!c.covers(b"pre", b""));
        assert!(!c.covers(b"pre/", b"pre1"), "one key past the prefix");
        assert!(!c.covers(b"pre.", b"pre0"), "one key before the prefix");
        assert!(!c.covers(b"pre/", b"\0"), "from-key from inside the prefix");
        assert!(!c.covers(b"\0", b"\0"), "everything");
    }

    #[test]
    fn from_key_grant_is_open_ended() {
        let c = coverage(&[(b"zzz", b"\0")]);
        assert!(c.covers(b"zzz", b""));
        assert!(c.covers(b"zzzz", b"\0"));
        assert!(c.covers(b"zzz", b"\xff\xff"));
        assert!(!c.covers(b"zz", b"\0"));
        assert!(!c.covers(b"zzy", b""));
    }

    #[test]
    fn touching_and_overlapping_grants_merge() {
        let c = coverage(&[(b"a", b"c"), (b"c", b"e"), (b"d", b"g"), (b"x", b"")]);
        assert!(c.covers(b"a", b"g"));
        assert!(!c.covers(b"a", b"g\0"));
        assert!(!c.covers(b"f", b"x"), "the gap between g and x");
        assert!(c.covers(b"x", b""));
        assert!(!c.covers(b"a", b"x\0"));
    }

    #[test]
    fn empty_requests_are_judged_by_their_key() {
        let c = coverage(&[(b"k", b"")]);
        assert!(c.covers(b"k", b"a"), "range_end below key names no key");
        assert!(!c.covers(b"j", b"a"));
    }

    #[test]
    fn empty_coverage_grants_nothing() {
        let c = coverage(&[]);
        assert!(!c.covers(b"", b""));
        assert!(!c.covers(b"a", b""));
        assert!(!c.covers(b"\0", b"\0"));
    }

    #[test]
    fn readwrite_counts_for_both() {
        use authpb::permission::Type;
        let role = authpb::Role {
            name: "r".into(),
            key_permission: vec![
                authpb::Permission {
                    perm_type: Type::Readwrite as i32,
                    key: "rw".into(),
                    range_end: "".into(),
                },
                authpb::Permission {
                    perm_type: Type::Write as i32,
                    key: "w".into(),
                    range_end: "".into(),
                },
                authpb::Permission {
                    perm_type: Type::Read as i32,
                    key: "r".into(),
                    range_end: "".into(),
                },
            ],
        };
        let perms = UserPerms::of([&role].into_iter());
        assert!(perms.read.covers(b"rw", b"") && perms.write.covers(b"rw", b""));
        assert!(perms.write.covers(b"w", b"") && !perms.read.covers(b"w", b""));
        assert!(perms.read.covers(b"r", b"") && !perms.write.covers(b"r", b""));
    }
}
