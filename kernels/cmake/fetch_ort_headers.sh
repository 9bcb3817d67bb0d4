#!/usr/bin/env bash
# Fetch onnxruntime's C/C++ headers (Debian 13 "trixie" libonnxruntime-dev) into DEST, without
# touching the system: a private apt state folder whose single source line reuses the mirror URI
# already configured on this machine, with the suite "trixie". Nothing is installed; the .deb is
# unpacked with dpkg -x. Prints the include directory on success.
set -euo pipefail
dest=${1:?usage: fetch_ort_headers.sh DEST}
inc="$dest/root/usr/include/onnxruntime"
if [ -f "$inc/onnxruntime_lite_custom_op.h" ]; then echo "$inc"; exit 0; fi

for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null || { echo "fetch_ort_headers: '$tool' not found; set ORT_INCLUDE_DIR to a folder holding onnxruntime_c_api.h" >&2; exit 1; }
done

# The configured Debian mirror: deb822 sources first, then one-line sources.
uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$uri" ]; then
  uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | head -n 1 || true)
fi
[ -n "$uri" ] || { echo "fetch_ort_headers: no Debian mirror configured in /etc/apt; set ORT_INCLUDE_DIR" >&2; exit 1; }

state="$dest/apt"
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc/preferences.d" "$dest/deb"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [ -f "$keyring" ]; then trust="signed-by=$keyring"; else trust="trusted=yes"; fi
echo "deb [$trust] $uri trixie main" > "$state/etc/sources.list"
opts=(-o "Dir::Etc::SourceList=$state/etc/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache" -o "Dir::State::status=/dev/null"
      -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=$state/etc/preferences.d"
      -o "Acquire::Languages=none" -o "APT::Architecture=$(dpkg --print-architecture)" -o "APT::Sandbox::User=root" -qq)
apt-get "${opts[@]}" update >&2
(cd "$dest/deb" && apt-get "${opts[@]}" download libonnxruntime-dev >&2)
dpkg -x "$dest"/deb/libonnxruntime-dev_*.deb "$dest/root"
[ -f "$inc/onnxruntime_lite_custom_op.h" ] || { echo "fetch_ort_headers: headers missing from the package" >&2; exit 1; }
echo "$inc"
