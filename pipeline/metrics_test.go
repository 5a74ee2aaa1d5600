package pipeline

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
)

func metricsEpochs(t *testing.T, path string) []int {
	t.Helper()
	lines, err := runfiles.ReadMetrics(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, l := range lines {
		out = append(out, l.Epoch)
	}
	return out
}

// TruncateAfter keeps the lines up to an epoch and appends after them; when the rewrite fails
// the error is returned and the file, untouched, still takes the next line (it used to be
// closed first, so every later write failed as well).
func TestMetricsTruncateAfter(t *testing.T) {
	path := filepath.Join(t.TempDir(), runfiles.MetricsFile)
	m, err := openMetrics(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for e := range 3 {
		if err := m.Write(runfiles.Line{Epoch: e, Train: &runfiles.Train{Samples: e}}); err != nil {
			t.Fatal(err)
		}
	}
	m.files = atomicfile.Writer{CreateTemp: func(string, string) (atomicfile.File, error) { return nil, errors.New("disk full") }}
	if err := m.TruncateAfter(1); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("failed rewrite: got %v, want the disk's error", err)
	}
	if err := m.Write(runfiles.Line{Epoch: 3}); err != nil {
		t.Fatalf("write after a failed rewrite: %v", err)
	}
	if got := metricsEpochs(t, path); !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Fatalf("epochs %v after a failed rewrite, want [0 1 2 3]", got)
	}
	m.files = atomicfile.Writer{}
	if err := m.TruncateAfter(1); err != nil {
		t.Fatal(err)
	}
	if err := m.Write(runfiles.Line{Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	if got := metricsEpochs(t, path); !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("epochs %v, want [0 1 2]", got)
	}
}

// A metrics file that cannot be read is an error of BaseEval (it used to read as "no base
// evaluation", and a resumed run then compared against nothing); a file without an epoch-0
// evaluation is no evaluation and no error.
func TestMetricsBaseEval(t *testing.T) {
	path := filepath.Join(t.TempDir(), runfiles.MetricsFile)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(path, []byte("{\"epoch\":0,\"eval_reward_mean\":0.5,\"eval_n\":2,\"eval_totals\":[0.25,0.75]}\n"), 0o644))
	m, err := openMetrics(path, false)
	must(err)
	defer m.Close()
	ev, err := m.BaseEval()
	if err != nil || ev == nil || ev.N != 2 || !slices.Equal(ev.Totals, []float64{0.25, 0.75}) {
		t.Fatalf("base eval %+v (err %v), want n 2 with its totals", ev, err)
	}
	must(os.WriteFile(path, []byte("{\"epoch\":1}\n"), 0o644))
	if ev, err := m.BaseEval(); ev != nil || err != nil {
		t.Errorf("no epoch 0: got %+v, %v; want nil, nil", ev, err)
	}
	must(os.WriteFile(path, []byte("{\"epoch\":0,\"eval_reward_mean\n{\"epoch\":1}\n"), 0o644))
	if _, err := m.BaseEval(); err == nil || !strings.Contains(err.Error(), runfiles.MetricsFile+":1") {
		t.Errorf("unreadable metrics: got %v, want an error naming %s:1", err, runfiles.MetricsFile)
	}
}
