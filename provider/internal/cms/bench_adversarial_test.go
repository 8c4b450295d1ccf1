package cms

import (
	"bytes"
	"io"
	"syscall"
	"testing"
	"time"
)

// BenchmarkAdversarial parses (and, where it parses, reads the content of)
// the inputs of adversarial_test.go, each about 1 MiB or larger. Before
// issue 12 they took tens of seconds; see docs/performance.md.
func BenchmarkAdversarial(b *testing.B) {
	cases := []struct {
		name string
		in   func(testing.TB) []byte
		// passes is how often the content is read after parsing, as
		// Decrypt's streaming path does (tag check, then decryption).
		passes int
	}{
		{"attrs-88000", func(t testing.TB) []byte { return manyAttrsMessage(t, 88000) }, 1},
		{"attrs-64", func(t testing.TB) []byte { return manyAttrsMessage(t, maxAttrs) }, 1},
		{"recipients-150000", func(t testing.TB) []byte { return manyRecipientsMessage(t, 150000) }, 1},
		{"depth-512Ki", func(t testing.TB) []byte { return deepMessage(t, 1<<19) }, 1},
		{"oid-arc-900KiB-recipient", func(t testing.TB) []byte { return hugeArcRecipientMessage(t, 900<<10) }, 1},
		{"oid-arc-900KiB-attr", func(t testing.TB) []byte { return hugeArcAttrMessage(t, 900<<10) }, 1},
		{"pieces-1B-16MiB", func(t testing.TB) []byte { return piecesMessage(t, 16<<20, 1) }, 2},
		{"pieces-4KiB-16MiB", func(t testing.TB) []byte { return piecesMessage(t, 16<<20, 4096) }, 2},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			in := c.in(b)
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			var reads int64
			cpu0 := cpuTime()
			for b.Loop() {
				cr := &countingReaderAt{r: bytes.NewReader(in)}
				m, err := Parse(cr, int64(len(in)))
				if err == nil {
					for range c.passes {
						if _, err := io.Copy(io.Discard, m.Content()); err != nil {
							b.Fatal(err)
						}
					}
				}
				reads = cr.calls.Load()
			}
			b.ReportMetric(float64(reads), "preads/op")
			b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}

// cpuTime returns the user and system CPU time of the process so far: the
// work, apart from waiting for a busy machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
