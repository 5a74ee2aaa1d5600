// Package progress owns the progress bars of the pipeline's long loops (training epochs,
// calibration iterations, evaluation batches).
//
// On a terminal a Bar redraws one line in place with \r: label, bar, count, percentage, rate,
// ETA and a caller's suffix such as "reward 0.41", at most every MinRedraw. Written anywhere
// else (a log file, a pipe, a bytes.Buffer) it is quiet until Done, which prints the final line
// once, so logs get one summary line per loop and no carriage returns. A writer counts as a
// terminal when it is an *os.File whose mode is a character device (so /dev/null counts too,
// harmlessly); the Terminal option overrides the check. Write errors are ignored: progress is
// display only.
package progress

import (
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"
)

// MinRedraw is the shortest time between two redraws on a terminal; reaching the total and
// Done always redraw.
const MinRedraw = 100 * time.Millisecond

// barCells is the width of the bar between the brackets.
const barCells = 24

// Bar is a progress bar; its methods are safe for concurrent use.
type Bar struct {
	mu       sync.Mutex
	w        io.Writer
	label    string
	total    int
	n        int
	suffix   string
	now      func() time.Time
	start    time.Time
	terminal bool
	drawn    bool
	lastDraw time.Time
	done     bool
}

// Option configures a Bar.
type Option func(*Bar)

// Terminal forces in-place drawing (on) or quiet mode (off) instead of checking the writer.
func Terminal(on bool) Option { return func(b *Bar) { b.terminal = on } }

// Clock replaces time.Now, for tests.
func Clock(now func() time.Time) Option { return func(b *Bar) { b.now = now } }

// New starts a bar counting to total items at w; total <= 0 means unknown (no bar, no ETA).
func New(w io.Writer, label string, total int, opts ...Option) *Bar {
	b := &Bar{w: w, label: label, total: total, now: time.Now, terminal: IsTerminal(w)}
	for _, o := range opts {
		o(b)
	}
	b.start = b.now()
	return b
}

// IsTerminal reports whether w is an *os.File on a character device (a terminal, where a bar
// redraws in place).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Add counts n more items done.
func (b *Bar) Add(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n += n
	b.redraw()
}

// Set sets the count of items done.
func (b *Bar) Set(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n = n
	b.redraw()
}

// SetSuffix sets the text after the numbers, e.g. "reward 0.41".
func (b *Bar) SetSuffix(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.suffix = s
	b.redraw()
}

// Done draws the final line and ends it with a newline: in place on a terminal, as the only
// output otherwise. Calls after the first, and updates after Done, do nothing.
func (b *Bar) Done() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	line := b.line(true)
	if b.terminal {
		fmt.Fprintf(b.w, "\r%s\x1b[K\n", line)
		return
	}
	fmt.Fprintln(b.w, line)
}

// redraw draws the line in place on a terminal, throttled to MinRedraw unless the total is
// reached. The caller holds b.mu.
func (b *Bar) redraw() {
	if !b.terminal || b.done {
		return
	}
	now := b.now()
	complete := b.total > 0 && b.n >= b.total
	if b.drawn && !complete && now.Sub(b.lastDraw) < MinRedraw {
		return
	}
	b.drawn, b.lastDraw = true, now
	fmt.Fprintf(b.w, "\r%s\x1b[K", b.line(false))
}

// line formats the bar: "label [=====>   ] n/total pct% rate ETA m:ss suffix", or with final
// "in m:ss" (the elapsed time) instead of the ETA.
func (b *Bar) line(final bool) string {
	elapsed := b.now().Sub(b.start).Seconds()
	parts := []string{b.label}
	if b.total > 0 {
		full := min(max(b.n, 0)*barCells/b.total, barCells)
		bar := strings.Repeat("=", full)
		if full < barCells {
			bar += ">" + strings.Repeat(" ", barCells-full-1)
		}
		pct := 100 * float64(b.n) / float64(b.total)
		parts = append(parts, "["+bar+"]", fmt.Sprintf("%d/%d", b.n, b.total), fmt.Sprintf("%3.0f%%", pct))
	} else {
		parts = append(parts, fmt.Sprint(b.n))
	}
	if elapsed > 0 && b.n > 0 {
		parts = append(parts, rate(float64(b.n)/elapsed))
	}
	switch {
	case final:
		parts = append(parts, "in "+clock(elapsed))
	case b.total > 0 && b.n > 0 && elapsed > 0:
		parts = append(parts, "ETA "+clock(float64(max(b.total-b.n, 0))*elapsed/float64(b.n)))
	case b.total > 0:
		parts = append(parts, "ETA --:--")
	}
	if b.suffix != "" {
		parts = append(parts, b.suffix)
	}
	return strings.Join(parts, " ")
}

// rate formats items per second, or the time per item when items are slower than one a
// second: "12.5/s", "9.5s/it", "20:00/it".
func rate(perSecond float64) string {
	switch per := 1 / perSecond; {
	case perSecond >= 1:
		return fmt.Sprintf("%.1f/s", perSecond)
	case per < 60:
		return fmt.Sprintf("%.1fs/it", per)
	default:
		return clock(per) + "/it"
	}
}

// clock formats seconds as m:ss, or h:mm:ss from an hour on.
func clock(seconds float64) string {
	s := int(math.Round(seconds))
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}
