package main

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// termLine is the progress line at the bottom of the terminal stderr is
// on. Whatever else the command writes to that terminal (stderr, and
// stdout when it is a terminal too) goes through lineEnder, which first
// clears a shown progress line: no message or output ever starts in the
// middle of one. Output that stops mid-line (a chunk of PEM) holds the
// progress back until a newline, so it never draws over that output.
type termLine struct {
	mu      sync.Mutex
	w       io.Writer // stderr itself
	shown   bool      // a progress line is on the screen, the cursor at its end
	midline bool      // other output left the cursor mid-line
}

// draw replaces the progress line with text.
func (t *termLine) draw(text string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.midline {
		return
	}
	fmt.Fprint(t.w, "\r\033[K"+text)
	t.shown = true
}

// end clears the progress line, if one is shown.
func (t *termLine) end() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.endLocked()
}

func (t *termLine) endLocked() {
	if t.shown {
		fmt.Fprint(t.w, "\r\033[K")
		t.shown = false
	}
}

// say prints a line of its own (the summary), after any output that
// stopped mid-line.
func (t *termLine) say(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.endLocked()
	if t.midline {
		fmt.Fprintln(t.w)
		t.midline = false
	}
	fmt.Fprintln(t.w, line)
}

// lineEnder is stdout or stderr, seen through the terminal's progress line.
type lineEnder struct {
	t *termLine
	w io.Writer
}

func (l *lineEnder) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	l.t.mu.Lock()
	defer l.t.mu.Unlock()
	l.t.endLocked()
	n, err := l.w.Write(b)
	l.t.midline = !bytes.HasSuffix(b[:n], []byte("\n"))
	return n, err
}

// wrapStreams routes stdout and stderr through the progress line when
// stderr is a terminal (stdout only when it is a terminal too: the same
// screen, as far as we can tell).
func (c *cli) wrapStreams() {
	if !c.stderrIsTerminal() {
		return
	}
	c.term = &termLine{w: c.stderr}
	if c.stdoutIsTerminal() {
		c.stdout = &lineEnder{t: c.term, w: c.stdout}
	}
	c.stderr = &lineEnder{t: c.term, w: c.stderr}
}

// endLine clears the progress line before the command's last words.
func (c *cli) endLine() { c.term.end() }

// progress shows how far work has gone, on stderr, only when stderr is a
// terminal: scripts and logs stay quiet.
type progress struct {
	t     *termLine
	on    bool
	start time.Time

	mu   sync.Mutex
	last time.Time
	seen bool // a byte count was shown: finish sums it up
	verb string
	n    int64
}

func (c *cli) newProgress() *progress {
	on := c.stderrIsTerminal()
	t := c.term
	if on && t == nil {
		t = &termLine{w: c.stderr}
	}
	return &progress{t: t, on: on, start: time.Now()}
}

// show replaces the progress line with free text, at most ten times a
// second.
func (p *progress) show(format string, a ...any) {
	if p == nil || !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.due() {
		return
	}
	p.t.draw("hsmkeys: " + fmt.Sprintf(format, a...))
}

func (p *progress) due() bool {
	now := time.Now()
	if now.Sub(p.last) < 100*time.Millisecond {
		return false
	}
	p.last = now
	return true
}

// bytes shows pass ("decrypting") at done of total bytes, with the
// percentage, the rate since the pass began and the time left (total < 0:
// unknown, no percentage).
func (p *progress) bytes(pass string, done, total int64, passStart time.Time) {
	if p == nil || !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.due() {
		return
	}
	p.seen = true
	p.t.draw(progressText(pass, done, total, time.Since(passStart)))
}

// files shows a batch: "hsmkeys: rewrapped 3 of 10 files  30%  2.1 files/s
// ETA 0:03".
func (p *progress) files(verb string, done, total int) {
	if p == nil || !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.due() && done != total {
		return
	}
	el := time.Since(p.start).Seconds()
	rate, eta := 0.0, "--:--"
	if el > 0 {
		rate = float64(done) / el
	}
	if rate > 0 {
		eta = clock(time.Duration(float64(total-done) / rate * float64(time.Second)))
	}
	p.t.draw(fmt.Sprintf("hsmkeys: %s %d of %d files %3.0f%%  %.1f files/s  ETA %s", verb, done, total, float64(done)*100/float64(max(total, 1)), rate, eta))
}

// progressText is the progress line: "hsmkeys: decrypting  45%  512.0 MiB
// of 1.1 GiB  98.3 MiB/s  ETA 0:06".
func progressText(pass string, done, total int64, elapsed time.Duration) string {
	rate := 0.0
	if elapsed > 0 {
		rate = float64(done) / elapsed.Seconds()
	}
	if total <= 0 {
		return fmt.Sprintf("hsmkeys: %s  %s  %s/s", pass, size(float64(done)), size(rate))
	}
	pct := float64(done) * 100 / float64(total)
	eta := "--:--"
	if rate > 0 && done <= total {
		eta = clock(time.Duration(float64(total-done) / rate * float64(time.Second)))
	}
	return fmt.Sprintf("hsmkeys: %s %3.0f%%  %s of %s  %s/s  ETA %s", pass, pct, size(float64(done)), size(float64(total)), size(rate), eta)
}

// finish clears the line and, when a byte count was shown, prints a
// one-line summary: "hsmkeys: decrypted 1.1 GiB in 12s (95.0 MiB/s)".
func (p *progress) finish(verb string, n int64) {
	if p == nil || !p.on {
		return
	}
	p.mu.Lock()
	seen := p.seen
	p.mu.Unlock()
	if !seen {
		p.t.end()
		return
	}
	el := time.Since(p.start)
	p.t.say(fmt.Sprintf("hsmkeys: %s %s in %s (%s/s)", verb, size(float64(n)), el.Round(100*time.Millisecond), size(float64(n)/el.Seconds())))
}

// clear removes the progress line.
func (p *progress) clear() {
	if p == nil || !p.on {
		return
	}
	p.t.end()
}

func size(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

func clock(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// countingReader reports bytes read to a progress line. With passes, the
// input is read once per pass (decrypt checks the tag, then decrypts), and
// the line names the pass the count is in.
type countingReader struct {
	r      io.Reader
	n      atomic.Int64
	total  int64 // of all passes; -1: unknown
	verb   string
	passes []string
	p      *progress

	mu        sync.Mutex
	pass      int
	passStart time.Time
}

func (r *countingReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.report(n)
	return n, err
}

func (r *countingReader) report(n int) {
	done := r.n.Add(int64(n))
	if r.p == nil || !r.p.on {
		return
	}
	r.mu.Lock()
	if r.passStart.IsZero() {
		r.passStart = r.p.start // the first pass: since the command began
	}
	name, per, i := r.verb, r.total, 0
	if len(r.passes) > 0 && r.total > 0 {
		per = r.total / int64(len(r.passes))
		i = int(min(done/max(per, 1), int64(len(r.passes)-1)))
		name = r.passes[i]
		if i != r.pass {
			r.pass, r.passStart = i, time.Now()
		}
		done -= int64(i) * per
	}
	start := r.passStart
	r.mu.Unlock()
	r.p.bytes(name, done, per, start)
}

// countingReaderAt is countingReader for io.ReaderAt (and only that: it
// has no Read method).
type countingReaderAt struct {
	ra io.ReaderAt
	c  *countingReader
}

func (r *countingReaderAt) ReadAt(b []byte, off int64) (int, error) {
	n, err := r.ra.ReadAt(b, off)
	r.c.report(n)
	return n, err
}

// largeFile is the size from which encrypt and decrypt show progress.
const largeFile = 32 << 20
