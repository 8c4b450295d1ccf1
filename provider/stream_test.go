package provider

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// changingReaderAt serves a message and changes one byte of it (or cuts
// it short) at a chosen moment of a chosen pass, as a file rewritten by
// another process while Decrypt reads it would. A pass starts with a read
// that covers the first content byte.
type changingReaderAt struct {
	mu       sync.Mutex
	b        []byte
	content  cms.Range
	pass     int   // the read of the content that changes the input
	trigger  int64 // ... when a read of that pass covers this offset
	target   int64 // the byte changed
	truncate bool  // cut the input at target instead
	seen     int   // passes started
	changed  bool
}

func (r *changingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := off + int64(len(p))
	if off <= r.content.Off && end > r.content.Off {
		r.seen++
	}
	if !r.changed && r.seen == r.pass && off <= r.trigger && end > r.trigger {
		if r.truncate {
			r.b = r.b[:r.target]
		} else {
			r.b[r.target] ^= 0x80
		}
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
// changes between or during the passes, every byte Decrypt writes is
// plaintext of the ciphertext pass 1 authenticated: what the writer holds
// when Decrypt fails is a prefix of the message, exactly the blocks before
// the first one that changed, never a byte decrypted from changed data.
func TestDecryptInputChangesUnderUs(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "change"), KEKRSA2048)
	p := openProvider(t)
	kek = mustKEK(t, p, kek)
	const size = 5<<20 + 12345 // over oneShotLimit: two passes; the last block is short
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
	bs := int64(blockSize(p.chunkSize()))
	require.Equal(t, int64(1<<20), bs)
	first, mid, last := content.Off, content.Off+content.Len/2, content.Off+content.Len-1
	tag := int64(len(enc)) - p11.TagSize // DER without unauthAttrs: the mac ends the message
	require.Equal(t, m.MAC, enc[tag:])
	// blocksBefore is the plaintext of the whole blocks before the one
	// that holds the content byte at off.
	blocksBefore := func(off int64) int { return int((off - content.Off) / bs * bs) }

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
		truncate        bool
		wantErr         bool
		written         int // bytes of plaintext Decrypt may write
	}{
		{"between the passes, first block", 2, first, first, false, true, 0},
		{"between the passes, middle", 2, first, mid, false, true, blocksBefore(mid)},
		{"between the passes, last block", 2, first, last, false, true, blocksBefore(last)},
		{"during pass 1, behind its reads", 1, mid, first + 10, false, true, 0},
		{"during pass 1, ahead of its reads", 1, first, last, false, true, 0}, // the tag does not match
		{"during pass 2, ahead of its reads", 2, mid, last, false, true, blocksBefore(last)},
		{"during pass 2, the next block", 2, mid, mid + bs, false, true, blocksBefore(mid + bs)},
		{"during pass 2, the block being read", 2, last, last, false, true, blocksBefore(last)},
		{"shorter between the passes, at a block end", 2, first, first + 3*bs, true, true, 3 << 20},
		{"shorter between the passes, inside a block", 2, first, mid, true, true, blocksBefore(mid)},
		{"shorter during pass 1", 1, first, mid, true, true, 0},
		// The tag is read once, by Parse: a change after it changes nothing.
		{"the tag, during pass 1", 1, mid, tag, false, false, size},
		{"the tag, between the passes", 2, first, tag + p11.TagSize - 1, false, false, size},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &changingReaderAt{b: bytes.Clone(enc), content: content, pass: pass1 + c.pass - 1,
				trigger: c.trigger, target: c.target, truncate: c.truncate}
			var got bytes.Buffer
			err := p.Decrypt(bg, &got, r, int64(len(enc)), Options{})
			require.True(t, r.changed, "the input was changed")
			switch {
			case c.wantErr && c.truncate:
				// An input that got shorter is found by whichever read
				// meets its end first: the parser's windowed reads
				// (ErrMalformed) or a pass's length check (ErrAuthentication).
				require.Error(t, err)
				require.True(t, errors.Is(err, ErrAuthentication) || errors.Is(err, ErrMalformed), "%v", err)
			case c.wantErr:
				require.ErrorIs(t, err, ErrAuthentication)
			default:
				require.NoError(t, err)
			}
			n := min(got.Len(), size)
			require.True(t, bytes.Equal(got.Bytes(), msg[:n]), "what was written is a prefix of the plaintext (first difference at byte %d of %d written)",
				firstDiff(got.Bytes(), msg), got.Len())
			assert.Equal(t, c.written, got.Len(), "plaintext written")
		})
	}
}

// TestDecryptBERChangesUnderUs: in a BER message (size unknown to Encrypt)
// the content is in segments whose headers are read again by each pass; a
// segment length changed between the passes moves the content pass 2
// sees, and nothing of the block where it moved is written.
func TestDecryptBERChangesUnderUs(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "berchange"), KEKRSA2048)
	p := openProvider(t)
	kek = mustKEK(t, p, kek)
	const size = 6<<20 + 777
	msg := bytes.Repeat([]byte("segmented plaintext "), size/20+1)[:size]
	var out bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &out, bytes.NewReader(msg), -1, []*KEK{kek}, Options{}))
	enc := out.Bytes()
	m, err := cms.Parse(bytes.NewReader(enc), int64(len(enc)))
	require.NoError(t, err)
	var segs []cms.Range
	for r, err := range m.ContentRanges() {
		require.NoError(t, err)
		segs = append(segs, r)
	}
	require.Greater(t, len(segs), 8, "a segmented content")
	bs := int64(blockSize(p.chunkSize()))
	j := len(segs) * 5 / 8 // a segment in the middle of some block
	var at int64           // offset in the content where segment j starts
	for _, r := range segs[:j] {
		at += r.Len
	}
	hdr := segs[j].Off - 1 // the last byte of segment j's length
	first := cms.Range{Off: segs[0].Off, Len: segs[0].Len}

	plain := &changingReaderAt{b: bytes.Clone(enc), content: first, pass: -1}
	var got bytes.Buffer
	require.NoError(t, p.Decrypt(bg, &got, plain, int64(len(enc)), Options{}))
	require.Equal(t, msg, got.Bytes())
	pass1 := plain.seen - 1

	r := &changingReaderAt{b: bytes.Clone(enc), content: first, pass: pass1 + 1, trigger: first.Off, target: hdr}
	got.Reset()
	err = p.Decrypt(bg, &got, r, int64(len(enc)), Options{})
	require.True(t, r.changed)
	require.Error(t, err)
	t.Logf("segment %d of %d changed, %d bytes into the content: %v", j, len(segs), at, err)
	require.True(t, bytes.Equal(got.Bytes(), msg[:min(got.Len(), size)]), "what was written is a prefix of the plaintext (first difference at byte %d)", firstDiff(got.Bytes(), msg))
	assert.Equal(t, int(at/bs*bs), got.Len(), "the blocks before the one that moved")
}

// firstDiff is the offset of the first byte where a and b differ.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestDecryptOddChunkSize: a chunk size that does not divide 1 MiB gives
// blocks of whole chunks, and Decrypt still gives back the message.
func TestDecryptOddChunkSize(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "odd"), KEKRSA2048)
	p := openProvider(t, func(c *Config) { c.ChunkSize = 48 << 10 })
	kek = mustKEK(t, p, kek)
	require.Equal(t, 21*48<<10, blockSize(p.chunkSize()))
	const size = 4<<20 + 999
	msg := bytes.Repeat([]byte("odd chunks "), size/11+1)[:size]
	var out bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &out, bytes.NewReader(msg), -1, []*KEK{kek}, Options{}))
	var got bytes.Buffer
	require.NoError(t, p.Decrypt(bg, &got, bytes.NewReader(out.Bytes()), int64(out.Len()), Options{}))
	require.Equal(t, msg, got.Bytes())
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
