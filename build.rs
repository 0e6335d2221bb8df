//! Rebuilds the crate when a migration changes, so `embed_migrations!` always embeds
//! the current set.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
