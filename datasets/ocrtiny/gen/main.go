// Command gen writes the committed prompt splits of tiny-ocr (train.txt, test.txt).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny"
)

func main() {
	out := flag.String("out", "datasets/ocr-tiny", "directory to write train.txt and test.txt into")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if err := ocrtiny.WriteSplits(*out); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
