//! `GET /metrics` on the HTTP listeners: the broker's counters (stats.rs, the ones `$SYS`
//! publishes), the sizes of its sessions, queues, retained messages and subscriptions, its
//! store's commits, and the process's memory and descriptors, in the Prometheus text format
//! (or OpenMetrics, when the scraper asks for it), encoded by `prometheus-client`.
//!
//! Nothing here runs on the broker's hot path: every value is read when a scraper asks, from
//! the atomics the connections bump, or by walking the sessions once per scrape.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::broker::Shared;
use crate::listener::{accepted, refuse_unless_get_or_head, response};
use crate::stats::{Dropped, Hex, VERSIONS, VIAS, version_label, via_label};
use crate::store::{COMMIT_SECONDS_BUCKETS, StoreStats};

/// Where the metrics are served.
pub(crate) const PATH: &str = "/metrics";

/// The Content-Type of the OpenMetrics text format that `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET` and `HEAD /metrics`: OpenMetrics to a scraper whose `Accept` lists it (as
/// Prometheus's does), the Prometheus text format 0.0.4 to anyone else.
pub(crate) fn respond<B>(request: &Request<B>, shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    if let Some(refused) = refuse_unless_get_or_head(request.method()) {
        return refused;
    }
    let head = request.method() == Method::HEAD;
    let openmetrics = wants_openmetrics(request.headers());
    let registry = registry(shared);
    let mut body = String::with_capacity(16 * 1024);
    let (encoded, content_type) = if openmetrics {
        (
            prometheus_client::encoding::text::encode(&mut body, &registry),
            OPENMETRICS,
        )
    } else {
        (
            prometheus_client::encoding::prometheus_text::encode(&mut body, &registry),
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    };
    if encoded.is_err() {
        // Writing into a String fails only if a value's own formatting does: a bug.
        return response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "the metrics could not be encoded\n",
        );
    }
    let length = body.len();
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut ok = response(StatusCode::OK, content_type, body);
    let headers = ok.headers_mut();
    headers.insert(header::CONTENT_LENGTH, length.into());
    headers.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    ok
}

/// Whether an `Accept` header lists the OpenMetrics text format (with a non-zero q).
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(accepted)
        .any(|media| media.eq_ignore_ascii_case("application/openmetrics-text"))
}

/// A registry for one scrape: the broker's metrics under `rallymq_`, the process's under the
/// names every Prometheus client library uses (`process_*`).
fn registry(shared: &Arc<Shared>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry
        .sub_registry_with_prefix("rallymq")
        .register_collector(Box::new(BrokerCollector(shared.clone())));
    registry
}

/// One metric without labels.
fn single(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: impl EncodeMetric,
) -> fmt::Result {
    let descriptor = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(descriptor)
}

/// One metric family: a series per label set.
fn family<S: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    series: impl IntoIterator<Item = (S, M)>,
) -> fmt::Result {
    let mut descriptor = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in series {
        metric.encode(descriptor.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The `qos` label.
fn qos_label(index: usize) -> &'static str {
    ["0", "1", "2"][index]
}

/// The broker's own metrics, read from its shared state at each scrape.
#[derive(Debug)]
struct BrokerCollector(Arc<Shared>);

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let shared = &self.0;
        let stats = &shared.stats;
        let encoder = &mut encoder;
        single(
            encoder,
            "build",
            "The broker's version.",
            None,
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        )?;

        // Connections.
        let kinds: Vec<_> = shared
            .config
            .all_listeners()
            .iter()
            .map(|listener| Some(listener.kind))
            .collect();
        let connected = VIAS.iter().flat_map(|via| {
            VERSIONS
                .iter()
                .map(move |version| (*via, *version, stats.connected(*via, *version)))
        });
        family(
            encoder,
            "connections",
            "Clients connected now (CONNECT accepted), by listener and MQTT protocol version.",
            None,
            MetricType::Gauge,
            connected
                .filter(|(via, _, n)| *n != 0 || kinds.contains(via))
                .map(|(via, version, n)| {
                    (
                        [
                            ("listener", via_label(via)),
                            ("protocol", version_label(version)),
                        ],
                        ConstGauge::new(n),
                    )
                }),
        )?;
        single(
            encoder,
            "sockets_open",
            "Sockets open on the listeners: MQTT connections before and after CONNECT, and HTTP \
             connections.",
            None,
            ConstGauge::new(shared.open_connections.load(Ordering::Relaxed) as i64),
        )?;
        family(
            encoder,
            "connects",
            "CONNECTs answered, by CONNACK reason code (MQTT 5 codes; MQTT 3 clients are sent the \
             nearest return code).",
            None,
            MetricType::Counter,
            stats.connacks().into_iter().map(|(code, n)| {
                (
                    [
                        ("code", Hex(code).to_string()),
                        ("reason", format!("{code:?}")),
                    ],
                    ConstCounter::new(n),
                )
            }),
        )?;
        family(
            encoder,
            "disconnects",
            "Accepted connections that ended, by cause and the reason code of the DISCONNECT \
             sent or received (none: no DISCONNECT).",
            None,
            MetricType::Counter,
            stats.disconnects().into_iter().map(|(cause, code, n)| {
                let code = code.map_or_else(|| "none".to_owned(), |code| Hex(code).to_string());
                (
                    [("cause", cause.label().to_owned()), ("code", code)],
                    ConstCounter::new(n),
                )
            }),
        )?;
        family(
            encoder,
            "sockets_refused",
            "Sockets closed on accept, before any MQTT, by the limit that refused them.",
            None,
            MetricType::Counter,
            stats
                .sockets_refused()
                .map(|(cause, n)| ([("cause", cause.label())], ConstCounter::new(n))),
        )?;

        // Messages.
        let totals = stats.totals();
        let by_qos = |counts: [u64; 3]| {
            (0..3).map(move |i| ([("qos", qos_label(i))], ConstCounter::new(counts[i])))
        };
        family(
            encoder,
            "messages_received",
            "PUBLISH packets received from clients, by QoS.",
            None,
            MetricType::Counter,
            by_qos(totals.publish_received),
        )?;
        family(
            encoder,
            "messages_received",
            "Payload bytes of the PUBLISH packets received from clients, by QoS.",
            Some(&Unit::Bytes),
            MetricType::Counter,
            by_qos(totals.publish_received_bytes),
        )?;
        family(
            encoder,
            "messages_sent",
            "PUBLISH packets sent to clients, by QoS (the QoS they were sent with).",
            None,
            MetricType::Counter,
            by_qos(totals.publish_sent),
        )?;
        family(
            encoder,
            "messages_sent",
            "Payload bytes of the PUBLISH packets sent to clients, by QoS.",
            Some(&Unit::Bytes),
            MetricType::Counter,
            by_qos(totals.publish_sent_bytes),
        )?;
        single(
            encoder,
            "messages_routed",
            "Messages published into the broker (by clients, wills and in-process) and routed \
             to subscribers ($SYS/broker/messages/received).",
            None,
            ConstCounter::new(totals.routed),
        )?;
        single(
            encoder,
            "messages_queued",
            "Copies of messages queued for subscribers ($SYS/broker/messages/sent).",
            None,
            ConstCounter::new(totals.queued),
        )?;
        family(
            encoder,
            "messages_dropped",
            "Messages dropped, by cause. All but no_subscribers and the refusals (topic_invalid, \
             not_authorized, refused) are counted in $SYS/broker/publish/messages/dropped.",
            None,
            MetricType::Counter,
            Dropped::ALL
                .iter()
                .zip(totals.dropped)
                .map(|(cause, n)| ([("cause", cause.label())], ConstCounter::new(n))),
        )?;
        single(
            encoder,
            "network_received",
            "Bytes read from clients' connections (MQTT packets, with WebSocket framing on \
             WebSocket listeners; not TLS records or HTTP requests).",
            Some(&Unit::Bytes),
            ConstCounter::new(totals.bytes_received),
        )?;
        single(
            encoder,
            "network_sent",
            "Bytes written to clients' connections (as network_received_bytes).",
            Some(&Unit::Bytes),
            ConstCounter::new(totals.bytes_sent),
        )?;

        // Sessions, queues, subscriptions, retained messages.
        let (mut online, mut offline, mut queued, mut queued_bytes) = (0i64, 0i64, 0u64, 0u64);
        for session in shared.registry.all() {
            let inner = session.lock();
            if inner.attachment.is_some() {
                online += 1;
            } else {
                offline += 1;
            }
            let (messages, bytes) = inner.queue_size();
            queued += messages;
            queued_bytes += bytes;
        }
        family(
            encoder,
            "sessions",
            "Sessions, by whether their client is connected.",
            None,
            MetricType::Gauge,
            [("online", online), ("offline", offline)]
                .map(|(state, n)| ([("state", state)], ConstGauge::new(n))),
        )?;
        single(
            encoder,
            "queued_messages",
            "Messages waiting in the sessions' queues (in memory and in the store), summed over \
             sessions.",
            None,
            ConstGauge::new(queued),
        )?;
        single(
            encoder,
            "queued",
            "Topic and payload bytes of the messages waiting in the sessions' queues.",
            Some(&Unit::Bytes),
            ConstGauge::new(queued_bytes),
        )?;
        single(
            encoder,
            "subscriptions",
            "Subscriptions held (shared ones included).",
            None,
            ConstGauge::new(shared.router.subscription_count() as i64),
        )?;
        single(
            encoder,
            "retained_messages",
            "Retained messages held.",
            None,
            ConstGauge::new(shared.router.retained_count() as i64),
        )?;

        if let Some(store) = shared.store.as_ref().and_then(|store| store.stats()) {
            encode_store(encoder, &store)?;
        }
        Ok(())
    }
}

/// The store's metrics.
fn encode_store(encoder: &mut DescriptorEncoder<'_>, store: &StoreStats) -> fmt::Result {
    single(
        encoder,
        "store_commits",
        "Transactions the store committed.",
        None,
        ConstCounter::new(store.commits),
    )?;
    single(
        encoder,
        "store_durable_commits",
        "Of the store's commits, those synced to disk (the others became durable with the next \
         of these).",
        None,
        ConstCounter::new(store.durable_commits),
    )?;
    single(
        encoder,
        "store_changes",
        "Changes the store committed (a message, a queue entry, a session record...).",
        None,
        ConstCounter::new(store.changes),
    )?;
    single(
        encoder,
        "store_commit_failures",
        "Commits that failed (a full disk, an I/O error); their changes are retried.",
        None,
        ConstCounter::new(store.failed_commits),
    )?;
    let buckets: Vec<(f64, u64)> = COMMIT_SECONDS_BUCKETS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(store.commit_seconds)
        .collect();
    let count = store.commit_seconds.iter().sum();
    let mut descriptor = encoder.encode_descriptor(
        "store_commit_duration",
        "How long the store's commits took, sync included.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    descriptor.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        store.commit_time.as_secs_f64(),
        count,
        &buckets,
        None,
    )
}

/// The process's resident memory, descriptors and CPU time, read from `/proc/self` (Linux;
/// elsewhere none of these is reported).
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second in `/proc/*/stat` (`USER_HZ`, fixed at 100 by the Linux ABI).
const USER_HZ: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let encoder = &mut encoder;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kilobytes = |key: &str| -> Option<i64> {
            let line = status.lines().find_map(|line| line.strip_prefix(key))?;
            let kb: i64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        };
        if let Some(rss) = kilobytes("VmRSS:") {
            single(
                encoder,
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(&Unit::Bytes),
                ConstGauge::new(rss),
            )?;
        }
        if let Some(size) = kilobytes("VmSize:") {
            single(
                encoder,
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(&Unit::Bytes),
                ConstGauge::new(size),
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            single(
                encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                ConstGauge::new(fds.count() as i64),
            )?;
        }
        if let Some(max) = max_open_files() {
            single(
                encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                ConstGauge::new(max),
            )?;
        }
        if let Some((cpu, threads, start)) = stat() {
            single(
                encoder,
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                ConstCounter::new(cpu),
            )?;
            single(
                encoder,
                "process_threads",
                "Number of OS threads in the process.",
                None,
                ConstGauge::new(threads),
            )?;
            if let Some(start) = start {
                single(
                    encoder,
                    "process_start_time",
                    "Start time of the process since unix epoch in seconds.",
                    Some(&Unit::Seconds),
                    ConstGauge::new(start),
                )?;
            }
        }
        Ok(())
    }
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_open_files() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// CPU seconds, threads and start time (seconds since the epoch, if the boot time is known)
/// from `/proc/self/stat`.
fn stat() -> Option<(f64, i64, Option<f64>)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: the fields follow its last ')'.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // Fields 14 and 15 (utime, stime), 20 (num_threads), 22 (starttime), counted from 1 with
    // the pid and the name as fields 1 and 2.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|value| value.parse::<u64>().ok())
    };
    let cpu = (field(14)? + field(15)?) as f64 / USER_HZ;
    let threads = i64::try_from(field(20)?).ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
        stat.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|btime| btime.trim().parse::<u64>().ok())
    });
    let start = boot
        .zip(field(22))
        .map(|(boot, ticks)| boot as f64 + ticks as f64 / USER_HZ);
    Some((cpu, threads, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, accept.parse().expect("a header value"));
        headers
    }

    #[test]
    fn openmetrics_only_for_a_scraper_that_lists_it() {
        // Prometheus 2's Accept header.
        assert!(wants_openmetrics(&headers(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(&headers("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(&headers("*/*")));
        assert!(!wants_openmetrics(&headers(
            "application/openmetrics-text;q=0, text/plain"
        )));
        assert!(!wants_openmetrics(&HeaderMap::new()));
    }

    #[test]
    fn proc_self_is_read() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let (cpu, threads, start) = stat().expect("/proc/self/stat parses");
        assert!(cpu >= 0.0 && threads >= 1, "{cpu} {threads}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        let start = start.expect("the boot time is known");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
        assert!(max_open_files().expect("a limit") > 0);
    }
}
