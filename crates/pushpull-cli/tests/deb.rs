//! The Debian package, as an operator gets it: built by `scripts/package-deb` (cargo-deb, from
//! the binaries of this build), installed with dpkg into this machine, the installed server
//! started as its systemd unit would start it (its `ExecStart`, as its `User`), used by the
//! installed client, stopped by SIGTERM, then purged. Needs root, as dpkg does.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod support;

const UNIT: &str = "/usr/lib/systemd/system/pushpull.service";
const CONFIG: &str = "/etc/pushpull/pushpull.toml";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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

/// Purges the package when the test ends, whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "pushpull"]).output();
    }
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_debian_package_installs_runs_as_its_unit_and_purges() {
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(text(&uid.stdout).trim(), "0", "dpkg -i needs root: run the test suite as root");
    let installed_before = Command::new("dpkg-query").args(["-W", "pushpull"]).output().unwrap();
    assert!(
        !installed_before.status.success(),
        "a pushpull package is installed on this machine already; the test would replace it"
    );

    // Build the .deb from the binaries this test run built (target/debug).
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pushpull"));
    let target_dir = bin.parent().and_then(Path::parent).unwrap();
    let out = Scratch(std::env::temp_dir().join(format!("pushpull-deb-{}", std::process::id())));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    run(Command::new(root.join("scripts/package-deb"))
        .args(["--profile", "dev", "--no-build", "--output"])
        .arg(&out.0)
        .env("CARGO_TARGET_DIR", target_dir));
    let deb = std::fs::read_dir(&out.0)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .expect("a .deb was made");

    let _installed = Installed;
    run(Command::new("dpkg").arg("-i").arg(&deb));

    // What the package put in place.
    let version = run(Command::new("/usr/bin/pushpull").arg("--version"));
    assert!(text(&version.stdout).starts_with("pushpull "), "{}", text(&version.stdout));
    assert!(Path::new("/usr/bin/pushpull-bench").exists());
    for asset in [
        "/usr/share/man/man1/pushpull.1.gz",
        "/usr/share/bash-completion/completions/pushpull",
        "/usr/share/doc/pushpull/copyright",
    ] {
        assert!(Path::new(asset).exists(), "{asset}");
    }
    let user = run(Command::new("getent").args(["passwd", "pushpull"]));
    assert!(
        text(&user.stdout).trim_end().ends_with(":/usr/sbin/nologin"),
        "{}",
        text(&user.stdout)
    );
    let mode = run(Command::new("stat").args(["-c", "%a %U:%G", CONFIG]));
    assert_eq!(text(&mode.stdout).trim(), "640 root:pushpull");
    run(Command::new("/usr/bin/pushpull").args(["config", "check", CONFIG]));
    let verify = run(Command::new("systemd-analyze").args(["verify", UNIT]));
    assert!(verify.stderr.is_empty(), "the unit has problems: {}", text(&verify.stderr));

    // Start the server as the unit does: its ExecStart, as its User, on a free port.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}="))
            .to_owned()
    };
    let (user, exec) = (value("User"), value("ExecStart"));
    assert_eq!(user, "pushpull");
    let mut server = Command::new("runuser")
        .args(["-u", &user, "--"])
        .args(exec.split_whitespace())
        .env("PUSHPULL_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    // runuser's child is the server, as systemd's main process would be.
    let child =
        run(Command::new("ps").args(["-o", "pid=,user=", "--ppid", &server.id().to_string()]));
    let child = text(&child.stdout);
    let (pid, owner) = child.trim().split_once(' ').unwrap_or_else(|| panic!("{child:?}"));
    assert_eq!(owner.trim(), "pushpull", "the server runs as its own user");

    let client = |args: &[&str]| {
        let mut command = Command::new("/usr/bin/pushpull");
        command.args(args).args(["--url", &url]).env_remove("PUSHPULL_TOKEN");
        run(&mut command)
    };
    client(&["publish", "installed", "from the package"]);
    for transport in ["poll", "sse", "ws"] {
        let fetched = client(&["subscribe", "installed", "--count", "1", "--transport", transport]);
        assert_eq!(text(&fetched.stdout), "from the package\n", "{transport}");
    }

    let status = Command::new("kill").args(["-TERM", pid]).status().unwrap();
    assert!(status.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.wait());
    });
    let exit = rx.recv_timeout(support::LIMIT).expect("the server stopped on SIGTERM").unwrap();
    assert!(exit.success(), "{exit:?}");

    // Purged, nothing is left.
    run(Command::new("dpkg").args(["--purge", "pushpull"]));
    for gone in ["/usr/bin/pushpull", CONFIG, UNIT] {
        assert!(!Path::new(gone).exists(), "{gone} is still there");
    }
    assert!(!Command::new("getent").args(["passwd", "pushpull"]).status().unwrap().success());
}
