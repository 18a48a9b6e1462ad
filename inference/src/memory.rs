//! Handing memory back to the system once a replaced model is gone.
//!
//! A reload reads a new model while the old one still serves, then drops the old one: hundreds of
//! megabytes freed at once. glibc keeps freed memory in its heaps for reuse instead of returning
//! it, so without this a server's resident memory climbs with every reload and stays up (the
//! cluster soak, with an NLU bundle reloaded each minute, saw 755 MB become 1.0–2.3 GB).
//! `malloc_trim` returns the free pages; it is called when a batching thread ends, which is when
//! the last handle on a replaced model goes away.

/// Returns freed heap memory to the system (glibc on Linux; elsewhere nothing to do).
#[allow(unsafe_code)]
pub(crate) fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointers, only releases pages glibc already holds as free,
    // and takes glibc's own arena locks, so any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
