//! The server binary carries the server, not the benchmark lab: the fault proxy, the load
//! generators and the plotting live in `pushpull-bench`, which `pushpull bench` runs.

/// Whether the binary at `path` holds code of the crate `name` (its symbols name it).
fn links(path: &str, name: &str) -> bool {
    let bytes = std::fs::read(path).expect("the binary is built");
    memchr::memmem::find(&bytes, name.as_bytes()).is_some()
}

#[test]
fn pushpull_links_no_fault_proxy_and_pushpull_bench_does() {
    let server = env!("CARGO_BIN_EXE_pushpull");
    let lab = env!("CARGO_BIN_EXE_pushpull-bench");
    // The probe finds a crate by its symbols: both binaries have the transports' ...
    assert!(links(server, "pushpull_sse"), "the probe finds no crate in the server binary");
    assert!(links(lab, "pushpull_chaos"), "the probe finds no fault proxy in the lab");
    // ... and only the lab has the fault proxy and the plotting.
    assert!(!links(server, "pushpull_chaos"), "the server binary links the fault proxy");
    assert!(!links(server, "plotters"), "the server binary links the plotting");
}

/// The README's first command, `cargo run --release -p pushpull-cli -- serve`, names no binary:
/// with two in the package, cargo refuses ("could not determine which binary to run") unless
/// the manifest says which runs by default.
#[test]
fn cargo_run_of_the_package_runs_pushpull() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    assert!(
        readme.contains("cargo run --release -p pushpull-cli -- serve"),
        "the README no longer runs the server this way; update this test with it"
    );
    let manifest: toml::Table =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let package = manifest["package"].as_table().unwrap();
    let binaries = 1 + std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/bin"))
        .map_or(0, |dir| dir.count());
    if binaries > 1 {
        assert_eq!(
            package.get("default-run").and_then(|v| v.as_str()),
            Some("pushpull"),
            "{binaries} binaries and no default-run = \"pushpull\": `cargo run -p pushpull-cli` \
             cannot pick one"
        );
    }
}
