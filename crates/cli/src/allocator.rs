//! The `rallymq` binary's allocator and how its runtime threads use it. Also compiled into
//! benches' `rallymq_bench_broker` and `cluster_load` (by path), so that the brokers the load
//! tools measure run as the binary does.

/// Sets jemalloc up for the broker; called first thing in `main`.
pub(crate) fn configure() {
    #[cfg(not(target_env = "msvc"))]
    configure_jemalloc();
}

/// The broker's multi-thread runtime (`worker_threads`, or one per core), its threads tuned
/// by [`tune_runtime`].
pub(crate) fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    tune_runtime(&mut builder);
    builder.enable_all().build()
}

/// Has the runtime's threads share arenas and give their caches back as they go idle.
fn tune_runtime(builder: &mut tokio::runtime::Builder) {
    #[cfg(not(target_env = "msvc"))]
    builder
        .on_thread_start(share_arena)
        .on_thread_park(release_thread_cache);
    #[cfg(target_env = "msvc")]
    let _ = builder;
}

/// jemalloc, for a smaller idle connection than glibc's malloc gives at the same throughput
/// (see the dependency's comment in Cargo.toml).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Gives the calling thread's jemalloc cache back to its arena: called as a runtime thread
/// goes idle. The cache keeps up to 20 freed blocks of each size for the thread's next
/// allocations, and jemalloc trims it only as the thread allocates, so a thread that went idle
/// after a burst kept them for good, with the pages they sit in: ~400 KiB after 1,000
/// clustered CONNECTs (each boxes two futures, of 3.4 and 5.9 KB). Released at every park: a
/// burst's last blocks are freed together just before it (released at most every 10 ms, the
/// threads kept most of them).
#[cfg(not(target_env = "msvc"))]
fn release_thread_cache() {
    use tikv_jemalloc_ctl::{Access, AsName};

    // Disabling a thread's cache flushes it; enabled again, it starts empty.
    let enabled = b"thread.tcache.enabled\0".name();
    if enabled.write(false).is_ok() {
        let _ = enabled.write(true);
    }
}

/// How long a freed page stays with jemalloc before its background thread gives it back to the
/// system, in ms (jemalloc's default: 10,000). The thread sleeps that long while an arena holds
/// few freed pages (under 4 MiB), and counts what was freed while it slept as freed when it
/// wakes, so a page goes back between one and two decays after it was freed: with 10 s, an idle
/// clustered node still held a CONNECT burst's freed pages 12 s later (1,000 idle connections
/// 1.22x a single node's RSS; 1.13x with 1 s). Under load, freed pages are taken again well
/// within a second, so the shorter decay gives back what a burst left, not what traffic reuses.
#[cfg(not(target_env = "msvc"))]
const DIRTY_DECAY_MS: isize = 1000;

/// Starts jemalloc's background thread, which gives freed memory back to the system after a
/// burst (see the dependency's comment in Cargo.toml): without it jemalloc purges only as it
/// allocates again, and an idle broker only keeps more. Sets [`DIRTY_DECAY_MS`] unless
/// `_RJEM_MALLOC_CONF` is set: an operator's settings (and a measurement's) win.
#[cfg(not(target_env = "msvc"))]
fn configure_jemalloc() {
    use tikv_jemalloc_ctl::{Access, AsName};

    if std::env::var_os("_RJEM_MALLOC_CONF").is_none() {
        // Arenas made from now on take the default; arena 0, made as jemalloc started, is set
        // on its own. The other arenas are made as threads start, after this.
        let _ = b"arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS);
        let _ = b"arena.0.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS);
    }
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
}

/// Runtime threads that share one jemalloc arena. jemalloc gives each new thread an arena of its
/// own, up to four per core (made for processes with many more threads than cores), and each
/// arena keeps partly filled pages of every size class it serves; the runtime has one worker
/// per core. With one arena for the process (`narenas:1`, 2 cores), 1,000 idle clustered
/// connections took ~90 KiB less (1,588 and 1,636 KiB against 1,704-1,724).
#[cfg(not(target_env = "msvc"))]
const THREADS_PER_ARENA: usize = 4;

/// The arena of the runtime's `started`-th thread (counted from 0): [`THREADS_PER_ARENA`] to
/// each, the first ones with the main thread in arena 0, and no more arenas than the `workers`
/// need (of jemalloc's `arenas`), so that the blocking pool's threads, started and ended all
/// along, go round the workers' arenas instead of making new ones.
#[cfg(not(target_env = "msvc"))]
fn runtime_arena(started: usize, workers: usize, arenas: u32) -> u32 {
    let runtime_arenas = u32::try_from(workers.div_ceil(THREADS_PER_ARENA))
        .unwrap_or(u32::MAX)
        .clamp(1, arenas.max(1));
    u32::try_from(started / THREADS_PER_ARENA).unwrap_or(u32::MAX) % runtime_arenas
}

/// Binds the calling runtime thread to its [`runtime_arena`] (the runtime has a worker per
/// core), unless `_RJEM_MALLOC_CONF` is set.
#[cfg(not(target_env = "msvc"))]
fn share_arena() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tikv_jemalloc_ctl::{Access, AsName};

    static STARTED: AtomicUsize = AtomicUsize::new(0);
    if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
        return;
    }
    let Ok(arenas) = b"arenas.narenas\0".name().read() else {
        return;
    };
    let arenas: u32 = arenas;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = STARTED.fetch_add(1, Ordering::Relaxed);
    let _ = b"thread.arena\0"
        .name()
        .write(runtime_arena(started, workers, arenas));
}

#[cfg(all(test, not(target_env = "msvc")))]
mod tests {
    use super::*;

    /// The decay reaches arena 0 and the default of arenas made after (the threads' arenas),
    /// and the background thread runs (jemalloc refuses it when built without its support).
    #[test]
    fn jemalloc_gives_freed_pages_back_within_the_decay() {
        use tikv_jemalloc_ctl::{Access, AsName};

        assert!(
            std::env::var_os("_RJEM_MALLOC_CONF").is_none(),
            "run without _RJEM_MALLOC_CONF: it leaves jemalloc's decay as it says"
        );
        configure_jemalloc();
        assert_eq!(tikv_jemalloc_ctl::background_thread::read(), Ok(true));
        let decay = |name: &[u8]| -> isize { name.name().read().expect("a decay setting") };
        assert_eq!(decay(b"arena.0.dirty_decay_ms\0"), DIRTY_DECAY_MS);
        assert_eq!(decay(b"arenas.dirty_decay_ms\0"), DIRTY_DECAY_MS);
    }

    /// Runtime threads go to arena 0 (the main thread's) four by four, then to the next one,
    /// round the arenas the workers need.
    #[test]
    fn runtime_threads_share_arenas() {
        use tikv_jemalloc_ctl::{Access, AsName};

        let arenas = |workers: usize, narenas: u32| -> Vec<u32> {
            (0..12)
                .map(|started| runtime_arena(started, workers, narenas))
                .collect()
        };
        assert_eq!(arenas(2, 8), vec![0; 12]);
        assert_eq!(arenas(8, 32), [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]);
        assert_eq!(arenas(16, 2), [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]);
        assert_eq!(arenas(12, 64), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
        // The binding holds: each new thread is in the arena it was given.
        let narenas: u32 = b"arenas.narenas\0".name().read().expect("the arena count");
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        for started in 0..THREADS_PER_ARENA + 1 {
            let arena: u32 = std::thread::spawn(|| {
                share_arena();
                b"thread.arena\0".name().read().expect("the thread's arena")
            })
            .join()
            .expect("the thread runs");
            assert_eq!(arena, runtime_arena(started, workers, narenas));
        }
    }
}
