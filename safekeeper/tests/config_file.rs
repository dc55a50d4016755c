//! The safekeeper binary's shared daemon flags and config keys (`strata-daemon`): the new
//! names, the old ones kept as aliases, a flag over the file, and a typo refused by name.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a safekeeper may take to print its first line.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A safekeeper started with `args`, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the safekeeper and returns it with its first stdout line (empty if it exited
/// without one).
fn start(args: &[&str]) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_safekeeper"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start safekeeper");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(START_DEADLINE)
        .unwrap_or_else(|_| panic!("the safekeeper printed nothing within {START_DEADLINE:?}"));
    (Running(child), line)
}

/// Runs the safekeeper to its end: (exit success, stderr).
fn run_to_end(args: &[&str]) -> (bool, String) {
    let (mut sk, line) = start(args);
    assert!(line.is_empty(), "it started: {line}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(sk.0.stderr.as_mut().expect("stderr"), &mut stderr).unwrap();
    let ok = sk.0.wait().unwrap().success();
    (ok, stderr)
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("safekeeper.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The node id the safekeeper wrote into `data_dir` at its first start.
fn stored_id(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("safekeeper.id"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn new_and_old_key_names_both_start_it() {
    let base = tempfile::tempdir().unwrap();
    for (n, keys) in [
        ("new", ["data_dir", "listen"]),
        ("old", ["datadir", "listen_grpc"]),
    ] {
        let data = base.path().join(n);
        let conf = write_config(
            base.path(),
            &format!(
                "{} = {:?}\n{} = \"127.0.0.1:0\"\nid = 7\n",
                keys[0],
                data.to_str().unwrap(),
                keys[1]
            ),
        );
        let (_sk, line) = start(&["--config", &conf]);
        assert!(
            line.starts_with("safekeeper 7 listening on 127.0.0.1:"),
            "{n}: {line:?}"
        );
        assert_eq!(stored_id(&data), "7", "{n}");
    }
}

#[test]
fn a_flag_wins_over_the_file_under_either_spelling() {
    let base = tempfile::tempdir().unwrap();
    let from_file = base.path().join("file");
    let conf = write_config(
        base.path(),
        &format!(
            "data_dir = {:?}\nid = 3\nlisten = \"127.0.0.1:1\"\n",
            from_file.to_str().unwrap()
        ),
    );
    for (n, flags) in [
        ("new", ["--data-dir", "--listen"]),
        ("old", ["--datadir", "--listen-grpc"]),
    ] {
        let from_flag = base.path().join(n);
        let (_sk, line) = start(&[
            "--config",
            &conf,
            flags[0],
            from_flag.to_str().unwrap(),
            flags[1],
            "127.0.0.1:0",
        ]);
        assert!(
            line.starts_with("safekeeper 3 listening on 127.0.0.1:"),
            "{n}: {line:?}"
        );
        assert_eq!(stored_id(&from_flag), "3", "{n}");
    }
    assert!(!from_file.exists(), "the file's data_dir was used");
}

#[test]
fn a_misspelled_key_or_a_missing_data_dir_is_refused_by_name() {
    let base = tempfile::tempdir().unwrap();
    let conf = write_config(
        base.path(),
        "data_dir = \"/nonexistent/sk\"\nlisten_grcp = \"127.0.0.1:0\"\nid = 1\n",
    );
    let (ok, err) = run_to_end(&["--config", &conf]);
    assert!(
        !ok && err.contains("safekeeper: parsing config file") && err.contains("listen_grcp"),
        "{err}"
    );
    let (ok, err) = run_to_end(&["--id", "1"]);
    assert!(!ok && err.contains("--data-dir"), "{err}");
}
