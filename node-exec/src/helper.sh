# node-exec's helper: run with `sh -c` in the privileged helper pod, before anything of the target
# is touched. It finds the process whose namespaces to enter, resolves the user, their home and
# their shell in that process's own filesystem (through /proc/PID/root, never in the helper
# image's), and execs nsenter with that uid, gid and working directory.
#
# What it needs from the helper image: sh, env and nsenter (with -S/-G), plus base64 and mkfifo
# when stdin is piped, readlink when a path on the target holds a symlink, tr to pass a
# container's environment, stty (optional) for the window size. busybox has them all, and so
# has any image with coreutils and util-linux. It writes only to SCRATCH (the pod's own emptyDir
# volume), so a read-only root filesystem, or an image without /tmp, is fine.
#
# Arguments: SCRATCH MODE TARGET USER FRAMED TERM WINDOW -- COMMAND...
#   SCRATCH a writable directory of the helper's own (for the stdin fifo)
#   MODE    host: TARGET is the PID whose namespaces are "the host"
#           container: TARGET is the container ID (hex) from the pod status
#   USER    NAME, UID, NAME:GROUP or UID:GID; empty: root on the host, the container's own user
#   FRAMED  1: stdin arrives base64-encoded, one chunk a line, and a line "." marks its end
#           (the WebSocket protocol v4 cannot half-close stdin)
#   TERM    the caller's TERM when a terminal is attached, else empty
#   WINDOW  ROWSxCOLS of the caller's terminal, else empty
#   COMMAND empty: the user's shell (a login shell on the host)
set -u
die() { printf 'node-exec: %s\n' "$*" >&2; exit 125; }
note() { printf 'node-exec: %s\n' "$*" >&2; }
isnum() { case $1 in '' | *[!0-9]*) return 1 ;; esac; }

scratch=$1 mode=$2 target=$3 user=$4 framed=$5 term=$6 window=$7
shift 8

# The last of the values after KEY in /proc/PID/status (e.g. NSpid, the PID in the innermost
# namespace), or with FIRST the first one (e.g. the real uid of Uid).
status_field() { # PID KEY [FIRST]
  while read -r sf_key sf_values; do
    [ "$sf_key" = "$2:" ] || continue
    for sf_value in $sf_values; do
      [ $# -gt 2 ] && break
    done
    printf '%s\n' "$sf_value"
    return 0
  done 2>/dev/null <"/proc/$1/status"
  return 1
}

case $mode in
host)
  pid=$target
  where="the host (PID $pid)"
  [ -r "/proc/$pid/ns/mnt" ] || die "no process $pid on this node to take the host's namespaces from (check --host-pid)"
  ;;
container)
  pid= lowest=
  for f in /proc/[0-9]*/cgroup; do
    hit=
    while IFS= read -r line; do
      case $line in *"$target"*) hit=1 && break ;; esac
    done 2>/dev/null <"$f"
    [ -n "$hit" ] || continue
    p=${f#/proc/}
    p=${p%/cgroup}
    if [ -z "$lowest" ] || [ "$p" -lt "$lowest" ]; then lowest=$p; fi
    # The container's first process is PID 1 of its own PID namespace.
    [ "$(status_field "$p" NSpid)" = 1 ] && pid=$p
  done
  [ -n "$pid" ] || pid=$lowest
  [ -n "$pid" ] || die "no process of container ${target} found on this node (did it just stop?)"
  where="the container"
  ;;
*) die "unknown mode $mode" ;;
esac

root=/proc/$pid/root
passwd=$root/etc/passwd
group=$root/etc/group

# Resolves PATH as the target sees it: each symlink read on the target, an absolute one
# restarting from the target's root (a plain walk through /proc/PID/root would resolve it in
# the helper image). Prints the resolved path; fails if a part is missing or after 40 links.
resolve() { # PATH
  r_rest=$1 r_done= r_links=0
  while [ -n "$r_rest" ]; do
    r_part=${r_rest%%/*}
    case $r_rest in */*) r_rest=${r_rest#*/} ;; *) r_rest= ;; esac
    case $r_part in
    '' | .) continue ;;
    ..) r_done=${r_done%/*} && continue ;;
    esac
    if [ -L "$root$r_done/$r_part" ]; then
      r_links=$((r_links + 1))
      [ $r_links -le 40 ] || return 1
      r_link=$(readlink "$root$r_done/$r_part") && [ -n "$r_link" ] || return 1
      case $r_link in /*) r_done= ;; esac
      r_rest=$r_link${r_rest:+/$r_rest}
    elif [ -e "$root$r_done/$r_part" ]; then
      r_done=$r_done/$r_part
    else
      return 1
    fi
  done
  printf '%s\n' "${r_done:-/}"
}

# Finds the passwd entry whose name (by=name) or uid (by=uid) is VALUE; sets e_name, e_uid,
# e_gid, e_home and e_shell.
find_user() { # name|uid VALUE
  [ -r "$passwd" ] || return 1
  while IFS=: read -r e_name _ e_uid e_gid _ e_home e_shell || [ -n "$e_name" ]; do
    case $1 in
    name) [ "$e_name" = "$2" ] && return 0 ;;
    uid) [ "$e_uid" = "$2" ] && return 0 ;;
    esac
  done <"$passwd"
  e_name=
  return 1
}

# Prints the gid of group NAME.
find_group() { # NAME
  [ -r "$group" ] || return 1
  while IFS=: read -r g_name _ g_gid _ || [ -n "$g_name" ]; do
    [ "$g_name" = "$1" ] && printf '%s\n' "$g_gid" && return 0
  done <"$group"
  return 1
}

if [ -z "$user" ]; then
  if [ "$mode" = host ]; then
    user=root
  else
    user=$(status_field "$pid" Uid first):$(status_field "$pid" Gid first)
  fi
fi
u=${user%%:*} g=
case $user in *:*) g=${user#*:} ;; esac

e_name=
if isnum "$u"; then
  uid=$u
  find_user uid "$u"
else
  [ -r "$passwd" ] || die "cannot resolve user \"$u\": $where has no /etc/passwd; give a numeric --user UID[:GID]"
  find_user name "$u" || die "user \"$u\" not found in /etc/passwd of $where"
  uid=$e_uid
fi
if [ -z "$g" ]; then
  # As container runtimes do: the user's primary group, or group 0 for a uid without an entry.
  gid=0
  [ -n "$e_name" ] && gid=$e_gid
elif isnum "$g"; then
  gid=$g
else
  gid=$(find_group "$g") || die "group \"$g\" not found in /etc/group of $where"
fi

# HOME and the working directory, as login(1) does it: the user's home if it exists on the
# target, else / with a note. The working directory is the home resolved on the target and
# reached through /proc/PID/root, because nsenter opens `-w DIR` before entering the target's
# mount namespace (busybox, and util-linux before --wdns).
name=$uid home=/ workdir=/ shell=/bin/sh
if [ -n "$e_name" ]; then
  name=$e_name
  if [ -n "$e_home" ] && resolved=$(resolve "$e_home") && [ -d "$root$resolved" ]; then
    home=$e_home workdir=$resolved
  else
    note "home directory ${e_home:-(none)} of $name does not exist on $where; starting in / (HOME=/)"
  fi
  case $e_shell in '' | */nologin | */false) ;; *) shell=$e_shell ;; esac
fi

if [ $# -eq 0 ]; then
  if ! resolved=$(resolve "$shell") || [ ! -f "$root$resolved" ]; then
    [ "$shell" != /bin/sh ] && note "shell $shell of $name does not exist on $where; using /bin/sh"
    shell=/bin/sh
    resolved=$(resolve "$shell") && [ -f "$root$resolved" ] || die "$where has no shell ($shell): give a command after --"
  fi
  if [ "$mode" = host ]; then set -- "$shell" -l; else set -- "$shell"; fi
fi

# Build: env -i ENVIRONMENT... nsenter OPTIONS... -- COMMAND..., appending to the command
# words already in "$@" and rotating them to the end (POSIX sh has no arrays).
words=$#
set -- "$@" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ "$mode" = container ] && [ -r "/proc/$pid/environ" ]; then
  # The container's own environment, as kubectl exec would give it.
  if command -v tr >/dev/null; then
    while IFS= read -r kv; do
      case $kv in [A-Za-z_]*=*) set -- "$@" "$kv" ;; esac
    done <<ENVIRON
$(tr '\0' '\n' <"/proc/$pid/environ")
ENVIRON
  else
    note "the helper image has no tr: the container's own environment is not passed on"
  fi
fi
[ -n "$term" ] && set -- "$@" "TERM=$term"
set -- "$@" "HOME=$home" "USER=$name" "LOGNAME=$name" "SHELL=$shell"
nsenter=$(command -v nsenter) || die "the helper image has no nsenter (use an image with busybox or util-linux)"
set -- "$@" "$nsenter" -t "$pid" -m -u -i -n -p -S "$uid" -G "$gid" "-w$root$workdir" --
i=0
while [ $i -lt $words ]; do
  w=$1
  shift
  set -- "$@" "$w"
  i=$((i + 1))
done

if [ "$framed" != 1 ]; then
  # The first resize message may come after the command has read its window size: set it now.
  rows=${window%x*} cols=${window#*x}
  if isnum "$rows" && isnum "$cols" && command -v stty >/dev/null; then
    stty rows "$rows" cols "$cols" 2>/dev/null
  fi
  exec env -i "$@"
fi
fifo=$scratch/stdin.$$
mkfifo "$fifo" || die "cannot create $fifo in the helper's scratch volume"
exec 3<&0
{
  while IFS= read -r line; do
    [ "$line" = . ] && break
    printf '%s\n' "$line"
  done | base64 -d >"$fifo"
} <&3 2>/dev/null &
env -i "$@" <"$fifo" 3<&-
rc=$?
rm -f "$fifo"
exit $rc
