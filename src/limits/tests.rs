use std::time::Duration;

use super::*;
use crate::config::parse_cidr;
use crate::delivery::clock::FakeClock;

const HOUR: u64 = 3_600_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rate(count: u32, secs: u64) -> Option<Rate> {
    Some(Rate {
        count,
        period: Duration::from_secs(secs),
    })
}

fn limits(cfg: LimitsConfig) -> (Limits, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::at(1_700_000_000_000));
    (Limits::new(cfg, clock.clone()), clock)
}

fn config() -> LimitsConfig {
    LimitsConfig {
        max_connections_per_ip: 2,
        max_messages_per_connection: 100,
        exempt: vec![parse_cidr("127.0.0.0/8").unwrap()],
        ..LimitsConfig::none()
    }
}

#[test]
fn connections_per_address_ipv6_per_64_exempt_uncounted() {
    let (l, _) = limits(config());
    let a = l.connect(ip("192.0.2.1")).unwrap();
    let _b = l.connect(ip("::ffff:192.0.2.1")).unwrap();
    assert_eq!(
        l.connect(ip("192.0.2.1")).err(),
        Some(2),
        "mapped counts as IPv4"
    );
    assert!(l.connect(ip("192.0.2.2")).is_ok(), "another address");
    drop(a);
    let _c = l.connect(ip("192.0.2.1")).expect("a slot was freed");

    let _x = l.connect(ip("2001:db8:1:2::1")).unwrap();
    let _y = l.connect(ip("2001:db8:1:2:ffff::9")).unwrap();
    assert!(l.connect(ip("2001:db8:1:2::77")).is_err(), "same /64");
    assert!(l.connect(ip("2001:db8:1:3::1")).is_ok(), "next /64");

    let many: Vec<_> = (0..50)
        .map(|_| l.connect(ip("127.0.0.1")).unwrap())
        .collect();
    assert_eq!(many.len(), 50, "exempt clients are not capped");
    drop(many);
    // Only addresses with connections open are held.
    assert_eq!(l.addresses_connected(), 2);
}

#[test]
fn the_connection_table_empties_as_connections_close() {
    let (l, _) = limits(config());
    let slots: Vec<_> = (0..1000u32)
        .map(|i| l.connect(IpAddr::V4(i.into())).unwrap())
        .collect();
    assert_eq!(l.addresses_connected(), 1000);
    drop(slots);
    assert_eq!(l.addresses_connected(), 0);
}

#[test]
fn message_rate_per_address_spares_exempt_clients() {
    let (l, clock) = limits(LimitsConfig {
        rate_ip: rate(2, 3600),
        ..config()
    });
    let client = ip("192.0.2.1");
    let mail = |ip| l.admit(ip, None, Admission::Message);
    assert!(mail(client).is_ok() && mail(client).is_ok());
    let refused = mail(client).unwrap_err();
    assert_eq!(refused.limit, RateLimit::Ip);
    assert_eq!(refused.retry_after, Duration::from_secs(1800));
    assert!(mail(ip("2001:db8::1")).is_ok(), "another address");
    assert!(
        (0..100).all(|_| mail(ip("127.0.0.1")).is_ok()),
        "exempt from --rate-limit-ip"
    );
    assert!(l.admit(client, None, Admission::Recipient).is_ok());
    clock.advance(HOUR / 2);
    assert!(mail(client).is_ok(), "one more after PERIOD/N");
    assert!(mail(client).is_err());
}

#[test]
fn user_rates_apply_to_users_wherever_they_come_from() {
    let (l, clock) = limits(LimitsConfig {
        rate_user: rate(1, 3600),
        rate_rcpt_user: rate(3, 3600),
        ..config()
    });
    let local = ip("127.0.0.1");
    let (alice, bob) = (Some("alice"), Some("bob"));
    assert!(l.admit(local, alice, Admission::Message).is_ok());
    let again = l.admit(ip("192.0.2.9"), alice, Admission::Message);
    assert_eq!(again.unwrap_err().limit, RateLimit::User, "exempt or not");
    assert!(l.admit(local, bob, Admission::Message).is_ok());
    assert!(l.admit(local, None, Admission::Message).is_ok(), "no user");
    let rcpt = |user| l.admit(local, user, Admission::Recipient);
    assert!(rcpt(alice).is_ok() && rcpt(alice).is_ok() && rcpt(alice).is_ok());
    let over = rcpt(alice).unwrap_err();
    assert_eq!(
        (over.limit, over.retry_after),
        (RateLimit::UserRecipients, Duration::from_secs(1200))
    );
    assert!(rcpt(bob).is_ok());
    clock.advance(HOUR);
    assert!(l.admit(local, alice, Admission::Message).is_ok());
    assert!(rcpt(alice).is_ok());
}

#[test]
fn a_message_refused_by_the_user_rate_costs_the_address_nothing() {
    let (l, _) = limits(LimitsConfig {
        rate_ip: rate(2, 3600),
        rate_user: rate(1, 3600),
        ..config()
    });
    let client = ip("192.0.2.1");
    assert!(l.admit(client, Some("a"), Admission::Message).is_ok());
    for _ in 0..5 {
        let r = l.admit(client, Some("a"), Admission::Message);
        assert_eq!(r.unwrap_err().limit, RateLimit::User);
    }
    assert!(
        l.admit(client, Some("b"), Admission::Message).is_ok(),
        "the address spent one of two"
    );
    let r = l.admit(client, Some("c"), Admission::Message);
    assert_eq!(r.unwrap_err().limit, RateLimit::Ip);
}

#[test]
fn a_spray_of_addresses_holds_a_bounded_table() {
    let (l, _) = limits(LimitsConfig {
        rate_ip: rate(10, 3600),
        ..config()
    });
    for i in 0..(MAX_KEYS as u32 * 3) {
        let _ = l.admit(
            IpAddr::V4((0x0a00_0000 + i).into()),
            None,
            Admission::Message,
        );
    }
    let held = lock(&l.rates).ip.as_ref().unwrap().len();
    assert!(held <= MAX_KEYS && held > MAX_KEYS * 9 / 10, "{held}");
    // IPv6 from one /64 is one key, however many addresses.
    let (l, _) = limits(LimitsConfig {
        rate_ip: rate(5, 3600),
        ..config()
    });
    let v6 = |i: u64| IpAddr::V6(((0x2001_0db8_0000_0001u128 << 64) | u128::from(i)).into());
    let through = (0..100)
        .filter(|&i| l.admit(v6(i), None, Admission::Message).is_ok())
        .count();
    assert_eq!(through, 5);
}

#[test]
fn sessions_are_told_which_limits_are_theirs() {
    let (l, _) = limits(LimitsConfig {
        rate_ip: rate(5, 60),
        rate_rcpt_user: rate(5, 60),
        ..config()
    });
    assert_eq!(
        l.for_session(ip("192.0.2.1")),
        SessionLimits {
            max_messages: Some(100),
            ip_messages: true,
            user_messages: false,
            user_recipients: true,
        }
    );
    assert_eq!(
        l.for_session(ip("127.0.0.1")),
        SessionLimits {
            max_messages: None,
            ip_messages: false,
            user_messages: false,
            user_recipients: true,
        }
    );
    let (none, _) = limits(LimitsConfig::none());
    assert_eq!(none.for_session(ip("192.0.2.1")), SessionLimits::default());
}
