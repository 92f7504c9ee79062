//! Just enough of a `WatchResponse` for the delivery check, read straight from the
//! message bytes: a protobuf walk that keeps the watch id, flags, header revision and each
//! event's key and mod_revision, and allocates nothing (see `main.rs` for why).
use std::ops::Range;

/// A field's value: varint, or where a length-delimited body lies in the message.
enum Value {
    Varint(u64),
    Len(Range<usize>),
    Fixed,
}

/// The fields of the protobuf message at `buf[pos..end]`, in wire order.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], body: Range<usize>) -> Fields<'a> {
        Fields {
            buf,
            pos: body.start,
            end: body.end,
        }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        // At most ten bytes: 64 bits in 7-bit groups.
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.buf[..self.end].get(self.pos) else {
                return Err("truncated varint".into());
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("varint over ten bytes".into())
    }

    fn skip(&mut self, bytes: usize) -> Result<Range<usize>, String> {
        let start = self.pos;
        if self.end - start < bytes {
            return Err("field runs past its message".into());
        }
        self.pos += bytes;
        Ok(start..self.pos)
    }

    /// The next (field number, value), or `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u64, Value)>, String> {
        if self.pos == self.end {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "huge length")?;
                Value::Len(self.skip(len)?)
            }
            5 => {
                self.skip(4)?;
                Value::Fixed
            }
            wire_type => return Err(format!("wire type {wire_type}")),
        };
        Ok(Some((key >> 3, value)))
    }
}

/// A `WatchResponse`'s watch id, flags and header revision (etcd's rpc.proto: header
/// = 1 (`ResponseHeader.revision` = 3), watch_id = 2, created = 3, canceled = 4,
/// events = 11).
#[derive(Debug, Default)]
pub struct Response {
    pub watch_id: i64,
    pub header_revision: i64,
    pub created: bool,
    pub canceled: bool,
}

/// Parses `message`; `events` is refilled with each event's `kv.mod_revision` and
/// where its `kv.key` lies in `message` (mvccpb: `Event.kv` = 2, `KeyValue.key` = 1,
/// `mod_revision` = 3).
pub fn parse(message: &[u8], events: &mut Vec<(i64, Range<usize>)>) -> Result<Response, String> {
    events.clear();
    let mut response = Response::default();
    let mut fields = Fields::new(message, 0..message.len());
    while let Some((number, value)) = fields.next_field()? {
        match (number, value) {
            (1, Value::Len(header)) => {
                let mut header = Fields::new(message, header);
                while let Some((number, value)) = header.next_field()? {
                    if let (3, Value::Varint(revision)) = (number, value) {
                        response.header_revision = revision as i64;
                    }
                }
            }
            (2, Value::Varint(id)) => response.watch_id = id as i64,
            (3, Value::Varint(flag)) => response.created = flag != 0,
            (4, Value::Varint(flag)) => response.canceled = flag != 0,
            (11, Value::Len(event)) => {
                let mut event = Fields::new(message, event);
                let mut kv = None;
                while let Some((number, value)) = event.next_field()? {
                    if let (2, Value::Len(body)) = (number, value) {
                        kv = Some(body);
                    }
                }
                let kv = kv.ok_or("event without kv")?;
                let (mut key, mut mod_revision) = (0..0, 0);
                let mut kv = Fields::new(message, kv);
                while let Some((number, value)) = kv.next_field()? {
                    match (number, value) {
                        (1, Value::Len(body)) => key = body,
                        (3, Value::Varint(revision)) => mod_revision = revision as i64,
                        _ => {}
                    }
                }
                events.push((mod_revision, key));
            }
            _ => {}
        }
    }
    Ok(response)
}
