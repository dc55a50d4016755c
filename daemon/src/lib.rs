//! The bootstrap every Strata daemon shares (the pageserver, the safekeeper, the compute's
//! walproposer and page filesystem): logs on stderr, the flags that mean the same thing in each
//! daemon under the same names, the TOML config file whose keys a flag overrides, the lines
//! scripts read on stdout, and a fatal error printed as one line with exit status 1.
//!
//! Old spellings of the shared flags (`--datadir`, `--listen-grpc`) and keys (`datadir`,
//! `listen_grpc`) are accepted as hidden aliases, so scripts and configs written for them
//! keep working.
//!
//! [`ports`]: which loopback ports clusters and the test harness pick, kept apart.

pub mod ports;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), in color only on a terminal.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A daemon's `main`: sets up logging and runs `run`; an error is printed as
/// `<name>: <error with its causes>` on stderr and the process exits with status 1.
pub fn main(name: &str, run: impl FnOnce() -> Result<()>) {
    init_tracing();
    if let Err(e) = run() {
        eprintln!("{name}: {e:#}");
        std::process::exit(1);
    }
}

/// Prints a line for scripts on stdout (`... listening on ADDR`); a reader that went away is
/// no reason to stop.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The flags every server daemon takes (flattened into its own `clap` arguments).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DaemonArgs {
    /// Directory of the daemon's data; created if missing.
    #[arg(long, value_name = "DIR", alias = "datadir")]
    pub data_dir: Option<PathBuf>,
    /// Address of the gRPC service, e.g. 127.0.0.1:7676 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR:PORT", alias = "listen-grpc")]
    pub listen: Option<SocketAddr>,
    /// Address of the HTTP endpoint for Prometheus metrics (`/metrics`) and health checks
    /// (`/health/live`, `/health/ready`), e.g. 127.0.0.1:9899; not served if not given.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// The cluster's Ed25519 public key (PEM): every call must then carry a token it signed
    /// whose scope allows the call. Not given: auth is off, every caller is trusted.
    #[arg(long, value_name = "FILE")]
    pub auth_public_key: Option<PathBuf>,
    /// Serve addresses beyond loopback without --auth-public-key (refused otherwise).
    #[arg(long)]
    pub no_auth: bool,
    /// TOML configuration file with the same keys as the flags (`data_dir`, `listen`, …);
    /// a flag wins over the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The config file's keys for [`DaemonArgs`].
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct SharedKeys {
    #[serde(alias = "datadir")]
    data_dir: Option<PathBuf>,
    #[serde(alias = "listen_grpc")]
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    auth_public_key: Option<PathBuf>,
    no_auth: Option<bool>,
}

/// Every key (and alias) of [`SharedKeys`]: the rest of the file is the daemon's own.
const SHARED_KEYS: [&str; 7] = [
    "data_dir",
    "datadir",
    "listen",
    "listen_grpc",
    "metrics_listen",
    "auth_public_key",
    "no_auth",
];

/// The shared settings, each from its flag, else the config file, else the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub auth_public_key: Option<PathBuf>,
    pub no_auth: bool,
}

impl DaemonArgs {
    /// The arguments of `--config path` alone.
    pub fn with_config(path: PathBuf) -> DaemonArgs {
        DaemonArgs {
            config: Some(path),
            ..DaemonArgs::default()
        }
    }

    /// The shared settings and the daemon's own keys `T` from the config file (`T::default()`
    /// without `--config`). Unknown keys are refused: a typo must not fall back to a default.
    /// `default_listen` is the daemon's gRPC address when neither flag nor file gives one.
    pub fn load<T: DeserializeOwned + Default>(
        self,
        default_listen: SocketAddr,
    ) -> Result<(Daemon, T)> {
        let (shared, own) = match &self.config {
            Some(path) => read_config(path)?,
            None => (SharedKeys::default(), T::default()),
        };
        let data_dir = self
            .data_dir
            .or(shared.data_dir)
            .context("no data directory: pass --data-dir or set `data_dir` in the config file")?;
        let daemon = Daemon {
            data_dir,
            listen: self.listen.or(shared.listen).unwrap_or(default_listen),
            metrics_listen: self.metrics_listen.or(shared.metrics_listen),
            auth_public_key: self.auth_public_key.or(shared.auth_public_key),
            no_auth: self.no_auth || shared.no_auth.unwrap_or(false),
        };
        Ok((daemon, own))
    }
}

/// Splits the file into the shared keys and the daemon's own, each parsed strictly.
fn read_config<T: DeserializeOwned>(path: &Path) -> Result<(SharedKeys, T)> {
    let context = || format!("parsing config file {}", path.display());
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let mut own: toml::Table = toml::from_str(&text).with_context(context)?;
    let mut shared = toml::Table::new();
    for key in SHARED_KEYS {
        if let Some(value) = own.remove(key) {
            shared.insert(key.to_string(), value);
        }
    }
    Ok((
        shared.try_into().with_context(context)?,
        own.try_into().with_context(context)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Default, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Own {
        id: Option<u64>,
    }

    fn listen(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn load(args: DaemonArgs, file: Option<&str>) -> Result<(Daemon, Own)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("daemon.toml");
        let args = match file {
            Some(text) => {
                std::fs::write(&path, text)?;
                DaemonArgs {
                    config: Some(path),
                    ..args
                }
            }
            None => args,
        };
        args.load(listen("127.0.0.1:1"))
    }

    #[test]
    fn every_shared_key_is_taken_from_the_file() {
        let file = r#"
            data_dir = "/d"
            listen = "127.0.0.1:2"
            metrics_listen = "127.0.0.1:3"
            auth_public_key = "/k.pem"
            no_auth = true
            id = 7
        "#;
        let (d, own) = load(DaemonArgs::default(), Some(file)).unwrap();
        assert_eq!(
            d,
            Daemon {
                data_dir: "/d".into(),
                listen: listen("127.0.0.1:2"),
                metrics_listen: Some(listen("127.0.0.1:3")),
                auth_public_key: Some("/k.pem".into()),
                no_auth: true,
            }
        );
        assert_eq!(own, Own { id: Some(7) });
    }

    #[test]
    fn flags_win_and_defaults_fill_in() {
        let args = DaemonArgs {
            data_dir: Some("/flag".into()),
            ..DaemonArgs::default()
        };
        let (d, own) = load(args, Some("data_dir = \"/file\"")).unwrap();
        assert_eq!(d.data_dir, PathBuf::from("/flag"));
        assert_eq!(d.listen, listen("127.0.0.1:1"));
        assert_eq!((d.metrics_listen, d.no_auth), (None, false));
        assert_eq!(own, Own::default());
    }

    #[test]
    fn old_key_names_still_work() {
        let file = "datadir = \"/old\"\nlisten_grpc = \"127.0.0.1:4\"";
        let (d, _) = load(DaemonArgs::default(), Some(file)).unwrap();
        assert_eq!(d.data_dir, PathBuf::from("/old"));
        assert_eq!(d.listen, listen("127.0.0.1:4"));
    }

    #[test]
    fn old_flag_names_still_work() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            daemon: DaemonArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "d",
            "--datadir",
            "/old",
            "--listen-grpc",
            "127.0.0.1:5",
        ])
        .unwrap();
        assert_eq!(cli.daemon.data_dir, Some(PathBuf::from("/old")));
        assert_eq!(cli.daemon.listen, Some(listen("127.0.0.1:5")));
    }

    #[test]
    fn bad_input_is_named() {
        let e = load(DaemonArgs::default(), None).unwrap_err().to_string();
        assert!(e.contains("--data-dir"), "{e}");
        let e = format!(
            "{:#}",
            load(DaemonArgs::default(), Some("data_dir = \"/d\"\nlisen = 1")).unwrap_err()
        );
        assert!(e.contains("unknown field `lisen`"), "{e}");
        assert!(e.contains("daemon.toml"), "the file is named: {e}");
        let e = format!(
            "{:#}",
            load(DaemonArgs::default(), Some("listen = \"nowhere\"")).unwrap_err()
        );
        assert!(e.contains("parsing config file"), "{e}");
        let e = format!(
            "{:#}",
            load(DaemonArgs::default(), Some("data_dir = ")).unwrap_err()
        );
        assert!(e.contains("parsing config file"), "{e}");
    }
}
