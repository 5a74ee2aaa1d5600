// Package tinyocr owns the GoMLX definitions of the frozen parts of the embedded default model
// "tiny-ocr": the character text encoder and the tiny VAE, their training (TrainVAE), their
// weight files (safetensors with diffusers-like names) and runners (TextEncoder, VAE) that are
// the reference the ONNX exports of exporters/tinyocr are checked against.
//
// Text encoder (TextEncode): prompts are tokenized one id per character (Tokenize, MaxLength =
// 48, padded with PadID, no begin/end tokens). Token, position and two quote-slot embeddings
// (the k-th character inside the quotes, counted from the start and from the end — the target
// string's position in the image) are summed, each in its own band of channels
// (EmbeddingBand) so that "which character" and "which place" stay linearly separable; one
// residual MLP block and a layer norm give the per-token output [B,48,Dim]; the pooled output
// [B,PooledDim] is a linear map of the mean over the non-pad tokens. It is trained jointly with
// the transformer in pretraining, then frozen.
//
// VAE (VAEEncode, VAEDecode): images [B,3,32,128] in [0,1] ↔ latents [B,4,8,32]. Every
// convolution runs on the 8×32 latent grid: the encoder folds 4×4 pixel blocks into 48 channels
// (space-to-depth), the decoder unfolds 48 channels into 4×4×3 blocks (ONNX DepthToSpace, mode
// CRD) and ends in a sigmoid. VAEScaling maps latents to the transformer's space as diffusers'
// scaling_factor/shift_factor do.
//
// Convolutions are im2col (a Gather with constant indices) followed by one nn.Linear, not
// GoMLX's Convolve: on SimpleGo v0.26.0 ConvGeneral is a scalar loop — BenchmarkConv measured a
// 3×3 32→32 convolution of a batch of 8 at 217 ms against 36 ms for the im2col form — and
// Convolve's gradient needs the op Reverse, which SimpleGo does not implement. Slicing is
// avoided in trained paths for the same reason: the gradient of Slice is Pad, also missing.
//
// Graph-building functions panic on shape errors, as GoMLX's do; the runners and TrainVAE
// return errors.
package tinyocr
