//! tern-bench: filled by issue 3.
fn main() {
    eprintln!("tern-bench: not built yet (issue 3)");
    std::process::exit(2);
}
