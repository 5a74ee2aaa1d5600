package pretrain

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny"
	"github.com/densegrpo/densegrpo/datasets/ocrtiny/ocrread"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/tinyocr"
)

// committedVAE is the repository path of the trained VAE weights, relative to this package.
const committedVAE = "../../models/tinyocr/weights/vae.safetensors"

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
	vae, err := tinyocr.LoadVAE(nntest.Backend(t), filepath.FromSlash(committedVAE))
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

// The renderer draws images of the size the VAE takes (the two packages state it each).
func TestRenderedImagesFitTheVAE(t *testing.T) {
	if ocrtiny.Height != tinyocr.ImageHeight || ocrtiny.Width != tinyocr.ImageWidth || ocrtiny.Channels != tinyocr.ImageChannels {
		t.Fatalf("renderer %d×%d×%d, VAE %d×%d×%d", ocrtiny.Height, ocrtiny.Width, ocrtiny.Channels,
			tinyocr.ImageHeight, tinyocr.ImageWidth, tinyocr.ImageChannels)
	}
	x, err := RenderedImages(1)(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(x) != 2*tinyocr.ImageChannels*tinyocr.ImageHeight*tinyocr.ImageWidth {
		t.Errorf("2 rendered images: %d values", len(x))
	}
}

// Reads are scored as the OCR reward scores them (Flow-GRPO's definition): case and spaces do
// not count, a read containing the target is exact, an empty target is in every read. (The
// reconstruction check had its own, case-sensitive score that gave an empty target 0.)
func TestScoreReadsIsTheReward(t *testing.T) {
	reads := []string{"k4rt", "X K4 RT", "K4R", "anything"}
	targets := []string{"K4RT", "K4RT", "K4RT", ""}
	exact, mean := scoreReads(reads, targets)
	if want := (1 + 1 + 0.75 + 1) / 4.0; exact != 3 || math.Abs(mean-want) > 1e-12 {
		t.Errorf("scoreReads: %d exact, mean %v; want 3 and %v", exact, mean, want)
	}
}
