//! The registry client against a real Docker distribution registry
//! (`docker-registry` from Debian), images made with umoci and pushed with
//! skopeo, plus small fake HTTP servers for the token service and for
//! behaviour a real registry does not show (redirects, hostile answers).
//!
//! Everything listens on 127.0.0.1 only; servers and temp dirs are removed
//! by a guard even when a test fails.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Client, ClientOptions, Reference, RegistryError};
use base64::Engine;
use sha2::{Digest, Sha256};

/// Kills every started process (by its PID, via `Child::kill`), stops fake
/// servers and removes temp dirs on drop.
#[derive(Default)]
struct Guard {
    children: Vec<Child>,
    servers: Vec<(Arc<AtomicBool>, JoinHandle<()>)>,
    dirs: Vec<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (stop, handle) in self.servers.drain(..) {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
        for d in &self.dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

impl Guard {
    fn tempdir(&mut self, name: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!(
            "registry-test-{name}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&d).unwrap();
        self.dirs.push(d.clone());
        d
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(b: &[u8]) -> String {
    let h = Sha256::digest(b);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Builds a small OCI image layout at `dir/oci` with tag `t`: a text file
/// plus 300 KiB of incompressible bytes, so the layer spans several
/// progress steps.
fn make_image(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let image = format!("{}:t", layout.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    fs::write(bundle.join("rootfs/hello.txt"), "hello from runbox\n").unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..300 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    fs::write(bundle.join("rootfs/noise.bin"), noise).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    layout
}

fn skopeo_push(layout: &Path, dest: &str, extra: &[&str]) {
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .args(extra)
        .arg(format!("oci:{}:t", layout.display()))
        .arg(dest));
}

/// Starts `docker-registry serve` on 127.0.0.1:<free port> with filesystem
/// storage under `dir`; `extra` is appended to the YAML config (top level).
/// Returns the port once the registry accepts connections.
fn start_registry(g: &mut Guard, dir: &Path, extra_http: &str, extra: &str) -> (u16, String) {
    let port = free_port();
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra_http}{extra}",
        dir.join("data").display()
    );
    let cfg = dir.join("config.yml");
    fs::write(&cfg, &config).unwrap();
    let log = fs::File::create(dir.join("registry.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    g.children.push(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // Plain http: also wait for GET /v2/ to answer (200 or 401).
            if extra_http.contains("tls:") {
                break;
            }
            match ureq::get(&format!("http://127.0.0.1:{port}/v2/")).call() {
                Ok(_) | Err(ureq::Error::Status(..)) => break,
                Err(_) => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "registry did not start: {}",
            fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (port, config)
}

fn plain_opts() -> ClientOptions {
    ClientOptions {
        plain_http: true,
        arch: "amd64".into(),
        ..ClientOptions::default()
    }
}

#[derive(serde::Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

#[derive(serde::Deserialize)]
struct ImageManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Pulls the image's config and layers through `client`, checking digests.
fn pull_all(client: &Client, r: &Reference, manifest: &[u8]) -> usize {
    let m: ImageManifest = serde_json::from_slice(manifest).unwrap();
    let mut total = 0;
    for d in std::iter::once(&m.config).chain(&m.layers) {
        let mut sink = Vec::new();
        let mut calls = Vec::new();
        client
            .fetch_blob(r, &d.digest, d.size, &mut sink, &mut |n| calls.push(n))
            .unwrap();
        assert_eq!(sink.len() as u64, d.size);
        assert_eq!(sha256(&sink), d.digest);
        assert_eq!(calls.last().copied(), Some(d.size));
        // Steps of at least 64 KiB, except the final report of the total.
        let steps = &calls[..calls.len() - 1];
        assert!(steps.first().is_none_or(|&n| n >= 64 * 1024));
        assert!(steps.windows(2).all(|w| w[1] - w[0] >= 64 * 1024));
        total += sink.len();
    }
    total
}

/// A minimal HTTP/1.1 server on 127.0.0.1 answering each connection once
/// (`Connection: close`) with `handler(method, target, headers, body)`.
type Reply = (u16, Vec<(String, String)>, Vec<u8>);
type Handler = dyn Fn(&str, &str, &HashMap<String, String>) -> Reply + Send;

fn fake_server(g: &mut Guard, handler: Box<Handler>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut served = 0;
        while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline && served < 200 {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            served += 1;
            let _ = serve_one(stream, &*handler);
        }
    });
    g.servers.push((stop, handle));
    port
}

fn serve_one(stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: u64 = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    std::io::copy(&mut reader.take(len), &mut std::io::sink())?;
    let (status, extra, body) = handler(&method, &target, &headers);
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )?;
    for (k, v) in extra {
        write!(out, "{k}: {v}\r\n")?;
    }
    out.write_all(b"\r\n")?;
    out.write_all(&body)?;
    out.flush()
}

#[test]
fn plain_pull_index_and_errors() {
    let mut g = Guard::default();
    let dir = g.tempdir("plain");
    let layout = make_image(&dir);
    let (port, _) = start_registry(&mut g, &dir, "", "");
    let host = format!("127.0.0.1:{port}");
    skopeo_push(&layout, &format!("docker://{host}/test/img:t"), &[]);
    skopeo_push(
        &layout,
        &format!("docker://{host}/test/img:v2"),
        &["--format", "v2s2"],
    );
    let client = Client::new(plain_opts()).unwrap();

    // By tag (OCI manifest).
    let r = Reference::parse(&format!("{host}/test/img:t")).unwrap();
    assert_eq!(r.to_string(), format!("{host}/test/img:t"));
    let (m, index) = client.resolve_image(&r).unwrap();
    assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(index, None);
    assert_eq!(m.digest, sha256(&m.bytes));
    assert!(pull_all(&client, &r, &m.bytes) > 300 * 1024 / 2);

    // By digest.
    let rd = Reference::parse(&format!("{host}/test/img@{}", m.digest)).unwrap();
    let (md, _) = client.resolve_image(&rd).unwrap();
    assert_eq!(md.bytes, m.bytes);

    // Docker v2 schema 2.
    let r2 = Reference::parse(&format!("{host}/test/img:v2")).unwrap();
    let (m2, _) = client.resolve_image(&r2).unwrap();
    assert_eq!(
        m2.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    pull_all(&client, &r2, &m2.bytes);

    // A digest the registry does not have: the registry answers 404.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let rw = Reference::parse(&format!("{host}/test/img:t@{wrong}")).unwrap();
    match client.resolve_image(&rw) {
        Err(RegistryError::Http { status: 404, .. }) => {}
        other => panic!("wrong digest: {other:?}"),
    }

    // Blob checks: too small a size, wrong digest, short size.
    let im: ImageManifest = serde_json::from_slice(&m.bytes).unwrap();
    let layer = &im.layers[0];
    let mut sink = Vec::new();
    match client.fetch_blob(&r, &layer.digest, layer.size - 1, &mut sink, &mut |_| {}) {
        Err(RegistryError::SizeMismatch { expected, got, .. }) => {
            assert_eq!((expected, got), (layer.size - 1, layer.size))
        }
        other => panic!("small size: {other:?}"),
    }
    match client.fetch_blob(
        &r,
        &layer.digest,
        layer.size + 10,
        &mut Vec::new(),
        &mut |_| {},
    ) {
        Err(RegistryError::SizeMismatch { got, .. }) => assert_eq!(got, layer.size),
        other => panic!("large size: {other:?}"),
    }
    match client.fetch_blob(&r, &wrong, 1, &mut Vec::new(), &mut |_| {}) {
        Err(RegistryError::Http { status: 404, .. }) => {}
        other => panic!("unknown blob: {other:?}"),
    }

    // Multi-arch index: the real manifest as amd64, a distinct copy as arm64/v8.
    let base = format!("http://{host}/v2/test/img/manifests");
    let mut fake: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    fake["annotations"] = serde_json::json!({"fake": "arm64"});
    let fake = serde_json::to_vec(&fake).unwrap();
    let fake_digest = sha256(&fake);
    ureq::put(&format!("{base}/{fake_digest}"))
        .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send_bytes(&fake)
        .unwrap();
    let idx = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": fake_digest,
             "size": fake.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m.digest,
             "size": m.bytes.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }))
    .unwrap();
    ureq::put(&format!("{base}/multi"))
        .set("Content-Type", "application/vnd.oci.image.index.v1+json")
        .send_bytes(&idx)
        .unwrap();
    let rm = Reference::parse(&format!("{host}/test/img:multi")).unwrap();
    let (pick, top) = client.resolve_image(&rm).unwrap();
    assert_eq!(pick.digest, m.digest);
    assert_eq!(top.as_deref(), Some(sha256(&idx).as_str()));
    let with = |arch: &str, variant: Option<&str>| {
        Client::new(ClientOptions {
            arch: arch.into(),
            variant: variant.map(String::from),
            ..plain_opts()
        })
        .unwrap()
    };
    let (pick, _) = with("arm64", None).resolve_image(&rm).unwrap();
    assert_eq!(pick.digest, fake_digest);
    let (pick, _) = with("arm64", Some("v8")).resolve_image(&rm).unwrap();
    assert_eq!(pick.digest, fake_digest);
    match with("arm64", Some("v7")).resolve_image(&rm) {
        Err(RegistryError::NoMatchingPlatform { wanted, offered }) => {
            assert_eq!(wanted, "linux/arm64/v7");
            assert_eq!(offered, ["linux/arm64/v8", "linux/amd64"]);
        }
        other => panic!("no platform: {other:?}"),
    }
    // The index pinned by digest, and a wrong pinned digest for it.
    let rp = Reference::parse(&format!("{host}/test/img@{}", sha256(&idx))).unwrap();
    assert_eq!(client.resolve_image(&rp).unwrap().0.digest, m.digest);
    match client.fetch_manifest(&rm, &fake_digest) {
        Ok(mf) => assert_eq!(mf.digest, fake_digest),
        other => panic!("fetch by digest: {other:?}"),
    }
}

#[test]
fn basic_auth() {
    let mut g = Guard::default();
    let dir = g.tempdir("basic");
    let layout = make_image(&dir);
    let htpasswd = run(Command::new("htpasswd").args(["-Bbn", "user", "pass"]));
    fs::write(dir.join("htpasswd"), htpasswd).unwrap();
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
        dir.join("htpasswd").display()
    );
    let (port, _) = start_registry(&mut g, &dir, "", &auth);
    let host = format!("127.0.0.1:{port}");
    skopeo_push(
        &layout,
        &format!("docker://{host}/test/img:t"),
        &["--dest-creds", "user:pass"],
    );
    let r = Reference::parse(&format!("{host}/test/img:t")).unwrap();
    match Client::new(plain_opts()).unwrap().resolve_image(&r) {
        Err(RegistryError::Unauthorized { .. }) => {}
        other => panic!("no creds: {other:?}"),
    }
    let bad = Client::new(ClientOptions {
        credentials: Some(("user".into(), "wrong".into())),
        ..plain_opts()
    })
    .unwrap();
    match bad.resolve_image(&r) {
        Err(RegistryError::Unauthorized { .. }) => {}
        other => panic!("bad creds: {other:?}"),
    }
    let client = Client::new(ClientOptions {
        credentials: Some(("user".into(), "pass".into())),
        ..plain_opts()
    })
    .unwrap();
    let (m, _) = client.resolve_image(&r).unwrap();
    pull_all(&client, &r, &m.bytes);
}

#[test]
fn tls_with_ca_file() {
    let mut g = Guard::default();
    let dir = g.tempdir("tls");
    let layout = make_image(&dir);
    let p = |f: &str| dir.join(f).display().to_string();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]));
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ]));
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("server.pem"),
    ]));
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        p("server.pem"),
        p("server.key")
    );
    let (port, _) = start_registry(&mut g, &dir, &tls, "");
    let host = format!("127.0.0.1:{port}");
    skopeo_push(&layout, &format!("docker://{host}/test/img:t"), &[]);
    let r = Reference::parse(&format!("{host}/test/img:t")).unwrap();
    let tls_opts = ClientOptions {
        arch: "amd64".into(),
        ..ClientOptions::default()
    };
    match Client::new(tls_opts.clone()).unwrap().resolve_image(&r) {
        Err(RegistryError::Tls(msg)) => assert!(msg.contains("UnknownIssuer"), "{msg}"),
        other => panic!("without CA: {other:?}"),
    }
    let client = Client::new(ClientOptions {
        ca_file: Some(dir.join("ca.pem")),
        ..tls_opts.clone()
    })
    .unwrap();
    let (m, _) = client.resolve_image(&r).unwrap();
    pull_all(&client, &r, &m.bytes);
    // plain http against a TLS port fails too (the registry answers 400).
    assert!(Client::new(plain_opts())
        .unwrap()
        .resolve_image(&r)
        .is_err());
    match Client::new(ClientOptions {
        ca_file: Some(dir.join("ext.cnf")),
        ..tls_opts
    }) {
        Err(RegistryError::Tls(_)) => {}
        other => panic!("bad CA file: {:?}", other.err()),
    }
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An RS256 JWT for the distribution token auth, signed with `openssl dgst`,
/// carrying the signing certificate in `x5c`.
fn sign_jwt(dir: &Path, access: serde_json::Value) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    let der = fs::read(dir.join("token.der")).unwrap();
    let header = serde_json::json!({
        "alg": "RS256", "typ": "JWT",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(der)],
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "test", "sub": "user", "aud": "test", "jti": format!("{now}"),
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    fs::write(dir.join("jwt.in"), &signing_input).unwrap();
    run(Command::new("openssl").args([
        "dgst",
        "-sha256",
        "-sign",
        &p("token.key"),
        "-out",
        &p("jwt.sig"),
        &p("jwt.in"),
    ]));
    format!(
        "{signing_input}.{}",
        b64url(&fs::read(dir.join("jwt.sig")).unwrap())
    )
}

/// A token request as seen by the token server: target and Authorization.
type Seen = (String, Option<String>);

#[test]
fn bearer_token_real_registry() {
    let mut g = Guard::default();
    let dir = g.tempdir("bearer");
    let layout = make_image(&dir);
    let p = |f: &str| dir.join(f).display().to_string();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=token",
        "-keyout",
        &p("token.key"),
        "-out",
        &p("token.pem"),
    ]));
    run(Command::new("openssl").args([
        "x509",
        "-in",
        &p("token.pem"),
        "-outform",
        "DER",
        "-out",
        &p("token.der"),
    ]));
    let full = sign_jwt(
        &dir,
        serde_json::json!([{"type": "repository", "name": "test/img", "actions": ["pull", "push"]}]),
    );
    let none = sign_jwt(&dir, serde_json::json!([]));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    // Credentials user:pass get the full token; anyone else a token without access.
    let good_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:pass")
    );
    let token_port = fake_server(
        &mut g,
        Box::new(move |_, target, headers| {
            let auth = headers.get("authorization").cloned();
            let token = if auth.as_deref() == Some(good_basic.as_str()) {
                &full
            } else {
                &none
            };
            seen2.lock().unwrap().push((target.to_string(), auth));
            let body = serde_json::json!({ "token": token }).to_string();
            (
                200,
                vec![("Content-Type".into(), "application/json".into())],
                body.into_bytes(),
            )
        }),
    );
    let auth = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: test\n    issuer: test\n    rootcertbundle: {}\n",
        p("token.pem")
    );
    let (port, _) = start_registry(&mut g, &dir, "", &auth);
    let host = format!("127.0.0.1:{port}");
    skopeo_push(
        &layout,
        &format!("docker://{host}/test/img:t"),
        &["--dest-creds", "user:pass"],
    );
    let r = Reference::parse(&format!("{host}/test/img:t")).unwrap();

    // Anonymous: the token service hands out a token without access.
    match Client::new(plain_opts()).unwrap().resolve_image(&r) {
        Err(RegistryError::Unauthorized { .. }) => {}
        other => panic!("anonymous: {other:?}"),
    }

    let before = seen.lock().unwrap().len();
    let client = Client::new(ClientOptions {
        credentials: Some(("user".into(), "pass".into())),
        ..plain_opts()
    })
    .unwrap();
    let (m, _) = client.resolve_image(&r).unwrap();
    pull_all(&client, &r, &m.bytes);
    let seen = seen.lock().unwrap();
    // One token fetch for the manifest and both blobs: the token is cached.
    assert_eq!(seen.len() - before, 1, "{seen:?}");
    let (target, auth) = &seen[before];
    assert!(target.starts_with("/token?"), "{target}");
    assert!(target.contains("service=test"), "{target}");
    assert!(
        target.contains("scope=repository%3Atest%2Fimg%3Apull"),
        "{target}"
    );
    assert!(auth.as_deref().unwrap_or("").starts_with("Basic "));
}

#[test]
fn fake_registry_bearer_redirect_and_hostile_answers() {
    let mut g = Guard::default();
    let blob = b"blob data from a presigned url".to_vec();
    let blob_digest = sha256(&blob);
    let cdn_auth: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let cdn_auth2 = cdn_auth.clone();
    let blob2 = blob.clone();
    let cdn_port = fake_server(
        &mut g,
        Box::new(move |_, _, h| {
            cdn_auth2
                .lock()
                .unwrap()
                .push(h.get("authorization").cloned());
            (200, vec![], blob2.clone())
        }),
    );
    let token_hits: Arc<Mutex<u32>> = Arc::default();
    let token_hits2 = token_hits.clone();
    let schema1 = br#"{"schemaVersion":1,"name":"x/y","tag":"t","fsLayers":[]}"#.to_vec();
    let big = vec![b' '; 5 << 20];
    let good = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec();
    let good_digest = sha256(&good);
    let good2 = good.clone();
    let reg_port = fake_server(
        &mut g,
        Box::new(move |_, target, h| {
            let reply = |status: u16, hs: &[(&str, &str)], b: &[u8]| -> Reply {
                let hs = hs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
                (status, hs.collect(), b.to_vec())
            };
            let oci = "application/vnd.oci.image.manifest.v1+json";
            if target.starts_with("/token?") {
                *token_hits2.lock().unwrap() += 1;
                let ok = target.contains("service=fake%2Csvc")
                    && target.contains("scope=repository%3Ax%2Fy%3Apull");
                return if ok {
                    reply(200, &[], br#"{"access_token":"TOK"}"#)
                } else {
                    reply(400, &[], target.as_bytes())
                };
            }
            if h.get("authorization").map(String::as_str) != Some("Bearer TOK") {
                // The realm is this server itself, found from the Host header.
                let host = h.get("host").cloned().unwrap_or_default();
                let challenge = format!(
                    r#"Bearer realm="http://{host}/token",service="fake,svc",scope="repository:x/y:pull""#
                );
                return reply(401, &[("WWW-Authenticate", &challenge)], b"{}");
            }
            let cdn = format!("http://127.0.0.1:{cdn_port}/presigned?sig=1");
            let liar = format!("sha256:{}", "1".repeat(64));
            match target {
                t if t.starts_with("/v2/x/y/blobs/") => reply(307, &[("Location", &cdn)], b""),
                "/v2/x/y/manifests/schema1" => reply(
                    200,
                    &[(
                        "Content-Type",
                        "application/vnd.docker.distribution.manifest.v1+prettyjws",
                    )],
                    &schema1,
                ),
                "/v2/x/y/manifests/big" => reply(200, &[("Content-Type", oci)], &big),
                "/v2/x/y/manifests/good" => reply(200, &[("Content-Type", oci)], &good2),
                "/v2/x/y/manifests/plain" => {
                    reply(200, &[("Content-Type", "application/json")], &good2)
                }
                "/v2/x/y/manifests/liar" => reply(
                    200,
                    &[("Content-Type", oci), ("Docker-Content-Digest", &liar)],
                    &good2,
                ),
                _ => reply(404, &[], b"not found"),
            }
        }),
    );
    let client = Client::new(plain_opts()).unwrap();
    let r = Reference::parse(&format!("127.0.0.1:{reg_port}/x/y:good")).unwrap();

    // Bearer flow with a quoted comma in the service, access_token field.
    let (m, index) = client.resolve_image(&r).unwrap();
    assert_eq!((m.digest.as_str(), index), (good_digest.as_str(), None));
    // Media type from the body when the server says application/json.
    let m = client.fetch_manifest(&r, "plain").unwrap();
    assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");

    // Redirect to another host:port: Authorization is not forwarded.
    let mut sink = Vec::new();
    client
        .fetch_blob(&r, &blob_digest, blob.len() as u64, &mut sink, &mut |_| {})
        .unwrap();
    assert_eq!(sink, blob);
    assert_eq!(*cdn_auth.lock().unwrap(), [None]);
    // Same bytes under another digest: DigestMismatch.
    let other = format!("sha256:{}", "2".repeat(64));
    match client.fetch_blob(&r, &other, blob.len() as u64, &mut Vec::new(), &mut |_| {}) {
        Err(RegistryError::DigestMismatch { expected, got, .. }) => {
            assert_eq!((expected, got), (other, blob_digest.clone()))
        }
        other => panic!("blob digest: {other:?}"),
    }
    // One token for everything so far.
    assert_eq!(*token_hits.lock().unwrap(), 1);

    match client.fetch_manifest(&r, "schema1") {
        Err(RegistryError::UnsupportedMediaType(_)) => {}
        other => panic!("schema1: {other:?}"),
    }
    match client.fetch_manifest(&r, "big") {
        Err(RegistryError::TooLarge { limit, .. }) => assert_eq!(limit, 4 << 20),
        other => panic!("big: {other:?}"),
    }
    match client.fetch_manifest(&r, "liar") {
        Err(RegistryError::DigestMismatch { got, .. }) => assert_eq!(got, good_digest),
        other => panic!("liar: {other:?}"),
    }
    match client.fetch_manifest(&r, &format!("sha256:{}", "3".repeat(64))) {
        Err(RegistryError::Http {
            status: 404,
            body_excerpt,
            ..
        }) => {
            assert_eq!(body_excerpt, "not found")
        }
        other => panic!("missing: {other:?}"),
    }
    match client.fetch_manifest(&r, "../../etc") {
        Err(RegistryError::InvalidReference(_)) => {}
        other => panic!("path: {other:?}"),
    }
}
