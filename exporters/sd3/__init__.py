"""SD3 / SD3.5 exporters and interop references (the Python side of the SD3 path).

- ``fixture``: writes a tiny random-weight Stable Diffusion 3.5 snapshot directory with the real
  classes (SD3Transformer2DModel with dual-attention layers and RMS QK-norm, two
  CLIPTextModelWithProjection, T5EncoderModel, 16-channel AutoencoderKL,
  FlowMatchEulerDiscreteScheduler) and tokenizers of the real kinds (CLIP byte-level BPE,
  T5 SentencePiece unigram), from fixed seeds.
- ``export``: turns a diffusers SD3/SD3.5 snapshot into what the Go side runs: ONNX graphs of
  the text encoders and the VAE decoder, tokenizer.json files and a manifest. Every graph is
  checked against its PyTorch module before the export reports success.
- ``reference``: computes the reference outputs the Go parity tests compare with.
- ``interop``: regenerates fixture, export and references and compares them with the
  committed ones (``just interop``).

Run as modules from the repository root, e.g. ``python -m exporters.sd3.export --help``.
"""
