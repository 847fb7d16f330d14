//! The operator's header rules (`--add-header`, `--remove-header`) and the per-message
//! control header `X-MxRelay-Tag`, which is read into the message's events and never sent on.

use super::head::Field;
use super::{Context, Message, Order, Pass, Transform, TransformError};

/// The control header that tags a message for its events.
pub const TAG_HEADER: &str = "X-MxRelay-Tag";
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
/// are just headers).
pub struct ControlHeaders;

impl Transform for ControlHeaders {
    fn order(&self) -> Order {
        Order::Control
    }

    fn begin(&self, cx: &Context) -> Option<Box<dyn Pass>> {
        (cx.trusted || cx.auth_user.is_some()).then(|| Box::new(ControlPass) as Box<dyn Pass>)
    }
}

struct ControlPass;

impl Pass for ControlPass {
    fn header(&mut self, msg: &mut Message, _: &Context) -> Result<(), TransformError> {
        if let Some(field) = msg.block.take(TAG_HEADER) {
            msg.notes.tag = Some(tag_value(field.value())).filter(|t| !t.is_empty());
        }
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
        let header = b"From: a@b.test\r\nX-MxRelay-Tag:  welcome\r\n  mail\x01 \r\n\r\n";
        let msg = run(&ControlHeaders, true, header).unwrap();
        assert_eq!(msg.notes.tag.as_deref(), Some("welcome mail"));
        assert_eq!(msg.block.to_bytes(), b"From: a@b.test\r\n\r\n");
        assert!(run(&ControlHeaders, false, header).is_none());
        let long = format!("X-MxRelay-Tag: {}\r\n\r\n", "t".repeat(500));
        let msg = run(&ControlHeaders, true, long.as_bytes()).unwrap();
        assert_eq!(msg.notes.tag.unwrap().len(), TAG_MAX);
        let msg = run(&ControlHeaders, true, b"X-MxRelay-Tag:\r\n\r\n").unwrap();
        assert_eq!(msg.notes.tag, None);
    }
}
