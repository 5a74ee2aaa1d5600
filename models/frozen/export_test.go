package frozen

// Runs is the number of ONNX runs e made, for the cache tests.
func Runs(e *TextEncoder) int64 { return e.runs.Load() }
