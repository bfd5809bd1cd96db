//! `sfs-dump`: see inside any store file (placeholder until the tool lands).

fn main() {
    eprintln!("sfs-dump: not built yet");
    std::process::exit(2);
}
