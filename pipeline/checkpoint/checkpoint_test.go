package checkpoint

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/safetensors"
)

func testCheckpoint(epoch int) Checkpoint {
	return Checkpoint{
		Epoch: epoch,
		State: json.RawMessage(`{"rng":"AAEC","cursor":7}`),
		Tensors: map[string]map[string]safetensors.Tensor{
			"lora":      {"a.lora_A.weight": {Shape: []int{2, 3}, Data: []float32{1, 2, 3, 4, 5, float32(epoch)}}},
			"optimizer": {"a.lora_A.weight/m": {Shape: []int{2, 3}, Data: []float32{0.5, 0, 0, 0, 0, -1}}},
		},
	}
}

func TestCheckpointRoundTripAndPrune(t *testing.T) {
	c := New(filepath.Join(t.TempDir(), "checkpoints"), 2)
	for epoch := 1; epoch <= 3; epoch++ {
		if _, err := c.Save(testCheckpoint(epoch)); err != nil {
			t.Fatal(err)
		}
	}
	got, dir, ok, err := c.Latest()
	if err != nil || !ok {
		t.Fatalf("Latest: ok=%v err=%v", ok, err)
	}
	if filepath.Base(dir) != "epoch-000003" {
		t.Errorf("latest dir %s, want epoch-000003", dir)
	}
	want := testCheckpoint(3)
	var gotState, wantState any
	json.Unmarshal(got.State, &gotState)
	json.Unmarshal(want.State, &wantState)
	if got.Epoch != 3 || !reflect.DeepEqual(gotState, wantState) || !reflect.DeepEqual(got.Tensors, want.Tensors) {
		t.Errorf("round trip: got %+v, want %+v", got, want)
	}
	epochs, _ := c.list()
	if !reflect.DeepEqual(epochs, []int{2, 3}) {
		t.Errorf("kept %v, want [2 3]", epochs)
	}
}

// A write that fails half-way must leave the previous checkpoint as the latest and no
// directory under a final name.
func TestCheckpointFailedWriteKeepsPrevious(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "checkpoints")
	c := New(dir, 3)
	if _, err := c.Save(testCheckpoint(1)); err != nil {
		t.Fatal(err)
	}
	diskFull := errors.New("no space left on device")
	calls := 0
	c.writeTensors = func(path string, ts map[string]safetensors.Tensor, md map[string]string) error {
		calls++
		if calls == 2 { // the second group: the first file is already on disk
			return diskFull
		}
		return safetensors.Write(path, ts, md)
	}
	_, err := c.Save(testCheckpoint(2))
	if !errors.Is(err, diskFull) || !strings.Contains(err.Error(), "epoch-000002") {
		t.Fatalf("error %v, want the disk error naming epoch-000002", err)
	}
	got, _, ok, err := c.Latest()
	if err != nil || !ok || got.Epoch != 1 {
		t.Fatalf("latest after failed save: epoch %d ok=%v err=%v, want epoch 1", got.Epoch, ok, err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "epoch-000001" {
			t.Errorf("left behind %s", e.Name())
		}
	}
}

// A crash between writing and renaming leaves a .tmp directory, which is not a checkpoint.
func TestCheckpointIgnoresUnfinished(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "checkpoints")
	c := New(dir, 3)
	if _, err := c.Save(testCheckpoint(4)); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "epoch-000005.tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "epoch-000005.tmp", stateFile), []byte(`{"epoch":5}`), 0o644)
	got, _, ok, err := c.Latest()
	if err != nil || !ok || got.Epoch != 4 {
		t.Fatalf("latest: epoch %d ok=%v err=%v, want 4", got.Epoch, ok, err)
	}
}
