package provider

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Issue 12: wrong-kind input, the recipient search, and the cost of
// adversarial messages through the provider (the cms package tests the
// parser's part).

// countingReaderAt counts ReadAt calls, as the pread(2) calls of a file
// would be.
type countingReaderAt struct {
	r     io.ReaderAt
	calls atomic.Int64
}

func (c *countingReaderAt) ReadAt(b []byte, off int64) (int, error) {
	c.calls.Add(1)
	return c.r.ReadAt(b, off)
}

// contentInfo returns a ContentInfo of the given content type around an
// empty SEQUENCE: the shape of a signed or enveloped message, enough for
// the parser to tell what it is.
func contentInfo(oid []int) []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		b.AddASN1(cbasn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1Int64(1) })
		})
	})
	return b.BytesOrPanic()
}

func TestWrongKindInput(t *testing.T) {
	fk := makeFormatKEKs(t)
	p := openProvider(t)
	fk = fk.resolve(t, p)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	key, err := p.Export(bg, k, []*KEK{fk.aes256}, Options{})
	require.NoError(t, err)
	var msg bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &msg, bytes.NewReader([]byte("hi")), 2, []*KEK{fk.aes256}, Options{}))

	check := func(name string, err error, kind string) {
		t.Helper()
		require.ErrorIs(t, err, ErrWrongKind, name)
		require.NotErrorIs(t, err, ErrUnsupported, name+": not the token's fault")
		require.NotErrorIs(t, err, ErrMalformed, name)
		var ke *KindError
		require.ErrorAs(t, err, &ke, name)
		require.Equal(t, kind, ke.Kind, name)
	}

	// A message given to Import or Rewrap, a key given to Decrypt.
	_, err = p.Import(bg, msg.Bytes(), Options{})
	check("import of a message", err, "message")
	require.ErrorContains(t, err, "import: wrong kind of input: this is an encrypted message, not an exported key; use decrypt")
	_, err = p.Rewrap(bg, msg.Bytes(), []*KEK{fk.aes128}, Options{})
	check("rewrap of a message", err, "message")
	err = p.Decrypt(bg, io.Discard, bytes.NewReader(key), int64(len(key)), Options{})
	check("decrypt of a key", err, "key")
	require.ErrorContains(t, err, "decrypt: wrong kind of input: this is an exported key, not an encrypted message; use import")
	armored := cms.Armor(key)
	err = p.Decrypt(bg, io.Discard, bytes.NewReader(armored), int64(len(armored)), Options{})
	check("decrypt of an armoured key", err, "key")

	// CMS of other content types, such as openssl cms -sign or -encrypt
	// without -aes-*-gcm make, to every entry point.
	for _, c := range []struct {
		name string
		oid  []int
		kind string
	}{
		{"signed-data", []int{1, 2, 840, 113549, 1, 7, 2}, "a cms signed-data message (content type 1.2.840.113549.1.7.2)"},
		{"enveloped-data", []int{1, 2, 840, 113549, 1, 7, 3}, "a cms enveloped-data message (content type 1.2.840.113549.1.7.3)"},
		{"unknown", []int{1, 2, 3, 4}, "a cms message of content type 1.2.3.4"},
	} {
		in := contentInfo(c.oid)
		_, err := p.Import(bg, in, Options{})
		check(c.name, err, c.kind)
		require.ErrorContains(t, err, "wrong kind of input: this is "+c.kind+", not an hsmkeys message or exported key")
		check(c.name, p.Decrypt(bg, io.Discard, bytes.NewReader(in), int64(len(in)), Options{}), c.kind)
		_, err = Inspect(in)
		check(c.name, err, c.kind)
	}

	// An AuthEnvelopedData of a content type that is neither.
	m, err := cms.Parse(bytes.NewReader(key), int64(len(key)))
	require.NoError(t, err)
	h := *m.Header
	odd := cms.OIDEncryptionContext // any type but id-data and the manifest
	h.ContentType = odd
	h.AuthAttrs = []cms.Attribute{cms.ContentTypeAttr(odd)}
	body, err := io.ReadAll(m.Content())
	require.NoError(t, err)
	other, err := cms.Marshal(&h, body, m.MAC)
	require.NoError(t, err)
	_, err = p.Import(bg, other, Options{})
	check("import of another authEnvelopedData", err, "an authEnvelopedData of content type "+odd.String())
	check("decrypt of another authEnvelopedData", p.Decrypt(bg, io.Discard, bytes.NewReader(other), int64(len(other)), Options{}),
		"an authEnvelopedData of content type "+odd.String())

	// Garbage is still malformed, not a kind.
	_, err = p.Import(bg, []byte("not a cms message at all"), Options{})
	require.ErrorIs(t, err, ErrMalformed)
}

// TestRecipientSearchAnyPosition: the recipient this token can use is
// found wherever it is among recipients it cannot use, whatever makes
// those unusable (issue 12: a first recipient with a 300-byte KEK
// identifier stopped decryption with "invalid input").
func TestRecipientSearchAnyPosition(t *testing.T) {
	fk := makeFormatKEKs(t)
	p := openProvider(t)
	fk = fk.resolve(t, p)

	long := &cms.KEKRecipient{KeyID: bytes.Repeat([]byte{7}, 300), WrapAlg: cms.OIDAES256Wrap, EncryptedKey: make([]byte, 40)}
	unknown := &cms.KEKRecipient{KeyID: []byte("no such kek"), WrapAlg: cms.OIDAES256Wrap, EncryptedKey: make([]byte, 40)}
	garbled := &cms.KEKRecipient{KeyID: fk.aes256.ID, WrapAlg: cms.OIDAES256Wrap, EncryptedKey: make([]byte, 40)}
	wrongType := &cms.KEKRecipient{KeyID: fk.rsa.ID, WrapAlg: cms.OIDAES256Wrap, EncryptedKey: make([]byte, 40)}
	ktri := &cms.KeyTransRecipient{SubjectKeyID: bytes.Repeat([]byte{9}, 20), Hash: crypto.SHA256, EncryptedKey: make([]byte, 256)}
	other := &cms.OtherRecipient{Reason: "password recipient", Raw: []byte{0xa3, 0x00}}
	unusable := []cms.Recipient{long, unknown, garbled, wrongType, ktri, other}

	plaintext := []byte("found whichever position")
	var msg bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &msg, bytes.NewReader(plaintext), int64(len(plaintext)), []*KEK{fk.aes128}, Options{}))
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	blob, err := p.Export(bg, k, []*KEK{fk.rsa}, Options{})
	require.NoError(t, err)

	parse := func(b []byte) *cms.Message {
		m, err := cms.Parse(bytes.NewReader(b), int64(len(b)))
		require.NoError(t, err)
		require.Len(t, m.Header.Recipients, 1)
		return m
	}
	// Every position, the usable one first, last and in between. The
	// parsed header is edited because DER orders recipients by encoding
	// (a 300-byte identifier sorts after a short one); BER from other
	// writers need not.
	for pos := 0; pos <= len(unusable); pos++ {
		m := parse(msg.Bytes())
		good := m.Header.Recipients[0]
		m.Header.Recipients = append(append(append([]cms.Recipient{}, unusable[:pos]...), good), unusable[pos:]...)
		var out bytes.Buffer
		require.NoError(t, p.decryptMessage(bg, &out, m, Options{}), "message, usable recipient at %d", pos)
		require.Equal(t, plaintext, out.Bytes())

		m = parse(blob)
		good = m.Header.Recipients[0]
		m.Header.Recipients = append(append(append([]cms.Recipient{}, unusable[:pos]...), good), unusable[pos:]...)
		back, err := p.importMessage(bg, m, Options{})
		require.NoError(t, err, "key, usable recipient at %d", pos)
		require.Equal(t, k.ID(), back.ID())
		require.NoError(t, back.Destroy(bg))
	}

	// None usable: the first failure that is more than "not here" is
	// reported, not "not found".
	m := parse(msg.Bytes())
	m.Header.Recipients = unusable
	err = p.decryptMessage(bg, io.Discard, m, Options{})
	require.ErrorIs(t, err, ErrWrappedKeyInvalid)
	require.ErrorContains(t, err, "recipient 3 of 6 (kek id "+shortHex(fk.aes256.ID)+")")
	m.Header.Recipients = []cms.Recipient{long, unknown, ktri, other}
	err = p.decryptMessage(bg, io.Discard, m, Options{})
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorContains(t, err, "(300 bytes)")
	require.Less(t, len(err.Error()), 600)

	// A token or context failure still stops the search.
	ctx, cancel := context.WithCancel(bg)
	cancel()
	m.Header.Recipients = []cms.Recipient{unknown, parse(msg.Bytes()).Header.Recipients[0]}
	err = p.decryptMessage(ctx, io.Discard, m, Options{})
	require.Error(t, err)
	require.False(t, errors.Is(err, ErrNotFound) || errors.Is(err, ErrWrappedKeyInvalid), "%v", err)

	// Through Decrypt, with the long identifier before the usable one in
	// the input (not DER order, as other writers may put it).
	swapped := swapRecipients(t, msg.Bytes(), long)
	var out bytes.Buffer
	require.NoError(t, p.Decrypt(bg, &out, bytes.NewReader(swapped), int64(len(swapped)), Options{}))
	require.Equal(t, plaintext, out.Bytes())
}

// swapRecipients returns msg (DER, one recipient) with extra added to its
// recipientInfos before the recipient it has. The lengths of the outer
// structures grow by the size of extra.
func swapRecipients(t *testing.T, msg []byte, extra cms.Recipient) []byte {
	t.Helper()
	m, err := cms.Parse(bytes.NewReader(msg), int64(len(msg)))
	require.NoError(t, err)
	h := *m.Header
	h.Recipients = append([]cms.Recipient{extra}, h.Recipients...)
	body, err := io.ReadAll(m.Content())
	require.NoError(t, err)
	two, err := cms.Marshal(&h, body, m.MAC) // DER order: the original first
	require.NoError(t, err)
	// Find the recipientInfos SET and swap its two elements.
	s := cryptobyte.String(two)
	var ci, aed, explicit cryptobyte.String
	var ct cryptobyte.String
	require.True(t, s.ReadASN1(&ci, cbasn1.SEQUENCE))
	require.True(t, ci.ReadASN1(&ct, cbasn1.OBJECT_IDENTIFIER))
	require.True(t, ci.ReadASN1(&explicit, cbasn1.Tag(0).ContextSpecific().Constructed()))
	require.True(t, explicit.ReadASN1(&aed, cbasn1.SEQUENCE))
	var version int
	require.True(t, aed.ReadASN1Integer(&version))
	var set cryptobyte.String
	require.True(t, aed.ReadASN1(&set, cbasn1.SET))
	var first, second cryptobyte.String
	var tag cbasn1.Tag
	require.True(t, set.ReadAnyASN1Element(&first, &tag))
	require.True(t, set.ReadAnyASN1Element(&second, &tag))
	require.True(t, set.Empty())
	at := bytes.Index(two, append(bytes.Clone([]byte(first)), second...))
	require.Greater(t, at, 0)
	out := bytes.Clone(two)
	copy(out[at:], second)
	copy(out[at+len(second):], first)
	return out
}

// reencodePieces rewrites a DER message with its content in OCTET STRINGs
// of piece bytes each, to w.
func reencodePieces(t testing.TB, w io.Writer, der []byte, piece int) {
	t.Helper()
	m, err := cms.Parse(bytes.NewReader(der), int64(len(der)))
	require.NoError(t, err)
	bw := bufio.NewWriterSize(w, 1<<20)
	require.NoError(t, cms.WriteHeader(bw, m.Header, -1))
	buf := make([]byte, 1<<20)
	r := m.Content()
	for {
		n, err := io.ReadFull(r, buf)
		for c := buf[:n]; len(c) > 0; c = c[min(piece, len(c)):] {
			require.NoError(t, cms.WriteChunk(bw, c[:min(piece, len(c))]))
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		require.NoError(t, err)
	}
	require.NoError(t, cms.WriteTrailer(bw, m.Header, -1, m.MAC))
	require.NoError(t, bw.Flush())
}

// TestDecryptPiecesReads: a message beyond the one-shot limit, its content
// in 1-byte pieces, goes through Decrypt's two streaming passes with a
// number of reads set by its size over the parser's window, not one per
// piece per pass (issue 12: 64 MiB took 70 s against 0.3 s).
func TestDecryptPiecesReads(t *testing.T) {
	fk := makeFormatKEKs(t)
	p := openProvider(t)
	kek := mustKEK(t, p, fk.aes256)
	plaintext := make([]byte, oneShotLimit+1000)
	_, _ = rand.Read(plaintext)
	var der bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &der, bytes.NewReader(plaintext), int64(len(plaintext)), []*KEK{kek}, Options{}))
	var in bytes.Buffer
	reencodePieces(t, &in, der.Bytes(), 1)
	require.Greater(t, in.Len(), 3*len(plaintext))

	cr := &countingReaderAt{r: bytes.NewReader(in.Bytes())}
	var out bytes.Buffer
	require.NoError(t, p.Decrypt(bg, &out, cr, int64(in.Len()), Options{}))
	require.True(t, bytes.Equal(plaintext, out.Bytes()))
	// Three walks over the input (parse, tag check, decryption), each at
	// most one read per 4 KiB; one read per piece would be 3 per byte.
	require.LessOrEqual(t, cr.calls.Load(), int64(3*in.Len()/4096+16))
}

// BenchmarkDecryptAdversarial decrypts a 64 MiB message from a file, its
// content in DER and in 1-byte BER pieces (192 MiB), through the streaming
// path; the pieces cost the parser CPU per piece but no read per piece.
func BenchmarkDecryptAdversarial(b *testing.B) {
	p := openProvider(b)
	kek := benchKEK(b, p)
	plaintext := make([]byte, 64<<20)
	_, _ = rand.Read(plaintext)
	var der bytes.Buffer
	require.NoError(b, p.Encrypt(bg, &der, bytes.NewReader(plaintext), int64(len(plaintext)), []*KEK{kek}, Options{}))
	dir := b.TempDir()
	for _, c := range []struct {
		name  string
		piece int
	}{{"der-64MiB", 0}, {"pieces-1B-64MiB", 1}} {
		path := filepath.Join(dir, c.name)
		f, err := os.Create(path)
		require.NoError(b, err)
		if c.piece == 0 {
			_, err = f.Write(der.Bytes())
			require.NoError(b, err)
		} else {
			reencodePieces(b, f, der.Bytes(), c.piece)
		}
		require.NoError(b, f.Close())
		b.Run(c.name, func(b *testing.B) {
			f, err := os.Open(path)
			require.NoError(b, err)
			defer f.Close()
			st, err := f.Stat()
			require.NoError(b, err)
			b.SetBytes(int64(len(plaintext)))
			var reads int64
			cpu0 := cpuTime()
			for b.Loop() {
				cr := &countingReaderAt{r: f}
				require.NoError(b, p.Decrypt(bg, io.Discard, cr, st.Size(), Options{}))
				reads = cr.calls.Load()
			}
			b.ReportMetric(float64(reads), "preads/op")
			// CPU time of the process (SoftHSM included) tells the work
			// apart from waiting for a busy machine.
			b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}

// withAuthAttrs returns the DER message der (without authAttrs) with
// authAttrs holding the content type and n-1 attributes of types 1.2.i,
// written by hand: cms refuses to write more than 64. The MAC no longer
// matches; the parser refuses before that matters.
func withAuthAttrs(t testing.TB, der []byte, n int) []byte {
	t.Helper()
	attr := func(oid []byte, value []byte) []byte {
		b := cryptobyte.NewBuilder(nil)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(oid) })
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(value) })
		})
		return b.BytesOrPanic()
	}
	ctAttr := cms.ContentTypeAttr(cms.OIDData)
	ctOID, err := cms.OIDContentTypeAttr.MarshalBinary()
	require.NoError(t, err)
	encs := [][]byte{attr(ctOID, ctAttr.Values[0])}
	for i := 1; i < n; i++ {
		oid := []byte{0x2a}
		for v := i; ; v >>= 7 {
			c := byte(v & 0x7f)
			if len(oid) > 1 {
				c |= 0x80
			}
			oid = append(oid[:1], append([]byte{c}, oid[1:]...)...)
			if v < 0x80 {
				break
			}
		}
		encs = append(encs, attr(oid, []byte{0x05, 0x00}))
	}
	slices.SortFunc(encs, bytes.Compare)

	s := cryptobyte.String(der)
	var ci, oid, explicit, aed, version, rset, eci, mac cryptobyte.String
	var tag cbasn1.Tag
	require.True(t, s.ReadASN1(&ci, cbasn1.SEQUENCE) && s.Empty())
	require.True(t, ci.ReadAnyASN1Element(&oid, &tag))
	require.True(t, ci.ReadASN1(&explicit, cbasn1.Tag(0).ContextSpecific().Constructed()))
	require.True(t, explicit.ReadASN1(&aed, cbasn1.SEQUENCE))
	require.True(t, aed.ReadAnyASN1Element(&version, &tag))
	require.True(t, aed.ReadAnyASN1Element(&rset, &tag))
	require.True(t, aed.ReadAnyASN1Element(&eci, &tag))
	require.True(t, aed.ReadAnyASN1Element(&mac, &tag))
	require.True(t, aed.Empty(), "a message without authAttrs")
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(oid)
		b.AddASN1(cbasn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddBytes(version)
				b.AddBytes(rset)
				b.AddBytes(eci)
				b.AddASN1(cbasn1.Tag(1).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
					b.AddBytes(bytes.Join(encs, nil))
				})
				b.AddBytes(mac)
			})
		})
	})
	return b.BytesOrPanic()
}

// TestAdversarialMessages feeds the 1 MiB inputs of issue 12 to every
// public entry point: each is refused with a typed error (ErrUnsupported:
// beyond the limits of docs/format.md), before any token work.
func TestAdversarialMessages(t *testing.T) {
	fk := makeFormatKEKs(t)
	p := openProvider(t)
	kek := mustKEK(t, p, fk.aes256)
	var der bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &der, bytes.NewReader([]byte("attributes")), 10, []*KEK{kek}, Options{}))

	// As many attributes as allowed: parsed, and the MAC (computed without
	// them) fails on the token.
	ok := withAuthAttrs(t, der.Bytes(), 64)
	_, err := Inspect(ok)
	require.NoError(t, err)
	require.ErrorIs(t, p.Decrypt(bg, io.Discard, bytes.NewReader(ok), int64(len(ok)), Options{}), ErrAuthentication)

	bomb := withAuthAttrs(t, der.Bytes(), 88000)
	require.Greater(t, len(bomb), 1000<<10)
	require.LessOrEqual(t, len(bomb), MaxBlobSize)
	check := func(name string, err error) {
		t.Helper()
		require.ErrorIs(t, err, ErrUnsupported, name)
		require.NotErrorIs(t, err, ErrWrongKind, name)
		require.ErrorContains(t, err, "more than 64 authenticated attributes", name)
		require.NotContains(t, err.Error(), "by this token", name)
	}
	_, err = Inspect(bomb)
	check("inspect", err)
	_, err = p.Import(bg, bomb, Options{})
	check("import", err)
	check("decrypt", p.Decrypt(bg, io.Discard, bytes.NewReader(bomb), int64(len(bomb)), Options{}))
}

// BenchmarkRecipientSearch decrypts a message whose usable recipient is
// the last of 64, after 63 RSA recipients of keys not on the token.
func BenchmarkRecipientSearch(b *testing.B) {
	p := openProvider(b)
	kek := benchKEK(b, p)
	var msg bytes.Buffer
	require.NoError(b, p.Encrypt(bg, &msg, bytes.NewReader([]byte("x")), 1, []*KEK{kek}, Options{}))
	m, err := cms.Parse(bytes.NewReader(msg.Bytes()), int64(msg.Len()))
	require.NoError(b, err)
	good := m.Header.Recipients[0]
	var rs []cms.Recipient
	for i := range 63 {
		rs = append(rs, &cms.KeyTransRecipient{SubjectKeyID: bytes.Repeat([]byte{byte(i)}, 20), Hash: crypto.SHA256, EncryptedKey: make([]byte, 256)})
	}
	m.Header.Recipients = append(rs, good)
	for b.Loop() {
		require.NoError(b, p.decryptMessage(bg, io.Discard, m, Options{}))
	}
}

// cpuTime returns the user and system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
