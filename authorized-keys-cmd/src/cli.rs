//! Command line: `authorized-keys-cmd [OPTIONS] USER [FINGERPRINT] | check | refresh |
//! publish-host-keys`, and
//! `authorized-keys-cmd export-kubeconfig [--from PATH] [--to PATH] [--group NAME]` (run as root).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::answer::LookupError;
use crate::check::{self, SshdLocation};
use crate::config::{ConfigError, Overrides, Settings};
use crate::export_kubeconfig::{self, ExportError, ExportOptions};
use crate::logger::Logger;
use crate::publish_host_keys::PublishError;
use crate::refresh::RefreshError;
use crate::{answer, publish_host_keys, refresh};

/// Exit status: the answer was printed (possibly no lines).
pub const EXIT_OK: u8 = 0;
/// Exit status: no trustworthy grants could be had (API down and cache missing or too old);
/// nothing was printed. `check`: problems were found. `refresh`: it failed. `export-kubeconfig`:
/// nothing was exported (the output file is as it was).
pub const EXIT_FAILED_CLOSED: u8 = 1;
/// Exit status: bad command line or configuration; nothing was printed.
pub const EXIT_USAGE: u8 = 2;

const USAGE: &str = "\
usage: authorized-keys-cmd [OPTIONS] USER [FINGERPRINT]   print the keys granted to USER (for sshd: %u %f)
       authorized-keys-cmd [OPTIONS] check                diagnose this node, each problem with a fix
       authorized-keys-cmd [OPTIONS] refresh              refresh the cache from the API
       authorized-keys-cmd [OPTIONS] publish-host-keys [--host-key-dir DIR]
                  publish this machine's SSH host public keys on its own Node (for keyctl known-hosts)
       authorized-keys-cmd export-kubeconfig [--from PATH] [--to PATH] [--group NAME]
                  (as root) write the kubelet's credentials, embedded, for the user sshd runs this as

options:
  --config PATH      config file (default /etc/nodegate/authorized-keys-cmd.toml)
  --kubeconfig PATH  the node's kubeconfig (default: searched where kubeadm, EKS, k3s put it)
  --node-name NAME   the Node to read (default: from the client certificate, system:node:NAME)
  --cache PATH       the SQLite cache (default /var/lib/nodegate/grants-cache.sqlite)
  --prefix PREFIX    the annotation prefix (default ssh.nodegate.dev)
  --verbose, -v      also write diagnostics to stderr (they always go to the system log)
  check only: --sshd PATH (default /usr/sbin/sshd), --sshd-config PATH (default /etc/ssh/sshd_config)
  publish-host-keys only: --host-key-dir DIR (default /etc/ssh; host_key_dir in the config file):
                     where ssh_host_*_key.pub and ssh_host_*_key-cert.pub are read
  export-kubeconfig only (it reads no config file):
    --from PATH      the kubelet's kubeconfig (default: the first found where kubeadm, EKS, k3s put it)
    --to PATH        the file written, mode 0640 (default /var/lib/nodegate/node.kubeconfig)
    --group NAME     the group that may read it, a name or a gid (default nodegate)

exit status: 0 answered (possibly no keys), 1 no trustworthy grants: nothing printed (check: problems
found; refresh: failed; export-kubeconfig: nothing exported; publish-host-keys: not published),
2 usage or configuration error.
sshd ignores all output of a non-zero exit.";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Print the grants for a login user.
    Lookup {
        /// sshd's `%u`.
        user: String,
        /// sshd's `%f`.
        fingerprint: Option<String>,
    },
    /// Diagnose the node.
    Check(
        /// Where sshd and its config are.
        SshdLocation,
    ),
    /// Refresh the cache.
    Refresh,
    /// Publish the host keys on the own Node.
    PublishHostKeys,
    /// Write the kubelet's credentials, embedded, for the command's user (run as root).
    ExportKubeconfig(
        /// From where, to where, for which group.
        ExportOptions,
    ),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// A parsed command line.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The mode.
    pub mode: Mode,
    /// Setting overrides.
    pub overrides: Overrides,
    /// `--verbose`.
    pub verbose: bool,
}

impl PartialEq for SshdLocation {
    fn eq(&self, other: &Self) -> bool {
        self.binary == other.binary && self.config == other.config
    }
}
impl Eq for SshdLocation {}

/// A command line this program does not understand.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// lexopt's own complaint (unknown option, missing value).
    #[error(transparent)]
    Parse(#[from] lexopt::Error),
    /// An argument that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// No login user.
    #[error("missing the login user")]
    MissingUser,
    /// More than `USER FINGERPRINT`.
    #[error("too many arguments")]
    TooMany,
    /// `--sshd`/`--sshd-config` outside `check`.
    #[error("--sshd and --sshd-config are for check only")]
    SshdOutsideCheck,
    /// `--host-key-dir` outside `publish-host-keys`.
    #[error("--host-key-dir is for publish-host-keys only")]
    HostKeyDirOutsidePublish,
    /// `--from`/`--to`/`--group` outside `export-kubeconfig`.
    #[error("--from, --to and --group are for export-kubeconfig only")]
    ExportOptionsOutsideExport,
    /// A lookup option given to `export-kubeconfig`.
    #[error(
        "{0} does not apply to export-kubeconfig, which reads no config file: pass the kubelet's kubeconfig with --from, the file to write with --to"
    )]
    NotForExport(&'static str),
}

/// Everything that ends a run with a non-zero exit status. [`Failure::exit_code`] is the one
/// place that maps them to the documented codes.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The command line is wrong.
    #[error("{0}")]
    Usage(#[from] UsageError),
    /// The configuration is wrong.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The configuration is wrong, found while answering sshd for `user`.
    #[error("user={user}: {source}; no keys served")]
    ConfigForUser {
        /// sshd's `%u`.
        user: String,
        /// What is wrong.
        source: ConfigError,
    },
    /// No trustworthy answer for `user`: nothing was printed.
    #[error("user={user}: {source}; no keys served")]
    FailedClosed {
        /// sshd's `%u`.
        user: String,
        /// Why (boxed: it is large, and this is the rare path).
        source: Box<LookupError>,
    },
    /// The answer could not be written to sshd.
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    /// `refresh` failed.
    #[error("refresh failed: {0}")]
    Refresh(#[from] RefreshError),
    /// `publish-host-keys` failed; the Node is as it was.
    #[error("{0}")]
    Publish(#[from] PublishError),
    /// `export-kubeconfig` failed; the output file is as it was.
    #[error("{0}")]
    Export(#[from] ExportError),
    /// `check` found problems (its report says which).
    #[error("check found problems")]
    CheckFoundProblems,
}

impl Failure {
    /// The exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) | Self::ConfigForUser { .. } => EXIT_USAGE,
            Self::FailedClosed { .. }
            | Self::Stdout(_)
            | Self::Refresh(_)
            | Self::Publish(_)
            | Self::Export(_)
            | Self::CheckFoundProblems => EXIT_FAILED_CLOSED,
        }
    }
}

/// Parses the arguments (without the program name).
pub fn parse<I>(args: I) -> Result<Invocation, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut overrides = Overrides::default();
    let mut verbose = false;
    let mut sshd = SshdLocation::default();
    let mut sshd_given = false;
    // Only collected here: the export defaults are built in its mode alone.
    let (mut from, mut to, mut group) = (None, None, None);
    let mut positional: Vec<String> = Vec::new();
    let text =
        |v: OsString, what: &'static str| v.into_string().map_err(|_| UsageError::NotUtf8(what));
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => overrides.config = Some(parser.value()?.into()),
            Long("kubeconfig") => overrides.kubeconfig = Some(parser.value()?.into()),
            Long("node-name") => {
                overrides.node_name = Some(text(parser.value()?, "--node-name")?);
            }
            Long("cache") => overrides.cache = Some(parser.value()?.into()),
            Long("prefix") => overrides.prefix = Some(text(parser.value()?, "--prefix")?),
            Long("host-key-dir") => overrides.host_key_dir = Some(parser.value()?.into()),
            Long("sshd") => {
                sshd.binary = PathBuf::from(parser.value()?);
                sshd_given = true;
            }
            Long("sshd-config") => {
                sshd.config = PathBuf::from(parser.value()?);
                sshd_given = true;
            }
            Long("from") => from = Some(PathBuf::from(parser.value()?)),
            Long("to") => to = Some(PathBuf::from(parser.value()?)),
            Long("group") => group = Some(text(parser.value()?, "--group")?),
            Long("verbose") | Short('v') => verbose = true,
            Long("help") | Short('h') => {
                return Ok(Invocation {
                    mode: Mode::Help,
                    overrides,
                    verbose,
                });
            }
            Long("version") => {
                return Ok(Invocation {
                    mode: Mode::Version,
                    overrides,
                    verbose,
                });
            }
            Value(v) => positional.push(text(v, "an argument")?),
            other => return Err(other.unexpected().into()),
        }
    }
    // `check` and `refresh` are subcommands only alone: sshd always passes the user (and with %f
    // the fingerprint), so a login user named "check" still gets a lookup when %f is configured.
    let mode = match positional.as_slice() {
        [cmd] if cmd == "check" => Mode::Check(sshd.clone()),
        [cmd] if cmd == "refresh" => Mode::Refresh,
        [cmd] if cmd == "publish-host-keys" => Mode::PublishHostKeys,
        [cmd] if cmd == "export-kubeconfig" => {
            let defaults = ExportOptions::default();
            Mode::ExportKubeconfig(ExportOptions {
                from: from.take(),
                to: to.take().unwrap_or(defaults.to),
                group: group.take().unwrap_or(defaults.group),
            })
        }
        [user] => Mode::Lookup {
            user: user.clone(),
            fingerprint: None,
        },
        [user, fp] => Mode::Lookup {
            user: user.clone(),
            fingerprint: Some(fp.clone()),
        },
        [] => return Err(UsageError::MissingUser),
        _ => return Err(UsageError::TooMany),
    };
    if sshd_given && !matches!(mode, Mode::Check(_)) {
        return Err(UsageError::SshdOutsideCheck);
    }
    if overrides.host_key_dir.is_some() && mode != Mode::PublishHostKeys {
        return Err(UsageError::HostKeyDirOutsidePublish);
    }
    // export-kubeconfig took them: any left belongs to another mode.
    if from.is_some() || to.is_some() || group.is_some() {
        return Err(UsageError::ExportOptionsOutsideExport);
    }
    if matches!(mode, Mode::ExportKubeconfig(_)) {
        let lookup_options = [
            ("--config", overrides.config.is_some()),
            ("--kubeconfig", overrides.kubeconfig.is_some()),
            ("--node-name", overrides.node_name.is_some()),
            ("--cache", overrides.cache.is_some()),
            ("--prefix", overrides.prefix.is_some()),
            ("--host-key-dir", overrides.host_key_dir.is_some()),
        ];
        if let Some((flag, _)) = lookup_options.iter().find(|(_, given)| *given) {
            return Err(UsageError::NotForExport(flag));
        }
    }
    Ok(Invocation {
        mode,
        overrides,
        verbose,
    })
}

/// The program: parses arguments, runs the mode, and reports a failure once, with its exit
/// status.
pub fn main() -> ExitCode {
    let started = Instant::now();
    let invocation = match parse(std::env::args_os().skip(1)) {
        Ok(i) => i,
        Err(e) => {
            let failure = Failure::from(e);
            Logger::new(false).error(&failure);
            eprintln!("authorized-keys-cmd: {failure}\n\n{USAGE}");
            return ExitCode::from(failure.exit_code());
        }
    };
    if let Mode::ExportKubeconfig(options) = &invocation.mode {
        // An administrator's command, run by a root systemd unit: its one message goes to
        // stderr (the unit's journal), not to the auth log.
        return match export_kubeconfig::export(options) {
            Ok(exported) => {
                eprintln!("authorized-keys-cmd export-kubeconfig: {exported}");
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                let failure = Failure::from(e);
                eprintln!("authorized-keys-cmd export-kubeconfig: {failure}");
                ExitCode::from(failure.exit_code())
            }
        };
    }
    if invocation.mode == Mode::PublishHostKeys {
        // A systemd unit's job, like export-kubeconfig: its one line goes to stderr (the
        // unit's journal), not to the auth log.
        let published = Settings::load(&invocation.overrides)
            .map_err(Failure::from)
            .and_then(|settings| {
                publish_host_keys::publish(&settings, &settings.host_key_dir).map_err(Failure::from)
            });
        return match published {
            Ok(published) => {
                eprintln!("authorized-keys-cmd publish-host-keys: {published}");
                ExitCode::from(EXIT_OK)
            }
            Err(failure) => {
                eprintln!("authorized-keys-cmd publish-host-keys: {failure}");
                ExitCode::from(failure.exit_code())
            }
        };
    }
    let mut log = Logger::new(invocation.verbose);
    match run(invocation, &mut log, started) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(Failure::CheckFoundProblems) => ExitCode::from(EXIT_FAILED_CLOSED),
        Err(failure) => {
            log.error(&failure);
            ExitCode::from(failure.exit_code())
        }
    }
}

fn run(invocation: Invocation, log: &mut Logger, started: Instant) -> Result<(), Failure> {
    let settings = match invocation.mode {
        Mode::Help => {
            println!("{USAGE}");
            return Ok(());
        }
        Mode::Version => {
            println!("authorized-keys-cmd {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        _ => Settings::load(&invocation.overrides),
    };
    match invocation.mode {
        Mode::Check(sshd) => {
            let report = check::diagnose(settings.as_ref(), &sshd);
            print!("{}", report.render());
            if report.has_problems() {
                return Err(Failure::CheckFoundProblems);
            }
            Ok(())
        }
        Mode::Refresh => {
            let summary = refresh::refresh(&settings?, log)?;
            log.info(&summary);
            Ok(())
        }
        Mode::Lookup { user, fingerprint } => {
            let settings = settings.map_err(|source| Failure::ConfigForUser {
                user: user.clone(),
                source,
            })?;
            let answer = answer::lookup(&settings, &user, fingerprint.as_deref(), log, started)
                .map_err(|source| Failure::FailedClosed {
                    user: user.clone(),
                    source: Box::new(source),
                })?;
            let mut out = String::new();
            for line in &answer.lines {
                out.push_str(line);
                out.push('\n');
            }
            let written = {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(out.as_bytes())
                    .and_then(|()| stdout.flush())
            };
            log.info(format_args!(
                "user={user} fingerprint={} served={} source={} took={}ms",
                fingerprint.as_deref().unwrap_or("-"),
                if answer.fingerprints.is_empty() {
                    "none".to_owned()
                } else {
                    answer.fingerprints.join(",")
                },
                answer.source,
                started.elapsed().as_millis()
            ));
            match written {
                // sshd stopped reading: nothing more to do.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::Stdout(e)),
                _ => Ok(()),
            }
        }
        // Handled in `main`, before the logger: they do not write to the auth log.
        Mode::Help | Mode::Version | Mode::ExportKubeconfig(_) | Mode::PublishHostKeys => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sshd_style_and_subcommands() {
        let inv = parse(["--node-name", "n1", "root", "SHA256:abc"]).unwrap();
        assert_eq!(
            inv.mode,
            Mode::Lookup {
                user: "root".into(),
                fingerprint: Some("SHA256:abc".into())
            }
        );
        assert_eq!(inv.overrides.node_name.as_deref(), Some("n1"));
        assert_eq!(parse(["refresh"]).unwrap().mode, Mode::Refresh);
        let publish = parse(["publish-host-keys", "--host-key-dir", "/tmp/keys"]).unwrap();
        assert_eq!(publish.mode, Mode::PublishHostKeys);
        assert_eq!(
            publish.overrides.host_key_dir.as_deref(),
            Some(std::path::Path::new("/tmp/keys"))
        );
        assert!(matches!(
            parse(["--host-key-dir", "/x", "refresh"]),
            Err(UsageError::HostKeyDirOutsidePublish)
        ));
        assert!(matches!(parse(["check"]).unwrap().mode, Mode::Check(_)));
        // With %f, a user named "check" is looked up, not diagnosed.
        assert!(matches!(
            parse(["check", "SHA256:x"]).unwrap().mode,
            Mode::Lookup { .. }
        ));
        assert!(parse(Vec::<String>::new()).is_err());
        assert!(parse(["a", "b", "c"]).is_err());
        assert!(parse(["--bogus", "root"]).is_err());
        assert!(parse(["--sshd", "/x", "root"]).is_err());
    }

    #[test]
    fn parses_export_kubeconfig_and_refuses_options_of_other_modes() {
        assert_eq!(
            parse(["export-kubeconfig"]).unwrap().mode,
            Mode::ExportKubeconfig(ExportOptions::default())
        );
        let inv = parse([
            "export-kubeconfig",
            "--from",
            "/etc/k/kubelet.conf",
            "--to",
            "/tmp/out",
            "--group",
            "wheel",
        ])
        .unwrap();
        assert_eq!(
            inv.mode,
            Mode::ExportKubeconfig(ExportOptions {
                from: Some("/etc/k/kubelet.conf".into()),
                to: "/tmp/out".into(),
                group: "wheel".into(),
            })
        );
        // With %f, a user named "export-kubeconfig" is looked up.
        assert!(matches!(
            parse(["export-kubeconfig", "SHA256:x"]).unwrap().mode,
            Mode::Lookup { .. }
        ));
        assert!(matches!(
            parse(["--from", "/x", "root"]),
            Err(UsageError::ExportOptionsOutsideExport)
        ));
        assert!(matches!(
            parse(["--group", "g", "refresh"]),
            Err(UsageError::ExportOptionsOutsideExport)
        ));
        assert!(matches!(
            parse(["--kubeconfig", "/x", "export-kubeconfig"]),
            Err(UsageError::NotForExport("--kubeconfig"))
        ));
        assert!(matches!(
            parse(["export-kubeconfig", "--cache", "/x"]),
            Err(UsageError::NotForExport("--cache"))
        ));
        assert!(matches!(
            parse(["export-kubeconfig", "--sshd", "/x"]),
            Err(UsageError::SshdOutsideCheck)
        ));
        let exit = Failure::from(ExportError::NoGroup { group: "g".into() }).exit_code();
        assert_eq!(exit, EXIT_FAILED_CLOSED);
        let usage = Failure::from(UsageError::NotForExport("--config")).exit_code();
        assert_eq!(usage, EXIT_USAGE);
    }
}
