// Package pretrain owns the pretraining of the embedded default text-to-image model
// "tiny-ocr" (`pipeline pretrain`): the flow transformer (models/mmdit) is trained from
// scratch by flow matching, jointly with the tiny character-level text encoder
// (models/tinyocr), on images of the prompts' target strings rendered by datasets/ocrtiny and
// encoded by the frozen tiny VAE.
//
// One step: a batch of train prompts with random render seeds is rendered and VAE-encoded
// (posterior mean, scaled to model space) into x0, ahead of the step in a goroutine; for each
// sample a noise level σ (logit-normal or uniform, then the SD3 shift), noise x1 ~ N(0, I) and,
// with the caption-dropout probability, the empty prompt are drawn; the transformer sees
// x_σ = (1−σ)·x0 + σ·x1 at timestep 1000·σ and is trained to predict v = x1 − x0 by mean
// squared error; AdamW with global-norm gradient clipping updates the transformer and the
// text encoder (the VAE is frozen).
//
// Everything random in batch s is drawn from a generator seeded by (seed, s) alone, so the
// data "cursor" is the step number and a resumed run sees exactly the batches an uninterrupted
// one would. Checkpoints hold every variable of the training context (weights, Adam moments
// and step counters, learning rate) and the step; resuming from one continues with the same
// losses, bit for bit, when no time budget is set.
//
// Outputs (Config.Output.Dir): transformer.safetensors (diffusers SD3Transformer2DModel
// names), text_encoder.safetensors (tinyocr names under "text_encoder."), loss.jsonl,
// config.toml (resolved) and checkpoints/. Export writes the two weight files from an earlier
// checkpoint instead, to pick a step of a run (the committed default is step 4500 of a 90-minute
// budget, chosen by its eval OCR score).
package pretrain
