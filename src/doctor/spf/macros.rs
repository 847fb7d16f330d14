//! Macros (RFC 7208 7): domain-specs expanded for a sender, a client and a domain.

use super::*;

pub(super) enum Token<'a> {
    Literal(&'a str),
    Escape(&'static str),
    Macro(Macro<'a>),
}

pub(super) struct Macro<'a> {
    /// Lowercase; an uppercase letter in the record sets `url_escape`.
    pub(super) letter: char,
    url_escape: bool,
    keep: Option<usize>,
    reverse: bool,
    delimiters: &'a str,
}

pub(super) fn tokens(text: &str) -> Result<Vec<Token<'_>>, &'static str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let literal_end = rest.find('%').unwrap_or(rest.len());
        if literal_end > 0 {
            let literal = &rest[..literal_end];
            if !literal.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return Err("only visible ASCII is allowed");
            }
            out.push(Token::Literal(literal));
            rest = &rest[literal_end..];
            continue;
        }
        let (token, after) = match rest.as_bytes().get(1) {
            Some(b'%') => (Token::Escape("%"), &rest[2..]),
            Some(b'_') => (Token::Escape(" "), &rest[2..]),
            Some(b'-') => (Token::Escape("%20"), &rest[2..]),
            Some(b'{') => {
                let end = rest.find('}').ok_or("a macro is not closed with }")?;
                (Token::Macro(parse_macro(&rest[2..end])?), &rest[end + 1..])
            }
            _ => return Err("% must be followed by {, %, _ or -"),
        };
        out.push(token);
        rest = after;
    }
    Ok(out)
}

fn parse_macro(body: &str) -> Result<Macro<'_>, &'static str> {
    let letter = body.chars().next().ok_or("empty macro")?;
    if !letter.is_ascii_alphabetic() || !"slodiphcrtv".contains(letter.to_ascii_lowercase()) {
        return Err("unknown macro letter");
    }
    let rest = &body[1..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let keep = match &rest[..digits] {
        "" => None,
        n => match n.parse::<usize>() {
            Ok(0) => return Err("a macro cannot keep zero parts"),
            Ok(n) => Some(n),
            Err(_) => Some(usize::MAX),
        },
    };
    let rest = &rest[digits..];
    let reverse = rest.starts_with(['r', 'R']);
    let delimiters = if reverse { &rest[1..] } else { rest };
    if !delimiters.chars().all(|c| ".-+,/_=".contains(c)) {
        return Err("bad macro delimiter");
    }
    Ok(Macro {
        letter: letter.to_ascii_lowercase(),
        url_escape: letter.is_ascii_uppercase(),
        keep,
        reverse,
        delimiters,
    })
}

/// What macros expand to.
pub struct MacroVars<'a> {
    /// `<sender>` as local@domain (check_host puts "postmaster" for a missing local part).
    pub sender: &'a str,
    /// `<domain>`: the domain whose record is being evaluated.
    pub domain: &'a str,
    pub ip: IpAddr,
    pub helo: &'a str,
    /// `%{p}`: a validated name of the client, "unknown" when there is none.
    pub ptr_name: &'a str,
}

/// Expands a macro string of a domain spec (the c, r and t letters of explanations are refused).
pub fn expand(macro_string: &str, vars: &MacroVars) -> Result<String, SyntaxError> {
    let bad = |why| SyntaxError::BadTerm {
        term: macro_string.to_string(),
        why,
    };
    let mut out = String::new();
    for token in tokens(macro_string).map_err(bad)? {
        match token {
            Token::Literal(text) => out.push_str(text),
            Token::Escape(text) => out.push_str(text),
            Token::Macro(m) => out.push_str(&m.expand(vars).map_err(bad)?),
        }
    }
    Ok(out)
}

impl Macro<'_> {
    fn expand(&self, vars: &MacroVars) -> Result<String, &'static str> {
        let (local, sender_domain) = vars.sender.rsplit_once('@').unwrap_or(("", vars.sender));
        let value = match self.letter {
            's' => vars.sender.to_string(),
            'l' => local.to_string(),
            'o' => sender_domain.to_string(),
            'd' => vars.domain.to_string(),
            'i' => dotted(vars.ip),
            'p' => vars.ptr_name.to_string(),
            'v' if vars.ip.is_ipv4() => "in-addr".to_string(),
            'v' => "ip6".to_string(),
            'h' => vars.helo.to_string(),
            _ => return Err("the c, r and t macros are only for explanations"),
        };
        let delimiters = if self.delimiters.is_empty() {
            "."
        } else {
            self.delimiters
        };
        let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
        if self.reverse {
            parts.reverse();
        }
        if let Some(keep) = self.keep
            && keep < parts.len()
        {
            parts.drain(..parts.len() - keep);
        }
        let joined = parts.join(".");
        Ok(if self.url_escape {
            url_escape(&joined)
        } else {
            joined
        })
    }
}

/// `%{i}`: dotted decimal, or for IPv6 the 32 nibbles dotted (RFC 7208 7.3).
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let nibbles = v6.octets().into_iter().flat_map(|b| [b >> 4, b & 0xf]);
            let hex: Vec<String> = nibbles.map(|n| format!("{n:x}")).collect();
            hex.join(".")
        }
    }
}

fn url_escape(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 7208 7.3: drop a trailing dot, then labels from the left until 253 characters are left.
pub(super) fn truncate_name(name: &str) -> String {
    let mut name = name.strip_suffix('.').unwrap_or(name);
    while name.len() > MAX_NAME_LEN {
        match name.split_once('.') {
            Some((_, rest)) => name = rest,
            None => break,
        }
    }
    name.to_string()
}

pub(super) fn is_valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}
