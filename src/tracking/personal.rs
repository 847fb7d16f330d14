//! What is personalised in each recipient's copy of a message: link and open tracking and
//! the one-click unsubscribe fields. Decided when the message is accepted (from `--track`,
//! `--unsubscribe` and the control headers) and kept in its envelope, so a retry after a
//! restart with other flags sends the same kind of copy.

/// The personalisation of one message; all off: the message is sent as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Personal {
    pub clicks: bool,
    pub opens: bool,
    pub unsubscribe: bool,
}

impl Personal {
    /// Whether each recipient gets a copy of their own (one transaction each).
    pub fn any(self) -> bool {
        self.clicks || self.opens || self.unsubscribe
    }

    /// `clicks,opens,unsubscribe` (those on), as envelopes store it; empty: none.
    pub fn name(self) -> String {
        let on = [
            (self.clicks, "clicks"),
            (self.opens, "opens"),
            (self.unsubscribe, "unsubscribe"),
        ];
        let names: Vec<&str> = on.iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
        names.join(",")
    }

    /// Reads `name`'s form back; `none` or empty is all off.
    pub fn parse(s: &str) -> Result<Personal, String> {
        let mut p = Personal::default();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word.to_ascii_lowercase().as_str() {
                "clicks" => p.clicks = true,
                "opens" => p.opens = true,
                "unsubscribe" => p.unsubscribe = true,
                "none" => {}
                _ => {
                    return Err(format!(
                        "{word:?} is not clicks, opens, unsubscribe or none"
                    ));
                }
            }
        }
        Ok(p)
    }

    /// The tracking part as `X-MxRelay-Track` and `--track` say it: `clicks`, `opens`, both
    /// (comma-separated) or `none`. Unsubscribe is not part of it.
    pub fn parse_track(s: &str) -> Result<(bool, bool), String> {
        let p = Personal::parse(s)?;
        if p.unsubscribe {
            return Err(format!("{s:?}: clicks, opens or none expected"));
        }
        Ok((p.clicks, p.opens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bits in 0..8u8 {
            let p = Personal {
                clicks: bits & 1 != 0,
                opens: bits & 2 != 0,
                unsubscribe: bits & 4 != 0,
            };
            assert_eq!(Personal::parse(&p.name()), Ok(p));
            assert_eq!(p.any(), bits != 0);
        }
    }

    #[test]
    fn track_values() {
        assert_eq!(Personal::parse_track("none"), Ok((false, false)));
        assert_eq!(Personal::parse_track(" Clicks , opens"), Ok((true, true)));
        assert_eq!(Personal::parse_track("opens"), Ok((false, true)));
        assert!(Personal::parse_track("unsubscribe").is_err());
        assert!(Personal::parse_track("links").is_err());
    }
}
