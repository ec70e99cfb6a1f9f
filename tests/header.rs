//! `include/smarttrim.h` is generated from `src/ffi.rs` by cbindgen (with
//! `cbindgen.toml`); this test regenerates it in memory and fails if the
//! committed header differs. `scripts/gen-header.sh` (or
//! `SMARTTRIM_UPDATE_HEADER=1 cargo test --test header`) rewrites it.

use std::path::Path;

#[test]
fn committed_header_matches_src_ffi() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi.rs"))
        .generate()
        .expect("cbindgen could not generate the header from src/ffi.rs");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("UTF-8 header");
    let path = root.join("include/smarttrim.h");
    if std::env::var("SMARTTRIM_UPDATE_HEADER").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("write include/smarttrim.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/smarttrim.h is out of date with src/ffi.rs; run scripts/gen-header.sh and commit it"
    );
}
