# node-exec's helper: run with `sh -c` in the privileged helper pod, before anything of the target
# is touched. It finds the process whose namespaces to enter, resolves the user in that process's
# own /etc/passwd and /etc/group, and execs nsenter with that uid and gid. Needs only sh, awk, cut,
# grep, env, nsenter and base64 from the helper image (busybox has them all), and stty if it is
# there (for the window size).
#
# Arguments: MODE TARGET USER FRAMED TERM WINDOW -- COMMAND...
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
isnum() { case $1 in '' | *[!0-9]*) return 1 ;; esac; }

mode=$1 target=$2 user=$3 framed=$4 term=$5 window=$6
shift 7

case $mode in
host)
  pid=$target
  where="the host (PID $pid)"
  [ -r "/proc/$pid/ns/mnt" ] || die "no process $pid on this node to take the host's namespaces from (check --host-pid)"
  ;;
container)
  pid= lowest=
  for f in $(grep -l -F -- "$target" /proc/[0-9]*/cgroup 2>/dev/null); do
    p=${f#/proc/}
    p=${p%/cgroup}
    if [ -z "$lowest" ] || [ "$p" -lt "$lowest" ]; then lowest=$p; fi
    # The container's first process is PID 1 of its own PID namespace.
    [ "$(awk '/^NSpid:/ { print $NF }' "/proc/$p/status" 2>/dev/null)" = 1 ] && pid=$p
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

if [ -z "$user" ]; then
  if [ "$mode" = host ]; then
    user=root
  else
    user=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status"):$(awk '/^Gid:/ { print $2 }' "/proc/$pid/status")
  fi
fi
u=${user%%:*} g=
case $user in *:*) g=${user#*:} ;; esac

entry=
if isnum "$u"; then
  uid=$u
  [ -r "$passwd" ] && entry=$(awk -F: -v id="$u" '$3 == id { print; exit }' "$passwd")
else
  [ -r "$passwd" ] || die "cannot resolve user \"$u\": $where has no /etc/passwd; give a numeric --user UID[:GID]"
  entry=$(awk -F: -v name="$u" '$1 == name { print; exit }' "$passwd")
  [ -n "$entry" ] || die "user \"$u\" not found in /etc/passwd of $where"
  uid=$(printf '%s\n' "$entry" | cut -d: -f3)
fi
if [ -z "$g" ]; then
  # As container runtimes do: the user's primary group, or group 0 for a uid without an entry.
  gid=0
  [ -n "$entry" ] && gid=$(printf '%s\n' "$entry" | cut -d: -f4)
elif isnum "$g"; then
  gid=$g
else
  gid=
  [ -r "$group" ] && gid=$(awk -F: -v name="$g" '$1 == name { print $3; exit }' "$group")
  [ -n "$gid" ] || die "group \"$g\" not found in /etc/group of $where"
fi
name=$uid home=/ shell=/bin/sh
if [ -n "$entry" ]; then
  name=$(printf '%s\n' "$entry" | cut -d: -f1)
  h=$(printf '%s\n' "$entry" | cut -d: -f6)
  [ -n "$h" ] && [ -d "$root$h" ] && home=$h
  s=$(printf '%s\n' "$entry" | cut -d: -f7)
  case $s in '' | */nologin | */false) ;; *) shell=$s ;; esac
fi

if [ $# -eq 0 ]; then
  # Absolute symlinks under /proc/PID/root resolve against our own root, so test for a link too.
  [ -e "$root$shell" ] || [ -L "$root$shell" ] || shell=/bin/sh
  [ -e "$root$shell" ] || [ -L "$root$shell" ] || die "$where has no shell ($shell): give a command after --"
  if [ "$mode" = host ]; then set -- "$shell" -l; else set -- "$shell"; fi
fi

# Build: env -i ENVIRONMENT... nsenter OPTIONS... -- COMMAND..., appending to the command
# words already in "$@" and rotating them to the end (POSIX sh has no arrays).
words=$#
set -- "$@" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ "$mode" = container ] && [ -r "/proc/$pid/environ" ]; then
  # The container's own environment, as kubectl exec would give it.
  while IFS= read -r kv; do
    case $kv in [A-Za-z_]*=*) set -- "$@" "$kv" ;; esac
  done <<ENVIRON
$(tr '\0' '\n' <"/proc/$pid/environ")
ENVIRON
fi
[ -n "$term" ] && set -- "$@" "TERM=$term"
set -- "$@" "HOME=$home" "USER=$name" "LOGNAME=$name" "SHELL=$shell"
nsenter=$(command -v nsenter) || die "the helper image has no nsenter (use an image with busybox or util-linux)"
set -- "$@" "$nsenter" -t "$pid" -m -u -i -n -p -S "$uid" -G "$gid" "-w$home" --
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
fifo=/tmp/node-exec-stdin.$$
mkfifo "$fifo" || die "cannot create $fifo in the helper container"
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
