#!/usr/bin/env bash
# Install phibox's device side on a Debian/Ubuntu appliance (run as root from a phibox checkout).
#   sudo systemd/install.sh --key admin.pub [--prefix /opt/phibox]
#                           [--channel-url http://updates/phibox/line-2/ --channel plant7-line2]
# Then: sudo -u phibox /opt/phibox/bin/phibox bundle install plant7-v3.phibox --state /var/lib/phibox
#       sudo /opt/phibox/bin/phibox admin set-password --state /var/lib/phibox   (root: /etc/phibox)
set -euo pipefail

prefix=/opt/phibox
key=""
channel_url=""
channel=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --key) key=$2; shift 2 ;;
    --channel-url) channel_url=$2; shift 2 ;;
    --channel) channel=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -n "$key" ] && [ -f "$key" ] || { echo "--key ADMIN.pub is required (from phibox keygen)" >&2; exit 1; }
if [ -n "$channel_url" ] && [ -z "$channel" ]; then
  echo "--channel-url needs --channel NAME too: the channel this kiosk follows (e.g. plant7-line2)" >&2; exit 1
fi
here=$(cd "$(dirname "$0")/.." && pwd)

id phibox >/dev/null 2>&1 || useradd --system --home-dir /var/lib/phibox --shell /usr/sbin/nologin phibox
python3 -m venv "$prefix"
"$prefix/bin/pip" install --quiet -c "$here/constraints.txt" "$here[device]"
mkdir -p "$prefix/share/phibox" /etc/phibox/keys /var/lib/phibox
cp "$here/README.md" "$prefix/share/phibox/"
# Credentials are root's: the service reads them and can't change them (ProtectSystem=strict keeps
# /etc read-only for it). An older install kept them in the state directory: move them over.
for old in /var/lib/phibox/keys/*.pub; do [ -f "$old" ] && mv -n "$old" /etc/phibox/keys/; done
for old in admin.json secret.key; do [ -f "/var/lib/phibox/$old" ] && mv -n "/var/lib/phibox/$old" /etc/phibox/; done
rm -rf /var/lib/phibox/keys
install -m 0644 -o root -g root "$key" "/etc/phibox/keys/$(basename "$key")"
chown root:phibox /etc/phibox /etc/phibox/keys
chmod 0750 /etc/phibox /etc/phibox/keys
for f in /etc/phibox/admin.json /etc/phibox/secret.key; do
  if [ -f "$f" ]; then chown root:phibox "$f"; chmod 0640 "$f"; fi
done
chown -R phibox:phibox /var/lib/phibox
chmod 0750 /var/lib/phibox
[ -f /etc/phibox/serve.toml ] || printf 'host = "127.0.0.1"\nport = 8080\nqueue_size = 4\n' > /etc/phibox/serve.toml
[ -f /etc/phibox/phibox.env ] || printf 'PHIBOX_CHANNEL_URL=%s\nPHIBOX_CHANNEL=%s\n' "$channel_url" "$channel" \
  > /etc/phibox/phibox.env
for unit in phibox.service phibox-pull.service phibox-pull.timer; do
  sed "s|@PREFIX@|$prefix|g" "$here/systemd/$unit" > "/etc/systemd/system/$unit"
done
systemctl daemon-reload
systemctl enable phibox.service
if [ -n "$channel_url" ]; then systemctl enable --now phibox-pull.timer; fi
echo "installed in $prefix; install a bundle, set the admin password, then: systemctl start phibox"
