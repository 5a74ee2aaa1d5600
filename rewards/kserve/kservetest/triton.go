package kservetest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Triton is a real inference server for the tests that need one (`just test-remote`): NVIDIA
// Triton serving one ONNX file on 127.0.0.1, started by exporters/serve/serve_onnx.py
// (PyTriton) in the serving virtualenv. Start and Stop may be called again to restart it on
// the same port.
type Triton struct {
	// Python is the interpreter with PyTriton (.venv-serve/bin/python), Script the path of
	// serve_onnx.py, Model the ONNX file and Name the served model's name.
	Python, Script, Model, Name string
	// Port is the HTTP port (FreePort picks one); Log the file the server writes to.
	Port int
	Log  string
	cmd  *exec.Cmd
}

// NewTriton is a Triton (not started) serving model as name on a free port, with the
// repository at root: its .venv-serve/bin/python (or $DENSEGRPO_SERVE_PYTHON) and
// exporters/serve/serve_onnx.py.
func NewTriton(root, model, name, log string) (*Triton, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	py := os.Getenv("DENSEGRPO_SERVE_PYTHON")
	if py == "" {
		py = filepath.Join(root, ".venv-serve", "bin", "python")
	}
	return &Triton{Python: py, Script: filepath.Join(root, "exporters", "serve", "serve_onnx.py"), Model: model, Name: name, Port: port, Log: log}, nil
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// URL is the server's base URL.
func (s *Triton) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", s.Port) }

// Start launches the server and waits (up to 90 s) until the model is ready.
func (s *Triton) Start() error {
	grpc, err := FreePort()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	s.cmd = exec.Command(s.Python, s.Script, s.Model, "--name", s.Name, "--http-port", fmt.Sprint(s.Port), "--grpc-port", fmt.Sprint(grpc))
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// Its own process group: Stop ends Triton and its Python-backend stubs together.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		s.cmd = nil
		return fmt.Errorf("start the Triton server (run `just serve-venv`): %w", err)
	}
	ready := s.URL() + "/v2/models/" + s.Name + "/ready"
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if resp, err := http.Get(ready); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	s.Stop()
	return fmt.Errorf("Triton not ready after 90s; log %s", s.Log)
}

// Stop ends the server's process group (SIGTERM, SIGKILL after 20 s) and waits for it.
func (s *Triton) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	s.cmd = nil
}
