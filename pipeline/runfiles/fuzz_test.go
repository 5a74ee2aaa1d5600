package runfiles

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzReadPsi: any psi.json gives an error or a ψ file that WritePsi writes and ReadPsi reads
// back unchanged.
func FuzzReadPsi(f *testing.F) {
	data, err := os.ReadFile(filepath.Join("..", "..", "configs", "tiny-ocr-psi.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(`{"psi":[0.1,0.2],"sigmas":[1,0.5,0],"iterations":[{"iteration":1,"psi":[0.1],"pos":[1],"neg":[0]}]}`))
	f.Add([]byte(`{"psi":[1e39]}`))
	f.Add([]byte(`{"psi":"x"}`))
	dir := f.TempDir()
	in, out := filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(in, data, 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := ReadPsi(in)
		if err != nil {
			return
		}
		if err := WritePsi(out, p); err != nil {
			t.Fatalf("accepted ψ file does not write: %v", err)
		}
		back, err := ReadPsi(out)
		if err != nil || !reflect.DeepEqual(p, back) {
			t.Fatalf("ψ changed on the way back (err %v): %+v\n%+v", err, p, back)
		}
	})
}
