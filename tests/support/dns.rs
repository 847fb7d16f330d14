//! In-process fake DNS server for integration tests: UDP and TCP on one 127.0.0.1 port.
//!
//! Names are case-insensitive. Unknown name → NXDOMAIN; known name without records of the asked
//! type → NOERROR/NODATA; `servfail(name)` → SERVFAIL for every query of that name. UDP answers
//! larger than 512 bytes (or the query's EDNS size) are sent with TC=1 and no answers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use simple_dns::rdata::{A, AAAA, MX, OPT, RData};
use simple_dns::{CLASS, Name, Packet, PacketFlag, RCODE, ResourceRecord};

const TICK: Duration = Duration::from_millis(100);

#[derive(Default, Clone)]
struct Zone {
    mx: Vec<(u16, String)>,
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
    servfail: bool,
}

#[derive(Default)]
struct State {
    names: HashMap<String, Zone>,
    queries: Vec<(String, u16)>,
}

pub struct FakeDns {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeDns {
    /// Binds UDP and TCP on the same free port of 127.0.0.1 and serves until dropped.
    pub fn start() -> FakeDns {
        let (udp, tcp) = (0..20)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let tcp = TcpListener::bind(udp.local_addr().ok()?).ok()?;
                Some((udp, tcp))
            })
            .expect("FakeDns: no port free for both UDP and TCP");
        let addr = udp.local_addr().unwrap();
        udp.set_read_timeout(Some(TICK)).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));

        let (st, halt) = (state.clone(), stop.clone());
        let udp_thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65535];
            while !halt.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf)
                    && let Some(out) = answer(&st, &buf[..n], true)
                {
                    let _ = udp.send_to(&out, peer);
                }
            }
        });
        let (st, halt) = (state.clone(), stop.clone());
        let tcp_thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, _)) => serve_tcp(conn, &st, &halt),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeDns {
            addr,
            state,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    fn zone(&self, name: &str, f: impl FnOnce(&mut Zone)) -> &Self {
        f(lock(&self.state).names.entry(key(name)).or_default());
        self
    }

    /// Adds MX records (exchange "." is the root).
    pub fn mx(&self, domain: &str, records: &[(u16, &str)]) -> &Self {
        self.zone(domain, |z| {
            z.mx.extend(records.iter().map(|&(p, h)| (p, h.to_string())))
        })
    }

    /// RFC 7505 null MX: a single `MX 0 .`.
    pub fn null_mx(&self, domain: &str) -> &Self {
        self.zone(domain, |z| z.mx = vec![(0, ".".into())])
    }

    pub fn a(&self, host: &str, ip: Ipv4Addr) -> &Self {
        self.zone(host, |z| z.a.push(ip))
    }

    pub fn aaaa(&self, host: &str, ip: Ipv6Addr) -> &Self {
        self.zone(host, |z| z.aaaa.push(ip))
    }

    /// Every query for this name gets SERVFAIL.
    pub fn servfail(&self, domain: &str) -> &Self {
        self.zone(domain, |z| z.servfail = true)
    }

    /// (name lowercased, qtype) of every query seen so far, UDP and TCP.
    pub fn queries(&self) -> Vec<(String, u16)> {
        lock(&self.state).queries.clone()
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Serves length-prefixed queries on one connection until EOF, error, idle timeout or stop.
fn serve_tcp(mut conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(TICK * 10));
    let _ = conn.set_write_timeout(Some(TICK * 10));
    while !stop.load(Ordering::Relaxed) {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; u16::from_be_bytes(len).into()];
        if conn.read_exact(&mut query).is_err() {
            return;
        }
        let Some(out) = answer(state, &query, false) else {
            return;
        };
        let len = (out.len() as u16).to_be_bytes();
        if conn.write_all(&[&len[..], &out].concat()).is_err() {
            return;
        }
    }
}

/// Builds the reply to one query packet; `None` for anything that is not a parsable query.
fn answer(state: &Mutex<State>, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let q = Packet::parse(query).ok()?;
    if q.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    let question = q.questions.first()?.clone();
    let name = key(&question.qname.to_string());
    let qtype: u16 = question.qtype.into();
    let zone = {
        let mut st = lock(state);
        st.queries.push((name.clone(), qtype));
        st.names.get(&name).cloned()
    };

    let mut reply = Packet::new_reply(q.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if q.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    if q.opt().is_some() {
        *reply.opt_mut() = Some(OPT {
            opt_codes: vec![],
            udp_packet_size: 1232,
            version: 0,
        });
    }
    let owner = question.qname.clone();
    reply.questions.push(question);
    let rr = |rdata| ResourceRecord::new(owner.clone(), CLASS::IN, 300, rdata);
    match &zone {
        None => *reply.rcode_mut() = RCODE::NameError,
        Some(z) if z.servfail => *reply.rcode_mut() = RCODE::ServerFailure,
        Some(z) => match qtype {
            15 => {
                let mx = z.mx.iter().map(|(p, h)| {
                    RData::MX(MX {
                        preference: *p,
                        exchange: Name::new_unchecked(h),
                    })
                });
                reply.answers.extend(mx.map(rr));
            }
            1 => reply
                .answers
                .extend(z.a.iter().map(|ip| rr(RData::A(A::from(*ip))))),
            28 => reply
                .answers
                .extend(z.aaaa.iter().map(|ip| rr(RData::AAAA(AAAA::from(*ip))))),
            _ => {}
        },
    }
    let out = reply.build_bytes_vec().ok()?;
    let limit = q
        .opt()
        .map_or(512, |o| usize::from(o.udp_packet_size).max(512));
    if udp && out.len() > limit {
        reply.answers.clear();
        reply.set_flags(PacketFlag::TRUNCATION);
        return reply.build_bytes_vec().ok();
    }
    Some(out)
}
