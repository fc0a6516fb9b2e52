/// mimalloc rather than glibc malloc: see the note on the dependency in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Freed memory goes back to the OS at once. With mimalloc's default delay
    // the server held about 280 MiB more at its peak while a seal and a merge
    // ran together (BENCHMARKS.md, 10M events: 1,081 vs 801 MiB).
    auditlake::cli::set_allocator_purge_delay_ms(0);
    auditlake::cli::main()
}
