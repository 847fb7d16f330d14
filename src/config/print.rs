//! `--print-config`: the effective configuration as the command line that reproduces it, one
//! flag per line, every flag with its value (defaults included, so the record stays true when
//! a later version changes a default). Secrets appear as the files they are read from, which
//! is all a flag holds.

use super::{Config, FLAGS, Flags};

/// `--trusted-network` when not given.
pub const TRUSTED_DEFAULT: &[&str] = &["127.0.0.0/8", "::1/128"];

/// Flags that are not part of a configuration.
const ACTIONS: &[&str] = &["help", "version", "print-config"];

/// The values of flags whose default is worked out at start or means "none" (their `--help`
/// default is a description): `Some(values)`, empty for none.
fn computed(name: &str, cfg: &Config) -> Option<Vec<String>> {
    Some(match name {
        "hostname" => vec![cfg.hostname.clone()],
        "spool" => vec![cfg.spool.display().to_string()],
        "postmaster" => vec![cfg.server.postmaster.to_string()],
        "trusted-network" => TRUSTED_DEFAULT.iter().map(|s| s.to_string()).collect(),
        "dest-rate"
        | "rate-limit-ip"
        | "rate-limit-user"
        | "rate-limit-rcpt-user"
        | "dns-server"
        | "tls-cert"
        | "suppression-store" => Vec::new(),
        // Not given, it follows --trusted-network, which is printed.
        "limit-exempt" => Vec::new(),
        _ => return None,
    })
}

pub(super) fn command_line(f: &Flags, cfg: &Config) -> String {
    let mut out = String::from("mxrelay");
    for flag in FLAGS.iter().filter(|d| !ACTIONS.contains(&d.long)) {
        let name = flag.long;
        if flag.hint.is_empty() {
            if f.on(name) {
                out.push_str(&format!(" \\\n  --{name}"));
            }
            continue;
        }
        let given = f.0.opt_strs(name);
        let values = if !given.is_empty() {
            given
        } else if let Some(v) = computed(name, cfg) {
            v
        } else {
            flag.default.map(String::from).into_iter().collect()
        };
        for v in values {
            out.push_str(&format!(" \\\n  --{name} {}", quote(&v)));
        }
    }
    out.push('\n');
    out
}

/// A value as a POSIX shell word.
fn quote(v: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:=,@%+-[]".contains(c);
    if !v.is_empty() && v.chars().all(plain) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::super::{Parsed, parse_args};
    use super::*;

    fn print(args: &[&str]) -> String {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.push("--print-config".into());
        match parse_args(&a).unwrap() {
            Parsed::Print(text) => text,
            other => panic!("{other:?}"),
        }
    }

    /// The printed command line, as arguments (the shell's line continuations and quotes undone).
    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in text.lines().skip(1) {
            let line = line.trim().trim_end_matches(" \\");
            let (flag, value) = line.split_once(' ').unwrap_or((line, ""));
            out.push(flag.to_string());
            if !value.is_empty() {
                let v = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\''));
                out.push(v.map_or(value.to_string(), |v| v.replace(r"'\''", "'")));
            }
        }
        out
    }

    #[test]
    fn every_flag_with_a_default_prints_a_value_it_takes() {
        let text = print(&["--hostname", "relay.test", "--spool", "/tmp/s"]);
        let args = words(&text);
        // Read back, it prints the same: nothing lost, nothing a flag would refuse.
        let again: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(print(&again), text);
        for flag in FLAGS.iter().filter(|f| f.default.is_some()) {
            let name = format!("--{}", flag.long);
            let printed = args.contains(&name);
            let none = computed(flag.long, &dummy()).is_some_and(|v| v.is_empty());
            assert!(printed || none, "{name} not printed:\n{text}");
        }
        assert!(
            text.starts_with("mxrelay \\\n  --listen 127.0.0.1:2525"),
            "{text}"
        );
        assert!(text.contains("\n  --trusted-network 127.0.0.0/8 \\\n  --trusted-network ::1/128"));
        assert!(!text.contains("--print-config") && !text.contains("--help"));
    }

    #[test]
    fn given_values_secrets_as_files_and_quoting() {
        let text = print(&[
            "--hostname",
            "relay.test",
            "--smarthost-user",
            "app",
            "--smarthost",
            "smtp.example.net:587",
            "--smarthost-password-file",
            "/etc/mxrelay/smarthost password",
            "--add-header",
            "X-Env: it's prod",
            "--verbose",
        ]);
        assert!(
            text.contains("  --smarthost-password-file '/etc/mxrelay/smarthost password' \\\n")
        );
        assert!(
            text.contains(r"  --add-header 'X-Env: it'\''s prod'"),
            "{text}"
        );
        assert!(text.ends_with("  --verbose\n") || text.contains("  --verbose \\\n"));
        let args = words(&text);
        let again: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(print(&again), text);
    }

    fn dummy() -> Config {
        match parse_args(&["--hostname".into(), "relay.test".into()]).unwrap() {
            Parsed::Run(c) => *c,
            other => panic!("{other:?}"),
        }
    }
}
