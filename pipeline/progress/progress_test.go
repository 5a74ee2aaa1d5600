package progress

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable time source.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock                   { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func TestQuietPrintsOnlyTheFinalLine(t *testing.T) {
	var buf bytes.Buffer
	clk := newClock()
	b := New(&buf, "train", 40, Clock(clk.now))
	for i := 0; i < 40; i++ {
		clk.advance(250 * time.Millisecond)
		b.Add(1)
		if i == 20 {
			b.SetSuffix("reward 0.41")
		}
	}
	if buf.Len() != 0 {
		t.Fatalf("quiet bar wrote %q before Done", buf.String())
	}
	b.Done()
	b.Done()
	b.Add(5)
	// 40 items in 10 s: 4.0/s; the bar is full (40·24/40 = 24 cells).
	want := "train [========================] 40/40 100% 4.0/s in 0:10 reward 0.41\n"
	if buf.String() != want {
		t.Errorf("got %q\nwant %q", buf.String(), want)
	}
}

func TestTerminalDrawsInPlace(t *testing.T) {
	var buf bytes.Buffer
	clk := newClock()
	b := New(&buf, "train", 40, Terminal(true), Clock(clk.now))
	b.SetSuffix("reward 0.41")
	first := "\rtrain [>                       ] 0/40   0% ETA --:-- reward 0.41\x1b[K"
	if buf.String() != first {
		t.Fatalf("first draw %q, want %q", buf.String(), first)
	}
	buf.Reset()
	clk.advance(5 * time.Second)
	b.Add(10)
	// 10 of 40 in 5 s: 2.0/s, 30 left → ETA 15 s; 10·24/40 = 6 cells filled.
	want := "\rtrain [======>                 ] 10/40  25% 2.0/s ETA 0:15 reward 0.41\x1b[K"
	if buf.String() != want {
		t.Fatalf("got %q\nwant %q", buf.String(), want)
	}
	// Within MinRedraw of the last draw nothing is drawn ...
	buf.Reset()
	clk.advance(MinRedraw / 2)
	b.Add(1)
	if buf.Len() != 0 {
		t.Errorf("redrew within MinRedraw: %q", buf.String())
	}
	// ... but after it, and always on reaching the total.
	clk.advance(MinRedraw / 2)
	b.Add(1)
	if !strings.Contains(buf.String(), " 12/40 ") {
		t.Errorf("no redraw after MinRedraw: %q", buf.String())
	}
	buf.Reset()
	b.Set(40)
	if !strings.Contains(buf.String(), " 40/40 100% ") {
		t.Errorf("no redraw on reaching the total: %q", buf.String())
	}
	buf.Reset()
	clk.advance(4900 * time.Millisecond)
	b.Done()
	// 40 in 10 s.
	want = "\rtrain [========================] 40/40 100% 4.0/s in 0:10 reward 0.41\x1b[K\n"
	if buf.String() != want {
		t.Errorf("final %q\nwant %q", buf.String(), want)
	}
}

func TestLineFormats(t *testing.T) {
	tests := []struct {
		name    string
		total   int
		n       int
		elapsed time.Duration
		final   bool
		want    string
	}{
		// Unknown total: count and rate only; 3 items in 30 s is 10 s per item.
		{"unknown total", 0, 3, 30 * time.Second, false, "eval 3 10.0s/it"},
		// 1 of 3 in 20 min: 2 left at 20 min each → ETA 40 min.
		{"slow", 3, 1, 20 * time.Minute, false, "eval [========>               ] 1/3  33% 20:00/it ETA 40:00"},
		// 2 of 4 in 1 h: 1:00:00 elapsed, ETA 1 h.
		{"hours", 4, 2, time.Hour, false, "eval [============>           ] 2/4  50% 30:00/it ETA 1:00:00"},
		// Over the total: the bar stays full.
		{"over", 4, 6, 3 * time.Second, true, "eval [========================] 6/4 150% 2.0/s in 0:03"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			b := New(&bytes.Buffer{}, "eval", tc.total, Clock(clk.now))
			b.n = tc.n
			clk.advance(tc.elapsed)
			if got := b.line(tc.final); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestConcurrentAdd(t *testing.T) {
	var buf bytes.Buffer
	b := New(&buf, "score", 8000, Terminal(true))
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				b.Add(1)
			}
		}()
	}
	wg.Wait()
	b.Done()
	out := buf.String()
	if !strings.Contains(out, " 8000/8000 100% ") || !strings.HasSuffix(out, "\x1b[K\n") {
		t.Errorf("final line lacks 8000/8000: %q", out[max(0, len(out)-120):])
	}
	// Every draw is a whole line: as many \r as erase-to-end sequences.
	if strings.Count(out, "\r") != strings.Count(out, "\x1b[K") {
		t.Errorf("interleaved draws in %q", out)
	}
}

func TestIsTerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Error("a regular file counts as a terminal")
	}
	if IsTerminal(&bytes.Buffer{}) {
		t.Error("a buffer counts as a terminal")
	}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if !IsTerminal(null) {
		t.Error("/dev/null, a character device, does not count as a terminal")
	}
}
