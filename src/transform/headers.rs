//! The operator's header rules (`--add-header`, `--remove-header`) and the per-message
//! control headers, read and never sent on: `X-MxRelay-Tag` (into the message's events),
//! `X-MxRelay-Track` and `X-MxRelay-Unsubscribe` (what each recipient's copy gets).

use super::head::Field;
use super::{Context, Message, Order, Pass, Transform, TransformError};
use crate::tracking::Personal;

/// The control header that tags a message for its events.
pub const TAG_HEADER: &str = "X-MxRelay-Tag";
/// `none`, `clicks`, `opens` or `clicks,opens`: overrides `--track` for the message.
pub const TRACK_HEADER: &str = "X-MxRelay-Track";
/// `yes` or `no`: overrides `--unsubscribe` for the message.
pub const UNSUBSCRIBE_HEADER: &str = "X-MxRelay-Unsubscribe";
/// Tags longer than this are cut (they end up in every event of the message).
const TAG_MAX: usize = 128;

/// A field to add, checked at start: `Name: value`, the name printable ASCII without a colon,
/// the value on one line (a CR or LF would start a header of the client's choosing).
pub fn parse_added(spec: &str) -> Result<Field, String> {
    let (name, value) = spec
        .split_once(':')
        .ok_or_else(|| format!("header {spec:?}: expected \"Name: value\""))?;
    check_name(name)?;
    if value.contains(['\r', '\n']) {
        return Err(format!(
            "header {name}: the value must not contain a line break"
        ));
    }
    if !value.chars().all(|c| c == '\t' || !c.is_control()) {
        return Err(format!(
            "header {name}: the value must not contain control characters"
        ));
    }
    Ok(Field::new(name, value.trim()))
}

/// A field name to remove, checked at start.
pub fn parse_removed(name: &str) -> Result<String, String> {
    check_name(name)?;
    Ok(name.to_string())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!(
            "header name {name:?}: printable ASCII without spaces or colons expected"
        ));
    }
    Ok(())
}

/// `--remove-header` then `--add-header`, for every message.
pub struct HeaderRules {
    pub remove: Vec<String>,
    pub add: Vec<Field>,
}

impl Transform for HeaderRules {
    fn order(&self) -> Order {
        Order::HeaderRules
    }

    fn begin(&self, _: &Context) -> Option<Box<dyn Pass>> {
        if self.remove.is_empty() && self.add.is_empty() {
            return None;
        }
        Some(Box::new(RulesPass {
            remove: self.remove.clone(),
            add: self.add.clone(),
        }))
    }
}

struct RulesPass {
    remove: Vec<String>,
    add: Vec<Field>,
}

impl Pass for RulesPass {
    fn header(&mut self, msg: &mut Message, _: &Context) -> Result<(), TransformError> {
        for name in &self.remove {
            msg.block.remove(name);
        }
        for field in self.add.drain(..) {
            msg.block.append(field);
        }
        Ok(())
    }
}

/// Control headers, honoured only from trusted or authenticated clients (from others they
/// are just headers). Their mail also gets the personalisation the flags turn on.
#[derive(Clone, Copy, Debug, Default)]
pub struct ControlHeaders {
    /// `--track` and `--unsubscribe`: what a message gets unless its headers say otherwise.
    pub defaults: Personal,
    /// What can be turned on at all: tracking needs `--tracking-url` and a secret, the
    /// unsubscribe fields an https one.
    pub available: Personal,
}

impl Transform for ControlHeaders {
    fn order(&self) -> Order {
        Order::Control
    }

    fn begin(&self, cx: &Context) -> Option<Box<dyn Pass>> {
        (cx.trusted || cx.auth_user.is_some()).then(|| Box::new(*self) as Box<dyn Pass>)
    }
}

impl Pass for ControlHeaders {
    fn header(&mut self, msg: &mut Message, cx: &Context) -> Result<(), TransformError> {
        if let Some(field) = msg.block.take(TAG_HEADER) {
            msg.notes.tag = Some(tag_value(field.value())).filter(|t| !t.is_empty());
        }
        let mut p = self.defaults;
        if let Some(field) = msg.block.take(TRACK_HEADER) {
            let value = String::from_utf8_lossy(field.value());
            match Personal::parse_track(&value) {
                Ok((clicks, opens)) => (p.clicks, p.opens) = (clicks, opens),
                Err(e) => log::warn!("{}: {TRACK_HEADER} ignored: {e}", cx.id),
            }
        }
        if let Some(field) = msg.block.take(UNSUBSCRIBE_HEADER) {
            let value = String::from_utf8_lossy(field.value());
            match value.trim().to_ascii_lowercase().as_str() {
                "yes" => p.unsubscribe = true,
                "no" => p.unsubscribe = false,
                _ => log::warn!(
                    "{}: {UNSUBSCRIBE_HEADER} ignored: {value:?} is not yes or no",
                    cx.id
                ),
            }
        }
        let a = self.available;
        if (p.clicks && !a.clicks) || (p.opens && !a.opens) || (p.unsubscribe && !a.unsubscribe) {
            log::warn!(
                "{}: {} asked for, but the relay has no (https) --tracking-url and secret for it",
                cx.id,
                p.name()
            );
        }
        msg.notes.personal = Personal {
            clicks: p.clicks && a.clicks,
            opens: p.opens && a.opens,
            unsubscribe: p.unsubscribe && a.unsubscribe,
        };
        Ok(())
    }
}

/// The tag as events show it: unfolded, trimmed, printable, bounded.
fn tag_value(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(TAG_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::header_pass;
    use super::*;
    use crate::config::Role;

    fn run(t: &dyn Transform, trusted: bool, header: &[u8]) -> Option<Message> {
        let mut msg = header_pass(t, (Role::Smtp, trusted, None), header)?;
        msg.block.remove("Received");
        Some(msg)
    }

    #[test]
    fn added_headers_are_checked_at_start() {
        assert_eq!(
            parse_added("X-Env: prod").unwrap().raw(),
            b"X-Env: prod\r\n"
        );
        for bad in [
            "X-Env",
            "X Env: prod",
            ": prod",
            "X-Env: prod\r\nBcc: spy@evil.test",
            "X-Env: a\nb",
            "X-Env: a\u{0}b",
        ] {
            assert!(parse_added(bad).is_err(), "{bad:?}");
        }
        assert!(parse_removed("User-Agent").is_ok());
        assert!(parse_removed("User Agent").is_err());
    }

    #[test]
    fn rules_remove_any_case_then_add() {
        let rules = HeaderRules {
            remove: vec!["x-originating-ip".into(), "User-Agent".into()],
            add: vec![parse_added("X-Relay: mx").unwrap()],
        };
        let msg = run(
            &rules,
            false,
            b"From: a@b.test\r\nX-Originating-IP: 10.1.1.1\r\nuser-agent: app\r\n 1.0\r\nSubject: s\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            msg.block.to_bytes(),
            b"From: a@b.test\r\nSubject: s\r\nX-Relay: mx\r\n\r\n"
        );
        let none = HeaderRules {
            remove: Vec::new(),
            add: Vec::new(),
        };
        assert!(run(&none, true, b"\r\n").is_none(), "no rules, no pass");
    }

    #[test]
    fn the_tag_is_read_and_removed_for_trusted_clients_only() {
        let control = ControlHeaders::default();
        let header = b"From: a@b.test\r\nX-MxRelay-Tag:  welcome\r\n  mail\x01 \r\n\r\n";
        let msg = run(&control, true, header).unwrap();
        assert_eq!(msg.notes.tag.as_deref(), Some("welcome mail"));
        assert_eq!(msg.block.to_bytes(), b"From: a@b.test\r\n\r\n");
        assert!(run(&control, false, header).is_none());
        let long = format!("X-MxRelay-Tag: {}\r\n\r\n", "t".repeat(500));
        let msg = run(&control, true, long.as_bytes()).unwrap();
        assert_eq!(msg.notes.tag.unwrap().len(), TAG_MAX);
        let msg = run(&control, true, b"X-MxRelay-Tag:\r\n\r\n").unwrap();
        assert_eq!(msg.notes.tag, None);
    }

    #[test]
    fn track_and_unsubscribe_headers_override_the_flags() {
        let all = Personal {
            clicks: true,
            opens: true,
            unsubscribe: true,
        };
        let control = ControlHeaders {
            defaults: Personal {
                clicks: true,
                ..Personal::default()
            },
            available: all,
        };
        let personal = |c: &ControlHeaders, header: &str| {
            let msg = run(c, true, header.as_bytes()).unwrap();
            assert!(!String::from_utf8_lossy(&msg.block.to_bytes()).contains("MxRelay"));
            msg.notes.personal
        };
        assert_eq!(
            personal(&control, "From: a@b.test\r\n\r\n").name(),
            "clicks"
        );
        let h = "X-MxRelay-Track: opens\r\nX-MxRelay-Unsubscribe: Yes\r\n\r\n";
        assert_eq!(personal(&control, h).name(), "opens,unsubscribe");
        assert_eq!(
            personal(&control, "X-MxRelay-Track: none\r\n\r\n").name(),
            ""
        );
        // A value that makes no sense leaves the flags' choice.
        let h = "X-MxRelay-Track: everything\r\nX-MxRelay-Unsubscribe: maybe\r\n\r\n";
        assert_eq!(personal(&control, h).name(), "clicks");
        // Nothing the relay cannot do, whatever the header asks.
        let bare = ControlHeaders::default();
        let h = "X-MxRelay-Track: clicks,opens\r\nX-MxRelay-Unsubscribe: yes\r\n\r\n";
        assert_eq!(personal(&bare, h).name(), "");
        // Untrusted clients' headers are just headers.
        let msg = run(&control, false, h.as_bytes());
        assert!(msg.is_none());
    }
}
