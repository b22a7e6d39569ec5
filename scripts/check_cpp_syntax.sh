#!/usr/bin/env bash
# Syntax- and type-checks C++ sources of the extension against the installed torch headers without building
# or replacing ganops/_C*.so, so a half-finished kernel never breaks the shared build.
#
# Usage: scripts/check_cpp_syntax.sh csrc/cpu/some_op.cpp [more.cpp ...]   (PYTHON defaults to .venv/bin/python)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
mapfile -t includes < <("$python" -c '
from torch.utils.cpp_extension import include_paths
import sysconfig
for path in include_paths() + [sysconfig.get_paths()["include"]]:
    print(path)')
flags=()
for path in "${includes[@]}"; do flags+=(-isystem "$path"); done
for src in "$@"; do
  c++ -std=c++20 -fsyntax-only -Wall -Wextra -I "$root/csrc" "${flags[@]}" "$src"
  echo "ok: $src"
done
