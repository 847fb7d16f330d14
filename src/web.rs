//! The relay's HTTP side: `/metrics` (`--metrics-listen`) and the tracking and unsubscribe
//! links (`--tracking-listen`), on one listener when both flags name the same address, else
//! on two. Listeners are bound at start (privileged ports, before `--user`); they serve once
//! the events and the suppression list they report to are open.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::delivery::clock::now_ms;
use crate::events::{Event, Events};
use crate::http::{self, Request, Response};
use crate::metrics::{self, Metrics};
use crate::suppression::{Entry, Reason, Suppressions};
use crate::tracking::{Endpoint, Hit, Links};

/// `/metrics` alone keeps `crate::http`'s default cap.
const METRICS_MAX_CONNECTIONS: usize = 16;

/// A bound listener and what it serves.
pub struct Bound {
    listener: TcpListener,
    metrics: bool,
    tracking: bool,
}

/// A listener being served: its address and its stop flag (see `http::shutdown`).
pub type Serving = (SocketAddr, Arc<AtomicBool>);

/// Binds the listeners the flags ask for.
pub fn bind(metrics: Option<SocketAddr>, tracking: Option<SocketAddr>) -> io::Result<Vec<Bound>> {
    let mut bound = Vec::new();
    if let Some(addr) = metrics {
        bound.push(Bound {
            listener: http::bind(addr, "metrics")?,
            metrics: true,
            tracking: tracking == Some(addr),
        });
    }
    if let Some(addr) = tracking.filter(|a| metrics != Some(*a)) {
        bound.push(Bound {
            listener: http::bind(addr, "tracking")?,
            metrics: false,
            tracking: true,
        });
    }
    Ok(bound)
}

/// What the routes report to.
pub struct Routes {
    pub metrics: Arc<Metrics>,
    /// With `--tracking-url`.
    pub links: Option<Links>,
    pub events: Arc<Events>,
    pub suppressions: Arc<Suppressions>,
    /// `--tracking-max-connections`.
    pub tracking_max_connections: usize,
}

/// Serves every bound listener.
pub fn serve(bound: Vec<Bound>, routes: Routes) -> io::Result<Vec<Serving>> {
    let endpoint = routes.links.as_ref().map(|l| {
        Arc::new(endpoint(
            l,
            routes.events.clone(),
            routes.suppressions.clone(),
        ))
    });
    let mut serving = Vec::new();
    for b in bound {
        let metrics = b.metrics.then(|| routes.metrics.clone());
        let tracking = endpoint.clone().filter(|_| b.tracking);
        let handler = move |r: &Request| {
            let answer = match (&metrics, &tracking) {
                (Some(m), _) if r.path == "/metrics" => metrics::route(r, m),
                (_, Some(t)) => t.route(r),
                _ => None,
            };
            answer.unwrap_or_else(Response::not_found)
        };
        let (name, max) = match b.tracking {
            true => ("tracking", routes.tracking_max_connections),
            false => ("metrics", METRICS_MAX_CONNECTIONS),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let local = http::serve_on(b.listener, name, Arc::new(handler), stop.clone(), max)?;
        if b.metrics {
            log::info!("serving metrics on http://{local}/metrics");
        }
        if b.tracking {
            log::info!("serving tracking and unsubscribe links on http://{local}/");
        }
        serving.push((local, stop));
    }
    Ok(serving)
}

/// The tracking routes: clicks and opens become events; an unsubscribe is put on the
/// suppression list (on disk before the POST is answered), then reported.
fn endpoint(links: &Links, events: Arc<Events>, list: Arc<Suppressions>) -> Endpoint {
    let hits = events.clone();
    Endpoint::new(
        links.keys().clone(),
        move |hit: Hit| hits.report(&engaged(&hit, &hit.client.map(|c| c.to_string()))),
        move |hit: &Hit| {
            let now = now_ms();
            let entry = Entry {
                address: hit.recipient.clone(),
                reason: Reason::Unsubscribe,
                added: now,
                expires: None,
            };
            list.add(vec![entry], now)
                .map_err(|e| format!("cannot write the suppression list: {e}"))?;
            events.report(&engaged(hit, &hit.client.map(|c| c.to_string())));
            Ok(())
        },
    )
}

fn engaged<'a>(hit: &'a Hit, client: &'a Option<String>) -> Event<'a> {
    Event::Engaged {
        kind: hit.kind,
        id: &hit.queue_id,
        recipient: &hit.recipient,
        url: hit.url.as_deref(),
        user_agent: hit.user_agent.as_deref(),
        client_ip: client.as_deref(),
        proxy: hit.proxy,
    }
}
