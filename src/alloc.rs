//! The node's memory allocator: mimalloc, with the one option the node sets. A library does not
//! choose its users' allocator, so each binary declares it (`main.rs`, and the test harness for
//! nodes started in process: `#[global_allocator] static A: jnsc::alloc::Allocator`) and calls
//! [`keep_freed_memory`] before the node starts.

/// The allocator the `jnsc` command runs on.
pub type Allocator = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mi_option_e` in mimalloc.h, v3): milliseconds before
/// freed memory goes back to the OS; -1 never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of returning it to the OS (unless `MIMALLOC_PURGE_DELAY`
/// says otherwise). The network frees and allocates the same large buffers for every window;
/// given back and faulted in again, each one is zeroed by the kernel page by page, about 15% of
/// an analysis' time. The price: the resident size stays at the analysis' peak between studies.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc allows it at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_kept_by_the_allocator() {
        // SAFETY: reads and sets an integer option.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // mimalloc v3's default purge delay (options.c): the index names that option.
            assert_eq!(before, 1000);
        }
        keep_freed_memory();
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(after, -1);
        }
    }
}
