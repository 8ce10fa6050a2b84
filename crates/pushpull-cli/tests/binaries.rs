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
