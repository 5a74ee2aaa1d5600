#!/usr/bin/env bash
# Feeds the hostile files of issue #28 (written by scripts/malicious) to a pipeline binary and
# prints one markdown table row per case: exit status, the last line the binary printed, peak
# RSS and wall time from /usr/bin/time -v.
#   scripts/malicious.sh [BIN] [DIR]     (defaults: bin/pipeline, /tmp/malicious)
# LIMIT_KB=N caps each run's virtual memory (ulimit -v) — for binaries that would otherwise
# take the machine's memory on the bombs. ONLY=REGEX runs only the cases whose name matches.
# Run from the repository root after `just export-models`; DIR holds ~10 GB of sparse files
# (about 100 MB on disk).
set -euo pipefail
bin=${1:-bin/pipeline}
dir=${2:-/tmp/malicious}
[ -f "$dir/reward-1gib-valid.toml" ] || go run ./scripts/malicious "$dir"
cfg=configs/tiny-ocr.toml
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# A one-epoch run to resume (seconds), and a copy whose trainer state carries an unrelated
# 1 GiB tensor (sparse). Each case resumes a fresh copy, so the script can run again.
tiny=(--set prompts.per_epoch=2 --set sampler.group_size=2 --set sampler.steps=3 --set pipeline.rollout_batch=2
  --set grpo.minibatch=2 --set eval.prompts=2 --set eval.steps=3 --set eval.batch_size=2 --set run.checkpoint_every=1)
if [ ! -d "$dir/run-sparse-1gib" ]; then
  rm -rf "$dir/run-valid"
  $bin run --config "$cfg" --set "run.out_dir=$dir" --set run.name=run-valid --set run.epochs=1 "${tiny[@]}" > /dev/null
  cp -r "$dir/run-valid" "$dir/run-sparse-1gib.tmp"
  go run ./scripts/malicious -add-unrelated "$dir/run-sparse-1gib.tmp/checkpoints/epoch-000001/trainer.safetensors"
  mv "$dir/run-sparse-1gib.tmp" "$dir/run-sparse-1gib"
fi
cp -r "$dir/run-valid" "$dir/run-sparse-1gib" "$out/"

sample=(sample --config "$cfg" --prompt K4RT --steps 1 --out "$out/s.png")
score=(rewards score --config "$cfg" --prompt K4RT --any-size)
export_vae=(export-models --config "$cfg" --set "vae.decoder=$out/vae.onnx" --set "text_encoder.model=$out/te.onnx")
cases=(
  "LoRA: valid (rank 8, 134 KB)|${sample[*]} --lora $dir/lora-valid.safetensors"
  "LoRA: every tensor on the same bytes|${sample[*]} --lora $dir/lora-overlap.safetensors"
  "LoRA: an adapter named twice (other bytes)|${sample[*]} --lora $dir/lora-duplicate.safetensors"
  "LoRA: extra tensor [2^31,2^31,4] F32 (count wraps to 0)|${sample[*]} --lora $dir/lora-overflow.safetensors"
  "LoRA: 99 MB header, one 49.5M-dim shape|${sample[*]} --lora $dir/lora-header-99mb.safetensors"
  "LoRA: adapters + unrelated 1 GiB tensor (sparse)|${sample[*]} --lora $dir/lora-sparse-1gib.safetensors"
  "checkpoint: valid (committed, 2.4 MB)|${sample[*]}"
  "checkpoint: every tensor on the same bytes|${sample[*]} --set model.weights=$dir/checkpoint-overlap.safetensors"
  "run: resume a valid checkpoint, train 1 more epoch|run --resume $out/run-valid --set run.epochs=2"
  "run: resume, trainer state + unrelated 1 GiB tensor (sparse)|run --resume $out/run-sparse-1gib --set run.epochs=2"
  "VAE weights: valid (committed)|${export_vae[*]}"
  "VAE weights: one unrelated 1 GiB tensor (sparse)|${export_vae[*]} --vae-weights $dir/vae-sparse-1gib.safetensors"
  "image: valid PNG 128×64|${score[*]} --image $dir/image-valid.png"
  "image: valid JPEG 128×64|${score[*]} --image $dir/image-valid.jpg"
  "image: 70-byte PNG declaring 100000×100000 RGBA|${score[*]} --image $dir/image-100000x100000.png"
  "image: 1.2 MB 1-bit PNG bomb, 100000×100000|${score[*]} --image $dir/image-1bit-bomb.png"
  "image: JPEG declaring 65535×65535|${score[*]} --image $dir/image-65535x65535.jpg"
  "image: GIF|${score[*]} --image $dir/image.gif"
  "ONNX: valid, weights in external data|models inspect $dir/onnx/external-valid.onnx"
  "ONNX: external data ../outside.bin|models inspect $dir/onnx/external-parent.onnx"
  "ONNX: external data at an absolute path|models inspect $dir/onnx/external-absolute.onnx"
  "ONNX: external data via a symlink out of the folder|models inspect $dir/onnx/external-symlink.onnx"
  "ONNX: a 4.5 GiB initializer in external data (sparse)|models inspect $dir/onnx/external-huge.onnx"
  "ONNX: 3 GiB .onnx file (sparse)|models inspect $dir/onnx/sparse-3gib.onnx"
  "reward: onnx-scalar, 1 GiB weights (sparse), input fits|rewards score --config $dir/reward-1gib-valid.toml --any-size --image $dir/image-valid.png"
  "reward: the same, config wants 224×224, graph declares 64×64|rewards score --config $dir/reward-1gib-mismatch.toml --any-size --image $dir/image-valid.png"
  "reward: PP-OCRv4 rec (x [N,3,48,W]) asked for 224×224|rewards score --config $dir/reward-ocr-mismatch.toml --any-size --image $dir/image-valid.png"
)
echo "| case | exit | last line printed | peak RSS | wall |"
echo "|---|---|---|---|---|"
for c in "${cases[@]}"; do
  name=${c%%|*}
  cmd=${c#*|}
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then continue; fi
  log="$out/log"
  # shellcheck disable=SC2086
  set +e
  (
    if [ -n "${LIMIT_KB:-}" ]; then ulimit -v "$LIMIT_KB"; fi
    exec /usr/bin/time -v -o "$out/time" $bin $cmd > "$log" 2>&1
  )
  code=$?
  set -e
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f MB", $2/1024}' "$out/time")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$out/time")
  # The fatal error of a crash, else the last line.
  line=$( (grep -m1 -E '^(fatal error|panic):' "$log" || grep -v '^\s*$' "$log" | tail -n 1) | cut -c1-300 | sed 's/|/\\|/g')
  echo "| $name | $code | \`$line\` | $rss | $wall |"
done
