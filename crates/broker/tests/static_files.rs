//! The pages the broker embeds (`static/`, symbolic links to `web/`, their one source) are exactly
//! the served files of `web/`, and the
//! broker serves every one of them, gzip-compressed when the request accepts it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;
use rallymq_broker::{Broker, BrokerConfig, ListenerKind};

mod support;
use support::http;

const RESYNC: &str = "each served file of web/ needs a symbolic link at the same path under crates/broker/static/ \
     (e.g. `ln -s ../../../web/rallymq.js crates/broker/static/rallymq.js`) and a line in ASSETS";

fn static_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("static")
}

/// `web/` at the workspace root; `None` outside the workspace (a packaged crate).
fn web_dir() -> Option<PathBuf> {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    web.is_dir().then_some(web)
}

/// Every file under `dir`, by its `/`-separated path relative to `dir`.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).unwrap();
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The files of `web/` that the broker serves: the index, the client and the demos.
fn served_web_files(web: &Path) -> BTreeMap<String, Vec<u8>> {
    files(web)
        .into_iter()
        .filter(|(name, _)| {
            name == "index.html"
                || name == "rallymq.js"
                || name.starts_with("tennis/")
                || name.starts_with("dashboard/")
        })
        .collect()
}

#[test]
fn static_copies_match_their_web_sources() {
    let Some(web) = web_dir() else {
        eprintln!("no web/ beside the crate (not in the workspace): nothing to compare");
        return;
    };
    let sources = served_web_files(&web);
    let copies = files(&static_dir());
    assert!(
        sources.contains_key("rallymq.js") && sources.contains_key("tennis/index.html"),
        "web/ lacks the client or the demos"
    );
    for (name, source) in &sources {
        let copy = copies.get(name).unwrap_or_else(|| {
            panic!("crates/broker/static/{name} is missing: {RESYNC}");
        });
        assert!(
            copy == source,
            "crates/broker/static/{name} differs from web/{name}: {RESYNC}"
        );
    }
    for name in copies.keys() {
        assert!(
            sources.contains_key(name),
            "crates/broker/static/{name} has no source in web/: {RESYNC}"
        );
    }
}

/// The URL path of a file under `static/`: `dir/index.html` is served at `dir/`.
fn url_path(name: &str) -> String {
    format!("/{}", name.strip_suffix("index.html").unwrap_or(name))
}

#[tokio::test]
async fn the_broker_serves_every_static_file_plain_and_gzipped() {
    let mut config = BrokerConfig::without_listeners();
    config.ws = vec!["127.0.0.1:0".parse().unwrap()];
    config.sys_interval = None;
    let broker = Broker::start(config).await.expect("broker starts");
    let addr = broker.local_addr(ListenerKind::WebSocket).unwrap();

    let copies = files(&static_dir());
    assert!(copies.len() >= 8, "{:?}", copies.keys());
    for (name, content) in &copies {
        let path = url_path(name);
        let plain = http(addr, "GET", &path, "").await;
        assert_eq!(plain.status, 200, "{path}");
        assert_eq!(&plain.body, content, "{path}");
        assert_eq!(plain.header("content-encoding"), None, "{path}");
        let expected_type = match name.rsplit('.').next() {
            Some("html") => "text/html",
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            other => panic!("{name}: no content type known for {other:?}"),
        };
        assert!(
            plain
                .header("content-type")
                .is_some_and(|t| t.starts_with(expected_type)),
            "{path}: {:?}",
            plain.header("content-type")
        );

        let gzipped = http(addr, "GET", &path, "Accept-Encoding: gzip, deflate, br\r\n").await;
        assert_eq!(gzipped.status, 200, "{path}");
        assert_eq!(gzipped.header("content-encoding"), Some("gzip"), "{path}");
        assert_eq!(gzipped.header("vary"), Some("accept-encoding"), "{path}");
        let mut unzipped = Vec::new();
        GzDecoder::new(&gzipped.body[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(&unzipped, content, "{path}");
    }

    // The client is much smaller compressed; gzip;q=0 refuses it; HEAD has no body.
    let client = http(addr, "GET", "/rallymq.js", "Accept-Encoding: gzip\r\n").await;
    assert!(client.body.len() < copies["rallymq.js"].len());
    let refused = http(addr, "GET", "/rallymq.js", "Accept-Encoding: gzip;q=0\r\n").await;
    assert_eq!(refused.header("content-encoding"), None);
    let head = http(addr, "HEAD", "/tennis/", "").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // A directory without its slash is redirected; the index under its file name is served.
    let redirect = http(addr, "GET", "/tennis", "").await;
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), Some("/tennis/"));
    assert_eq!(
        http(addr, "GET", "/dashboard/index.html", "").await.status,
        200
    );
    assert_eq!(http(addr, "GET", "/index.html", "").await.status, 200);
    assert_eq!(
        http(addr, "GET", "/tennis/nothing.js", "").await.status,
        404
    );
    assert_eq!(
        http(addr, "GET", "/tennis/xindex.html", "").await.status,
        404
    );
    assert_eq!(
        http(addr, "POST", "/", "Content-Length: 0\r\n")
            .await
            .status,
        405
    );
    broker.shutdown(Duration::from_millis(300)).await;
}
