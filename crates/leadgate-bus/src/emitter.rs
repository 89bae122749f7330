//! The wire format of Socket.IO's Redis emitter (`@socket.io/redis-emitter`
//! 5.x, and the `@socket.io/redis-adapter` it talks to).
//!
//! A broadcast is published on `<key>#<nsp>#`, or on `<key>#<nsp>#<room>#`
//! when it names exactly one room, as MessagePack (notepack.io's) of
//! `[uid, packet, opts]`: `packet = { type: 2, data: [event, ...args], nsp }`
//! and `opts = { rooms: [..], except: [..], flags: {..} }`. Its other
//! operations (`socketsJoin`, `socketsLeave`, `disconnectSockets`,
//! `serverSideEmit`) are JSON requests `{ type, .. }` on
//! `<key>-request#<nsp>#`. This module reads both; what they mean for
//! leadgate is the gateway's business.

use chrono::{DateTime, SecondsFormat};
use rmpv::Value as Pack;
use serde_json::Value;

/// Socket.IO's packet type of an event.
const EVENT: u64 = 2;
/// MessagePack's extension type of a timestamp (notepack.io's `Date`).
const TIMESTAMP: i8 = -1;

/// A broadcast an emitter published.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    /// The namespace, e.g. `/` or `/leads`.
    pub nsp: String,
    /// Rooms it is for; empty: the whole namespace.
    pub rooms: Vec<String>,
    /// Rooms whose sockets must not get it.
    pub except: Vec<String>,
    pub event: String,
    /// The event's arguments, as the JSON a browser receives.
    pub args: Vec<Value>,
}

/// Why an emitter's message was refused. The text is meant for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitterError {
    #[error("not a MessagePack [uid, packet, opts] array: {0}")]
    Malformed(String),
    #[error("packet type {0} is not an event")]
    NotAnEvent(u64),
    #[error("the event has no name")]
    NoEventName,
    #[error("binary arguments cannot be sent as JSON")]
    Binary,
    #[error("MessagePack extension type {0} has no JSON form")]
    Extension(i8),
}

/// Reads one broadcast.
pub fn parse_broadcast(payload: &[u8]) -> Result<Emitted, EmitterError> {
    let malformed = |what: &str| EmitterError::Malformed(what.to_owned());
    let value = rmpv::decode::read_value(&mut &payload[..])
        .map_err(|e| EmitterError::Malformed(e.to_string()))?;
    let Pack::Array(parts) = value else {
        return Err(malformed("not an array"));
    };
    let [_uid, packet, opts] = <[Pack; 3]>::try_from(parts)
        .map_err(|parts| EmitterError::Malformed(format!("{} elements, not 3", parts.len())))?;
    let packet = as_map(&packet).ok_or_else(|| malformed("the packet is not a map"))?;
    let kind = field(packet, "type")
        .and_then(Pack::as_u64)
        .ok_or_else(|| malformed("the packet has no type"))?;
    if kind != EVENT {
        return Err(EmitterError::NotAnEvent(kind));
    }
    let nsp = field(packet, "nsp").and_then(Pack::as_str).unwrap_or("/");
    let Some(Pack::Array(data)) = field(packet, "data") else {
        return Err(malformed("the packet has no data array"));
    };
    let mut data = data.iter();
    let event = data
        .next()
        .and_then(Pack::as_str)
        .ok_or(EmitterError::NoEventName)?
        .to_owned();
    let args = data.map(to_json).collect::<Result<Vec<_>, _>>()?;
    let opts = as_map(&opts).ok_or_else(|| malformed("opts is not a map"))?;
    Ok(Emitted {
        nsp: nsp.to_owned(),
        rooms: strings(field(opts, "rooms")),
        except: strings(field(opts, "except")),
        event,
        args,
    })
}

/// What an emitter's request asks for: `socketsJoin`, `socketsLeave`,
/// `disconnectSockets`, `serverSideEmit`, or the adapter's own queries.
pub fn request_name(payload: &[u8]) -> &'static str {
    let kind = serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_u64));
    match kind {
        Some(0) => "fetchSockets",
        Some(1) => "allRooms",
        Some(2) => "socketsJoin",
        Some(3) => "socketsLeave",
        Some(4) => "disconnectSockets",
        Some(5) => "fetchSockets",
        Some(6) => "serverSideEmit",
        _ => "an unknown request",
    }
}

fn as_map(value: &Pack) -> Option<&[(Pack, Pack)]> {
    match value {
        Pack::Map(entries) => Some(entries),
        _ => None,
    }
}

fn field<'a>(map: &'a [(Pack, Pack)], name: &str) -> Option<&'a Pack> {
    map.iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
}

fn strings(value: Option<&Pack>) -> Vec<String> {
    match value {
        Some(Pack::Array(items)) => items
            .iter()
            .filter_map(|item| match item {
                Pack::String(s) => s.as_str().map(str::to_owned),
                // Socket ids and rooms may be numbers in Socket.IO.
                Pack::Integer(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The JSON a browser receives for a MessagePack value, as Socket.IO's
/// adapter would send it: a timestamp becomes its ISO 8601 text.
fn to_json(value: &Pack) -> Result<Value, EmitterError> {
    Ok(match value {
        Pack::Nil => Value::Null,
        Pack::Boolean(b) => Value::Bool(*b),
        Pack::Integer(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            (None, None) => Value::Null,
        },
        Pack::F32(f) => number(f64::from(*f)),
        Pack::F64(f) => number(*f),
        Pack::String(s) => match s.as_str() {
            Some(text) => Value::String(text.to_owned()),
            None => return Err(EmitterError::Malformed("a string is not UTF-8".into())),
        },
        Pack::Binary(_) => return Err(EmitterError::Binary),
        Pack::Array(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Pack::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (key, value) in entries {
                let key = match key {
                    Pack::String(s) => s.as_str().map(str::to_owned),
                    Pack::Integer(n) => Some(n.to_string()),
                    _ => None,
                }
                .ok_or_else(|| EmitterError::Malformed("a map key is not a string".into()))?;
                map.insert(key, to_json(value)?);
            }
            Value::Object(map)
        }
        Pack::Ext(TIMESTAMP, bytes) => timestamp(bytes)?,
        Pack::Ext(kind, _) => return Err(EmitterError::Extension(*kind)),
    })
}

/// JSON has no NaN or infinity; `JSON.stringify` writes them as `null`.
fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A MessagePack timestamp (32, 64 or 96 bits) as JavaScript's
/// `Date.prototype.toISOString()` writes it.
fn timestamp(bytes: &[u8]) -> Result<Value, EmitterError> {
    let (secs, nanos) = match bytes.len() {
        4 => (i64::from(u32::from_be_bytes(bytes.try_into().unwrap())), 0),
        8 => {
            let raw = u64::from_be_bytes(bytes.try_into().unwrap());
            ((raw & 0x3_ffff_ffff) as i64, (raw >> 34) as u32)
        }
        12 => (
            i64::from_be_bytes(bytes[4..].try_into().unwrap()),
            u32::from_be_bytes(bytes[..4].try_into().unwrap()),
        ),
        n => return Err(EmitterError::Malformed(format!("a timestamp of {n} bytes"))),
    };
    let time = DateTime::from_timestamp(secs, nanos)
        .ok_or_else(|| EmitterError::Malformed("a timestamp out of range".into()))?;
    Ok(Value::String(
        time.to_rfc3339_opts(SecondsFormat::Millis, true),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pack(value: Pack) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &value).unwrap();
        out
    }

    fn s(text: &str) -> Pack {
        Pack::from(text)
    }

    fn map(entries: Vec<(&str, Pack)>) -> Pack {
        Pack::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    fn message(kind: u64, data: Vec<Pack>, rooms: Vec<&str>, except: Vec<&str>) -> Vec<u8> {
        pack(Pack::Array(vec![
            s("emitter"),
            map(vec![
                ("type", Pack::from(kind)),
                ("data", Pack::Array(data)),
                ("nsp", s("/")),
            ]),
            map(vec![
                ("rooms", Pack::Array(rooms.into_iter().map(s).collect())),
                ("flags", map(vec![])),
                ("except", Pack::Array(except.into_iter().map(s).collect())),
            ]),
        ]))
    }

    #[test]
    fn reads_an_event_to_a_room() {
        let payload = message(
            2,
            vec![
                s("job-update"),
                map(vec![
                    ("type", s("progress")),
                    ("progress", Pack::from(40)),
                    ("ratio", Pack::F64(0.5)),
                    (
                        "when",
                        Pack::Ext(-1, 1_764_756_000u32.to_be_bytes().to_vec()),
                    ),
                    ("none", Pack::Nil),
                ]),
            ],
            vec!["job:1"],
            vec!["job:2"],
        );
        let emitted = parse_broadcast(&payload).unwrap();
        assert_eq!(
            emitted,
            Emitted {
                nsp: "/".into(),
                rooms: vec!["job:1".into()],
                except: vec!["job:2".into()],
                event: "job-update".into(),
                args: vec![json!({
                    "type": "progress", "progress": 40, "ratio": 0.5,
                    "when": "2025-12-03T10:00:00.000Z", "none": null
                })],
            }
        );
    }

    #[test]
    fn timestamps_of_every_width() {
        // 64 bits: 250 ms after a whole second.
        let raw = (250_000_000u64 << 34) | 1_764_756_000;
        assert_eq!(
            timestamp(&raw.to_be_bytes()).unwrap(),
            json!("2025-12-03T10:00:00.250Z")
        );
        let mut wide = 5_000_000u32.to_be_bytes().to_vec();
        wide.extend((-1i64).to_be_bytes());
        assert_eq!(timestamp(&wide).unwrap(), json!("1969-12-31T23:59:59.005Z"));
        assert!(timestamp(&[1, 2]).is_err());
    }

    #[test]
    fn refuses_what_has_no_json_form_or_is_not_an_event() {
        let binary = message(2, vec![s("e"), Pack::Binary(vec![1, 2])], vec![], vec![]);
        assert_eq!(parse_broadcast(&binary), Err(EmitterError::Binary));
        let ext = message(2, vec![s("e"), Pack::Ext(3, vec![0])], vec![], vec![]);
        assert_eq!(parse_broadcast(&ext), Err(EmitterError::Extension(3)));
        let ack = message(3, vec![s("e")], vec![], vec![]);
        assert_eq!(parse_broadcast(&ack), Err(EmitterError::NotAnEvent(3)));
        let nameless = message(2, vec![Pack::from(1)], vec![], vec![]);
        assert_eq!(parse_broadcast(&nameless), Err(EmitterError::NoEventName));
        for junk in [&b""[..], b"{}", b"\x93\x01\x02", &pack(Pack::from(7))] {
            assert!(matches!(
                parse_broadcast(junk),
                Err(EmitterError::Malformed(_))
            ));
        }
    }

    #[test]
    fn names_requests() {
        assert_eq!(request_name(br#"{"type":2,"rooms":["a"]}"#), "socketsJoin");
        assert_eq!(
            request_name(br#"{"uid":"emitter","type":6,"data":[]}"#),
            "serverSideEmit"
        );
        assert_eq!(request_name(b"nope"), "an unknown request");
    }
}
