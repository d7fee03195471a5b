//! Broker URLs: `mqtt://`, `mqtts://`, `ws://` and `wss://`, with optional credentials, port
//! and (for WebSockets) path.

use crate::Error;

/// The transport a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// MQTT over TCP (`mqtt://`, default port 1883).
    Mqtt,
    /// MQTT over TLS (`mqtts://`, default port 8883).
    Mqtts,
    /// MQTT over WebSockets (`ws://`, default port 80).
    Ws,
    /// MQTT over WebSockets over TLS (`wss://`, default port 443).
    Wss,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Self::Mqtt => 1883,
            Self::Mqtts => 8883,
            Self::Ws => 80,
            Self::Wss => 443,
        }
    }

    /// Whether the transport is TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Mqtts | Self::Wss)
    }

    /// Whether the transport is a WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// The transport.
    pub scheme: Scheme,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (the scheme's default when the URL has none).
    pub port: u16,
    /// Path and query for WebSockets (`/mqtt` when the URL has none); ignored otherwise.
    pub path: String,
    /// User name from the URL, if any.
    pub username: Option<String>,
    /// Password from the URL, if any.
    pub password: Option<String>,
}

impl BrokerUrl {
    /// Parses `scheme://[user[:password]@]host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let invalid = |why: &str| Error::InvalidUrl(format!("{url}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Scheme::Mqtt,
            "mqtts" | "ssl" | "tls" => Scheme::Mqtts,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            _ => return Err(invalid("the scheme must be mqtt, mqtts, ws or wss")),
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (Some(user.to_owned()), Some(password.to_owned())),
                None => (Some(info.to_owned()), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = match port {
            Some(port) => port.parse().map_err(|_| invalid("bad port"))?,
            None => scheme.default_port(),
        };
        let path = if path.is_empty() {
            "/mqtt".to_owned()
        } else {
            path.to_owned()
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            path,
            username,
            password,
        })
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_with_defaults() {
        let url = BrokerUrl::parse("mqtt://broker.example").unwrap();
        assert_eq!(
            (url.scheme, url.port, url.host.as_str()),
            (Scheme::Mqtt, 1883, "broker.example")
        );
        assert_eq!(BrokerUrl::parse("mqtts://h").unwrap().port, 8883);
        let ws = BrokerUrl::parse("ws://127.0.0.1:8080").unwrap();
        assert_eq!(
            (ws.scheme, ws.port, ws.path.as_str()),
            (Scheme::Ws, 8080, "/mqtt")
        );
        let wss = BrokerUrl::parse("wss://u:p@h/custom/path?x=1").unwrap();
        assert_eq!((wss.port, wss.path.as_str()), (443, "/custom/path?x=1"));
        assert_eq!(
            (wss.username.as_deref(), wss.password.as_deref()),
            (Some("u"), Some("p"))
        );
        let v6 = BrokerUrl::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.authority()),
            ("::1", 1884, "[::1]:1884".to_owned())
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "broker:1883",
            "http://h",
            "mqtt://",
            "mqtt://h:99999",
            "mqtt://[::1",
        ] {
            assert!(
                matches!(BrokerUrl::parse(bad), Err(Error::InvalidUrl(_))),
                "{bad}"
            );
        }
    }
}
