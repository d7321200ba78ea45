//! `check`: diagnoses a node, each problem with its fix.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use nodegate_core::NodeGrants;

use crate::api;
use crate::cache::Inspection;
use crate::clock::Moment;
use crate::config::{ConfigError, DEFAULT_CONFIG_PATH, Settings, locate_kubeconfig};
use crate::identity::{load_credentials, node_name};
use crate::perms;

/// Where `check` looks for sshd and its configuration unless told otherwise.
#[derive(Debug, Clone)]
pub struct SshdLocation {
    /// The sshd binary, for `sshd -T`.
    pub binary: PathBuf,
    /// The sshd configuration file.
    pub config: PathBuf,
}

impl Default for SshdLocation {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("/usr/sbin/sshd"),
            config: PathBuf::from("/etc/ssh/sshd_config"),
        }
    }
}

/// How a finding rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rating {
    /// As it should be.
    Ok,
    /// Works, but worth a look.
    Warning,
    /// Logins through nodegate will not work (or not as designed) until fixed.
    Problem,
}

/// One line of the diagnosis.
#[derive(Debug, Clone)]
pub struct Finding {
    /// How it rates.
    pub rating: Rating,
    /// What was found.
    pub what: String,
    /// What to do about it, for warnings and problems.
    pub fix: Option<String>,
}

/// The whole diagnosis.
#[derive(Debug, Default)]
pub struct Report {
    /// The findings, in the order checked.
    pub findings: Vec<Finding>,
}

impl Report {
    fn ok(&mut self, what: impl Into<String>) {
        self.push(Rating::Ok, what.into(), None);
    }

    fn warn(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.push(Rating::Warning, what.into(), Some(fix.into()));
    }

    fn problem(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.push(Rating::Problem, what.into(), Some(fix.into()));
    }

    fn push(&mut self, rating: Rating, what: String, fix: Option<String>) {
        self.findings.push(Finding { rating, what, fix });
    }

    /// Whether any finding is a problem.
    pub fn has_problems(&self) -> bool {
        self.findings.iter().any(|f| f.rating == Rating::Problem)
    }

    /// The report as text, one finding per line, fixes indented below.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let tag = match f.rating {
                Rating::Ok => "ok     ",
                Rating::Warning => "WARNING",
                Rating::Problem => "PROBLEM",
            };
            let _ = writeln!(out, "{tag} {}", f.what);
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "        fix: {fix}");
            }
        }
        let problems = self
            .findings
            .iter()
            .filter(|f| f.rating == Rating::Problem)
            .count();
        let warnings = self
            .findings
            .iter()
            .filter(|f| f.rating == Rating::Warning)
            .count();
        let _ = writeln!(out, "{problems} problems, {warnings} warnings");
        out
    }
}

/// Runs every check. `settings` is `Err` when the configuration itself is broken.
pub fn diagnose(settings: Result<&Settings, &ConfigError>, sshd: &SshdLocation) -> Report {
    let mut report = Report::default();
    check_sshd(&mut report, sshd);
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            report.problem(
                format!("configuration: {e}"),
                format!("correct the configuration ({DEFAULT_CONFIG_PATH} or --config)"),
            );
            return report;
        }
    };
    match &settings.config_file {
        Some(p) => report.ok(format!("configuration read from {}", p.display())),
        None => report.ok(format!(
            "no {DEFAULT_CONFIG_PATH}: using the defaults (freshness {}, deadline {}, max_stale {}, api_backoff {})",
            humantime::format_duration(settings.freshness),
            humantime::format_duration(settings.deadline),
            humantime::format_duration(settings.max_stale),
            humantime::format_duration(settings.api_backoff)
        )),
    }
    check_api(&mut report, settings);
    check_cache(&mut report, settings);
    report
}

fn check_sshd(report: &mut Report, sshd: &SshdLocation) {
    let out = Command::new(&sshd.binary)
        .arg("-T")
        .arg("-f")
        .arg(&sshd.config)
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            let what = format!(
                "`{} -T -f {}` failed: {}",
                sshd.binary.display(),
                sshd.config.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if perms::effective_uid() == 0 {
                report.problem(
                    what,
                    "fix the sshd configuration (sshd -t shows the errors)",
                );
            } else {
                report.warn(
                    what,
                    "sshd -T needs root to read the host keys: run check as root as well to check sshd",
                );
            }
            return;
        }
        Err(e) => {
            report.problem(
                format!("cannot run {}: {e}", sshd.binary.display()),
                "install openssh-server, or pass --sshd PATH",
            );
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let setting = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().to_owned())
        })
    };
    let drop_in = "add to /etc/ssh/sshd_config.d/nodegate.conf: AuthorizedKeysCommand /usr/libexec/nodegate/authorized-keys-cmd %u %f / AuthorizedKeysCommandUser nodegate, then reload sshd";
    let command = setting("authorizedkeyscommand").filter(|c| c != "none");
    let Some(command) = command else {
        report.problem(
            "sshd has no AuthorizedKeysCommand: it never asks nodegate",
            drop_in,
        );
        return;
    };
    report.ok(format!("sshd runs AuthorizedKeysCommand {command}"));
    let mut words = command.split_whitespace();
    let program = PathBuf::from(words.next().unwrap_or_default());
    let args: Vec<&str> = words.collect();
    if !args.contains(&"%u") {
        report.problem(
            "AuthorizedKeysCommand does not pass the login user (%u)",
            drop_in,
        );
    }
    if !args.contains(&"%f") {
        report.warn(
            "AuthorizedKeysCommand does not pass the key fingerprint (%f): every key of the user is printed for each key offered",
            "append %f to the AuthorizedKeysCommand arguments",
        );
    }
    match setting("authorizedkeyscommanduser").filter(|u| u != "none") {
        Some(user) => report.ok(format!("AuthorizedKeysCommandUser is {user}")),
        None => report.problem(
            "AuthorizedKeysCommandUser is not set: sshd refuses to run the command",
            "set AuthorizedKeysCommandUser nodegate (a dedicated user that can read the node kubeconfig and write the cache)",
        ),
    }
    let problems = perms::sshd_safe_path_problems(&program);
    if problems.is_empty() {
        report.ok(format!(
            "{} and its directories have the ownership and modes sshd demands",
            program.display()
        ));
    }
    for p in problems {
        report.problem(
            format!("sshd will refuse {}: {p}", program.display()),
            "the command and every directory above it must be owned by root and not writable by group or others",
        );
    }
}

fn check_api(report: &mut Report, settings: &Settings) {
    let Some(path) = locate_kubeconfig(settings.kubeconfig.as_deref()) else {
        report.problem(
            format!(
                "no node kubeconfig found at {}",
                crate::config::KUBECONFIG_SEARCH_PATH.join(", ")
            ),
            "set kubeconfig in the config file to the kubelet's kubeconfig",
        );
        return;
    };
    let creds = match load_credentials(settings) {
        Ok(c) => c,
        Err(e) => {
            report.problem(
                format!("kubeconfig {}: {e}", path.display()),
                "point kubeconfig at the kubelet's kubeconfig (client certificate or token)",
            );
            return;
        }
    };
    report.ok(format!(
        "kubeconfig {} (API server {})",
        path.display(),
        creds.server
    ));
    let now = Utc::now();
    match creds.identity() {
        Some(Ok(identity)) => {
            if identity.is_valid_at(now) {
                let left = identity.not_after - now;
                if left < chrono::Duration::days(7) {
                    report.warn(
                        format!("the client certificate expires soon, at {}", identity.not_after),
                        "check the kubelet's certificate rotation (rotateCertificates, CSR approval)",
                    );
                } else {
                    report.ok(format!(
                        "client certificate {} valid until {}",
                        identity.subject, identity.not_after
                    ));
                }
            } else {
                report.problem(
                    format!(
                        "the client certificate {} is not valid now (valid {} to {})",
                        identity.subject, identity.not_before, identity.not_after
                    ),
                    "renew the kubelet's client certificate (kubeadm certs renew, or kubelet rotation); until then logins are served from the cache only",
                );
            }
        }
        Some(Err(e)) => report.problem(
            format!("the client certificate: {e}"),
            "give a kubeconfig whose client certificate is readable PEM",
        ),
        None => report.ok("the kubeconfig authenticates with a token"),
    }
    let node = match node_name(settings, &creds) {
        Ok(n) => n,
        Err(e) => {
            report.problem(e.to_string(), "set node_name in the config file");
            return;
        }
    };
    report.ok(format!("this is Node {node}"));
    let deadline = settings.deadline.max(Duration::from_secs(5));
    let started = std::time::Instant::now();
    match api::fetch_node_annotations(&creds, &node, &settings.prefix, deadline) {
        Ok(found) => {
            let took = started.elapsed();
            report.ok(format!(
                "read Node {node} from the API in {} ms",
                took.as_millis()
            ));
            if took > settings.deadline {
                report.warn(
                    format!(
                        "that is longer than the deadline ({} ms): logins will be served from the cache",
                        settings.deadline.as_millis()
                    ),
                    "check the network path to the API server, or raise deadline",
                );
            }
            let grants = NodeGrants::scan(
                &settings.prefix,
                found
                    .annotations
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
            let usable = grants
                .valid
                .iter()
                .filter(|g| !g.expiry.has_passed(now))
                .count();
            report.ok(format!(
                "{} grants under {}/ ({usable} unexpired)",
                grants.valid.len(),
                settings.prefix
            ));
            for invalid in &grants.invalid {
                report.warn(
                    format!(
                        "invalid grant annotation {}/{}: {}",
                        settings.prefix,
                        nodegate_core::grant::escape_for_display(&invalid.name),
                        invalid.error
                    ),
                    "it is ignored; remove it (kubectl annotate node NODE KEY-) or re-grant with keyctl",
                );
            }
            for key in &found.not_strings {
                report.warn(
                    format!("annotation {key} is not a string"),
                    "it is ignored; remove it",
                );
            }
        }
        Err(e) => report.problem(
            format!("cannot read Node {node}: {e}"),
            "logins are served from the cache until this is fixed",
        ),
    }
}

fn check_cache(report: &mut Report, settings: &Settings) {
    let path: &Path = &settings.cache;
    let max_stale = humantime::format_duration(settings.max_stale);
    report.ok(format!(
        "while the API cannot answer, cached grants are served for up to {max_stale} (max_stale): a key revoked meanwhile keeps working on this node until it reaches the API again or the cache is {max_stale} old; each grant's own expiry still applies"
    ));
    match crate::cache::inspect(path) {
        Ok(Inspection::Missing) => report.ok(format!(
            "cache {} does not exist yet (created on the first login)",
            path.display()
        )),
        Ok(Inspection::Empty) => report.ok(format!(
            "cache {} is empty (initialised on the next login)",
            path.display()
        )),
        Ok(Inspection::Healthy { owner, entries }) => {
            report.ok(format!(
                "cache {} is healthy, owned by uid {owner}; {}",
                path.display(),
                if entries.is_empty() {
                    "no entries yet"
                } else {
                    "entries:"
                }
            ));
            let now = Moment::now();
            for entry in entries {
                let watched = entry
                    .watch_confirmed
                    .as_ref()
                    .map(|c| crate::policy::row_age(c, &now));
                match watched {
                    Some(crate::policy::RowAge::Measured(ago)) if ago < settings.freshness => {
                        report.ok(format!(
                            "Node {} ({}): nodegate-agent's watch is live (confirmed {:.1}s ago): logins are answered from the cache, and a revoke applies to them within about a second",
                            entry.node,
                            entry.prefix,
                            ago.as_secs_f64()
                        ));
                    }
                    _ => report.ok(format!(
                        "Node {} ({}): no live nodegate-agent watch (stopped, not installed, or without the API): logins ask the API themselves, a revoke applies within the freshness window ({})",
                        entry.node,
                        entry.prefix,
                        humantime::format_duration(settings.freshness)
                    )),
                }
                let Some(stamp) = entry.stamp else {
                    report.warn(
                        format!(
                            "cache entry of Node {} ({}) holds an impossible time",
                            entry.node, entry.prefix
                        ),
                        "it is never served; the next read from the API replaces it",
                    );
                    continue;
                };
                let read_at = stamp.wall.to_rfc3339();
                match crate::policy::row_age(&stamp, &now).known() {
                    Some(age) if age <= settings.max_stale => report.ok(format!(
                        "Node {} ({}) read at {read_at}, {} ago: served during an outage for {} more",
                        entry.node,
                        entry.prefix,
                        humantime::format_duration(Duration::from_secs(age.as_secs())),
                        humantime::format_duration(Duration::from_secs(
                            (settings.max_stale - age).as_secs()
                        ))
                    )),
                    Some(_) => report.warn(
                        format!(
                            "Node {} ({}) read at {read_at}: older than max_stale, not served during an outage",
                            entry.node, entry.prefix
                        ),
                        "the next successful read from the API renews it",
                    ),
                    None => report.warn(
                        format!(
                            "Node {} ({}) read at {read_at}, which is in the future: not served during an outage",
                            entry.node, entry.prefix
                        ),
                        "check the clock (timedatectl); the next read from the API replaces it",
                    ),
                }
            }
        }
        Err(e) => report.problem(
            format!("cache {}: {e}", path.display()),
            format!(
                "make {} owned by the command's user (nodegate), mode 0700, or remove the cache file with its -wal and -shm files; it is rebuilt from the API",
                perms::parent_dir(path).display()
            ),
        ),
    }
}
