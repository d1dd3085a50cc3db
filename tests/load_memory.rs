//! Loading a series never holds the volume twice: the heap's peak while `load_series` runs, as
//! counted by this test binary's own allocator, stays within 1.2 x the volume plus a few
//! decoded files (one per thread). A test binary of its own, so no other test allocates
//! meanwhile (and without the shared harness, which brings the node's allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes live now and the most live since `reset_peak`.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// `bytes` more are live.
fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn loading_a_series_peaks_at_the_volume_plus_a_few_slices() {
    let dir = tempfile::tempdir().unwrap();
    let (slices, size) = (96, 256u16);
    jnsc::synth::series::write_ct_series(
        &jnsc::synth::series::SeriesSpec {
            slices,
            rows: size,
            columns: size,
            seed: 3,
            ..Default::default()
        },
        dir.path(),
    )
    .unwrap();
    let files = jnsc::volume::series::files_in(dir.path()).unwrap();
    assert_eq!(files.len(), slices);

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let series = jnsc::volume::series::load_series(&files).unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;

    let slice_bytes = usize::from(size) * usize::from(size) * 4;
    let volume_bytes = slice_bytes * slices;
    assert_eq!(series.hu.len() * 4, volume_bytes);
    let threads = rayon::current_num_threads();
    // Per thread: one file's object and its decoded pixels (2-byte stored values).
    let allowed = volume_bytes * 12 / 10 + threads * slice_bytes;
    println!(
        "peak {:.1} MiB while loading a {:.1} MiB volume ({threads} threads; allowed {:.1} MiB)",
        peak as f64 / 1048576.0,
        volume_bytes as f64 / 1048576.0,
        allowed as f64 / 1048576.0
    );
    assert!(
        peak <= allowed,
        "peak {peak} bytes for a {volume_bytes}-byte volume"
    );
}
