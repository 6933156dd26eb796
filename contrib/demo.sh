#!/usr/bin/env bash
# A live two-node sync on this one machine, for a person to watch:
# a private sshd on 127.0.0.1 (own host key, own config, a free high port)
# whose forced command runs the "passive" node's agent, a copy of /etc as the
# "active" node's tree, and the bmsync daemon between them: a few edits on
# the active tree, their arrival on the passive one, `bmsync status`.
# Needs root (sshd, owners), openssh-server, and bmsync installed.
set -euo pipefail

# absolute: sshd runs the forced command with its own PATH, not this venv's
python=$(command -v "${PYTHON:-python3}")
work=$(mktemp -d /tmp/bmsync-demo.XXXXXX)
sshd_pid=""
daemon_pid=""
cleanup() {
    if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; fi
    if [ -n "$sshd_pid" ]; then kill "$sshd_pid" 2>/dev/null || true; wait "$sshd_pid" 2>/dev/null || true; fi
    echo "demo files kept in $work (rm -rf it when done)"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@" || echo "(exit status $?)"; }

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ssh-keygen -q -t ed25519 -N '' -C bmsync-demo-host -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -C bmsync-demo -f "$work/id_ed25519"
echo "[127.0.0.1]:$port $(cat "$work/host_key.pub")" > "$work/known_hosts"
echo "command=\"$python -m bmsync -c $work/bm2.yaml agent\",restrict $(cat "$work/id_ed25519.pub")" \
    > "$work/authorized_keys"
cat > "$work/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PidFile $work/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
CONF
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
sshd_pid=$!

mkdir -p "$work/bm1" "$work/bm2/etc" "$work/state1" "$work/state2"
cp -a /etc "$work/bm1/etc"
echo bm2 > "$work/bm2/etc/hostname"        # the passive's own identity
echo "bm2-machine-id" > "$work/bm2/etc/machine-id"
cat > "$work/bm1.yaml" <<CONF
node: bm1
state_dir: $work/state1
control_socket: $work/bm1.sock
peer:
  host: 127.0.0.1
  port: $port
  user: root
  identity: $work/id_ed25519
  known_hosts: $work/known_hosts
sync:
  preset: bluemind
  root: $work/bm1
CONF
cat > "$work/bm2.yaml" <<CONF
node: bm2
state_dir: $work/state2
control_socket: $work/bm2.sock
sync:
  preset: bluemind
  root: $work/bm2
CONF
for _ in $(seq 50); do
    "$python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
    sleep 0.1
done

bm() { "$python" -m bmsync -c "$work/bm1.yaml" "$@"; }
show() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
echo "active node tree: $work/bm1   passive node tree: $work/bm2   sshd on 127.0.0.1:$port"
step bm config check

show "a fresh node is passive at epoch 0: make bm1 the active one"
step bm promote

show "start the daemon (systemd would: Type=notify, READY after the first reconcile)"
"$python" -m bmsync -c "$work/bm1.yaml" --log-level info run 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 100); do
    bm status >/dev/null 2>&1 && bm status --json | grep -q '"state": "syncing"' && break
    sleep 0.1
done
step bm status

show "edit on the active node, as an administrator would"
step sed -i 's/^#Port 22/Port 2222/' "$work/bm1/etc/ssh/sshd_config"
step sh -c "echo 'net.ipv4.ip_forward = 1' >> '$work/bm1/etc/sysctl.conf'"
step sh -c "echo 'root: admin@example.org' > '$work/bm1/etc/aliases'"
step mv "$work/bm1/etc/motd" "$work/bm1/etc/motd.old"
step chmod 600 "$work/bm1/etc/sysctl.conf"
sleep 0.2
show "they are on the passive node already"
step grep -n '^Port' "$work/bm2/etc/ssh/sshd_config"
step tail -1 "$work/bm2/etc/sysctl.conf"
step stat -c '%A %n' "$work/bm2/etc/sysctl.conf"
step ls "$work/bm2/etc/motd.old"
step bm status
step bm verify

show "the passive node kept its own identity"
step cat "$work/bm2/etc/hostname" "$work/bm2/etc/machine-id"

show "stop the daemon (SIGTERM: the batch in flight is finished first)"
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=""
step bm status
echo "daemon log: $work/daemon.log"
