#!/usr/bin/env bash
# A live two-node sync on this one machine, for a person to watch:
# a private sshd on 127.0.0.1 (own host key, own config, a free high port)
# whose forced command runs the "passive" node's agent, a copy of /etc as the
# "active" node's tree, and bmsync resync / verify between them.
# Needs root (sshd, owners), openssh-server, and bmsync installed.
set -euo pipefail

# absolute: sshd runs the forced command with its own PATH, not this venv's
python=$(command -v "${PYTHON:-python3}")
work=$(mktemp -d /tmp/bmsync-demo.XXXXXX)
sshd_pid=""
cleanup() {
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
sync:
  preset: bluemind
  root: $work/bm2
CONF
for _ in $(seq 50); do
    "$python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
    sleep 0.1
done

bm() { "$python" -m bmsync -c "$work/bm1.yaml" "$@"; }
echo "active node tree: $work/bm1   passive node tree: $work/bm2   sshd on 127.0.0.1:$port"
step bm config check
step bm resync
step bm verify
echo
echo "--- now change two files on the active node, one with the same size and mtime"
sed -i 's/^#Port 22/#Port 23/' "$work/bm1/etc/ssh/sshd_config" || true
touch -r "$work/bm1/etc/ssh/ssh_config" "$work/bm1/etc/ssh/sshd_config"
echo "# added by the demo" >> "$work/bm1/etc/sysctl.conf"
step bm resync --dry-run
step bm resync
step bm verify
echo
echo "--- the passive node kept its own identity:"
step cat "$work/bm2/etc/hostname" "$work/bm2/etc/machine-id"
