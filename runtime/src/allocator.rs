//! The memory allocator of every Sagaflow binary (and test binary): each links this crate.
//!
//! Why not the system's: under load glibc's `malloc` and `free` were about a sixth of the CPU
//! of the platform's own threads (perf at 100 sagas/s; docs/benchmarks.md). With mimalloc the
//! `sagaflow` process used 4 % less CPU at a fixed 100 sagas/s (8 % less in user space), for
//! about 35 MB more resident memory.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
