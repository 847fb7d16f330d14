//! The HTTP routes that answer tracking links, for `crate::http::serve`: `GET /c/TOKEN`
//! redirects (302) to the URL the token signed, `GET /o/TOKEN` answers a 1x1 transparent GIF
//! that is never cached, `GET /u/TOKEN` shows a confirmation page whose form POSTs back, and
//! `POST /u/TOKEN` (RFC 8058's one-click POST, or that form) unsubscribes. A token that does
//! not verify, or is for another route, gets 404: never a redirect to a URL we did not sign.
//! Clicks and opens go to the caller's event function, with the user agent, the client's
//! address and whether a known image proxy fetched the pixel; the unsubscribe goes to the
//! caller's function, which must have made it durable before it returns.

use std::net::IpAddr;
use std::sync::Arc;

use super::token::{Keys, Kind};
use crate::http::{self, Handler, Request, Response};

/// A click, open or unsubscribe seen by the endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub kind: Kind,
    pub queue_id: String,
    pub recipient: String,
    /// The original URL (clicks).
    pub url: Option<String>,
    pub user_agent: Option<String>,
    pub client: Option<IpAddr>,
    /// Fetched by a mail provider's image proxy (see [`image_proxy`]), not by a person.
    pub proxy: bool,
}

/// Called for each click and open (GET only: HEAD records nothing).
pub type OnHit = dyn Fn(Hit) + Send + Sync;
/// Called for each unsubscribe POST; `Err` (logged) answers 503 so the sender retries.
pub type OnUnsubscribe = dyn Fn(&Hit) -> Result<(), String> + Send + Sync;

/// The tracking and unsubscribe routes.
pub struct Endpoint {
    keys: Keys,
    on_hit: Box<OnHit>,
    on_unsubscribe: Box<OnUnsubscribe>,
}

/// The smallest transparent GIF: 1x1, one transparent colour.
pub const PIXEL: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\
    \x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

const HTML: &str = "text/html; charset=utf-8";

/// Known image proxies of mail providers, which fetch images for (or ahead of) their users,
/// so an open they report is not a person reading. Public sources: Gmail's proxy announces
/// itself as `... (via ggpht.com GoogleImageProxy)` (Google, "Images now showing", 2013, and
/// every sender's logs since); Yahoo's as `YahooMailProxy`; Apple Mail Privacy Protection
/// (iOS 15 / macOS 12, 2021) loads images through Apple's relay with the bare user agent
/// `Mozilla/5.0` (as ESPs such as SocketLabs and Mailchimp document), and Apple owns all of
/// 17.0.0.0/8. Apple also publishes its relay egress ranges
/// (mask-api.icloud.com/egress-ip-ranges.csv), too large and changing to embed here.
const PROXIES: &[(&str, Rule)] = &[
    ("gmail", Rule::AgentContains("GoogleImageProxy")),
    ("yahoo", Rule::AgentContains("YahooMailProxy")),
    ("apple", Rule::AgentIs("Mozilla/5.0")),
    ("apple", Rule::Ipv4Prefix([17, 0, 0, 0], 8)),
];

enum Rule {
    AgentContains(&'static str),
    AgentIs(&'static str),
    Ipv4Prefix([u8; 4], u32),
}

/// Which known image proxy (see `PROXIES`) made a request, if any.
pub fn image_proxy(user_agent: Option<&str>, client: Option<IpAddr>) -> Option<&'static str> {
    let ua = user_agent.unwrap_or("");
    let v4 = match client {
        Some(IpAddr::V4(a)) => Some(a),
        Some(IpAddr::V6(a)) => a.to_ipv4_mapped(),
        None => None,
    };
    PROXIES.iter().find_map(|(name, rule)| {
        let hit = match rule {
            Rule::AgentContains(s) => ua.contains(s),
            Rule::AgentIs(s) => ua == *s,
            Rule::Ipv4Prefix(net, bits) => v4.is_some_and(|a| {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(a) & mask == u32::from_be_bytes(*net) & mask
            }),
        };
        hit.then_some(*name)
    })
}

impl Endpoint {
    pub fn new(
        keys: Keys,
        on_hit: impl Fn(Hit) + Send + Sync + 'static,
        on_unsubscribe: impl Fn(&Hit) -> Result<(), String> + Send + Sync + 'static,
    ) -> Endpoint {
        Endpoint {
            keys,
            on_hit: Box::new(on_hit),
            on_unsubscribe: Box::new(on_unsubscribe),
        }
    }

    /// A handler answering these routes and 404 for any other path.
    pub fn handler(self) -> Arc<Handler> {
        Arc::new(move |r: &Request| self.route(r).unwrap_or_else(Response::not_found))
    }

    /// The answer for `/c/`, `/o/` and `/u/` paths; `None` for other paths, so one listener
    /// can serve these and `/metrics`.
    pub fn route(&self, r: &Request) -> Option<Response> {
        let (kind, token) = match r.path.get(..3)? {
            "/c/" => (Kind::Click, &r.path[3..]),
            "/o/" => (Kind::Open, &r.path[3..]),
            "/u/" => (Kind::Unsubscribe, &r.path[3..]),
            _ => return None,
        };
        let allowed = if kind == Kind::Unsubscribe {
            "GET, HEAD, POST"
        } else {
            "GET, HEAD"
        };
        let method = r.method;
        let post = kind == Kind::Unsubscribe && method == "POST";
        if !(post || matches!(method, "GET" | "HEAD")) {
            return Some(Response::method_not_allowed(allowed));
        }
        let Some(claims) = self.keys.verify(token).filter(|c| c.kind == kind) else {
            return Some(Response::not_found());
        };
        let client = r.peer.map(|p| p.ip());
        let hit = Hit {
            kind,
            queue_id: claims.queue_id,
            recipient: claims.recipient,
            url: claims.url,
            user_agent: r.user_agent.map(String::from),
            client,
            proxy: kind == Kind::Open && image_proxy(r.user_agent, client).is_some(),
        };
        Some(match kind {
            Kind::Click => {
                // `verify` only gives http(s) URLs without control characters.
                let url = hit.url.clone().unwrap_or_default();
                if method == "GET" {
                    (self.on_hit)(hit);
                }
                let mut resp = Response::ok(HTML, b"<a href=\"\">moved</a>\n".to_vec());
                resp.status = "302 Found";
                resp.headers.push(("Location", ascii_location(&url)));
                // The tracking URL names the recipient: keep it out of the target's logs.
                resp.headers.push(("Referrer-Policy", "no-referrer".into()));
                resp
            }
            Kind::Open => {
                if method == "GET" {
                    (self.on_hit)(hit);
                }
                let mut resp = Response::ok("image/gif", PIXEL.to_vec());
                resp.headers.push(("Pragma", "no-cache".into()));
                resp.headers.push(("Expires", "0".into()));
                resp
            }
            Kind::Unsubscribe if method == "POST" => match (self.on_unsubscribe)(&hit) {
                Ok(()) => page(
                    "Unsubscribed",
                    &format!(
                        "<p>{} will get no more of these messages.</p>",
                        escape(&hit.recipient)
                    ),
                ),
                Err(e) => {
                    log::error!("unsubscribe of {} failed: {e}", hit.recipient);
                    http::text("503 Service Unavailable", "please try again later")
                }
            },
            // Link scanners fetch with GET: only a POST unsubscribes.
            Kind::Unsubscribe => page(
                "Unsubscribe",
                &format!(
                    "<p>Stop sending these messages to {}?</p>\n\
                     <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" \
                     value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
                    escape(&hit.recipient)
                ),
            ),
        })
    }
}

/// A Location value in ASCII: bytes of non-ASCII characters percent-encoded (RFC 3986).
fn ascii_location(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for b in url.bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta name=\"robots\" \
         content=\"noindex\"><title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n{body}\n\
         </body></html>\n"
    );
    Response::ok(HTML, html.into_bytes())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_proxies() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
        let table = [
            (Some(gmail), ip("66.249.84.1"), Some("gmail")),
            (
                Some("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"),
                None,
                Some("yahoo"),
            ),
            (Some("Mozilla/5.0"), ip("104.28.1.1"), Some("apple")),
            (Some("Mozilla/5.0 (iPhone)"), ip("17.58.1.2"), Some("apple")),
            (None, ip("::ffff:17.0.0.1"), Some("apple")),
            (Some("Mozilla/5.0 (iPhone)"), ip("18.0.0.1"), None),
            (Some("curl/8"), ip("2001:db8::1"), None),
            (None, None, None),
        ];
        for (ua, client, want) in table {
            assert_eq!(image_proxy(ua, client), want, "{ua:?} {client:?}");
        }
    }

    #[test]
    fn locations_are_ascii() {
        assert_eq!(ascii_location("https://a/é?x=1"), "https://a/%C3%A9?x=1");
        assert_eq!(ascii_location("https://a/b"), "https://a/b");
    }

    #[test]
    fn the_pixel_is_a_gif() {
        assert!(PIXEL.starts_with(b"GIF89a\x01\x00\x01\x00"));
        assert_eq!(PIXEL.last(), Some(&b';'));
        assert_eq!(PIXEL.len(), 43);
    }
}
