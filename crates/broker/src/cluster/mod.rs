//! Cluster mode: several brokers sharing one MQTT space through NATS (issue 17).

// Used by the cluster's link, which comes next.
#[allow(dead_code)]
mod subject;
