//! The library from a multi-threaded caller with a tracing subscriber installed: several
//! threads run sandboxes at once and none hangs. Its own test binary, as it sets global state.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::TestEnv;
use runbox::Status;

#[test]
fn concurrent_threads_with_a_subscriber_never_hang() {
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(std::io::sink)
        .init();
    let env = TestEnv::new("threads");
    let (tx, rx) = mpsc::channel();
    let threads = 4;
    let per_thread = 5;
    for t in 0..threads {
        let tx = tx.clone();
        let mut cmd = env.cmd("/bin/sh", &["-c", &format!("echo thread {t}; exit {t}")]);
        cmd.limits_mut().cpus = 0.5;
        let root = env.root.clone();
        std::thread::spawn(move || {
            for _ in 0..per_thread {
                let _span = tracing::info_span!("worker", t).entered();
                tracing::info!("starting a sandbox");
                let v = root.run(&cmd);
                tx.send((t, v)).unwrap();
            }
        });
    }
    drop(tx);
    let mut done = 0;
    while done < threads * per_thread {
        let (t, v) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a sandbox run hung for 60 s");
        let v = v.unwrap();
        assert_eq!(v.stdout, format!("thread {t}\n"));
        assert_eq!(v.exit_code, Some(t));
        let want = if t == 0 {
            Status::Ok
        } else {
            Status::RuntimeError
        };
        assert_eq!(v.status, want);
        done += 1;
    }
    env.finish();
}
