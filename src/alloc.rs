//! The node's memory allocator: mimalloc, with the one option the node sets. A library does not
//! choose its users' allocator, so each binary declares it (`main.rs`, and the test harness for
//! nodes started in process: `#[global_allocator] static A: jnsc::alloc::Allocator`) and calls
//! [`configure`] before the node starts.

/// The allocator the `jnsc` command runs on.
pub type Allocator = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mi_option_e` in mimalloc.h, v3): milliseconds before
/// freed memory goes back to the OS; -1 never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc's `mi_option_allow_thp` (`mi_option_e`, v3): whether it asks for transparent huge
/// pages.
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Sets up the allocator for the node, each unless the environment says otherwise
/// (`MIMALLOC_PURGE_DELAY`, `MIMALLOC_ALLOW_THP`):
/// - Freed memory is kept for reuse instead of returned to the OS. The network frees and
///   allocates the same large buffers for every window; given back and faulted in again, each
///   one is zeroed by the kernel page by page, about 15% of an analysis' time. The price: the
///   resident size stays at the analysis' peak between studies.
/// - No transparent huge pages (mimalloc's option, and `PR_SET_THP_DISABLE` for the process,
///   since mimalloc reads its option when it starts, before `main`). With them, every first
///   touch of a 2 MiB range made the kernel zero all of it: receiving one 300-slice series
///   (resident size +20 MiB) took 138 such faults, 276 MiB zeroed, 20% of the node's CPU while
///   receiving on four associations (`clear_page_erms`). Without them: 0.90-0.97 ms of CPU per
///   instance instead of 1.03-1.17 on four associations, and `analyze` of LIDC-IDRI-0314 in
///   12.2 s instead of 13.5 s (loading, resampling and the lung mask; the same findings). README,
///   "Benchmarks".
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc allows it at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: sets an integer option; mimalloc reads it when it maps memory.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
        #[cfg(target_os = "linux")]
        // SAFETY: a process-wide flag; no memory is passed. On failure (an old kernel) huge
        // pages stay as they were.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_kept_and_huge_pages_are_off() {
        // SAFETY: reads and sets an integer option.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // mimalloc v3's default purge delay (options.c): the index names that option.
            assert_eq!(before, 1000);
        }
        // SAFETY: reads an integer option.
        let thp_before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP) };
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            // mimalloc v3's default on Linux: the index names that option.
            assert_eq!(thp_before, 1);
        }
        configure();
        // SAFETY: reads integer options.
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        let thp_after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(after, -1);
        }
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            assert_eq!(thp_after, 0);
            #[cfg(target_os = "linux")]
            // SAFETY: reads a process-wide flag.
            assert_eq!(
                unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
                1
            );
        }
    }
}
