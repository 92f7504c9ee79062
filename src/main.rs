fn main() {
    eprintln!("tern: server not assembled yet");
    std::process::exit(2);
}
