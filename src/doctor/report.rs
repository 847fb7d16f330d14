//! The doctor's report: one finding per line, ok / warn / fail, what was seen and what to
//! change; as text for a terminal or as JSON (`--json`).

use std::fmt::Write as _;

use crate::events::string as json_string;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's verdict on one thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// "spf", "dkim", "dmarc", "mx", "ptr" or "reachability".
    pub check: &'static str,
    pub status: Status,
    /// What was found, in one sentence.
    pub text: String,
    /// What to change, when the status is not ok.
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, text: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Ok,
            text: text.into(),
            fix: None,
        }
    }

    pub fn warn(check: &'static str, text: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Finding::ok(check, text)
        }
    }

    pub fn fail(check: &'static str, text: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            status: Status::Fail,
            fix: Some(fix.into()),
            ..Finding::ok(check, text)
        }
    }
}

/// The whole report for one domain.
#[derive(Debug, Default)]
pub struct Report {
    pub domain: String,
    /// How the relay was seen to send: addresses, hostname, next hop (one line).
    pub setup: String,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    pub fn failed(&self) -> bool {
        self.count(Status::Fail) > 0
    }

    pub fn text(&self) -> String {
        let mut s = format!("mxrelay check {}\n  {}\n\n", self.domain, self.setup);
        for f in &self.findings {
            let status = match f.status {
                Status::Ok => "ok",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            let _ = writeln!(s, "{status:<5} {:<13} {}", f.check, f.text);
            if let Some(fix) = &f.fix {
                let _ = writeln!(s, "{:19} fix: {fix}", "");
            }
        }
        let _ = writeln!(
            s,
            "\n{} failed, {} warnings, {} ok",
            self.count(Status::Fail),
            self.count(Status::Warn),
            self.count(Status::Ok)
        );
        s
    }

    pub fn json(&self) -> String {
        let mut s = String::from("{\"domain\":");
        json_string(&mut s, &self.domain);
        s.push_str(",\"setup\":");
        json_string(&mut s, &self.setup);
        s.push_str(",\"checks\":[");
        for (i, f) in self.findings.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str("{\"check\":");
            json_string(&mut s, f.check);
            s.push_str(",\"status\":");
            json_string(&mut s, f.status.name());
            s.push_str(",\"text\":");
            json_string(&mut s, &f.text);
            s.push_str(",\"fix\":");
            match &f.fix {
                Some(fix) => json_string(&mut s, fix),
                None => s.push_str("null"),
            }
            s.push('}');
        }
        let _ = writeln!(
            s,
            "],\"summary\":{{\"ok\":{},\"warn\":{},\"fail\":{}}}}}",
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail)
        );
        s
    }
}
