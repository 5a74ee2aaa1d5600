package onnxrt

import "testing"

// TestOverride: With replaces exactly the keys an override sets; Validate names the table.
func TestOverride(t *testing.T) {
	base := Config{Library: "/lib/libonnxruntime.so", Provider: "cuda", DeviceID: 1, GPUMemLimitMB: 100, IntraOpThreads: 4, InterOpThreads: 2, MaxModelMB: 8192}
	if got := base.With(nil); got != base {
		t.Fatalf("With(nil) = %+v, want %+v", got, base)
	}
	cpu, zero := "cpu", 0
	got := base.With(&Override{Provider: &cpu, IntraOpThreads: &zero})
	want := base
	want.Provider, want.IntraOpThreads = "cpu", 0
	if got != want {
		t.Fatalf("With = %+v, want %+v", got, want)
	}
	dev, mem, inter, maxMB := 3, 512, 1, 100
	got = base.With(&Override{DeviceID: &dev, GPUMemLimitMB: &mem, InterOpThreads: &inter, MaxModelMB: &maxMB})
	want = base
	want.DeviceID, want.GPUMemLimitMB, want.InterOpThreads, want.MaxModelMB = 3, 512, 1, 100
	if got != want {
		t.Fatalf("With = %+v, want %+v", got, want)
	}
	tpu, neg := "tpu", -1
	for _, tc := range []struct {
		o    *Override
		want string
	}{
		{&Override{Provider: &tpu}, `vae.onnx.provider: got "tpu", want "cpu" or "cuda"`},
		{&Override{DeviceID: &neg}, "vae.onnx.device_id: got -1, want >= 0"},
		{&Override{GPUMemLimitMB: &neg}, "vae.onnx.gpu_mem_limit_mb: got -1, want >= 0"},
		{&Override{MaxModelMB: &neg}, "vae.onnx.max_model_mb: got -1, want >= 0 (0: 4096)"},
		{&Override{InterOpThreads: &neg}, "vae.onnx.intra_op_threads/inter_op_threads: got 0/-1, want >= 0"},
	} {
		if err := tc.o.Validate("vae.onnx"); err == nil || err.Error() != tc.want {
			t.Errorf("Validate: got %v, want %s", err, tc.want)
		}
	}
	if err := (*Override)(nil).Validate("vae.onnx"); err != nil {
		t.Errorf("nil override: %v", err)
	}
}
