package rewards

import (
	"testing"
)

// FuzzDecodeTOML feeds arbitrary text through the `[[reward]]` decoder, validation and — for
// configs that pass — the declared preprocessing of a small image. Nothing may panic; a
// config that validates must preprocess without error.
func FuzzDecodeTOML(f *testing.F) {
	f.Add(swapTOML)
	f.Add("[[reward]]\nname = \"p\"\nkind = \"clip-score\"\nimage_model = \"i.onnx\"\ntext_model = \"t.onnx\"\n[reward.image]\nsize = [3, 2]\ncrop = \"center\"\nresize = \"bicubic\"\nlayout = \"NHWC\"\nchannels = \"BGR\"\nrange = [0, 255]\nmean = [1, 2, 3]\nstd = [4, 5, 6]\n[reward.text]\ntokenizer = \"clip-bpe\"\nvocab = \"v.json\"\nmerges = \"m.txt\"\nmax_length = 77\n")
	f.Add("[[reward]]\nname = \"o\"\nkind = \"ocr\"\nmodel = \"r.onnx\"\ndetector = \"d.onnx\"\nkeys = \"k.txt\"\n[reward.ocr]\nthreshold = 0.3\nunclip_ratio = 2.0\n")
	f.Add("[[reward]]\nname = \"g\"\nkind = \"geneval\"\nmodel = \"d.onnx\"\nclasses = \"c.txt\"\nbatch_size = 1\n[reward.output]\nboxes = \"b\"\nscores = \"s\"\nlabels = \"l\"\n[reward.geneval]\nmax_overlap = 0.5\n")
	f.Add("[[reward]]\nname = \"x\"\nkind = \"onnx-scalar\"\nmodel = \"m.onnx\"\n[reward.image]\nsize = [0, -1]\n")
	f.Fuzz(func(t *testing.T, text string) {
		cfgs, err := DecodeTOML([]byte(text), "/base")
		if err != nil {
			return
		}
		im := Image{W: 5, H: 3, Pix: make([]float32, 5*3*3)}
		for i := range im.Pix {
			im.Pix[i] = float32(i%7) / 6
		}
		for _, c := range cfgs {
			spec := c.Image.Spec
			h, w := spec.OutSize(im)
			if h*w > 1<<12 {
				continue // valid but too large to preprocess in a fuzz iteration
			}
			if err := spec.Apply(im, make([]float32, 3*h*w)); err != nil {
				t.Fatalf("config %q validates but preprocessing fails: %v", c.Name, err)
			}
		}
	})
}
