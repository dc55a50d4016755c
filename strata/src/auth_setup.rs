//! The cluster's credentials. `strata init` (unless `--no-auth`) makes `<dir>/auth/` with an
//! Ed25519 key pair and the tokens the cluster's own parts present; computes get theirs as they
//! start, limited to their tenant.
//!
//! ```text
//! <dir>/auth/private_key.pem, public_key.pem  the key pair (`strata token issue` signs with it)
//! <dir>/auth/admin.token                      the strata CLI (scope admin)
//! <dir>/auth/pageserver.token                 the pageserver's WAL streams (scope safekeeper)
//! <dir>/auth/safekeeper.token                 the safekeepers' calls to their peers (safekeeper)
//! <dir>/auth/compute_password                 the `postgres` role's password on every compute
//! <dir>/auth/pgpass                           the same as a libpq password file (PGPASSFILE)
//! <dir>/computes/<name>/walproposer.token     scope safekeeper, the compute's tenant only
//! <dir>/computes/<name>/pagefs.token          scope tenant:<id>, for its page filesystem
//! ```
//!
//! Every file is mode 0600 and fsynced: a token is a password.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use strata_auth::{Claims, Scope, TokenIssuer, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};

use crate::cluster::ClusterConfig;

const AUTH_DIR: &str = "auth";
const ADMIN_TOKEN: &str = "admin.token";
const PAGESERVER_TOKEN: &str = "pageserver.token";
const SAFEKEEPER_TOKEN: &str = "safekeeper.token";
/// Read by the proxy helper (issue 19) to log into computes: keep the name.
const COMPUTE_PASSWORD: &str = "compute_password";
const PGPASS: &str = "pgpass";

pub fn auth_dir(dir: &Path) -> PathBuf {
    dir.join(AUTH_DIR)
}

pub fn public_key(dir: &Path) -> PathBuf {
    auth_dir(dir).join(PUBLIC_KEY_FILE)
}

pub fn compute_password_file(dir: &Path) -> PathBuf {
    auth_dir(dir).join(COMPUTE_PASSWORD)
}

pub fn pgpass_file(dir: &Path) -> PathBuf {
    auth_dir(dir).join(PGPASS)
}

/// Makes the key pair, the tokens of the CLI, the pageserver and the safekeepers, and the
/// computes' password (`strata init`).
pub fn create(dir: &Path) -> Result<()> {
    let auth = auth_dir(dir);
    fs::create_dir_all(&auth).with_context(|| format!("creating {}", auth.display()))?;
    set_mode(&auth, 0o700)?;
    strata_auth::generate_key_pair(&auth)
        .with_context(|| format!("creating the key pair in {}", auth.display()))?;
    for (file, scope) in [
        (ADMIN_TOKEN, Scope::Admin),
        (PAGESERVER_TOKEN, Scope::Safekeeper),
        (SAFEKEEPER_TOKEN, Scope::Safekeeper),
    ] {
        issue_to_file(dir, claims(scope, None, None)?, &auth.join(file))?;
    }
    let password = random_hex(24)?;
    compute::node::write_private(&compute_password_file(dir), password.as_bytes())?;
    let pgpass = format!("127.0.0.1:*:*:postgres:{password}\nlocalhost:*:*:postgres:{password}\n");
    compute::node::write_private(&pgpass_file(dir), pgpass.as_bytes())?;
    sync_dir(&auth)
}

/// Claims issued now; `ttl_secs` from now, or never expiring.
pub fn claims(scope: Scope, tenant_id: Option<String>, ttl_secs: Option<u64>) -> Result<Claims> {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let exp = match ttl_secs {
        Some(t) => Some(
            iat.checked_add(t)
                .context("the token's lifetime overflows")?,
        ),
        None => None,
    };
    Ok(Claims {
        scope,
        tenant_id,
        iat,
        exp,
    })
}

/// A token signed with the cluster's private key.
pub fn issue(dir: &Path, claims: &Claims) -> Result<String> {
    let key = auth_dir(dir).join(PRIVATE_KEY_FILE);
    let issuer = TokenIssuer::from_private_key_file(&key)
        .with_context(|| format!("reading the cluster's private key {}", key.display()))?;
    Ok(issuer.issue(claims)?)
}

fn issue_to_file(dir: &Path, claims: Claims, path: &Path) -> Result<()> {
    let token = issue(dir, &claims)?;
    compute::node::write_private(path, token.as_bytes())
}

/// The password every compute's `postgres` role gets; `None` in a cluster without auth.
pub fn compute_password(dir: &Path, cfg: &ClusterConfig) -> Result<Option<String>> {
    if !cfg.auth {
        return Ok(None);
    }
    let p = compute_password_file(dir);
    let text = fs::read_to_string(&p).with_context(|| {
        format!(
            "reading the computes' password {} (made by `strata init`)",
            p.display()
        )
    })?;
    Ok(Some(text.trim().to_string()))
}

/// A service's flag naming one of the cluster's files, or nothing without auth.
fn flag(cfg: &ClusterConfig, name: &str, path: PathBuf) -> Vec<String> {
    if !cfg.auth {
        return Vec::new();
    }
    vec![name.to_string(), path.to_string_lossy().into_owned()]
}

/// A service's auth flags: the key it verifies with, and `token_flag` naming the token it
/// calls others with (`auth/<token_file>`).
fn service_args(
    dir: &Path,
    cfg: &ClusterConfig,
    token_flag: &str,
    token_file: &str,
) -> Vec<String> {
    let mut args = flag(cfg, "--auth-public-key", public_key(dir));
    args.extend(flag(cfg, token_flag, auth_dir(dir).join(token_file)));
    args
}

/// A safekeeper's: the token it calls its peers with.
pub fn safekeeper_args(dir: &Path, cfg: &ClusterConfig) -> Vec<String> {
    service_args(dir, cfg, "--auth-token-file", SAFEKEEPER_TOKEN)
}

/// The pageserver's: the token it streams WAL from the safekeepers with.
pub fn pageserver_args(dir: &Path, cfg: &ClusterConfig) -> Vec<String> {
    service_args(dir, cfg, "--safekeeper-token-file", PAGESERVER_TOKEN)
}

/// Issues a compute's token into `<compute dir>/<file>` (again at each start: the file goes
/// with the compute) and returns `[flag, path]`; nothing without auth.
fn compute_token_flag(
    dir: &Path,
    cfg: &ClusterConfig,
    compute_dir: &Path,
    file: &str,
    flag_name: &str,
    claims: Claims,
) -> Result<Vec<String>> {
    if !cfg.auth {
        return Ok(Vec::new());
    }
    fs::create_dir_all(compute_dir)
        .with_context(|| format!("creating {}", compute_dir.display()))?;
    let path = compute_dir.join(file);
    issue_to_file(dir, claims, &path)?;
    Ok(flag(cfg, flag_name, path))
}

/// The walproposer's flag: a safekeeper token for its tenant's timelines only.
pub fn walproposer_args(
    dir: &Path,
    cfg: &ClusterConfig,
    compute_dir: &Path,
    tenant_id: &str,
) -> Result<Vec<String>> {
    let c = claims(Scope::Safekeeper, Some(tenant_id.to_string()), None)?;
    compute_token_flag(
        dir,
        cfg,
        compute_dir,
        "walproposer.token",
        "--safekeeper-token-file",
        c,
    )
}

/// The page filesystem's flag: a token of the compute's tenant.
pub fn pagefs_args(
    dir: &Path,
    cfg: &ClusterConfig,
    compute_dir: &Path,
    tenant_id: &str,
) -> Result<Vec<String>> {
    let c = claims(Scope::Tenant(tenant_id.to_string()), None, None)?;
    compute_token_flag(dir, cfg, compute_dir, "pagefs.token", "--token-file", c)
}

/// The cluster whose admin token the CLI's gRPC clients present (set once by `main`, and by
/// `strata demo` for the cluster it makes). A global because every command reaches the
/// services through [`crate::mgmt`], and one process serves one cluster.
static CLI_CLUSTER: Mutex<Option<PathBuf>> = Mutex::new(None);

pub fn use_cluster(dir: &Path) {
    *CLI_CLUSTER.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.to_path_buf());
}

/// The cluster [`use_cluster`] chose, if any.
pub fn cli_cluster() -> Option<PathBuf> {
    CLI_CLUSTER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// The token the CLI presents: `$STRATA_TOKEN` if set (a token from `strata token issue`),
/// else the cluster's admin token; `None` for a cluster without auth (or none chosen).
pub fn cli_token() -> Result<Option<String>> {
    if let Ok(t) = std::env::var("STRATA_TOKEN") {
        return Ok(Some(t.trim().to_string()));
    }
    let Some(dir) = cli_cluster() else {
        return Ok(None);
    };
    let Ok(cfg) = ClusterConfig::load(&dir) else {
        return Ok(None);
    };
    if !cfg.auth {
        return Ok(None);
    }
    let path = auth_dir(&dir).join(ADMIN_TOKEN);
    strata_auth::read_token_file(&path)
        .map(Some)
        .with_context(|| format!("reading the CLI's token {}", path.display()))
}

/// The interceptor of the CLI's gRPC clients: [`cli_token`] as a bearer token. A token that
/// cannot be read fails each call with the reason (the server would refuse it anyway).
pub fn cli_interceptor() -> strata_auth::BearerInterceptor {
    match cli_token() {
        Ok(t) => strata_auth::client_interceptor(t),
        Err(e) => {
            eprintln!("strata: warning: calling without a token: {e:#}");
            strata_auth::client_interceptor(None)
        }
    }
}

/// `n` random bytes from the kernel, as hex.
fn random_hex(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

/// Refuses a command that needs the cluster's keys in a cluster without auth.
pub fn require_auth(cfg: &ClusterConfig) -> Result<()> {
    if !cfg.auth {
        bail!("this cluster has no authentication (made with `strata init --no-auth`, or before auth existed): its services accept every caller, and it has no keys to sign tokens with");
    }
    Ok(())
}
