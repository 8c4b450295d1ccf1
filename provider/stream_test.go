package provider

import (
	"bytes"
	"io"
	"os"
	"sync"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// changingReaderAt serves a message and changes one byte of its content
// at a chosen moment of a chosen pass, as a file rewritten by another
// process while Decrypt reads it would. A pass starts with a read that
// covers the first content byte.
type changingReaderAt struct {
	mu      sync.Mutex
	b       []byte
	content cms.Range
	pass    int   // the read of the content that changes the input
	trigger int64 // ... when a read of that pass covers this offset
	target  int64 // the byte changed
	seen    int   // passes started
	changed bool
}

func (r *changingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := off + int64(len(p))
	if off <= r.content.Off && end > r.content.Off {
		r.seen++
	}
	if !r.changed && r.seen == r.pass && off <= r.trigger && end > r.trigger {
		r.b[r.target] ^= 0x80
		r.changed = true
	}
	if off >= int64(len(r.b)) {
		return 0, io.EOF
	}
	n := copy(p, r.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TestDecryptInputChangesUnderUs: a large message is read twice; whatever
// changes between or during the passes, Decrypt never returns nil with
// plaintext other than the authenticated one, and a change seen by pass 1
// releases nothing at all.
func TestDecryptInputChangesUnderUs(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "change"), KEKRSA2048)
	p := openProvider(t)
	kek = mustKEK(t, p, kek)
	const size = 5 << 20 // over oneShotLimit: two passes
	msg := bytes.Repeat([]byte("secret plaintext "), size/17+1)[:size]
	var out bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &out, bytes.NewReader(msg), size, []*KEK{kek}, Options{}))
	enc := out.Bytes()
	m, err := cms.Parse(bytes.NewReader(enc), int64(len(enc)))
	require.NoError(t, err)
	var content cms.Range
	for r := range m.ContentRanges() {
		content = r // DER: one range
	}
	require.Greater(t, content.Len, int64(oneShotLimit))
	mid, last := content.Off+content.Len/2, content.Off+content.Len-1

	// Unchanged, the reader gives the plaintext: the harness is sound.
	// Parse may read the start of the content too: the passes are the last
	// two reads that cover it.
	var got bytes.Buffer
	plain := &changingReaderAt{b: bytes.Clone(enc), content: content, pass: -1}
	require.NoError(t, p.Decrypt(bg, &got, plain, int64(len(enc)), Options{}))
	require.Equal(t, msg, got.Bytes())
	require.GreaterOrEqual(t, plain.seen, 2)
	pass1 := plain.seen - 1

	for _, c := range []struct {
		name            string
		pass            int
		trigger, target int64
		nothingWritten  bool
	}{
		{"between the passes", 2, content.Off, mid, false},
		{"during pass 1", 1, mid, last, true},
		{"during pass 2", 2, mid, last, false},
		{"last byte during pass 2", 2, last, last, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &changingReaderAt{b: bytes.Clone(enc), content: content, pass: pass1 + c.pass - 1, trigger: c.trigger, target: c.target}
			var got bytes.Buffer
			err := p.Decrypt(bg, &got, r, int64(len(enc)), Options{})
			require.True(t, r.changed, "the input was changed")
			require.ErrorIs(t, err, ErrAuthentication)
			if c.nothingWritten {
				assert.Zero(t, got.Len(), "no plaintext released")
			}
		})
	}
}

// BenchmarkDecryptStream is a 64 MiB message through Decrypt's two passes.
func BenchmarkDecryptStream(b *testing.B) {
	p := openProvider(b, func(c *Config) { c.MaxSessions = 2 })
	kek := benchKEK(b, p)
	var out bytes.Buffer
	require.NoError(b, p.Encrypt(bg, &out, &patternReader{n: streamSize}, streamSize, []*KEK{kek}, Options{}))
	enc := out.Bytes()
	b.SetBytes(streamSize)
	for b.Loop() {
		if err := p.Decrypt(bg, io.Discard, bytes.NewReader(enc), int64(len(enc)), Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// listingReaderAt lists a directory on every read after the first, as a
// witness of what is there while Decrypt copies a PEM message.
type listingReaderAt struct {
	r     io.ReaderAt
	dir   string
	reads int
	seen  []string
}

func (l *listingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	l.reads++
	if l.reads > 1 {
		entries, _ := os.ReadDir(l.dir)
		for _, e := range entries {
			l.seen = append(l.seen, e.Name())
		}
	}
	return l.r.ReadAt(p, off)
}

// TestDecryptPEMLeavesNoName: a PEM message is decoded into a temporary
// file that has no name while it is used (another process cannot open it
// to change it, a crash leaves nothing).
func TestDecryptPEMLeavesNoName(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "pem"), KEKRSA2048)
	p := openProvider(t)
	kek = mustKEK(t, p, kek)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	msg := bytes.Repeat([]byte("pem message "), 10000)
	var out bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &out, bytes.NewReader(msg), int64(len(msg)), []*KEK{kek}, Options{Armor: true}))
	l := &listingReaderAt{r: bytes.NewReader(out.Bytes()), dir: tmp}
	var got bytes.Buffer
	require.NoError(t, p.Decrypt(bg, &got, l, int64(out.Len()), Options{}))
	require.Equal(t, msg, got.Bytes())
	require.Greater(t, l.reads, 1)
	assert.Empty(t, l.seen, "no named temporary file while decoding")
	entries, err := os.ReadDir(tmp)
	require.NoError(t, err)
	assert.Empty(t, entries)
}
