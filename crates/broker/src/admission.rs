//! Admission of new connections by client IP address: how many may be open at once, and how
//! many may start each second (a token bucket per address), so that one host cannot take every
//! connection slot or flood the listener.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Limits;

/// Past this many addresses tracked, those idle (nothing open, bucket full again) are dropped.
const SWEEP_ABOVE: usize = 4096;

/// Connections by client address.
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    addresses: Mutex<HashMap<IpAddr, Address>>,
}

#[derive(Debug)]
struct Address {
    open: usize,
    /// New connections it may still start now (up to the rate: a second's worth).
    tokens: f64,
    refilled: Instant,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    TooManyOpen,
    TooFast,
}

/// An admitted connection's place in its address's count, given back when dropped (shared by
/// the HTTP connection and the MQTT connection it is upgraded to).
#[derive(Debug)]
pub(crate) struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut addresses = crate::lock(&self.per_ip.addresses);
        if let Some(address) = addresses.get_mut(&self.ip) {
            address.open = address.open.saturating_sub(1);
        }
    }
}

impl PerIp {
    /// Admits a connection from `ip` if the limits allow; `Ok(None)` when no per-address limit
    /// is set (nothing is tracked then).
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &Limits,
        now: Instant,
    ) -> Result<Option<Arc<IpSlot>>, Refusal> {
        if limits.max_connections_per_ip == 0 && limits.max_connection_rate_per_ip == 0 {
            return Ok(None);
        }
        let rate = f64::from(limits.max_connection_rate_per_ip);
        let mut addresses = crate::lock(&self.addresses);
        if addresses.len() > SWEEP_ABOVE {
            addresses.retain(|_, address| {
                address.open > 0
                    || (rate > 0.0 && now.duration_since(address.refilled).as_secs_f64() < 1.0)
            });
        }
        let address = addresses.entry(ip).or_insert(Address {
            open: 0,
            tokens: rate,
            refilled: now,
        });
        if limits.max_connections_per_ip > 0 && address.open >= limits.max_connections_per_ip {
            return Err(Refusal::TooManyOpen);
        }
        if rate > 0.0 {
            let elapsed = now.duration_since(address.refilled).as_secs_f64();
            address.tokens = (address.tokens + elapsed * rate).min(rate);
            address.refilled = now;
            if address.tokens < 1.0 {
                return Err(Refusal::TooFast);
            }
            address.tokens -= 1.0;
        }
        address.open += 1;
        Ok(Some(Arc::new(IpSlot {
            per_ip: self.clone(),
            ip,
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(open: usize, rate: u32) -> Limits {
        Limits {
            max_connections_per_ip: open,
            max_connection_rate_per_ip: rate,
            ..Limits::default()
        }
    }

    #[test]
    fn open_connections_per_address_are_capped_and_given_back() {
        let per_ip = Arc::new(PerIp::default());
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        let first = per_ip.admit(a, &limits(2, 0), now).unwrap();
        let _second = per_ip.admit(a, &limits(2, 0), now).unwrap();
        assert_eq!(
            per_ip.admit(a, &limits(2, 0), now).unwrap_err(),
            Refusal::TooManyOpen
        );
        assert!(
            per_ip.admit(b, &limits(2, 0), now).is_ok(),
            "another address"
        );
        drop(first);
        assert!(
            per_ip.admit(a, &limits(2, 0), now).is_ok(),
            "a slot came back"
        );
    }

    #[test]
    fn new_connections_per_second_are_a_token_bucket() {
        let per_ip = Arc::new(PerIp::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let start = Instant::now();
        let mut slots = Vec::new();
        for _ in 0..5 {
            slots.push(per_ip.admit(a, &limits(0, 5), start).unwrap());
        }
        assert_eq!(
            per_ip.admit(a, &limits(0, 5), start).unwrap_err(),
            Refusal::TooFast
        );
        // 200 ms later one more is allowed (5 a second).
        let later = start + Duration::from_millis(210);
        assert!(per_ip.admit(a, &limits(0, 5), later).is_ok());
        assert_eq!(
            per_ip.admit(a, &limits(0, 5), later).unwrap_err(),
            Refusal::TooFast
        );
    }

    #[test]
    fn without_limits_nothing_is_tracked() {
        let per_ip = Arc::new(PerIp::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(
            per_ip
                .admit(a, &limits(0, 0), Instant::now())
                .unwrap()
                .is_none()
        );
        assert!(crate::lock(&per_ip.addresses).is_empty());
    }
}
