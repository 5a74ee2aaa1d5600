// Package setupcache finds files that `just setup` (scripts/setup.sh) fetched into the
// git-ignored setup cache: the ONNX Runtime library, the OCR models, the PJRT CPU plugin.
package setupcache

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Dirs lists the setup cache directories to look in: $DENSEGRPO_CACHE, then `.cache` in the
// working directory and each parent, then beside the executable and its parents.
func Dirs() []string {
	var dirs []string
	if d := os.Getenv("DENSEGRPO_CACHE"); d != "" {
		dirs = append(dirs, d)
	}
	seen := map[string]bool{}
	addUp := func(start string) {
		for dir := start; ; dir = filepath.Dir(dir) {
			c := filepath.Join(dir, ".cache")
			if !seen[c] {
				seen[c] = true
				dirs = append(dirs, c)
			}
			if filepath.Dir(dir) == dir {
				return
			}
		}
	}
	if wd, err := os.Getwd(); err == nil {
		addUp(wd)
	}
	if exe, err := os.Executable(); err == nil {
		addUp(filepath.Dir(exe))
	}
	return dirs
}

// Find returns the first existing file rel (e.g. "ocr/ppocr_keys_v1.txt") inside the setup
// cache directories; the error lists every path tried.
func Find(rel string) (string, error) {
	var tried []string
	for _, dir := range Dirs() {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("find %s in the setup cache (tried %s): not found; run `just setup`",
		rel, strings.Join(tried, ", "))
}
