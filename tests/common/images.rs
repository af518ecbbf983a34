//! Image store fixtures: a private store on a tmpfs per test (so whiteouts and opaque
//! directories work in the overlayfs-rooted guest too), OCI layouts built with umoci from
//! the test image, a registry on 127.0.0.1, and the store's leak check.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

/// Runs a tool; fails the test with its output if it fails. Returns stdout.
pub fn run_tool(cmd: &mut Proc) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test's own image store on a tmpfs of its own, and a scratch directory beside it for
/// layouts and archives; both go when it is dropped.
pub struct StoreEnv {
    pub dir: PathBuf,
    pub scratch: PathBuf,
    pub store: runbox::ImageStore,
}

impl StoreEnv {
    pub fn new(name: &str) -> StoreEnv {
        StoreEnv::with_size(name, "1g")
    }

    /// A store on a tmpfs of `size` (tmpfs's `size=`: `8m`, `1g`).
    pub fn with_size(name: &str, size: &str) -> StoreEnv {
        StoreEnv::with_tmpfs(name, &format!("size={size}"))
    }

    /// A store on a tmpfs mounted with `options` (`size=4m,nr_inodes=64`).
    pub fn with_tmpfs(name: &str, options: &str) -> StoreEnv {
        super::require_root();
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("stores")
            .join(format!("{name}-{}", std::process::id()));
        let _ = nix::mount::umount2(&base.join("store"), nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("store");
        let scratch = base.join("scratch");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&scratch).unwrap();
        nix::mount::mount(
            Some("runbox-test-store"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("{options},mode=0700").as_str()),
        )
        .expect("mount the test store's tmpfs");
        let store = runbox::ImageStore::open(&dir).expect("open the image store");
        StoreEnv {
            dir,
            scratch,
            store,
        }
    }

    /// Asserts the store holds nothing half-made: no staging left, no temp file, every
    /// name pointing at a record and every record's layers present.
    pub fn assert_clean(&self) {
        let tmp: Vec<_> = fs::read_dir(self.dir.join("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(tmp.is_empty(), "staging left in the store: {tmp:?}");
        for sub in ["names", "images", "blobs/sha256", "pins"] {
            for e in walk(&self.dir.join(sub)) {
                let name = e.file_name().unwrap().to_string_lossy().into_owned();
                assert!(!name.starts_with('.'), "temp file left: {}", e.display());
            }
        }
        for image in self.store.list().unwrap() {
            let d = self.store.inspect(&image.digest).unwrap();
            for l in &d.layer_dirs {
                assert!(l.is_dir(), "{} lacks layer {}", image.digest, l.display());
            }
        }
    }

    /// How many layer directories the store has.
    pub fn layer_count(&self) -> usize {
        fs::read_dir(self.dir.join("layers"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "empty")
            .count()
    }
}

impl Drop for StoreEnv {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        if let Some(base) = self.dir.parent() {
            let _ = fs::remove_dir_all(base);
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// An OCI layout made with umoci at `dir`: `base`, the test image as one layer, and `v1`,
/// `base` plus a layer that adds /home/second.txt (`second_text`) and deletes /bin/vi (a
/// whiteout), with `GREETING=hello`, working dir /home and Cmd `sh -c 'echo $GREETING
/// from $(pwd)'` in its config.
pub fn oci_layout(dir: &Path, second_text: &str) -> PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let _ = fs::remove_dir_all(&layout);
    let _ = fs::remove_dir_all(&bundle);
    let img = |tag: &str| format!("{}:{tag}", layout.display());
    run_tool(Proc::new("umoci").arg("init").arg("--layout").arg(&layout));
    run_tool(Proc::new("umoci").args(["new", "--image", &img("base")]));
    run_tool(
        Proc::new("umoci")
            .args(["unpack", "--image", &img("base")])
            .arg(&bundle),
    );
    run_tool(
        Proc::new("cp")
            .arg("-a")
            .arg(format!("{}/.", super::image().display()))
            .arg(bundle.join("rootfs")),
    );
    run_tool(
        Proc::new("umoci")
            .args(["repack", "--image", &img("base")])
            .arg(&bundle),
    );
    fs::remove_dir_all(&bundle).unwrap();
    run_tool(Proc::new("umoci").args([
        "config",
        "--image",
        &img("base"),
        "--tag",
        "v1",
        "--config.env",
        "GREETING=hello",
        "--config.env",
        "PATH=/bin:/sbin",
        "--config.workingdir",
        "/home",
        "--config.cmd",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo $GREETING from $(pwd)",
    ]));
    run_tool(
        Proc::new("umoci")
            .args(["unpack", "--image", &img("v1")])
            .arg(&bundle),
    );
    fs::create_dir_all(bundle.join("rootfs/home")).unwrap();
    fs::write(bundle.join("rootfs/home/second.txt"), second_text).unwrap();
    fs::remove_file(bundle.join("rootfs/bin/vi")).unwrap();
    run_tool(
        Proc::new("umoci")
            .args(["repack", "--image", &img("v1")])
            .arg(&bundle),
    );
    fs::remove_dir_all(&bundle).unwrap();
    layout
}

/// `docker-registry serve` on 127.0.0.1:<free port> with its storage in `dir`, killed by
/// its pid when dropped.
pub struct Registry {
    pub host: String,
    pub dir: PathBuf,
    child: Child,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        fs::create_dir_all(dir).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        let cfg = dir.join("config.yml");
        fs::write(&cfg, config).unwrap();
        let log = fs::File::create(dir.join("registry.log")).unwrap();
        let child = Proc::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let reg = Registry {
            host: format!("127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start: {}",
                fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// Pushes `layout:tag` as `<host>/<repo>`.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) {
        run_tool(
            Proc::new("skopeo")
                .args(["copy", "-q", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:{tag}", layout.display()))
                .arg(format!("docker://{}/{repo}", self.host)),
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
