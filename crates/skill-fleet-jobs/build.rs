//! Rebuilds the crate when a migration of either backend changes, so `embed_migrations!`
//! picks it up.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
