/// mimalloc rather than glibc malloc: see the note on the dependency in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its value in mimalloc 3's `mi_option_t` (between
/// `mi_option_eager_commit_delay` = 14 and `mi_option_use_numa_nodes` = 16,
/// which libmimalloc-sys does name).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc (the binary's allocator) keeps freed memory before
/// returning it to the OS. mimalloc's own `MIMALLOC_PURGE_DELAY` wins, for
/// experiments; without mimalloc as the allocator this changes nothing.
#[allow(unsafe_code)]
fn set_allocator_purge_delay_ms(ms: i64) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads it when it purges.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as std::ffi::c_long) };
    }
}

fn main() -> anyhow::Result<()> {
    // Freed memory goes back to the OS at once. With mimalloc's default delay
    // the server held about 280 MiB more at its peak while a seal and a merge
    // ran together (BENCHMARKS.md, 10M events: 1,081 vs 801 MiB).
    set_allocator_purge_delay_ms(0);
    auditlake::cli::main(auditlake::cli::Allocator { set_purge_delay_ms: set_allocator_purge_delay_ms })
}
