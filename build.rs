// `sqlx::migrate!()` embeds migrations/ at compile time; rebuild when it changes, or a
// binary could ship without its newest migration.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
