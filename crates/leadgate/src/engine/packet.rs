//! Socket.IO 5 packets as text, inside Engine.IO 4 message packets.
//!
//! A Socket.IO packet is `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`,
//! where the namespace is written only when it is not `/`. On the wire it is
//! the payload of an Engine.IO message, so every packet sent here starts
//! with Engine.IO's `4`.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// What separates the packets of a long-polling payload.
pub const SEPARATOR: char = '\x1e';

/// The namespaces the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// `/`: job progress.
    Jobs,
    /// `/leads`: the leads conversation.
    Leads,
}

impl Namespace {
    pub const ALL: [Namespace; 2] = [Namespace::Jobs, Namespace::Leads];

    pub fn path(self) -> &'static str {
        match self {
            Namespace::Jobs => "/",
            Namespace::Leads => "/leads",
        }
    }

    pub fn from_path(path: &str) -> Option<Namespace> {
        Namespace::ALL.into_iter().find(|ns| ns.path() == path)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The type of a Socket.IO packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A Socket.IO packet received from a client, borrowing its text.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub kind: Kind,
    pub namespace: &'a str,
    /// For binary packets: how many binary messages follow.
    pub attachments: usize,
    pub ack: Option<u64>,
    /// The JSON that ends the packet; empty when there is none.
    pub data: &'a str,
}

/// What is wrong with a packet a client sent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownKind(char),
    #[error("malformed attachment count")]
    Attachments,
    #[error("malformed ack id")]
    AckId,
}

/// Reads a Socket.IO packet (the text after Engine.IO's `4`).
pub fn parse(text: &str) -> Result<Packet<'_>, ParseError> {
    let mut rest = text;
    let kind = match rest.chars().next().ok_or(ParseError::Empty)? {
        '0' => Kind::Connect,
        '1' => Kind::Disconnect,
        '2' => Kind::Event,
        '3' => Kind::Ack,
        '4' => Kind::ConnectError,
        '5' => Kind::BinaryEvent,
        '6' => Kind::BinaryAck,
        other => return Err(ParseError::UnknownKind(other)),
    };
    rest = &rest[1..];
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let (count, after) = rest.split_once('-').ok_or(ParseError::Attachments)?;
        attachments = count.parse().map_err(|_| ParseError::Attachments)?;
        rest = after;
    }
    let mut namespace = "/";
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        namespace = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = if digits == 0 {
        None
    } else {
        Some(rest[..digits].parse().map_err(|_| ParseError::AckId)?)
    };
    Ok(Packet {
        kind,
        namespace,
        attachments,
        ack,
        data: &rest[digits..],
    })
}

/// An event's name and its first argument, which is what the handlers
/// take (as socket.io servers give them; an ack callback is not an argument).
pub fn event_args(data: &str) -> Option<(String, Option<Value>)> {
    let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(data) else {
        return None;
    };
    if items.is_empty() {
        return None;
    }
    let Value::String(name) = items.remove(0) else {
        return None;
    };
    Some((name, items.into_iter().next()))
}

fn start(out: &mut String, kind: char, namespace: &str) {
    out.push('4');
    out.push(kind);
    if namespace != "/" {
        out.push_str(namespace);
        out.push(',');
    }
}

/// Engine.IO's open packet: the session id and the heartbeat's terms.
/// A long-polling connection is told it may upgrade to a WebSocket.
pub fn open(
    sid: &str,
    polling: bool,
    ping_interval: Duration,
    ping_timeout: Duration,
    max_payload: usize,
) -> String {
    let upgrades = if polling { "[\"websocket\"]" } else { "[]" };
    format!(
        "0{{\"sid\":\"{sid}\",\"upgrades\":{upgrades},\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{max_payload}}}",
        ping_interval.as_millis(),
        ping_timeout.as_millis(),
    )
}

/// `42[<event>,<data>]`: an event with one argument, already encoded.
pub fn event_raw(namespace: Namespace, event: &str, data: &RawValue) -> String {
    let mut out = String::with_capacity(event.len() + data.get().len() + 16);
    start(&mut out, '2', namespace.path());
    out.push('[');
    // An event name is a string: it always encodes.
    let _ = serde_json::to_writer(StringWriter(&mut out), event);
    out.push(',');
    out.push_str(data.get());
    out.push(']');
    out
}

/// `42[<event>,<data>]`: an event with one argument.
pub fn event<T: Serialize + ?Sized>(
    namespace: Namespace,
    event: &str,
    data: &T,
) -> Result<String, serde_json::Error> {
    let data = serde_json::value::to_raw_value(data)?;
    Ok(event_raw(namespace, event, &data))
}

/// `43<id>[<data>]`: the answer to an event that asked for one.
pub fn ack<T: Serialize + ?Sized>(
    namespace: Namespace,
    id: u64,
    data: &T,
) -> Result<String, serde_json::Error> {
    let data = serde_json::to_string(data)?;
    let mut out = String::with_capacity(data.len() + 16);
    start(&mut out, '3', namespace.path());
    let _ = write!(out, "{id}[{data}]");
    Ok(out)
}

/// `40{"sid":…}`: a namespace is connected.
pub fn connected(namespace: Namespace, sid: &str) -> String {
    let mut out = String::with_capacity(40);
    start(&mut out, '0', namespace.path());
    let _ = write!(out, "{{\"sid\":\"{sid}\"}}");
    out
}

/// `44{"message":…}`: a namespace refused to connect.
pub fn connect_error(namespace: &str, message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 32);
    start(&mut out, '4', namespace);
    out.push_str("{\"message\":");
    let _ = serde_json::to_writer(StringWriter(&mut out), message);
    out.push('}');
    out
}

/// `41`: the server ends the client's connection to a namespace.
pub fn disconnect(namespace: Namespace) -> String {
    let mut out = String::with_capacity(10);
    start(&mut out, '1', namespace.path());
    out
}

/// A `Write` into a `String`, for serde_json, which writes only UTF-8.
struct StringWriter<'a>(&'a mut String);

impl std::io::Write for StringWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.0.push_str(text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_part_of_a_packet() {
        assert_eq!(
            parse("2/leads,7[\"get_leads\",{\"page\":2}]"),
            Ok(Packet {
                kind: Kind::Event,
                namespace: "/leads",
                attachments: 0,
                ack: Some(7),
                data: "[\"get_leads\",{\"page\":2}]",
            })
        );
        let connect = parse("0{\"token\":\"t\"}").expect("a connect packet");
        assert_eq!((connect.kind, connect.namespace), (Kind::Connect, "/"));
        assert_eq!(connect.data, "{\"token\":\"t\"}");
        let leave = parse("1/leads,").expect("a disconnect packet");
        assert_eq!(
            (leave.kind, leave.namespace, leave.data),
            (Kind::Disconnect, "/leads", "")
        );
        let bare = parse("0/leads").expect("a namespace without a comma");
        assert_eq!(bare.namespace, "/leads");
        let binary = parse("51-[\"x\",{\"_placeholder\":true,\"num\":0}]").expect("binary");
        assert_eq!((binary.kind, binary.attachments), (Kind::BinaryEvent, 1));
    }

    #[test]
    fn refuses_what_is_not_a_packet() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("9"), Err(ParseError::UnknownKind('9')));
        assert_eq!(parse("5x-[]"), Err(ParseError::Attachments));
        assert_eq!(parse("299999999999999999999999[]"), Err(ParseError::AckId));
    }

    #[test]
    fn takes_event_arguments_the_way_handlers_expect_them() {
        assert_eq!(event_args("[\"a\"]"), Some(("a".into(), None)));
        assert_eq!(
            event_args("[\"a\",\"x\"]"),
            Some(("a".into(), Some(Value::from("x"))))
        );
        assert_eq!(
            event_args("[\"a\",1,2]"),
            Some(("a".into(), Some(Value::from(1))))
        );
        assert_eq!(event_args("[1]"), None);
        assert_eq!(event_args("{}"), None);
        assert_eq!(event_args("[\"a\""), None);
    }

    #[test]
    fn writes_packets_the_client_reads() {
        let data = serde_json::value::to_raw_value(&serde_json::json!({"seq": 1})).unwrap();
        assert_eq!(
            event_raw(Namespace::Jobs, "job-update", &data),
            "42[\"job-update\",{\"seq\":1}]"
        );
        assert_eq!(
            event(Namespace::Leads, "error", "x\"y").unwrap(),
            "42/leads,[\"error\",\"x\\\"y\"]"
        );
        assert_eq!(
            ack(Namespace::Jobs, 12, &serde_json::json!({"ok": true})).unwrap(),
            "4312[{\"ok\":true}]"
        );
        assert_eq!(
            connected(Namespace::Leads, "abc"),
            "40/leads,{\"sid\":\"abc\"}"
        );
        assert_eq!(
            connect_error("/nope", "Invalid namespace"),
            "44/nope,{\"message\":\"Invalid namespace\"}"
        );
        assert_eq!(disconnect(Namespace::Jobs), "41");
        for (polling, upgrades) in [(false, json!([])), (true, json!(["websocket"]))] {
            let open = open(
                "abc",
                polling,
                Duration::from_secs(25),
                Duration::from_secs(20),
                1000,
            );
            let opened: Value = serde_json::from_str(&open[1..]).expect("JSON after the 0");
            assert_eq!(
                opened,
                json!({"sid": "abc", "upgrades": upgrades, "pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 1000})
            );
        }
    }
}
