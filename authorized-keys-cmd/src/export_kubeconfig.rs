//! `export-kubeconfig`: the kubelet's credentials, embedded, for the user sshd runs the command as.
//!
//! The kubelet's kubeconfig and the certificate and key files it names are readable by root
//! only, while sshd runs this command as the unprivileged user `nodegate`. Run as root (by
//! `nodegate-node-credentials.service`, and again by its path unit whenever the kubelet's
//! credentials change), this mode loads the kubelet's kubeconfig with the loader the login path
//! uses ([`NodeCredentials::load`]), found on the login path's own search path, and writes what it
//! loaded, with certificates, key and token embedded, to `/var/lib/nodegate/node.kubeconfig`
//! (mode 0640, owner root, group `nodegate`): the first place the login path looks.
//!
//! The file is replaced atomically (a temporary file in the same directory, fsync, rename), is
//! read back with the same loader before it replaces the old one, and is left alone when it
//! already says the same. The directory belongs to user `nodegate`, so nothing in it is
//! trusted: a symbolic link at the destination is refused, and ownership and mode are set on the
//! open temporary file, never through a name. Only this mode runs this code; the login path
//! never does.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::config::KUBECONFIG_SEARCH_PATH;
use crate::kubeconfig::{ClientAuth, KubeconfigError, NodeCredentials};
use crate::perms;

/// Where the credentials are written unless `--to` says otherwise: the first entry of
/// [`KUBECONFIG_SEARCH_PATH`].
pub const DEFAULT_TO: &str = "/var/lib/nodegate/node.kubeconfig";
/// The group that may read the written file unless `--group` says otherwise: the group of the
/// user sshd runs the command as.
pub const DEFAULT_GROUP: &str = "nodegate";
/// The written file's permission bits: the owner (root) writes, the group reads.
pub const MODE: u32 = 0o640;
/// Where group names are looked up.
const GROUP_FILE: &str = "/etc/group";
/// Longest existing output file compared with the new one, in bytes.
const MAX_COMPARED_LEN: u64 = 4 * 1024 * 1024;

/// What to export, from where, for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// `--from`: the kubelet's kubeconfig; `None` searches [`KUBECONFIG_SEARCH_PATH`].
    pub from: Option<PathBuf>,
    /// `--to`: the file written.
    pub to: PathBuf,
    /// `--group`: a group name (from `/etc/group`) or a numeric gid.
    pub group: String,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            from: None,
            to: PathBuf::from(DEFAULT_TO),
            group: DEFAULT_GROUP.to_owned(),
        }
    }
}

/// Why nothing was exported. The output file is then as it was before.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Nothing was given and nothing was found on the search path.
    #[error("no kubelet kubeconfig found (looked at {searched}); pass its path with --from")]
    NoSource {
        /// The places looked at.
        searched: String,
    },
    /// `--from` names the output file itself.
    #[error(
        "--from {} is the output file itself; pass the kubelet's own kubeconfig with --from",
        path.display()
    )]
    SourceIsOutput {
        /// The file.
        path: PathBuf,
    },
    /// The kubelet's kubeconfig cannot be used (the loader says why).
    #[error("{0}; nothing was exported")]
    Load(#[source] KubeconfigError),
    /// A certificate or key field holds no usable PEM block.
    #[error("{}: {field} {problem}; nothing was exported", kubeconfig.display())]
    Pem {
        /// The kubelet's kubeconfig.
        kubeconfig: PathBuf,
        /// The kubeconfig field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The group does not exist.
    #[error(
        "group {group:?} does not exist in {GROUP_FILE}; create it (sh /usr/share/nodegate/nodegate-sshd.sh setup creates group nodegate) or pass --group NAME|GID"
    )]
    NoGroup {
        /// The group asked for.
        group: String,
    },
    /// `/etc/group` cannot be read.
    #[error("cannot read {GROUP_FILE} to look up group {group:?}: {source}; pass --group GID")]
    GroupFile {
        /// The group asked for.
        group: String,
        /// The error.
        source: io::Error,
    },
    /// A symbolic link is where the file is to be written.
    #[error(
        "{} is a symbolic link; refusing to write through or replace it. Fix: rm {} and run again",
        path.display(), path.display()
    )]
    Symlink {
        /// The destination.
        path: PathBuf,
    },
    /// Something other than a regular file is where the file is to be written.
    #[error("{} exists and is not a regular file. Fix: remove it and run again", path.display())]
    NotAFile {
        /// The destination.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot {action} {}: {source}{}", path.display(), root_hint(source))]
    Io {
        /// What was being done, e.g. `"create"`.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file written does not load back as the credentials meant to be in it.
    #[error(
        "the kubeconfig written to {} does not load back as the kubelet's credentials ({problem}); {} was left unchanged",
        temp.display(), to.display()
    )]
    Validation {
        /// The temporary file (removed again).
        temp: PathBuf,
        /// The destination.
        to: PathBuf,
        /// What differs.
        problem: String,
    },
}

fn root_hint(error: &io::Error) -> &'static str {
    if error.kind() == io::ErrorKind::PermissionDenied {
        " (run export-kubeconfig as root)"
    } else {
        ""
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ExportError + 'a {
    move |source| ExportError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What an export did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The kubelet's kubeconfig read.
    pub from: PathBuf,
    /// The file written.
    pub to: PathBuf,
    /// `false`: the file already said the same and was left alone.
    pub changed: bool,
    /// The credential exported, e.g. `client certificate CN=system:node:n1, valid until ...`.
    pub credential: String,
}

impl fmt::Display for Exported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changed {
            write!(
                f,
                "wrote {} from {} ({})",
                self.to.display(),
                self.from.display(),
                self.credential
            )
        } else {
            write!(
                f,
                "{} is up to date with {} ({})",
                self.to.display(),
                self.from.display(),
                self.credential
            )
        }
    }
}

/// Exports the kubelet's credentials as `options` say. See the module documentation.
pub fn export(options: &ExportOptions) -> Result<Exported, ExportError> {
    let from = source(options)?;
    let credentials = NodeCredentials::load(&from).map_err(ExportError::Load)?;
    let gid = resolve_group(&options.group)?;
    let embedded = Embedded::from_credentials(&credentials, &from)?;
    let text = render(&embedded, &from);
    let to = &options.to;
    let credential = describe(&credentials);
    let done = |changed| Exported {
        from: from.clone(),
        to: to.clone(),
        changed,
        credential: credential.clone(),
    };
    if existing_is_current(to, text.as_bytes(), gid)? {
        return Ok(done(false));
    }
    write_atomically(to, text.as_bytes(), gid, |file, temp| {
        // Read back through the open file, not its name: the directory is not root's.
        let loaded = NodeCredentials::load(&PathBuf::from(format!(
            "/proc/self/fd/{}",
            file.as_raw_fd()
        )));
        let problem = match loaded {
            Ok(loaded) => embedded.difference(&loaded),
            Err(e) => Some(e.to_string()),
        };
        match problem {
            None => Ok(()),
            Some(problem) => Err(ExportError::Validation {
                temp: temp.to_owned(),
                to: to.clone(),
                problem,
            }),
        }
    })?;
    Ok(done(true))
}

/// The places searched when `--from` is not given: [`KUBECONFIG_SEARCH_PATH`] without the
/// output file.
pub fn search_path(to: &Path) -> Vec<PathBuf> {
    KUBECONFIG_SEARCH_PATH
        .iter()
        .map(PathBuf::from)
        .filter(|p| p != to)
        .collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn source(options: &ExportOptions) -> Result<PathBuf, ExportError> {
    let to = &options.to;
    if let Some(from) = &options.from {
        if from == to || same_file(from, to) {
            return Err(ExportError::SourceIsOutput { path: from.clone() });
        }
        return Ok(from.clone());
    }
    let candidates = search_path(to);
    candidates
        .iter()
        .find(|p| p.is_file() && !same_file(p, to))
        .cloned()
        .ok_or_else(|| ExportError::NoSource {
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn resolve_group(group: &str) -> Result<u32, ExportError> {
    let missing = || ExportError::NoGroup {
        group: group.to_owned(),
    };
    if !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()) {
        return group.parse().map_err(|_| missing());
    }
    let text = fs::read_to_string(GROUP_FILE).map_err(|source| ExportError::GroupFile {
        group: group.to_owned(),
        source,
    })?;
    group_id(&text, group).ok_or_else(missing)
}

/// The gid of group `name` in the text of a `group(5)` file.
pub fn group_id(group_file: &str, name: &str) -> Option<u32> {
    group_file.lines().find_map(|line| {
        let mut fields = line.split(':');
        let (group, _password, gid) = (fields.next()?, fields.next()?, fields.next()?);
        if group == name {
            gid.trim().parse().ok()
        } else {
            None
        }
    })
}

/// One `-----BEGIN LABEL-----` ... `-----END LABEL-----` block of a PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemBlock {
    /// The label, e.g. `CERTIFICATE`.
    pub label: String,
    /// The block, its BEGIN and END lines included, each line ending in `\n`.
    pub text: String,
}

/// The PEM blocks of `pem`, in order. Text outside blocks (OpenSSL's `Bag Attributes`,
/// comments) is skipped; a block that does not end, or ends with another label, is an error.
pub fn pem_blocks(pem: &[u8]) -> Result<Vec<PemBlock>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "is not PEM text (not UTF-8)".to_owned())?;
    let mut blocks = Vec::new();
    let mut open: Option<PemBlock> = None;
    for line in text.lines() {
        let line = line.trim();
        let begin = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"));
        let end = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"));
        match (&mut open, begin, end) {
            (None, Some(label), _) => {
                open = Some(PemBlock {
                    label: label.to_owned(),
                    text: format!("{line}\n"),
                });
            }
            (None, None, _) => {}
            (Some(block), None, None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (Some(block), None, Some(label)) if label == block.label => {
                block.text.push_str(line);
                block.text.push('\n');
                blocks.extend(open.take());
            }
            (Some(block), _, _) => {
                return Err(format!("has a {} PEM block that does not end", block.label));
            }
        }
    }
    if let Some(block) = open {
        return Err(format!("has a {} PEM block that does not end", block.label));
    }
    Ok(blocks)
}

/// The labels of the private keys the login path's TLS client reads.
const KEY_LABELS: &[&str] = &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

/// The credentials as they are written: each PEM reduced to the blocks its field is for, so a
/// combined certificate+key file (kubelet's `kubelet-client-current.pem`) gives the
/// certificates to `client-certificate-data` and the key to `client-key-data` only.
#[derive(PartialEq, Eq)]
struct Embedded {
    server: String,
    ca_pem: Vec<u8>,
    client: Client,
}

#[derive(PartialEq, Eq)]
enum Client {
    Certificate { cert_pem: Vec<u8>, key_pem: Vec<u8> },
    Token(String),
}

impl Embedded {
    fn from_credentials(credentials: &NodeCredentials, source: &Path) -> Result<Self, ExportError> {
        let pem_error = |field: &'static str, problem: String| ExportError::Pem {
            kubeconfig: source.to_owned(),
            field,
            problem,
        };
        let keep = |field: &'static str, pem: &[u8], wanted: &[&str], all: bool| {
            let blocks = pem_blocks(pem).map_err(|problem| pem_error(field, problem))?;
            let mut kept = blocks
                .into_iter()
                .filter(|b| wanted.contains(&b.label.as_str()));
            let text: String = if all {
                kept.map(|b| b.text).collect()
            } else {
                kept.next().map(|b| b.text).unwrap_or_default()
            };
            if text.is_empty() {
                return Err(pem_error(
                    field,
                    format!("holds no {} PEM block", wanted.join(" or ")),
                ));
            }
            Ok(text.into_bytes())
        };
        let ca_pem = keep(
            "certificate-authority",
            &credentials.ca_pem,
            &["CERTIFICATE"],
            true,
        )?;
        let client = match &credentials.client {
            ClientAuth::Certificate { cert_pem, key_pem } => Client::Certificate {
                cert_pem: keep("client-certificate", cert_pem, &["CERTIFICATE"], true)?,
                key_pem: keep("client-key", key_pem, KEY_LABELS, false)?,
            },
            ClientAuth::Token(token) => Client::Token(token.clone()),
        };
        Ok(Self {
            server: credentials.server.clone(),
            ca_pem,
            client,
        })
    }

    /// What differs between these credentials and `loaded`, if anything.
    fn difference(&self, loaded: &NodeCredentials) -> Option<String> {
        if loaded.server != self.server {
            return Some("server".into());
        }
        if loaded.ca_pem != self.ca_pem {
            return Some("certificate-authority-data".into());
        }
        match (&self.client, &loaded.client) {
            (
                Client::Certificate { cert_pem, key_pem },
                ClientAuth::Certificate {
                    cert_pem: c,
                    key_pem: k,
                },
            ) => {
                if c != cert_pem {
                    Some("client-certificate-data".into())
                } else if k != key_pem {
                    Some("client-key-data".into())
                } else {
                    None
                }
            }
            (Client::Token(token), ClientAuth::Token(t)) if t == token => None,
            _ => Some("the client credential".into()),
        }
    }
}

/// A YAML double-quoted scalar: JSON's string syntax is YAML's.
fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// The kubeconfig written: one cluster, one user, one context, everything embedded.
fn render(embedded: &Embedded, source: &Path) -> String {
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
    let user = match &embedded.client {
        Client::Certificate { cert_pem, key_pem } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert_pem),
            b64(key_pem)
        ),
        Client::Token(token) => format!("    token: {}\n", quote(token)),
    };
    format!(
        "# Written by `authorized-keys-cmd export-kubeconfig` from {source}: this node's kubelet\n\
         # credentials, embedded, for the user sshd runs authorized-keys-cmd as. It is rewritten\n\
         # whenever they change (nodegate-node-credentials.path): edits here are lost.\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: node\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n\
         - name: node\n  user:\n{user}\
         contexts:\n\
         - name: node\n  context:\n    cluster: node\n    user: node\n\
         current-context: node\n",
        source = quote(&source.display().to_string()),
        server = quote(&embedded.server),
        ca = b64(&embedded.ca_pem),
    )
}

fn describe(credentials: &NodeCredentials) -> String {
    match credentials.identity() {
        Some(Ok(identity)) => format!(
            "client certificate {}, valid until {}",
            identity.subject,
            identity.not_after.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        Some(Err(_)) => "client certificate".into(),
        None => "bearer token".into(),
    }
}

fn no_follow_flags() -> i32 {
    // The flags' values differ between architectures; rustix knows them. O_NONBLOCK: a FIFO
    // at the destination must not hang the export.
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    i32::try_from(flags.bits()).unwrap_or(0)
}

/// Whether `to` is already a regular file with exactly `text`, owned by this process's user
/// and group `gid`, with [`MODE`]. A symbolic link there is refused, not followed.
fn existing_is_current(to: &Path, text: &[u8], gid: u32) -> Result<bool, ExportError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(no_follow_flags())
        .open(to)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(ExportError::Symlink {
                path: to.to_owned(),
            });
        }
        Err(e) => return Err(io_error("open", to)(e)),
    };
    let meta = file.metadata().map_err(io_error("inspect", to))?;
    if !meta.is_file() {
        return Err(ExportError::NotAFile {
            path: to.to_owned(),
        });
    }
    if meta.uid() != perms::effective_uid()
        || meta.gid() != gid
        || meta.permissions().mode() & 0o7777 != MODE
        || meta.len() != text.len() as u64
    {
        return Ok(false);
    }
    let mut current = Vec::new();
    file.take(MAX_COMPARED_LEN)
        .read_to_end(&mut current)
        .map_err(io_error("read", to))?;
    Ok(current == text)
}

/// A temporary file removed again unless it was renamed into place.
struct Temp {
    path: PathBuf,
    keep: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Replaces `to` with `text`, group `gid` and [`MODE`]: written to a new file in the same
/// directory, synced, checked by `validate`, renamed over `to`, and the directory synced.
fn write_atomically(
    to: &Path,
    text: &[u8],
    gid: u32,
    validate: impl FnOnce(&File, &Path) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let dir = perms::parent_dir(to);
    let name = to.file_name().ok_or_else(|| ExportError::NotAFile {
        path: to.to_owned(),
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let mut temp = Temp {
        path: dir.join(temp_name),
        keep: true,
    };
    // A leftover of an earlier run with this pid: removing a name never follows a link.
    match fs::remove_file(&temp.path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_error("remove", &temp.path)(e));
        }
        _ => {}
    }
    // create_new (O_EXCL) never follows a symbolic link and never opens an existing file.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp.path)
        .map_err(io_error("create", &temp.path))?;
    temp.keep = false;
    file.write_all(text)
        .map_err(io_error("write", &temp.path))?;
    std::os::unix::fs::fchown(&file, None, Some(gid))
        .map_err(io_error("set the group of", &temp.path))?;
    file.set_permissions(fs::Permissions::from_mode(MODE))
        .map_err(io_error("set the mode of", &temp.path))?;
    file.sync_all().map_err(io_error("sync", &temp.path))?;
    validate(&file, &temp.path)?;
    // rename replaces a symbolic link at `to` itself, never what it points at; one that
    // appeared since it was checked is therefore harmless.
    fs::rename(&temp.path, to).map_err(io_error("rename the new file to", to))?;
    temp.keep = true;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", &dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n";
    const CERT2: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBintermediate\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCkey\n-----END EC PRIVATE KEY-----\n";

    struct Dir(PathBuf);
    impl Dir {
        fn new(label: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("akc-export-{label}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn gid(&self) -> u32 {
            fs::metadata(&self.0).unwrap().gid()
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn kubelet_kubeconfig(dir: &Path, user: &str) -> PathBuf {
        fs::write(dir.join("ca.crt"), CERT).unwrap();
        // kubelet's rotated credential: certificate and key in one file, named twice.
        fs::write(
            dir.join("kubelet-client-current.pem"),
            format!("{CERT}{CERT2}{KEY}"),
        )
        .unwrap();
        fs::write(dir.join("token"), "s3cret:\"token\"\n").unwrap();
        let path = dir.join("kubelet.conf");
        fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
                 clusters: [{{name: k, cluster: {{server: 'https://10.0.0.1:6443/', certificate-authority: ca.crt}}}}]\n\
                 users: [{{name: u, user: {user}}}]\n\
                 contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
            ),
        )
        .unwrap();
        path
    }

    const CERT_USER: &str =
        "{client-certificate: kubelet-client-current.pem, client-key: kubelet-client-current.pem}";

    #[test]
    fn pem_blocks_are_split_by_label_and_bad_pem_is_refused() {
        let combined = format!("Bag Attributes: x\n{CERT}\r\n{CERT2}{KEY}");
        let blocks = pem_blocks(combined.as_bytes()).unwrap();
        let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["CERTIFICATE", "CERTIFICATE", "EC PRIVATE KEY"]);
        assert_eq!(blocks[0].text, CERT);
        assert_eq!(blocks[2].text, KEY);
        assert!(pem_blocks(b"no pem here\n").unwrap().is_empty());
        let unterminated = pem_blocks(b"-----BEGIN CERTIFICATE-----\nMII\n").unwrap_err();
        assert!(unterminated.contains("does not end"), "{unterminated}");
        let mismatched =
            pem_blocks(b"-----BEGIN CERTIFICATE-----\nMII\n-----END PRIVATE KEY-----\n");
        assert!(mismatched.is_err());
        assert!(pem_blocks(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn group_names_are_looked_up_in_the_group_file() {
        let file = "root:x:0:\n# comment\ndaemon:x:1:\nnodegate:x:997:\nbroken\n";
        assert_eq!(group_id(file, "nodegate"), Some(997));
        assert_eq!(group_id(file, "root"), Some(0));
        assert_eq!(group_id(file, "node"), None);
        assert_eq!(group_id(file, "broken"), None);
        assert_eq!(resolve_group("1234").unwrap(), 1234);
        assert!(matches!(
            resolve_group("no-such-group-anywhere"),
            Err(ExportError::NoGroup { .. })
        ));
        assert!(matches!(
            resolve_group("99999999999"),
            Err(ExportError::NoGroup { .. })
        ));
    }

    #[test]
    fn the_search_path_is_the_login_paths_without_the_output() {
        assert_eq!(KUBECONFIG_SEARCH_PATH[0], DEFAULT_TO);
        let searched = search_path(Path::new(DEFAULT_TO));
        assert_eq!(searched.len(), KUBECONFIG_SEARCH_PATH.len() - 1);
        assert!(!searched.contains(&PathBuf::from(DEFAULT_TO)));
        assert_eq!(searched[0], PathBuf::from(KUBECONFIG_SEARCH_PATH[1]));
        assert_eq!(
            search_path(Path::new("/elsewhere")).len(),
            KUBECONFIG_SEARCH_PATH.len()
        );
    }

    #[test]
    fn exports_a_combined_pem_split_and_embedded_and_leaves_an_equal_file_alone() {
        let dir = Dir::new("cert");
        let from = kubelet_kubeconfig(&dir.0, CERT_USER);
        let to = dir.0.join("out").join("node.kubeconfig");
        fs::create_dir(dir.0.join("out")).unwrap();
        let options = ExportOptions {
            from: Some(from.clone()),
            to: to.clone(),
            group: dir.gid().to_string(),
        };
        let exported = export(&options).unwrap();
        assert!(exported.changed, "{exported}");
        assert!(exported.to_string().starts_with("wrote "), "{exported}");
        let meta = fs::symlink_metadata(&to).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, MODE);
        assert_eq!(meta.gid(), dir.gid());
        let text = fs::read_to_string(&to).unwrap();
        assert!(!text.contains("kubelet-client-current.pem"), "{text}");
        // Self-contained: it loads with the originals gone.
        fs::remove_file(dir.0.join("kubelet-client-current.pem")).unwrap();
        fs::remove_file(dir.0.join("ca.crt")).unwrap();
        let loaded = NodeCredentials::load(&to).unwrap();
        assert_eq!(loaded.server, "https://10.0.0.1:6443");
        assert_eq!(loaded.ca_pem, CERT.as_bytes());
        match loaded.client {
            ClientAuth::Certificate { cert_pem, key_pem } => {
                assert_eq!(cert_pem, format!("{CERT}{CERT2}").as_bytes());
                assert_eq!(key_pem, KEY.as_bytes());
            }
            ClientAuth::Token(_) => panic!("expected a certificate"),
        }
        let dir_entries = || {
            let mut names: Vec<String> = fs::read_dir(dir.0.join("out"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(dir_entries(), ["node.kubeconfig"], "no temporary file left");

        // The same credentials again: the file (and its inode, which the cache keys on) stays.
        fs::write(dir.0.join("ca.crt"), CERT).unwrap();
        fs::write(
            dir.0.join("kubelet-client-current.pem"),
            format!("{CERT}{CERT2}{KEY}"),
        )
        .unwrap();
        let inode = meta.ino();
        let again = export(&options).unwrap();
        assert!(!again.changed);
        assert!(again.to_string().contains("up to date"), "{again}");
        assert_eq!(fs::metadata(&to).unwrap().ino(), inode);

        // A wrong mode is repaired by a rewrite.
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(export(&options).unwrap().changed);
        assert_eq!(
            fs::metadata(&to).unwrap().permissions().mode() & 0o7777,
            MODE
        );
    }

    #[test]
    fn exports_a_token_file_as_an_embedded_token() {
        let dir = Dir::new("token");
        let from = kubelet_kubeconfig(&dir.0, "{tokenFile: token}");
        let to = dir.0.join("node.kubeconfig");
        let options = ExportOptions {
            from: Some(from),
            to: to.clone(),
            group: dir.gid().to_string(),
        };
        let exported = export(&options).unwrap();
        assert_eq!(exported.credential, "bearer token");
        fs::remove_file(dir.0.join("token")).unwrap();
        match NodeCredentials::load(&to).unwrap().client {
            ClientAuth::Token(token) => assert_eq!(token, "s3cret:\"token\""),
            ClientAuth::Certificate { .. } => panic!("expected a token"),
        }
    }

    #[test]
    fn refuses_a_symlink_the_output_itself_and_credentials_without_a_key() {
        let dir = Dir::new("refuse");
        let from = kubelet_kubeconfig(&dir.0, CERT_USER);
        let target = dir.0.join("elsewhere");
        fs::write(&target, "not to be touched").unwrap();
        let to = dir.0.join("node.kubeconfig");
        std::os::unix::fs::symlink(&target, &to).unwrap();
        let options = ExportOptions {
            from: Some(from.clone()),
            to: to.clone(),
            group: dir.gid().to_string(),
        };
        let err = export(&options).unwrap_err();
        assert!(matches!(err, ExportError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("Fix: rm"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "not to be touched");
        assert!(fs::symlink_metadata(&to).unwrap().file_type().is_symlink());

        let err = export(&ExportOptions {
            from: Some(from.clone()),
            to: from.clone(),
            ..options.clone()
        })
        .unwrap_err();
        assert!(matches!(err, ExportError::SourceIsOutput { .. }), "{err}");

        fs::write(dir.0.join("kubelet-client-current.pem"), CERT).unwrap();
        fs::remove_file(&to).unwrap();
        let err = export(&options).unwrap_err();
        assert!(
            matches!(
                err,
                ExportError::Pem {
                    field: "client-key",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!to.exists(), "nothing written");

        let err = export(&ExportOptions {
            from: Some(dir.0.join("missing")),
            ..options
        })
        .unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
