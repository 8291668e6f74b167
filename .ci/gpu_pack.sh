#!/usr/bin/env bash
# Packs what .ci/gpu_measure.sh needs on a GPU machine that reaches no package registry (docs/performance.md,
# "Measuring on a real GPU"), run once here: .gpu/deno.xz (this machine's deno, which must be 2.9.6 for
# x86-64 Linux), .gpu/node_modules.tar.xz (the npm packages deno.lock pins, as `deno install` left them) and
# .gl/libvulkan1*.deb (the Vulkan loader). About 46 MB in all; .gpu/ and .gl/ are git-ignored, so a device
# run names them in its carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu .gl
deno=$(readlink -f "$(command -v deno)")
"$deno" --version | head -1 | grep -q " 2\.9\.6 " || { echo "gpu_pack: deno 2.9.6 expected: $("$deno" --version | head -1)" >&2; exit 2; }
[ -d node_modules ] || deno install
echo "gpu_pack: .gpu/deno.xz" >&2
xz -T0 -6 -c "$deno" >.gpu/deno.xz
echo "gpu_pack: .gpu/node_modules.tar.xz" >&2
tar -cf - node_modules | xz -T0 -6 >.gpu/node_modules.tar.xz
if ! compgen -G ".gl/libvulkan1*.deb" >/dev/null; then
  echo "gpu_pack: .gl/libvulkan1 (apt-get download)" >&2
  (cd .gl && apt-get download libvulkan1) >&2 || echo "gpu_pack: could not download libvulkan1; carry the Vulkan loader another way" >&2
fi
du -ch .gpu/* .gl/* | tail -1 >&2
