fn main() -> anyhow::Result<()> {
    auditlake::cli::main()
}
