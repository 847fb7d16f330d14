//! The command line: sendmail's flags (getopt-like, values attached or separate) and the
//! submission target.

pub(super) const USAGE: &str = "\
usage: mxrelay sendmail [-t] [-i] [-f SENDER] [-F NAME] [--submit-to HOST:PORT] [--] [RECIPIENT...]
Reads a message from stdin and queues it with the mxrelay daemon (default 127.0.0.1:2525,
or $MXRELAY_SUBMIT_TO). Exits 0 once the message is queued.
  -t            also send to the To:, Cc: and Bcc: addresses (Bcc: is removed)
  -i, -oi       a line with a single \".\" does not end the message
  -f SENDER     envelope sender (-f '<>' for the null sender); default $USER@hostname
  -F NAME       full name for the From: header added when the message has none
";

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Options {
    pub(super) extract: bool,
    pub(super) ignore_dots: bool,
    pub(super) sender: Option<String>,
    pub(super) full_name: Option<String>,
    pub(super) submit_to: Option<String>,
    pub(super) recipients: Vec<String>,
    pub(super) help: bool,
}

/// sendmail's flags, getopt-style: `-ti`, `-oi`, `-fx` and `-f x` all work.
pub(super) fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            o.recipients.extend(it.cloned());
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some(("submit-to", v)) => o.submit_to = Some(v.to_string()),
                None if long == "submit-to" => {
                    let v = it.next().ok_or("--submit-to needs HOST:PORT")?;
                    o.submit_to = Some(v.clone());
                }
                None if long == "help" => o.help = true,
                _ => return Err(format!("unknown flag {arg} (see --help)")),
            }
            continue;
        }
        let Some(flags) = arg.strip_prefix('-') else {
            o.recipients.push(arg.clone());
            continue;
        };
        if flags.is_empty() {
            return Err("unknown flag - (see --help)".into());
        }
        for (i, c) in flags.char_indices() {
            match c {
                't' => o.extract = true,
                'i' => o.ignore_dots = true,
                'v' | 'm' | 'n' | 'U' | 'G' => {}
                'f' | 'r' | 'F' | 'o' | 'b' | 'N' | 'R' | 'V' | 'B' | 'L' | 'h' => {
                    let attached = &flags[i + 1..];
                    let value = if attached.is_empty() {
                        it.next().ok_or(format!("-{c} needs a value"))?.clone()
                    } else {
                        attached.to_string()
                    };
                    match c {
                        'f' | 'r' => o.sender = Some(value),
                        'F' => o.full_name = Some(value),
                        'o' if value == "i" => o.ignore_dots = true,
                        'b' if value == "p" => {
                            return Err("-bp is not supported (use mxrelay queue list)".into());
                        }
                        'b' if value != "m" => {
                            return Err(format!(
                                "-b{value} is not supported (only -bm, sending a message, is)"
                            ));
                        }
                        _ => {} // -oX, -N, -R, -V, -B, -L, -h: tolerated
                    }
                    break;
                }
                _ => return Err(format!("unknown flag -{c} (see --help)")),
            }
        }
    }
    Ok(o)
}

/// A `HOST:PORT` submission target (IPv6 as `[::1]:2525`).
pub(super) fn valid_target(t: &str) -> bool {
    t.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn flags() {
        let o = |f: fn(&mut Options)| {
            let mut o = Options::default();
            f(&mut o);
            Ok(o)
        };
        let cases: Vec<(&[&str], Result<Options, String>)> = vec![
            (&["a@b"], o(|o| o.recipients = args(&["a@b"]))),
            (
                &["-t", "-i"],
                o(|o| (o.extract, o.ignore_dots) = (true, true)),
            ),
            (&["-ti"], o(|o| (o.extract, o.ignore_dots) = (true, true))),
            (
                &["-oi", "-oem", "-odb", "-bm", "-v"],
                o(|o| o.ignore_dots = true),
            ),
            (&["-o", "i"], o(|o| o.ignore_dots = true)),
            (
                &["-f", "x@y", "a@b"],
                o(|o| (o.sender, o.recipients) = (Some("x@y".into()), args(&["a@b"]))),
            ),
            (&["-fx@y"], o(|o| o.sender = Some("x@y".into()))),
            (&["-r", "x@y"], o(|o| o.sender = Some("x@y".into()))),
            (&["-f", ""], o(|o| o.sender = Some("".into()))),
            (
                &["-F", "Cron Daemon"],
                o(|o| o.full_name = Some("Cron Daemon".into())),
            ),
            (
                &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
                o(|o| {
                    (o.full_name, o.ignore_dots, o.recipients) =
                        (Some("CronDaemon".into()), true, args(&["root"]))
                }),
            ),
            (
                &["-N", "never", "-R", "hdrs", "-V", "id", "a@b"],
                o(|o| o.recipients = args(&["a@b"])),
            ),
            (
                &["a@b", "-t"],
                o(|o| (o.extract, o.recipients) = (true, args(&["a@b"]))),
            ),
            (
                &["--", "-t", "a@b"],
                o(|o| o.recipients = args(&["-t", "a@b"])),
            ),
            (
                &["--submit-to", "h:1", "a@b"],
                o(|o| (o.submit_to, o.recipients) = (Some("h:1".into()), args(&["a@b"]))),
            ),
            (
                &["--submit-to=h:1"],
                o(|o| o.submit_to = Some("h:1".into())),
            ),
            (&["--help"], o(|o| o.help = true)),
            (
                &["-bs"],
                Err("-bs is not supported (only -bm, sending a message, is)".into()),
            ),
            (
                &["-b", "d"],
                Err("-bd is not supported (only -bm, sending a message, is)".into()),
            ),
            (
                &["-bp"],
                Err("-bp is not supported (use mxrelay queue list)".into()),
            ),
            (&["-x"], Err("unknown flag -x (see --help)".into())),
            (&["-"], Err("unknown flag - (see --help)".into())),
            (&["-tq"], Err("unknown flag -q (see --help)".into())),
            (&["--frob"], Err("unknown flag --frob (see --help)".into())),
            (&["-f"], Err("-f needs a value".into())),
            (&["--submit-to"], Err("--submit-to needs HOST:PORT".into())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_args(&args(input)), want, "{input:?}");
        }
    }

    #[test]
    fn targets() {
        for (t, ok) in [
            ("127.0.0.1:2525", true),
            ("localhost:25", true),
            ("[::1]:2525", true),
            ("127.0.0.1", false),
            (":25", false),
            ("h:0", false),
            ("h:99999", false),
        ] {
            assert_eq!(valid_target(t), ok, "{t}");
        }
    }
}
