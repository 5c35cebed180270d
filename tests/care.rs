//! The store under damage: a full disk, overwritten and truncated files. Every case ends in one
//! line and a documented exit code (never a panic, never a hang), and `salvage` then a rerun
//! complete the range with every id once.

use std::path::Path;
use std::process::Command;

use crate::util::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("lists").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copies");
        }
    }
}

/// Overwrites 4 KiB of the store's `db` file at `at` (a fraction of its length), or truncates
/// it to half when `at` is `None`. Deterministic.
fn damage(store: &Path, at: Option<u64>) {
    use std::io::{Seek, SeekFrom, Write};
    let db = store.join("db");
    let len = std::fs::metadata(&db).expect("stat").len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&db).expect("opens");
    match at {
        None => f.set_len(len / 2).expect("truncates"),
        Some(k) => {
            f.seek(SeekFrom::Start(len * k / 12 + 1000)).expect("seeks");
            let junk: Vec<u8> = (0..4096u64).map(|j| ((k * 37 + j * 11) % 256) as u8).collect();
            f.write_all(&junk).expect("writes");
        }
    }
}

/// A command on a damaged store: exit 0 (the damage missed what is read) or 2 with one line
/// naming the damage; never a panic.
#[track_caller]
fn assert_one_clear_line(out: &Outcome, what: &str) {
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "{what}: {}",
        out.stderr
    );
    match out.code() {
        Some(0) => {}
        Some(2) => {
            let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
            assert_eq!(lines.len(), 1, "{what}: one line, got:\n{}", out.stderr);
            assert!(
                lines[0].starts_with("supervisor: error: ") && lines[0].contains("damaged"),
                "{what}: {}",
                lines[0]
            );
            assert!(lines[0].contains("salvage"), "{what}: says what to do: {}", lines[0]);
        }
        other => panic!("{what}: exit {other:?}:\n{}", out.stderr),
    }
}

#[test]
fn damaged_stores_get_one_clear_line_and_salvage_then_a_rerun_completes_them() {
    let (api, dir, store) = setup(&[]);
    let total = 20_000u64;
    let ids = format!("0..{total}");
    Job::new(&api.url(), &ids, &store).run().assert_code(0);
    let cases: Vec<Option<u64>> = (0..12).map(Some).chain([None]).collect();
    let mut detected = 0;
    for at in cases {
        let name = at.map_or("truncated".to_owned(), |k| format!("at{k}"));
        let damaged = dir.path().join(format!("{name}.sled"));
        copy_dir(&store, &damaged);
        damage(&damaged, at);
        let d = path_str(&damaged);
        // First what leaves the files as they are: verify, then salvage.
        let verify = run(&["verify", "--store", d]);
        assert!(
            matches!(verify.code(), Some(0 | 2)),
            "{name}: verify exit {:?}: {}",
            verify.code(),
            verify.stderr
        );
        let salvaged = dir.path().join(format!("{name}.new"));
        let out = run(&["salvage", "--store", d, "--into", path_str(&salvaged)]);
        out.assert_code(0);
        let recovered = summary_figure(&out.stdout, "salvaged");
        eprintln!(
            "figure: damage {name}: verify exit {:?}, salvage recovered {recovered} of {total} records",
            verify.code()
        );
        // Then every command on the damaged store: one clear line at worst.
        for args in [vec!["status", "--store", d], vec!["export", "--store", d]] {
            assert_one_clear_line(&run(&args), &format!("{name}: {}", args[0]));
        }
        let out = Job::new(&api.url(), &ids, &damaged).run();
        assert_one_clear_line(&out, &format!("{name}: run"));
        detected += u32::from(verify.code() == Some(2));
        // The salvaged store plus a rerun is the whole range, each id once with its own body.
        let asked = api.requests();
        Job::new(&api.url(), &ids, &salvaged).run().assert_code(0);
        assert_eq!(
            api.requests() - asked,
            total - recovered,
            "{name}: the rerun fetched exactly what was lost"
        );
        assert_complete(&salvaged, 0..total);
    }
    assert!(detected >= 6, "most of these damages are found by verify ({detected} of 13)");
}

#[test]
fn a_sound_store_verifies_and_salvage_refuses_an_existing_target() {
    let (api, dir, store) = setup(&[]);
    Job::new(&api.url(), "0..3000", &store).run().assert_code(0);
    let out = run(&["verify", "--store", path_str(&store)]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("reads 3,000 records intact") && out.stdout.contains("verdict   sound"),
        "{}",
        out.stdout
    );
    let out = run(&["salvage", "--store", path_str(&store), "--into", path_str(dir.path())]);
    out.assert_code(2);
    assert!(out.stderr.contains("it exists already"), "{}", out.stderr);
}

/// Mounts a tmpfs of `size` at `dir`; false where this test may not mount (not root, or no
/// permission in a container).
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path_str(dir)])
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_is_one_clear_line_and_the_same_command_resumes_once_there_is_room() {
    full_disk(&[]);
}

#[test]
fn a_full_disk_stops_the_async_model_as_it_stops_the_fleet() {
    // The async model starts the same store side: a write that fails ends its loop with the
    // same line (it fetched on, then looked like a success, when its writer's end went unread).
    full_disk(&["--model", "async", "--concurrency", "64"]);
}

/// A run on a disk of 3 MiB, with `extra` flags: exit 1, one line saying the disk is full and
/// what was flushed, and the same command resumes once the disk has room.
fn full_disk(extra: &[&str]) {
    let (api, dir, _) = setup(&[]);
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).expect("mkdir");
    if !mount_tmpfs(&disk, "3m") {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _unmount = Unmount(&disk);
    let store = disk.join("items.sled");
    let total = 200_000u64;
    let mut args = job_args(&api.url(), &format!("0..{total}"), &store);
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run(&strs(&args));
    out.assert_code(1);
    let errors: Vec<&str> = out.stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(errors.len(), 1, "one line:\n{}", out.stderr);
    let line = errors[0];
    assert!(
        line.starts_with(&format!(
            "supervisor: error: cannot write store {}: the disk is full",
            store.display()
        )),
        "{line}"
    );
    assert!(line.contains("the same command resumes once the cause is fixed"), "{line}");
    let flushed: u64 = line
        .split("the ")
        .nth(2)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count in {line}"));
    let status =
        Command::new("mount").args(["-o", "remount,size=64m", path_str(&disk)]).status().expect("remounts");
    assert!(status.success());
    let out = run(&strs(&args));
    out.assert_code(0);
    assert_eq!(figure(&out, "skipped"), flushed, "what was flushed was kept");
    assert_complete(&store, 0..total);
}
