//! The store is its owner's: created owner-only whatever the umask, and an existing store's
//! modes left as the owner set them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::*;

/// Every path under `dir` (itself included) with its permission bits.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut out =
        vec![(dir.display().to_string(), std::fs::metadata(dir).expect("stat").permissions().mode() & 0o777)];
    for entry in std::fs::read_dir(dir).expect("lists").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(modes(&path));
        } else {
            out.push((
                path.display().to_string(),
                entry.metadata().expect("stat").permissions().mode() & 0o777,
            ));
        }
    }
    out
}

/// Runs the supervisor under `sh` with umask 022, as a login shell usually has it.
fn run_with_umask_022(args: &[String]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(SUPERVISOR)
        .args(args)
        .output()
        .expect("sh runs")
}

#[test]
fn a_new_store_is_owner_only_whatever_the_umask() {
    let (api, _dir, store) = setup(&[]);
    let args = job_args(&api.url(), "0..2000", &store);
    let out = run_with_umask_022(&args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let modes = modes(&store);
    assert!(modes.len() >= 3, "the store has files: {modes:?}");
    for (path, mode) in &modes {
        let want = if Path::new(path).is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{path} is {mode:o}");
    }
}

#[test]
fn an_existing_store_keeps_the_modes_its_owner_gave_it() {
    let (api, _dir, store) = setup(&[]);
    Job::new(&api.url(), "0..1000", &store).run().assert_code(0);
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let db = store.join("db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    Job::new(&api.url(), "0..2000", &store).run().assert_code(0);
    assert_eq!(std::fs::metadata(&store).expect("stat").permissions().mode() & 0o777, 0o750);
    assert_eq!(std::fs::metadata(&db).expect("stat").permissions().mode() & 0o777, 0o640);
    assert_complete(&store, 0..2000);
}
