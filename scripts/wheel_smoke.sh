#!/usr/bin/env bash
# Build the ganops wheel and test it as an installed package, away from the source tree.
#
#   scripts/wheel_smoke.sh          build the wheel, install it into a fresh venv, run a smoke test
#   scripts/wheel_smoke.sh --full   ... and run the whole test suite (a copy of tests/ in a temp dir)
#
# The wheel is built in the checkout with the torch of .venv (or $PYTHON), without build isolation. Its compiled
# objects are the project's build/objects.<platform> (setup.py), which the editable install of scripts/setup.sh
# fills, so the build recompiles only what changed since then (ninja); everything else it writes goes to a
# temporary build folder (DIST_EXTRA_CONFIG), so no stale build/lib of an earlier build can reach the wheel.
# The fresh venv has no system site-packages: torch==$GANOPS_TORCH_VERSION (default 2.13.0), the test tools
# and the wheel.
# Environment: GANOPS_BUILD_CUDA, TORCH_CUDA_ARCH_LIST, MAX_JOBS go to the build (see setup.py);
# WHEEL_DIR keeps the wheel there (default: a temp dir that is removed).
set -euo pipefail

FULL=0
case "${1:-}" in
    "") ;;
    --full) FULL=1 ;;
    *) echo "usage: $0 [--full]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
TORCH_VERSION="${GANOPS_TORCH_VERSION:-2.13.0}"
WORK="$(mktemp -d /tmp/ganops-wheel.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
WHEEL_DIR="${WHEEL_DIR:-$WORK/dist}"
mkdir -p "$WHEEL_DIR"

VENV_PY="$WORK/venv/bin/python"
echo "== creating the fresh venv and its dependencies (in the background, while the wheel builds)"
started=$(date +%s)
(
    "$PYTHON" -m venv "$WORK/venv"
    "$VENV_PY" -m pip install --quiet --upgrade pip
    "$VENV_PY" -m pip install --quiet "torch==$TORCH_VERSION"
    "$VENV_PY" -m pip install --quiet "numpy<2.3" "triton==3.6.0" tqdm pytest pytest-xdist filelock hypothesis
) >"$WORK/venv.log" 2>&1 &
venv_setup=$!

echo "== building the wheel with $("$PYTHON" -c 'import torch; print("torch", torch.__version__)')"
printf '[build]\nbuild_base = %s\n[egg_info]\negg_base = %s\n' "$WORK/build" "$WORK" > "$WORK/setup.cfg"
(cd "$ROOT" && DIST_EXTRA_CONFIG="$WORK/setup.cfg" PATH="$(dirname "$PYTHON"):$PATH" \
    "$PYTHON" -m pip wheel --quiet --no-build-isolation --no-deps -w "$WHEEL_DIR" .)
WHEEL="$(ls "$WHEEL_DIR"/ganops-*.whl)"
echo "built $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1)) in $(( $(date +%s) - started )) s"

echo "== installing it into the fresh venv"
if ! wait "$venv_setup"; then
    cat "$WORK/venv.log" >&2
    echo "error: setting up the fresh venv failed" >&2
    exit 1
fi
"$VENV_PY" -m pip install --quiet --no-deps "$WHEEL"
echo "venv set up and wheel installed $(( $(date +%s) - started )) s after the build started"

echo "== smoke test (from $WORK, not the source tree)"
cd "$WORK"
TRITON_INTERPRET=1 "$VENV_PY" - <<'EOF'
import pathlib

import torch

import ganops
from ganops import _extension, models
from ganops.ops.gradient_penalty import gradient_penalty

location = pathlib.Path(ganops.__file__).resolve()
assert "site-packages" in location.parts, f"ganops imported from {location}, not the installed wheel"
assert _extension.is_loaded(), f"the wheel's compiled extension did not load: {_extension.load_error()}"
torch.manual_seed(0)
generator, discriminator = models.build("sagan", 8, 8, 16, minibatch_stddev=True, backend="cpp")
real = torch.rand(4, 3, 8, 8) * 2 - 1
fake = generator(torch.randn(4, 16)).detach()
loss = discriminator(fake).mean() - discriminator(real).mean()
loss = loss + gradient_penalty(discriminator, real, fake, backend="cpp")
loss.backward()
assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in discriminator.parameters())
print(f"smoke test passed: ganops {ganops.__version__} from {location.parent}")
EOF
"$VENV_PY" -m ganops info > "$WORK/info.txt"
head -6 "$WORK/info.txt"

if [ "$FULL" = 1 ]; then
    echo "== full test suite against the installed package"
    started=$(date +%s)
    cp -r "$ROOT/tests" "$WORK/tests"
    # Every CPU backend must run from the wheel: an unavailable one fails the run instead of skipping tests.
    (cd "$WORK" && GANOPS_REQUIRE_BACKENDS=cpp,triton "$VENV_PY" -m pytest -q -p no:cacheprovider -p no:warnings -n auto tests)
    echo "test suite took $(( $(date +%s) - started )) s"
fi
