//! `$SYS` topics with Mosquitto's names, published retained every interval.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rallymq_codec::{Publish, QoS, TopicName};

use crate::broker::Shared;

/// An exponentially weighted moving average per minute, as Mosquitto's `load/*` topics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) one: f64,
    five: f64,
    fifteen: f64,
    last: u64,
}

impl Load {
    pub(crate) fn update(&mut self, total: u64, interval: Duration) {
        let per_minute =
            (total.saturating_sub(self.last)) as f64 * 60.0 / interval.as_secs_f64().max(0.001);
        self.last = total;
        let step = interval.as_secs_f64();
        for (value, window) in [
            (&mut self.one, 60.0),
            (&mut self.five, 300.0),
            (&mut self.fifteen, 900.0),
        ] {
            let factor = (-step / window).exp();
            *value = *value * factor + per_minute * (1.0 - factor);
        }
    }
}

pub(crate) fn publish(shared: &Shared, topic: &str, value: String) {
    // The names below are valid topic names, so this never fails.
    let Ok(topic) = TopicName::new(topic) else {
        return;
    };
    let mut message = Publish::new(topic, value);
    message.qos = QoS::AtMostOnce;
    message.retain = true;
    shared.router.retain(&message);
    shared
        .router
        .route(None, &message, &shared.config.limits, None);
}

pub(crate) async fn publish_periodically(shared: Arc<Shared>, interval: Duration) {
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(interval);
    let mut loads = [Load::default(); 5];
    // The cluster's nodes given topics at the last interval.
    let mut cluster_nodes = Vec::new();
    publish(
        &shared,
        "$SYS/broker/version",
        format!("rallymq version {}", env!("CARGO_PKG_VERSION")),
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let stats = &shared.stats;
        let totals = stats.totals();
        let counters = [
            ("messages/received", totals.routed),
            ("messages/sent", totals.queued),
            ("bytes/received", totals.bytes_received),
            ("bytes/sent", totals.bytes_sent),
            ("connections", stats.connections_total()),
        ];
        for ((name, total), load) in counters.iter().zip(loads.iter_mut()) {
            load.update(*total, interval);
            publish(
                &shared,
                &format!("$SYS/broker/load/{name}/1min"),
                format!("{:.2}", load.one),
            );
            publish(
                &shared,
                &format!("$SYS/broker/load/{name}/5min"),
                format!("{:.2}", load.five),
            );
            publish(
                &shared,
                &format!("$SYS/broker/load/{name}/15min"),
                format!("{:.2}", load.fifteen),
            );
        }
        let connected = stats.clients_connected.load(Ordering::Relaxed);
        let sessions = shared.registry.len();
        let values = [
            (
                "$SYS/broker/uptime",
                format!("{} seconds", shared.started.elapsed().as_secs()),
            ),
            ("$SYS/broker/clients/connected", connected.to_string()),
            (
                "$SYS/broker/clients/disconnected",
                sessions.saturating_sub(connected).to_string(),
            ),
            ("$SYS/broker/clients/total", sessions.to_string()),
            (
                "$SYS/broker/clients/maximum",
                stats.clients_maximum.load(Ordering::Relaxed).to_string(),
            ),
            ("$SYS/broker/messages/received", totals.routed.to_string()),
            ("$SYS/broker/messages/sent", totals.queued.to_string()),
            (
                "$SYS/broker/publish/messages/received",
                totals.publish_received.iter().sum::<u64>().to_string(),
            ),
            (
                "$SYS/broker/publish/messages/sent",
                totals.publish_sent.iter().sum::<u64>().to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped",
                totals.lost().to_string(),
            ),
            (
                "$SYS/broker/bytes/received",
                totals.bytes_received.to_string(),
            ),
            ("$SYS/broker/bytes/sent", totals.bytes_sent.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                shared.router.subscription_count().to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                shared.router.retained_count().to_string(),
            ),
        ];
        for (topic, value) in values {
            publish(&shared, topic, value);
        }
        if let Some(cluster) = shared.cluster.get() {
            cluster.publish_sys(&shared, &mut cluster_nodes);
        }
    }
}
