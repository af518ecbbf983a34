//! Boxes through the library, as a grader that links the crate uses them: compile once in a
//! box, run many tests against the same files, each box its own uid; one run at a time per
//! box; cleanup gives everything back.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::TestEnv;
use runbox::{ErrorKind, Status};

#[test]
fn a_box_keeps_its_files_between_runs_and_its_uid_to_itself() {
    let env = TestEnv::new("boxes");
    let _boxes = common::BoxesGuard(env.root.clone(), vec![3, 4]);
    let first = runbox::DEFAULT_FIRST_UID;
    let a = env.root.init_box(3, 0, 0).unwrap();
    let b = env.root.init_box(4, 0, 0).unwrap();
    assert_eq!(a.user(), (first + 3, first + 3));
    assert_eq!(b.user(), (first + 4, first + 4));
    assert_eq!(a.work_dir(), a.dir().join("box"));

    // "Compile": the program makes an executable in its work dir.
    fs::write(
        a.work_dir().join("build.sh"),
        "printf '#!/bin/sh\\necho \"$1 squared is $(($1 * $1))\"\\n' > prog && chmod 755 prog",
    )
    .unwrap();
    let mut build = a.command("/bin/sh");
    build.arg("build.sh").env("PATH", "/usr/bin:/bin");
    let v = a.run(&build).unwrap();
    assert_eq!(v.status, Status::Ok, "{v:?}");
    let prog = fs::metadata(a.work_dir().join("prog")).unwrap();
    assert_eq!(
        (prog.uid(), prog.mode() & 0o777),
        (0, 0o755),
        "the owner's, mode kept"
    );

    // Many runs of what the first made, each reading the box's files.
    for n in [2, 7] {
        let mut run = a.command("/box/prog");
        run.arg(n.to_string()).env("PATH", "/usr/bin:/bin");
        let v = a.run(&run).unwrap();
        assert_eq!(v.stdout, format!("{n} squared is {}\n", n * n), "{v:?}");
    }

    // Each box's programs run as its own uid, and see only its own work dir.
    fs::write(b.work_dir().join("note"), "b's\n").unwrap();
    for (bx, n, note) in [(&a, 3, "No such file"), (&b, 4, "b's")] {
        let mut who = bx.command("/bin/sh");
        who.args(["-c", "id -u; cat note 2>&1; true"])
            .env("PATH", "/usr/bin:/bin");
        let v = bx.run(&who).unwrap();
        let mut lines = v.stdout.lines();
        assert_eq!(
            lines.next(),
            Some((first + n).to_string().as_str()),
            "{v:?}"
        );
        let said = lines.next().unwrap_or_default();
        assert!(said.contains(note), "box {n}: {said:?}");
    }

    // One run at a time per box: another process (here another root value) finds it busy.
    let other = runbox::RootOptions::new()
        .cgroup_prefix(env.prefix.clone())
        .spare_monitors(0)
        .open(&env.dir)
        .unwrap();
    assert_eq!(
        other.open_box(3, false).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    let dir = a.dir().to_path_buf();
    drop(a);
    let again = other.open_box(3, false).unwrap();
    assert_eq!(again.user().0, first + 3);
    drop(again);
    assert_eq!(
        other.open_box(5, false).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    drop(b);
    env.root.cleanup_box(3).unwrap();
    env.root.cleanup_box(4).unwrap();
    assert!(!dir.exists());
    assert_eq!(
        env.root.init_box(1000, 0, 0).unwrap_err().kind(),
        ErrorKind::InvalidConfig,
        "box ids end with the uid range"
    );
    env.finish();
}

/// Findings 7 and 8 of issue 21 through the library: a box's files are on a disk of its own
/// with the documented default cap, or the one given; a run that fills it gets ENOSPC and
/// its real verdict. A box initialized again gets a fresh disk that every later run sees,
/// even a run started from a spare this root made before (a spare's mount namespace may
/// predate the disk), and never the old one's files.
#[test]
fn a_box_has_a_capped_disk_of_its_own_and_a_fresh_one_each_init() {
    let env = TestEnv::new("boxes-disk");
    let _boxes = common::BoxesGuard(env.root.clone(), vec![7, 8, 9]);
    let sh = |bx: &runbox::WorkBox, script: &str| {
        let mut cmd = bx.command("/bin/sh");
        cmd.args(["-c", script]).env("PATH", "/usr/bin:/bin");
        bx.run(&cmd).unwrap()
    };
    // A spare of another shape, made before the box exists.
    env.root.run(&runbox::Command::new("/bin/true")).unwrap();

    let first = env.root.init_box(7, 0, 0).unwrap();
    assert_eq!(first.quota(), Some(runbox::BoxQuota::default()));
    let st = nix::sys::statvfs::statvfs(&first.work_dir()).unwrap();
    assert_eq!(
        (st.blocks() * st.fragment_size(), st.files()),
        (256 << 20, 65_536 + 1),
        "the documented default: 256 MiB, 65536 inodes"
    );
    fs::write(first.work_dir().join("note"), "one\n").unwrap();
    for _ in 0..2 {
        let v = sh(&first, "cat note; echo more >> note");
        assert!(v.stdout.starts_with("one\n"), "{v:?}");
    }
    drop(first);
    env.root.cleanup_box(7).unwrap();

    let quota = runbox::BoxQuota::new(1 << 20, 100);
    let second = env.root.init_box_with_quota(7, 0, 0, quota).unwrap();
    assert_eq!(second.quota(), Some(quota));
    assert_eq!(fs::read_dir(second.work_dir()).unwrap().count(), 0);
    fs::write(second.work_dir().join("note"), "two\n").unwrap();
    for _ in 0..2 {
        let v = sh(&second, "cat note");
        assert_eq!(
            (v.status, v.stdout.as_str()),
            (Status::Ok, "two\n"),
            "{v:?}"
        );
    }
    let v = sh(&second, "head -c 3000000 /dev/zero > big");
    assert_eq!(v.status, Status::RuntimeError, "{v:?}");
    assert_eq!(v.exit_code, Some(1), "{v:?}");
    assert!(v.stderr.contains("No space left on device"), "{v:?}");
    let held = fs::metadata(second.work_dir().join("big")).unwrap().len();
    assert!(held <= 1 << 20, "{held}");

    assert_eq!(
        env.root
            .init_box_with_quota(8, 0, 0, runbox::BoxQuota::new(0, 10))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidConfig
    );
    drop(second);
    env.root.cleanup_box(7).unwrap();
    env.root.cleanup_box(8).unwrap();

    // A disk gone (a reboot, with the state root on a disk): the box reads as never
    // initialized, and initializing it again gives it a new one.
    let third = env.root.init_box(9, 0, 0).unwrap();
    let dir = third.dir().to_path_buf();
    drop(third);
    for m in ["box", "disk"] {
        nix::mount::umount2(&dir.join(m), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    assert_eq!(
        env.root.open_box(9, false).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let third = env.root.init_box(9, 0, 0).unwrap();
    let v = sh(&third, "echo back > f && cat f");
    assert_eq!(v.stdout, "back\n", "{v:?}");
    drop(third);
    env.root.cleanup_box(9).unwrap();
    env.finish();
}
