#!/usr/bin/env bash
# Assembles the interop tests' guest from Debian packages: the distribution's kernel image
# and a busybox-static initramfs holding tests/interop/guest/ and the kernel modules the
# scenarios load. Nothing is built; what is downloaded is kept in OUT and reused.
#
#   tests/interop/make-guest.sh OUT      -> OUT/vmlinuz, OUT/initramfs.cpio.gz
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: make-guest.sh OUT}
mkdir -p "$out/debs"
out=$(cd "$out" && pwd)

# The image package linux-image-amd64 points at (e.g. linux-image-6.1.0-57-amd64).
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$kpkg" ]; then
  apt-get update -qq >/dev/null
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
[ -n "$kpkg" ] || { echo "make-guest: no linux-image-amd64 in the apt lists" >&2; exit 1; }

fetch() {  # fetch PACKAGE: its .deb in $out/debs (apt-get download, once)
  local p=$1
  ls "$out/debs/${p}_"*.deb >/dev/null 2>&1 && return 0
  (cd "$out/debs" && apt-get download -qq "$p" >/dev/null) || {
    apt-get update -qq >/dev/null && (cd "$out/debs" && apt-get download -qq "$p" >/dev/null)
  }
}
fetch "$kpkg"
fetch busybox-static

stamp="$kpkg $(cat "$here"/guest/* "$here"/make-guest.sh | md5sum | cut -d' ' -f1)"
if [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio.gz" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi

x="$out/extract"
rm -rf "$x" "$out/root"
mkdir -p "$x" "$out/root"
dpkg -x "$out/debs/${kpkg}_"*.deb "$x/kernel"
dpkg -x "$out/debs/busybox-static_"*.deb "$x/busybox"
cp "$x"/kernel/boot/vmlinuz-* "$out/vmlinuz"
kver=$(basename "$x"/kernel/lib/modules/*)

r="$out/root"
mkdir -p "$r"/{bin,dev,proc,sys,tmp,mnt,tests,lib/modules/"$kver"}
cp "$x/busybox/bin/busybox" "$r/bin/busybox"
cp "$here"/guest/init "$r/init"
cp "$here"/guest/*.sh "$r/tests/"
chmod +x "$r/init" "$r"/tests/*.sh
# Modules the scenarios insmod, without their compression (busybox insmod takes .ko), in
# the order they load (each after what it depends on); load_modules (guest/lib.sh) reads it.
for m in crypto/crct10dif_common crypto/crct10dif_generic lib/crc-t10dif lib/crc64 crypto/crc64_rocksoft_generic \
         lib/crc64-rocksoft block/t10-pi drivers/nvme/host/nvme-core drivers/nvme/host/nvme; do
  src=$(ls "$x/kernel/lib/modules/$kver/kernel/$m".ko* 2>/dev/null | head -n1 || true)
  [ -n "$src" ] || continue
  dst="$r/lib/modules/$kver/$(basename "$m").ko"
  case "$src" in
    *.xz) xz -dc "$src" >"$dst" ;;
    *.zst) zstd -qdc "$src" >"$dst" ;;
    *) cp "$src" "$dst" ;;
  esac
  basename "$m" >>"$r/lib/modules/$kver/load.order"
done
(cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initramfs.cpio.gz"
rm -rf "$x" "$r"
echo "$stamp" >"$out/stamp"
echo "make-guest: $kpkg + busybox-static -> $out"
