//! Process hardening: no core dumps, secret pages kept out of swap where allowed.

use rustix::process::{Resource, Rlimit};

/// Disables core dumps and ptrace attachment by other users of the same uid.
/// Failures are logged, not fatal: some sandboxes forbid these calls.
pub fn disable_core_dumps() {
    let no_core = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(errno) = rustix::process::setrlimit(Resource::Core, no_core) {
        tracing::warn!(%errno, "failed to set RLIMIT_CORE to 0; a crash could write memory to a core file");
    }
    if let Err(errno) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(%errno, "failed to clear the dumpable flag; a crash could write memory to a core file");
    }
}

/// Locks the pages of `bytes` in memory so they are never swapped out.
///
/// Returns false when the memory-lock limit (`RLIMIT_MEMLOCK`) does not allow it; the
/// caller logs a warning. Pages stay locked until the process exits, which is fine for
/// the few kilobytes of secrets the agent holds.
pub fn lock_in_memory(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    #[allow(
        unsafe_code,
        reason = "mlock takes a raw pointer; it only changes page attributes"
    )]
    // SAFETY: the pointer and length describe a live, borrowed allocation. mlock reads
    // and writes no memory; it only pins the pages that contain the range.
    let locked = unsafe { rustix::mm::mlock(bytes.as_ptr().cast_mut().cast(), bytes.len()) };
    locked.is_ok()
}
