#!/usr/bin/env bash
# phibox appliance installer. Run it as root from the folder of an unpacked appliance tar
# (`make appliance` on the build box writes phibox-appliance-<version>-<platform>.tar):
#   tar xf phibox-appliance-0.1.0-linux-x86_64.tar && cd phibox-appliance-0.1.0-linux-x86_64
#   sudo ./install.sh --key admin.pub [--channel-url http://updates/phibox/line-2/ --channel plant7-line2]
#   sudo ./install.sh --uninstall [--purge]
# It needs no network and no compiler: it checks appliance.sig against the admin public key and
# every file against appliance.json before it changes anything, installs the wheels into a new
# virtual environment under PREFIX/venvs/, runs `phibox doctor` there, and only then points
# PREFIX/current at it (the previous environment is kept; the service goes back to it if the new
# one does not start). State, keys, documents and bundles are never touched by an upgrade.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
prefix=/opt/phibox
state=/var/lib/phibox
config=/etc/phibox
unit_dir=/etc/systemd/system
user=phibox
python=python3
key=""
channel_url=""
channel=""
uninstall=0
purge=0
systemd=auto
UNITS="phibox.service phibox-pull.service phibox-pull.timer"

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --key) key=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --channel-url) channel_url=$2; shift 2 ;;
    --channel) channel=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    # For boxes without systemd as PID 1 (containers, tests): other directories and user, no units started.
    --no-systemd) systemd=no; shift ;;
    --state-dir) state=$2; shift 2 ;;
    --config-dir) config=$2; shift 2 ;;
    --unit-dir) unit_dir=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run as root: sudo $0 $*"
case "$prefix" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
[ "$prefix" != / ] || die "--prefix / is not a phibox prefix"
if [ "$systemd" = auto ]; then
  if [ -d /run/systemd/system ]; then systemd=yes; else systemd=no; fi
fi
if [ "$systemd" = yes ] && { [ "$state" != /var/lib/phibox ] || [ "$config" != /etc/phibox ]; }; then
  die "--state-dir and --config-dir are for installs without systemd (--no-systemd): the units use /var/lib/phibox and /etc/phibox"
fi

uninstall() {
  [ -d "$prefix/venvs" ] || die "no phibox appliance install in $prefix (nothing removed)"
  if [ "$systemd" = yes ]; then
    systemctl disable --now phibox-pull.timer phibox.service >/dev/null 2>&1 || true
  fi
  for unit in $UNITS; do rm -f "$unit_dir/$unit"; done
  [ "$systemd" = yes ] && systemctl daemon-reload
  rm -rf "$prefix" "$config"
  if [ "$purge" = 1 ]; then
    rm -rf "$state"
    [ "$user" = phibox ] && { userdel phibox >/dev/null 2>&1 || true; }
    say "removed $prefix, $config, $state and the phibox user"
  else
    say "removed $prefix, $config and the units; kept $state (bundles, documents, events; --purge removes it)"
  fi
}
if [ "$uninstall" = 1 ]; then uninstall; exit 0; fi

[ -f "$here/appliance.json" ] && [ -f "$here/appliance.sig" ] \
  || die "no appliance.json/appliance.sig beside install.sh: run it from an unpacked phibox-appliance-*.tar (built with 'make appliance')"
[ -n "$key" ] || die "--key ADMIN.pub is required: the public key of the admin key that signed this appliance (phibox keygen)"
[ -f "$key" ] || die "--key $key: no such file"
command -v openssl >/dev/null || die "openssl is needed to check the signature: apt-get install openssl"
command -v "$python" >/dev/null || die "$python not found: the appliance needs the Python it was built for (see README.md)"

# 1. Nothing is installed before the signature and every file check out.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{ printf 'phibox appliance v1\n'; cat "$here/appliance.json"; } > "$tmp/signed"
base64 -d "$here/appliance.sig" > "$tmp/sig" 2>/dev/null || die "appliance.sig is not a base64 signature"
openssl pkeyutl -verify -pubin -inkey "$key" -rawin -in "$tmp/signed" -sigfile "$tmp/sig" >/dev/null 2>&1 \
  || die "appliance.json is not signed by $key: this file was changed or built with another admin key; nothing was installed"
"$python" - "$here" "$tmp/version" <<'PY' || die "refused; nothing was installed"
import hashlib, json, platform, sys
from pathlib import Path

here, out = Path(sys.argv[1]), Path(sys.argv[2])
m = json.loads((here / "appliance.json").read_text())
problems = []
if m["machine"] != platform.machine():
    problems.append(f"this appliance is for {m['machine']}, this machine is {platform.machine()}: "
                    f"build the tar on a {platform.machine()} build box")
have = f"{sys.version_info.major}.{sys.version_info.minor}"
if have != m["python"]:
    problems.append(f"the wheels are for Python {m['python']}, {sys.executable} is {have}: install python{m['python']} "
                    f"and pass --python, or build the tar with --python {have}")
libc, libc_version = platform.libc_ver()
need = tuple(int(x) for x in m["requires"]["glibc"].split("."))
if libc != "glibc" or tuple(int(x) for x in libc_version.split(".")[:2]) < need:
    problems.append(f"needs glibc >= {m['requires']['glibc']}, this system has {libc} {libc_version}")
try:
    import ensurepip, venv  # noqa: F401  (Debian: python3-venv)
except ImportError:
    problems.append("Python's venv/ensurepip is missing: apt-get install python3-venv")
listed = m["files"]
present = {p.relative_to(here).as_posix() for p in here.rglob("*") if p.is_file()}
for name in sorted(present - set(listed) - {"appliance.json", "appliance.sig"}):
    problems.append(f"{name} is not in appliance.json (added after signing)")
for name, entry in sorted(listed.items()):
    path = here / name
    if not path.is_file():
        problems.append(f"{name} is missing")
        continue
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    if path.stat().st_size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        problems.append(f"{name} does not match appliance.json (changed or damaged after signing)")
for p in problems:
    print(f"install.sh: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
out.write_text(m["version"])
print(f"install.sh: phibox {m['version']} for {m['platform']}, Python {m['python']}: signature and {len(listed)} files check out")
PY
version=$(cat "$tmp/version")

# 2. A new environment beside the running one; it must pass `phibox doctor` before anything switches.
new="$prefix/venvs/$version-$(date +%Y%m%d%H%M%S)"
mkdir -p "$prefix/venvs"
"$python" -m venv "$new" || { rm -rf "$new"; die "could not create a virtual environment with $python"; }
say "installing $(ls "$here/wheels" | wc -l) wheels into $new (offline)"
if ! env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    "$new/bin/python" -m pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
    --find-links "$here/wheels" --only-binary :all: -c "$here/constraints.txt" "phibox[device]==$version"; then
  rm -rf "$new"
  die "pip could not install from the appliance's wheels (above); nothing was changed"
fi
if ! "$new/bin/phibox" doctor; then
  rm -rf "$new"
  die "phibox doctor failed in the new environment (above); nothing was changed"
fi
mkdir -p "$new/share/phibox"
cp "$here/README.md" "$new/share/phibox/README.md"

# 3. The service user, state, credentials (root's, read-only for the service) and default settings.
id "$user" >/dev/null 2>&1 || useradd --system --home-dir "$state" --shell /usr/sbin/nologin "$user"
mkdir -p "$config/keys" "$state"
install -m 0644 -o root -g root "$key" "$config/keys/$(basename "$key")"
chown root:"$(id -gn "$user")" "$config" "$config/keys"
chmod 0750 "$config" "$config/keys"
for f in "$config/admin.json" "$config/secret.key"; do
  if [ -f "$f" ]; then chown root:"$(id -gn "$user")" "$f"; chmod 0640 "$f"; fi
done
chown -R "$user":"$(id -gn "$user")" "$state"
chmod 0750 "$state"
[ -f "$config/serve.toml" ] || printf 'host = "127.0.0.1"\nport = 8080\nqueue_size = 4\n' > "$config/serve.toml"
[ -f "$config/phibox.env" ] || printf 'PHIBOX_CHANNEL_URL=%s\nPHIBOX_CHANNEL=%s\n' "$channel_url" "$channel" \
  > "$config/phibox.env"

# 4. Switch: PREFIX/current names the environment the units run.
previous=$(readlink "$prefix/current" 2>/dev/null || true)
switch_to() { ln -sfn "$1" "$prefix/current.new" && mv -Tf "$prefix/current.new" "$prefix/current"; }
switch_to "$new"
mkdir -p "$unit_dir"
for unit in $UNITS; do
  sed "s|@PREFIX@|$prefix/current|g" "$here/units/$unit" > "$unit_dir/$unit"
done
if [ "$systemd" = yes ]; then
  systemctl daemon-reload
  systemctl enable phibox.service >/dev/null
  [ -n "$channel_url" ] && systemctl enable --now phibox-pull.timer
  if systemctl is-active --quiet phibox.service; then
    say "restarting phibox.service on the new environment"
    if ! systemctl restart phibox.service; then
      if [ -n "$previous" ]; then
        switch_to "$previous"
        systemctl restart phibox.service || true
        die "the new version did not start (journalctl -u phibox); went back to $previous"
      fi
      die "the new version did not start (journalctl -u phibox)"
    fi
  fi
fi

# 5. Keep the new environment and the one before it; older ones go.
for old in "$prefix"/venvs/*; do
  [ "$old" = "$new" ] || [ "$old" = "$previous" ] || rm -rf "$old"
done
say "phibox $version installed in $new (previous: ${previous:-none})"
if [ "$systemd" = yes ] && ! systemctl is-active --quiet phibox.service; then
  say "next: install a bundle (sudo -u $user $prefix/current/bin/phibox bundle install B.phibox --state $state),"
  say "      set the admin password ($prefix/current/bin/phibox admin set-password --state $state), then systemctl start phibox"
fi
