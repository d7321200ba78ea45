# shellcheck shell=sh
# nodegate node setup: the system user, the state directory and the sshd drop-in.
#
# One library for every way nodegate reaches a node: the .deb maintainer scripts, the RPM
# scriptlets and packaging/node/install.sh all source this file (installed as
# /usr/share/nodegate/nodegate-sshd.sh) and call the functions below, so the rules live once:
#
#   nodegate_setup_user_and_dirs   system user `nodegate`, /var/lib/nodegate 0750 nodegate:nodegate
#   nodegate_sshd_enable           install the drop-in unless another AuthorizedKeysCommand is
#                                  configured, and with it the ExposeAuthInfo drop-in unless
#                                  ExposeAuthInfo is set elsewhere; validate with `sshd -t`;
#                                  reload sshd if it runs
#   nodegate_sshd_disable          remove our drop-ins (only ours); validate; reload sshd if it runs
#
# It can also be run directly: `sh /usr/share/nodegate/nodegate-sshd.sh enable|disable|status`.
# POSIX sh on purpose: it runs in maintainer scripts on minimal images.
#
# Settings (environment, for image builders and tests):
#   NODEGATE_SSHD          sshd binary                     (default /usr/sbin/sshd)
#   NODEGATE_SSHD_CONFIG   sshd's main configuration file  (default /etc/ssh/sshd_config)
#   NODEGATE_DROPIN_DIR    directory sshd includes         (default /etc/ssh/sshd_config.d)
#   NODEGATE_SHARE_DIR     where the drop-in template is   (default /usr/share/nodegate)
#   NODEGATE_LIBEXEC_DIR   where authorized-keys-cmd is    (default /usr/libexec/nodegate)
#   NODEGATE_SSHD_RELOAD   "no": never reload sshd, e.g. while building an image (default yes)

NODEGATE_SSHD=${NODEGATE_SSHD:-/usr/sbin/sshd}
NODEGATE_SSHD_CONFIG=${NODEGATE_SSHD_CONFIG:-/etc/ssh/sshd_config}
NODEGATE_DROPIN_DIR=${NODEGATE_DROPIN_DIR:-/etc/ssh/sshd_config.d}
NODEGATE_SHARE_DIR=${NODEGATE_SHARE_DIR:-/usr/share/nodegate}
NODEGATE_SSHD_RELOAD=${NODEGATE_SSHD_RELOAD:-yes}
NODEGATE_DROPIN_NAME=50-nodegate.conf
# `ExposeAuthInfo yes` in a drop-in of its own, so that each decision (ours or the operator's) is
# one file: an operator's `ExposeAuthInfo no` leaves the command drop-in in place, and either file
# is removed without touching the other.
NODEGATE_EXPOSE_NAME=51-nodegate-expose-auth-info.conf
NODEGATE_LIBEXEC_DIR=${NODEGATE_LIBEXEC_DIR:-/usr/libexec/nodegate}
NODEGATE_COMMAND=$NODEGATE_LIBEXEC_DIR/authorized-keys-cmd
NODEGATE_USER=nodegate
NODEGATE_STATE_DIR=/var/lib/nodegate
# The first line of our drop-in: how removal recognises the file as ours and never deletes an
# administrator's file of the same name.
NODEGATE_MARKER='# nodegate-node: managed by /usr/share/nodegate/nodegate-sshd.sh'

nodegate_say() { printf 'nodegate: %s\n' "$*" >&2; }

# Creates the system user sshd runs the command as, and the cache directory it owns.
nodegate_setup_user_and_dirs() {
  if ! getent group "$NODEGATE_USER" >/dev/null; then
    if command -v addgroup >/dev/null 2>&1 && [ -f /etc/debian_version ]; then
      addgroup --quiet --system "$NODEGATE_USER"
    else
      groupadd --system "$NODEGATE_USER"
    fi
  fi
  if ! getent passwd "$NODEGATE_USER" >/dev/null; then
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    if command -v adduser >/dev/null 2>&1 && [ -f /etc/debian_version ]; then
      adduser --quiet --system --ingroup "$NODEGATE_USER" --no-create-home \
        --home "$NODEGATE_STATE_DIR" --shell "$nologin" "$NODEGATE_USER"
    else
      useradd --system --gid "$NODEGATE_USER" --no-create-home --home-dir "$NODEGATE_STATE_DIR" \
        --shell "$nologin" --comment "nodegate authorized keys command" "$NODEGATE_USER"
    fi
  fi
  # The cache and the exported node kubeconfig live here; only root and nodegate may enter.
  mkdir -p "$NODEGATE_STATE_DIR"
  chown "$NODEGATE_USER:$NODEGATE_USER" "$NODEGATE_STATE_DIR"
  chmod 0750 "$NODEGATE_STATE_DIR"
}

# sshd refuses to start (and `sshd -t` to check) without its privilege separation directory,
# which the ssh service normally creates on start; create it as that service would.
nodegate__privsep_dir() {
  [ -d /run/sshd ] || { mkdir -p /run/sshd && chmod 0755 /run/sshd; }
}

# Runs sshd in test mode (-t) or dump mode (-T). When the machine has no host keys yet (an image
# being built: they are made on first boot), a throwaway key stands in so the configuration can
# still be checked.
nodegate__sshd_test() {
  nodegate__privsep_dir
  if ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
    "$NODEGATE_SSHD" "$1" -f "$NODEGATE_SSHD_CONFIG"
  else
    _ng_keydir=$(mktemp -d)
    ssh-keygen -q -t ed25519 -N '' -f "$_ng_keydir/hostkey" >/dev/null
    _ng_rc=0
    "$NODEGATE_SSHD" "$1" -f "$NODEGATE_SSHD_CONFIG" -o HostKey="$_ng_keydir/hostkey" || _ng_rc=$?
    rm -rf "$_ng_keydir"
    return $_ng_rc
  fi
}

# Prints "FILE: LINE" for the first AuthorizedKeysCommand (other than `none` and other than our
# own drop-in) found in sshd's configuration, and succeeds if there is one. Looks both at what
# sshd itself reports as effective (`sshd -T`, which also sees Include paths of any name) and at
# the files (which also sees commands inside Match blocks, and works when `sshd -T` cannot run).
nodegate__other_command() {
  ours=$NODEGATE_DROPIN_DIR/$NODEGATE_DROPIN_NAME
  for f in "$NODEGATE_SSHD_CONFIG" "$NODEGATE_DROPIN_DIR"/*.conf; do
    [ -f "$f" ] && [ "$f" != "$ours" ] || continue
    line=$(grep -iE '^[[:space:]]*AuthorizedKeysCommand([[:space:]]|=)' "$f" |
      grep -viE '^[[:space:]]*AuthorizedKeysCommand[[:space:]=]+"?none"?[[:space:]]*$' | head -n 1)
    if [ -n "$line" ]; then
      printf '%s: %s\n' "$f" "$line"
      return 0
    fi
  done
  effective=$(nodegate__sshd_test -T 2>/dev/null | awk '$1 == "authorizedkeyscommand" { $1 = ""; sub(/^ /, ""); print; exit }')
  case $effective in
    '' | none | "$NODEGATE_COMMAND "*) return 1 ;;
  esac
  printf 'sshd -T: AuthorizedKeysCommand %s\n' "$effective"
  return 0
}

nodegate__reload_sshd() {
  if [ "$NODEGATE_SSHD_RELOAD" = no ]; then
    nodegate_say "not reloading sshd (NODEGATE_SSHD_RELOAD=no); it reads the change when it starts"
    return 0
  fi
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for unit in ssh.service sshd.service; do
      if systemctl is-active --quiet "$unit"; then
        systemctl reload "$unit" && nodegate_say "reloaded $unit"
        return
      fi
    done
  else
    # Without systemd: the pid file sshd writes by default, if it belongs to a running sshd.
    for pidfile in /run/sshd.pid /var/run/sshd.pid; do
      [ -r "$pidfile" ] || continue
      pid=$(cat "$pidfile")
      if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$NODEGATE_SSHD" ]; then
        kill -HUP "$pid" && nodegate_say "reloaded sshd (pid $pid)"
        return
      fi
    done
  fi
  nodegate_say "sshd is not running; it reads the change when it starts"
}

# Whether FILE is a drop-in nodegate wrote (its first line is the marker).
nodegate__is_ours() {
  [ -e "$1" ] && head -n 1 "$1" | grep -qxF "$NODEGATE_MARKER"
}

# Writes the template NAME from the share dir, with the marker first, as drop-in NAME: under a
# name sshd's Include glob does not match, then renamed into place. Checks the result with
# `sshd -t` and removes it again if that fails. Prints what it did; succeeds only if the file
# was newly written (or changed) and passes the check.
nodegate__put_dropin() { # NAME
  _ng_ours=$NODEGATE_DROPIN_DIR/$1
  if [ ! -d "$NODEGATE_DROPIN_DIR" ]; then
    mkdir -p "$NODEGATE_DROPIN_DIR"
    chmod 0755 "$NODEGATE_DROPIN_DIR"
  fi
  _ng_tmp=$NODEGATE_DROPIN_DIR/.$1.new
  { printf '%s\n' "$NODEGATE_MARKER"; cat "$NODEGATE_SHARE_DIR/$1"; } >"$_ng_tmp"
  chmod 0644 "$_ng_tmp"
  if [ -e "$_ng_ours" ] && cmp -s "$_ng_tmp" "$_ng_ours"; then
    rm -f "$_ng_tmp"
    nodegate_say "$_ng_ours is up to date"
    return 1
  fi
  mv -f "$_ng_tmp" "$_ng_ours"
  if ! _ng_check=$(nodegate__sshd_test -t 2>&1); then
    rm -f "$_ng_ours"
    nodegate_say "sshd -t failed with nodegate's $1 ($_ng_check); removed it again, sshd is unchanged."
    return 1
  fi
  nodegate_say "installed $_ng_ours"
  return 0
}

# Prints "FILE: LINE" for the first ExposeAuthInfo set in sshd's configuration files outside a
# Match block (other than in our own drop-in), and succeeds if there is one. Only the files
# tell: `sshd -T` prints `exposeauthinfo no` both when it is unset and when it is set to no.
# A setting inside a Match block is the operator's for the users it matches and stays in force
# over ours (sshd applies a matching block's values over the global ones); nodegate__match_expose
# reports those.
nodegate__explicit_expose() {
  _ng_ours=$NODEGATE_DROPIN_DIR/$NODEGATE_EXPOSE_NAME
  for f in "$NODEGATE_SSHD_CONFIG" "$NODEGATE_DROPIN_DIR"/*.conf; do
    [ -f "$f" ] && [ "$f" != "$_ng_ours" ] || continue
    line=$(awk 'tolower($1) ~ /^match$/ { inmatch = (tolower($2) != "all"); next }
      !inmatch && tolower($0) ~ /^[[:space:]]*exposeauthinfo([[:space:]]|=)/ { print; exit }' "$f")
    if [ -n "$line" ]; then
      printf '%s: %s\n' "$f" "$line"
      return 0
    fi
  done
  return 1
}

# Prints "FILE: LINE" for each ExposeAuthInfo inside a Match block.
nodegate__match_expose() {
  for f in "$NODEGATE_SSHD_CONFIG" "$NODEGATE_DROPIN_DIR"/*.conf; do
    [ -f "$f" ] || continue
    awk -v f="$f" 'tolower($1) ~ /^match$/ { inmatch = (tolower($2) != "all"); next }
      inmatch && tolower($0) ~ /^[[:space:]]*exposeauthinfo([[:space:]]|=)/ { sub(/^[[:space:]]+/, ""); print f ": " $0 }' "$f"
  done
}

# sshd's effective value of KEYWORD (lower case), as `sshd -T` reports it; empty if unknown.
nodegate__effective() { # KEYWORD
  nodegate__sshd_test -T 2>/dev/null | awk -v k="$1" '$1 == k { print $2; exit }'
}

# Installs /etc/ssh/sshd_config.d/50-nodegate.conf so that sshd asks authorized-keys-cmd for
# keys, unless that would override or break something, and with it
# 51-nodegate-expose-auth-info.conf (ExposeAuthInfo yes, for nodegate-agent) unless the operator
# set ExposeAuthInfo. Never fails the caller: when it cannot enable nodegate it leaves sshd
# exactly as it was and says why and what to do. Reloads sshd once, if anything changed.
nodegate_sshd_enable() {
  _ng_changed=no
  if nodegate__enable_command; then _ng_changed=yes; fi
  if nodegate__is_ours "$NODEGATE_DROPIN_DIR/$NODEGATE_DROPIN_NAME"; then
    if nodegate__enable_expose; then _ng_changed=yes; fi
  else
    # Without nodegate's command no session logs in with a grant: nothing for the agent to end.
    nodegate_say "not adding $NODEGATE_EXPOSE_NAME: nodegate's AuthorizedKeysCommand is not installed"
  fi
  if [ "$_ng_changed" = yes ]; then
    nodegate__reload_sshd
  fi
  return 0
}

# The AuthorizedKeysCommand drop-in. Succeeds if it was newly installed or changed.
nodegate__enable_command() {
  ours=$NODEGATE_DROPIN_DIR/$NODEGATE_DROPIN_NAME
  if [ -e "$ours" ] && ! nodegate__is_ours "$ours"; then
    nodegate_say "$ours exists and was not written by nodegate; leaving it and sshd alone."
    nodegate_say "Move it away and run: sh $NODEGATE_SHARE_DIR/nodegate-sshd.sh enable"
    return 1
  fi
  if other=$(nodegate__other_command); then
    nodegate_say "sshd already has an AuthorizedKeysCommand ($other)."
    nodegate_say "sshd allows only one, so nodegate did NOT install $ours and SSH logins through nodegate are off on this node."
    nodegate_say "To use nodegate instead, remove that setting and run: sh $NODEGATE_SHARE_DIR/nodegate-sshd.sh enable"
    return 1
  fi
  if ! before=$(nodegate__sshd_test -t 2>&1); then
    nodegate_say "sshd's current configuration does not pass 'sshd -t' ($before);"
    nodegate_say "not adding $ours to it. Fix sshd's configuration, then run: sh $NODEGATE_SHARE_DIR/nodegate-sshd.sh enable"
    return 1
  fi
  nodegate__put_dropin "$NODEGATE_DROPIN_NAME" || return 1
  effective=$(nodegate__sshd_test -T 2>/dev/null | awk '$1 == "authorizedkeyscommand" { print $2; exit }')
  if [ "$effective" != "$NODEGATE_COMMAND" ]; then
    nodegate_say "warning: sshd does not read $ours (effective AuthorizedKeysCommand: ${effective:-unknown})."
    nodegate_say "Add 'Include $NODEGATE_DROPIN_DIR/*.conf' at the top of $NODEGATE_SSHD_CONFIG."
  fi
  return 0
}

# The ExposeAuthInfo drop-in: nodegate-agent reads, from the file sshd names in a session's
# SSH_USER_AUTH, which key authenticated it, and so ends only sessions of a revoked or expired
# grant. sshd takes the first value it reads, and the drop-ins come before sshd_config's own
# lines, so ours would override an operator's `ExposeAuthInfo no` there: any explicit global
# setting is left alone. Succeeds if the drop-in was newly installed or changed.
nodegate__enable_expose() {
  ours=$NODEGATE_DROPIN_DIR/$NODEGATE_EXPOSE_NAME
  if [ -e "$ours" ] && ! nodegate__is_ours "$ours"; then
    nodegate_say "$ours exists and was not written by nodegate; leaving it alone."
    return 1
  fi
  if explicit=$(nodegate__explicit_expose); then
    value=$(printf '%s\n' "${explicit#*: }" | sed 's/^[[:space:]]*[A-Za-z]*[[:space:]=]*//; s/"//g; s/[[:space:]].*$//' | tr '[:upper:]' '[:lower:]')
    if [ "$value" = yes ]; then
      nodegate_say "ExposeAuthInfo is already set ($explicit); not adding $ours."
    else
      nodegate_say "ExposeAuthInfo is set to '$value' ($explicit); nodegate leaves it and did NOT add $ours."
      nodegate_say "With it, nodegate-agent cannot tell which key authenticated a session, so it cannot end live sessions when their grant is revoked or expires (it still keeps the login cache current)."
      nodegate_say "To let it, remove that setting and run: sh $NODEGATE_SHARE_DIR/nodegate-sshd.sh enable"
    fi
    # An earlier install's drop-in would now override the operator's setting.
    if nodegate__is_ours "$ours"; then
      rm -f "$ours"
      nodegate_say "removed $ours: the setting above is the operator's"
      return 0
    fi
    return 1
  fi
  if [ -z "$(nodegate__effective exposeauthinfo)" ]; then
    # sshd -T knows every keyword it accepts: none means an OpenSSH older than 7.6.
    nodegate_say "sshd ($NODEGATE_SSHD) has no ExposeAuthInfo (OpenSSH 7.6 or later has it); not adding $ours: nodegate-agent cannot end live sessions on this node."
    return 1
  fi
  if [ "$(nodegate__effective exposeauthinfo)" = yes ] && ! nodegate__is_ours "$ours"; then
    nodegate_say "sshd already runs with ExposeAuthInfo yes (sshd -T); not adding $ours."
    return 1
  fi
  nodegate__put_dropin "$NODEGATE_EXPOSE_NAME" || return 1
  if [ "$(nodegate__effective exposeauthinfo)" != yes ]; then
    nodegate_say "warning: sshd does not read $ours (effective ExposeAuthInfo: $(nodegate__effective exposeauthinfo))."
  fi
  matched=$(nodegate__match_expose)
  if [ -n "$matched" ]; then
    nodegate_say "Match blocks set ExposeAuthInfo for the users they match, over $ours; nodegate-agent cannot end those users' sessions where it is 'no':"
    printf '%s\n' "$matched" | while IFS= read -r l; do nodegate_say "  $l"; done
  fi
  nodegate_say "ExposeAuthInfo applies to sessions that start from now on; sessions already open are not ended by nodegate-agent."
  return 0
}

# Removes our drop-ins (never another file), validates what is left and reloads sshd if it runs.
nodegate_sshd_disable() {
  _ng_removed=no
  for name in "$NODEGATE_DROPIN_NAME" "$NODEGATE_EXPOSE_NAME"; do
    rm -f "$NODEGATE_DROPIN_DIR/.$name.new"
    if nodegate__is_ours "$NODEGATE_DROPIN_DIR/$name"; then
      rm -f "$NODEGATE_DROPIN_DIR/$name"
      nodegate_say "removed $NODEGATE_DROPIN_DIR/$name"
      _ng_removed=yes
    fi
  done
  [ "$_ng_removed" = yes ] || return 0
  if ! check=$(nodegate__sshd_test -t 2>&1); then
    nodegate_say "warning: sshd -t fails without nodegate's drop-ins too ($check); not reloading sshd."
    return 0
  fi
  nodegate__reload_sshd
}

# Whether nodegate's drop-in is installed and effective (exit status), and what sshd does about
# ExposeAuthInfo (nodegate-agent ends live sessions only with it).
nodegate_sshd_status() {
  ours=$NODEGATE_DROPIN_DIR/$NODEGATE_DROPIN_NAME
  if nodegate__is_ours "$ours"; then
    echo "enabled: $ours"
  elif other=$(nodegate__other_command); then
    echo "disabled: another AuthorizedKeysCommand is configured ($other)"
    return 1
  else
    echo "disabled: $ours is not installed"
    return 1
  fi
  expose=$NODEGATE_DROPIN_DIR/$NODEGATE_EXPOSE_NAME
  if nodegate__is_ours "$expose"; then
    echo "ExposeAuthInfo: yes ($expose)"
  elif explicit=$(nodegate__explicit_expose); then
    echo "ExposeAuthInfo: set by the operator ($explicit)"
  else
    echo "ExposeAuthInfo: $(nodegate__effective exposeauthinfo) (sshd -T; $expose is not installed)"
  fi
  nodegate__match_expose | sed 's/^/ExposeAuthInfo in a Match block: /'
  return 0
}

# Run directly rather than sourced: `sh nodegate-sshd.sh enable|disable|status`.
case ${0##*/} in
  nodegate-sshd.sh)
    case ${1:-} in
      enable) nodegate_sshd_enable ;;
      disable) nodegate_sshd_disable ;;
      status) nodegate_sshd_status ;;
      setup) nodegate_setup_user_and_dirs ;;
      *)
        echo "usage: sh $0 enable|disable|status|setup" >&2
        exit 2
        ;;
    esac
    ;;
esac
