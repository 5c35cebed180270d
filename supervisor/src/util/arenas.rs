//! Fewer malloc arenas for the supervisor than glibc's default.
//!
//! glibc gives a thread that meets contention in malloc an arena of its own, up to eight per
//! core, and memory freed into an arena stays in it. The supervisor's reader threads, one per
//! worker, decode the workers' bodies in their own arenas and the store writer frees them
//! there, so each arena keeps as much as its reader ever held at once: with `--workers 16` and
//! 8 KiB bodies, 104 MiB of peak RSS over 1M ids, 73 MiB with two arenas, at the same speed and
//! CPU (docs/performance.md). Workers keep glibc's default: their fetch threads allocate for
//! every request, and would contend for two arenas.

/// Limits this process to `arenas` malloc arenas. Called before the supervisor starts a thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit(arenas: i32) {
    // SAFETY: mallopt takes two integers and changes only malloc's own settings, under malloc's
    // lock; no pointer crosses. It returns 0 when glibc refuses the value, and the default stays.
    let _ = unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, arenas) };
}

/// Elsewhere the allocator's defaults stay.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit(_arenas: i32) {}
