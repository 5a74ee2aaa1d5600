// Command export writes the tiny-ocr ONNX graphs from trained weights:
//
//	go run ./exporters/tinyocr/export -vae models/tinyocr/weights/vae.safetensors \
//	    -text-encoder models/tinyocr/weights/transformer.safetensors -out models/tinyocr/onnx
//
// Either weight flag may be empty to skip that graph.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/densegrpo/densegrpo/exporters/tinyocr"
)

func main() {
	vae := flag.String("vae", "", "VAE weights (safetensors from models/tinyocr.SaveVAE); writes vae_decoder.onnx")
	te := flag.String("text-encoder", "", "safetensors holding text_encoder.* tensors; writes text_encoder.onnx")
	out := flag.String("out", ".", "output directory")
	flag.Parse()
	if err := run(*vae, *te, *out); err != nil {
		fmt.Fprintln(os.Stderr, "export:", err)
		os.Exit(1)
	}
}

func run(vae, te, out string) error {
	if vae == "" && te == "" {
		return fmt.Errorf("nothing to export: give -vae and/or -text-encoder")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if vae != "" {
		p := filepath.Join(out, "vae_decoder.onnx")
		if err := tinyocr.WriteVAEDecoder(p, vae); err != nil {
			return err
		}
		fmt.Println("wrote", p)
	}
	if te != "" {
		p := filepath.Join(out, "text_encoder.onnx")
		if err := tinyocr.WriteTextEncoder(p, te); err != nil {
			return err
		}
		fmt.Println("wrote", p)
	}
	return nil
}
