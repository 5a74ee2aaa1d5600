package tinyocr

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny/ocrread"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// CommittedVAE is the repository path of the trained VAE weights, relative to this package.
const committedVAE = "weights/vae.safetensors"

// The committed VAE must reconstruct the first 20 test-split strings legibly: PP-OCRv4 reads
// the reconstructions about as well as the originals. Measured at commit time: see
// weights/README.md.
func TestCommittedVAEReconstructsReadableText(t *testing.T) {
	st, err := os.Stat(committedVAE)
	if err != nil {
		t.Fatalf("committed VAE weights: %v", err)
	}
	if st.Size() > 3<<20 {
		t.Errorf("%s is %d bytes, want < 3 MiB", committedVAE, st.Size())
	}
	vae, err := LoadVAE(nntest.Backend(t), filepath.FromSlash(committedVAE))
	if err != nil {
		t.Fatal(err)
	}
	defer vae.Close()
	reader, err := ocrread.Open(onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatalf("%v (CPU ONNX Runtime tests never skip)", err)
	}
	defer reader.Close()
	rep, err := CheckReconstructions(t.Context(), vae, reader, 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PSNR %.2f dB; OCR contained: reconstructions %d/20, originals %d/20; mean score %.3f vs %.3f",
		rep.PSNR, rep.ReconContained, rep.OrigContained, rep.ReconScore, rep.OrigScore)
	for i := range rep.N {
		if rep.ReconRead[i] != rep.OrigRead[i] {
			t.Logf("%s: original read %q, reconstruction read %q", rep.Targets[i], rep.OrigRead[i], rep.ReconRead[i])
		}
	}
	// Measured on the current renderer (dark ink on light paper, left-aligned): 15/20, 0.938,
	// 20.8 dB; the higher contrast of these images costs PSNR, not legibility.
	if rep.ReconContained < 15 || rep.ReconScore < 0.9 || rep.PSNR < 20.5 {
		t.Errorf("reconstructions: %d/20 read, mean score %.3f, PSNR %.2f dB; want >= 15, >= 0.9, >= 20.5 dB",
			rep.ReconContained, rep.ReconScore, rep.PSNR)
	}
}
