//! The checked-in C header (`include/orrery_client.h`) is what cbindgen generates from the
//! crate today. `ORRERY_BLESS=1 cargo test -p orrery-client-ffi --test header` rewrites it.

use std::path::Path;

#[test]
fn checked_in_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = dir.join("include/orrery_client.h");
    if std::env::var_os("ORRERY_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is stale: run `ORRERY_BLESS=1 cargo test -p orrery-client-ffi --test header` and \
         commit it",
        path.display()
    );
}
