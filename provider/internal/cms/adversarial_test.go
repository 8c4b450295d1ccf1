package cms

import (
	"bytes"
	"crypto/x509"
	"io"
	"math/bits"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Inputs built to cost as much as their size allows (issue 12). The
// builders write the DER by hand where the package's own writer would
// refuse what they need.

// adversarialHeader carries the recipient of every built message, so that
// the message is well-formed apart from the part under test.
func adversarialHeader(t testing.TB) *Header {
	kek, cek := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	return &Header{
		Recipients: []Recipient{kekRecipient([]byte("kek"), kek, cek, false)},
		Algorithm:  OIDAES256GCM,
		Nonce:      bytes.Repeat([]byte{3}, 12),
	}
}

// manyAttrsMessage returns a message whose authAttrs hold n attributes
// (the content type and n-1 others of distinct types 1.2.i), in DER
// order, with a MAC that does not matter to the parser.
func manyAttrsMessage(t testing.TB, n int) []byte {
	t.Helper()
	encs := [][]byte{attrDER(t, mustBinary(OIDContentTypeAttr), appendTLV(nil, tagOID, derData))}
	for i := 1; i < n; i++ {
		oid := append([]byte{0x2a}, base128(uint64(i))...)
		encs = append(encs, attrDER(t, oid, []byte{0x05, 0x00}))
	}
	slices.SortFunc(encs, bytes.Compare)
	e, err := adversarialHeader(t).encode()
	if err != nil {
		t.Fatal(err)
	}
	e.attrs = bytes.Join(encs, nil)
	return writeEncoded(t, e, []byte("content"))
}

func attrDER(t testing.TB, oid, value []byte) []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(oid) })
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(value) })
	})
	return b.BytesOrPanic()
}

func base128(v uint64) []byte {
	out := []byte{byte(v & 0x7f)}
	for v >>= 7; v > 0; v >>= 7 {
		out = append([]byte{byte(v&0x7f) | 0x80}, out...)
	}
	return out
}

// hugeArcOID returns the contents of the OID 1.2.X where X is an arc of
// n base-128 octets.
func hugeArcOID(n int) []byte {
	oid := []byte{0x2a}
	for range n - 1 {
		oid = append(oid, 0xff)
	}
	return append(oid, 0x7f)
}

// hugeArcRecipientMessage returns a message with a usable recipient and a
// KEK recipient whose key wrap algorithm is an OID with an arc of n octets.
func hugeArcRecipientMessage(t testing.TB, n int) []byte {
	t.Helper()
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.Tag(2).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
		b.AddASN1Int64(4)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1OctetString([]byte("other")) })
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(hugeArcOID(n)) })
		})
		b.AddASN1OctetString(make([]byte, 40))
	})
	h := adversarialHeader(t)
	h.Recipients = append(h.Recipients, &OtherRecipient{Raw: b.BytesOrPanic()})
	e, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	return writeEncoded(t, e, []byte("content"))
}

// hugeArcAttrMessage returns a message whose authAttrs hold the content
// type and an attribute of a type with an arc of n octets.
func hugeArcAttrMessage(t testing.TB, n int) []byte {
	t.Helper()
	encs := [][]byte{
		attrDER(t, mustBinary(OIDContentTypeAttr), appendTLV(nil, tagOID, derData)),
		attrDER(t, hugeArcOID(n), []byte{0x05, 0x00}),
	}
	slices.SortFunc(encs, bytes.Compare)
	e, err := adversarialHeader(t).encode()
	if err != nil {
		t.Fatal(err)
	}
	e.attrs = bytes.Join(encs, nil)
	return writeEncoded(t, e, []byte("content"))
}

func writeEncoded(t testing.TB, e *encodedHeader, content []byte) []byte {
	var buf bytes.Buffer
	n := int64(len(content))
	if err := e.writeHeader(&buf, n); err != nil {
		t.Fatal(err)
	}
	buf.Write(content)
	if err := e.writeTrailer(&buf, n, make([]byte, e.icvLen)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// piecesMessage returns a message whose n content bytes are written as
// OCTET STRINGs of piece bytes each.
func piecesMessage(t testing.TB, n, piece int) []byte {
	t.Helper()
	h := adversarialHeader(t)
	var buf bytes.Buffer
	buf.Grow(n/piece*(piece+2) + 1024)
	if err := WriteHeader(&buf, h, -1); err != nil {
		t.Fatal(err)
	}
	content := piecesContent(n)
	for c := content; len(c) > 0; c = c[min(piece, len(c)):] {
		if err := WriteChunk(&buf, c[:min(piece, len(c))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteTrailer(&buf, h, -1, make([]byte, h.icvLen())); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// piecesContent is the content of piecesMessage: no two neighbouring
// bytes alike, so that a misplaced offset shows.
func piecesContent(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// countingReaderAt counts ReadAt calls and the bytes asked for.
type countingReaderAt struct {
	r            io.ReaderAt
	calls, bytes atomic.Int64
}

func (c *countingReaderAt) ReadAt(b []byte, off int64) (int, error) {
	c.calls.Add(1)
	c.bytes.Add(int64(len(b)))
	return c.r.ReadAt(b, off)
}

// deepMessage returns a message whose encryptedContent opens depth
// constructed OCTET STRINGs, one inside the other, and never closes them.
func deepMessage(t testing.TB, depth int) []byte {
	t.Helper()
	h := adversarialHeader(t)
	var buf bytes.Buffer
	if err := WriteHeader(&buf, h, -1); err != nil {
		t.Fatal(err)
	}
	buf.Write(bytes.Repeat([]byte{0x24, 0x80}, depth))
	return buf.Bytes()
}

// manyRecipientsMessage returns a message with n recipients: the usable
// one and n-1 password recipients (which the package does not handle).
func manyRecipientsMessage(t testing.TB, n int) []byte {
	t.Helper()
	h := adversarialHeader(t)
	e, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < n; i++ {
		// pwri [3] { version 0, keyEncryptionAlgorithm, encryptedKey }, kept
		// distinct so that the set stays DER-sorted.
		b := cryptobyte.NewBuilder(nil)
		b.AddASN1(cbasn1.Tag(3).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
			b.AddASN1Uint64(uint64(i))
		})
		e.recipients = append(e.recipients, b.BytesOrPanic()...)
	}
	return writeEncoded(t, e, []byte("content"))
}

func TestAdversarialAttributes(t *testing.T) {
	// ~88,000 attributes in 1 MiB: refused before any work per pair.
	big := manyAttrsMessage(t, 88000)
	require.Greater(t, len(big), 1<<20-64<<10)
	_, err := Parse(bytes.NewReader(big), int64(len(big)))
	require.ErrorIs(t, err, ErrUnsupported)
	require.ErrorContains(t, err, "more than 64 authenticated attributes")

	// As many as allowed parse, with O(n log n) comparisons of attribute
	// encodings and types, and AAD re-encodes them the same way.
	n := maxAttrs
	in := manyAttrsMessage(t, n)
	var calls int
	compareAttr = func(a, b []byte) int { calls++; return bytes.Compare(a, b) }
	t.Cleanup(func() { compareAttr = bytes.Compare })
	m, err := Parse(bytes.NewReader(in), int64(len(in)))
	require.NoError(t, err)
	require.Len(t, m.Header.AuthAttrs, n)
	nlogn := n * bits.Len(uint(n))
	// Parse re-encodes the attributes to check they are DER: it checks
	// types twice and sorts encodings once. Comparing every pair once
	// would take n(n-1)/2 = 2016 more.
	require.LessOrEqual(t, calls, 4*nlogn, "comparisons for %d attributes", n)
	calls = 0
	require.Equal(t, m.RawAuthAttrs[1:], m.Header.AAD()[1:])
	require.LessOrEqual(t, calls, 3*nlogn)

	// The duplicate check itself, at the scale of the issue.
	keys := make([][]byte, 98000)
	for i := range keys {
		keys[i] = append([]byte{0x2a}, base128(uint64(len(keys)-i))...)
	}
	calls = 0
	require.Equal(t, -1, duplicate(keys))
	require.LessOrEqual(t, calls, 2*len(keys)*bits.Len(uint(len(keys))))
	keys = append(keys, keys[500])
	require.Contains(t, []int{500, len(keys) - 1}, duplicate(keys))

	// A duplicate type is refused, wherever it is.
	dup := []Attribute{ContentTypeAttr(OIDData), {Type: mustOID("1.2.3"), Values: [][]byte{{5, 0}}}, {Type: mustOID("1.2.3"), Values: [][]byte{{1, 1, 0}}}}
	_, err = marshalAttrs(dup)
	require.ErrorContains(t, err, "attribute 1.2.3 given twice")
	_, err = marshalAttrs(make([]Attribute, maxAttrs+1))
	require.ErrorContains(t, err, "at most 64")
	// What could not be parsed is not written either.
	var huge x509.OID
	require.NoError(t, huge.UnmarshalBinary(hugeArcOID(30)))
	_, err = marshalAttrs([]Attribute{ContentTypeAttr(OIDData), {Type: huge, Values: [][]byte{{5, 0}}}})
	require.ErrorContains(t, err, "beyond the limits on object identifiers")
	h := adversarialHeader(t)
	h.ContentType = huge
	h.AuthAttrs = []Attribute{ContentTypeAttr(huge)}
	_, err = h.encode()
	require.ErrorContains(t, err, "beyond the limits on object identifiers")
}

func TestAdversarialOIDs(t *testing.T) {
	for name, c := range map[string]struct {
		der []byte
		err error
	}{
		"encryption context type": {mustBinary(OIDEncryptionContext), nil},
		"arc of 2^140-1":          {append([]byte{0x2a}, hugeArcOID(20)[1:]...), nil},
		"arc of 21 octets":        {hugeArcOID(22), ErrUnsupported},
		"65 octets":               {bytes.Repeat([]byte{0x2a}, 65), ErrUnsupported},
		"64 octets":               {bytes.Repeat([]byte{0x2a}, 64), nil},
		"900 KiB arc":             {hugeArcOID(900 << 10), ErrUnsupported},
		"leading 0x80":            {[]byte{0x2a, 0x80, 0x01}, ErrMalformed},
		"truncated":               {[]byte{0x2a, 0x81}, ErrMalformed},
		"empty":                   {nil, ErrMalformed},
	} {
		err := checkOID("x", c.der)
		if c.err == nil {
			require.NoError(t, err, name)
			_, ok := oidFromDER(c.der)
			require.True(t, ok, name)
		} else {
			require.ErrorIs(t, err, c.err, name)
			_, ok := oidFromDER(c.der)
			require.False(t, ok, name)
		}
		require.Less(t, len(oidString(c.der)), 4*maxOIDLen+80, name)
	}

	// An attribute type with a 900 KiB arc is refused at parse, not
	// converted or formatted.
	in := hugeArcAttrMessage(t, 900<<10)
	_, err := Parse(bytes.NewReader(in), int64(len(in)))
	require.ErrorIs(t, err, ErrUnsupported)
	require.ErrorContains(t, err, "attribute type: object identifier of")
	require.Less(t, len(err.Error()), 200)

	// A recipient with such an algorithm is one the package does not
	// handle; the message still opens with the other, and the reason is
	// short.
	in = hugeArcRecipientMessage(t, 900<<10)
	m, err := Parse(bytes.NewReader(in), int64(len(in)))
	require.NoError(t, err)
	require.Len(t, m.Header.Recipients, 2)
	var other *OtherRecipient
	for _, r := range m.Header.Recipients {
		if o, ok := r.(*OtherRecipient); ok {
			other = o
		}
	}
	require.NotNil(t, other)
	require.Contains(t, other.Reason, "key wrap algorithm (an object identifier of")
	require.Less(t, len(other.Reason), 200)
}

func TestAdversarialPieces(t *testing.T) {
	// 1 MiB of content in 1-byte OCTET STRINGs: parsing and two passes
	// over the content (as Decrypt's streaming path makes) cost a number
	// of ReadAt calls set by the size of the input over the window, not
	// one per piece (3 million before issue 12).
	const n = 1 << 20
	for _, piece := range []int{1, 7, 4095, windowSize + 1, 3 * windowSize} {
		in := piecesMessage(t, n, piece)
		cr := &countingReaderAt{r: bytes.NewReader(in)}
		m, err := Parse(cr, int64(len(in)))
		require.NoError(t, err)
		require.EqualValues(t, n, m.ContentLen)
		for range 2 {
			got, err := io.ReadAll(m.Content())
			require.NoError(t, err)
			require.True(t, bytes.Equal(piecesContent(n), got), "piece of %d bytes", piece)
		}
		// Reads of odd sizes cross pieces and windows anywhere (not
		// counted below).
		before := cr.calls.Load()
		var got bytes.Buffer
		r := m.Content()
		for i := 1; ; i = i%4099 + 7 {
			k, err := io.CopyN(&got, r, int64(i))
			if err == io.EOF {
				require.Less(t, k, int64(i))
				break
			}
			require.NoError(t, err)
		}
		require.True(t, bytes.Equal(piecesContent(n), got.Bytes()), "piece of %d bytes", piece)
		cr.calls.Store(before)
		windows := int64(len(in)/windowSize + 1)
		require.LessOrEqual(t, cr.calls.Load(), 3*(2*windows+8), "piece of %d bytes", piece)
		// And the bytes read stay within a small multiple of the input.
		require.LessOrEqual(t, cr.bytes.Load(), int64(3*2*len(in)+3*2*windowSize*8), "piece of %d bytes", piece)
	}
}

func TestAdversarialShapesRefused(t *testing.T) {
	// 1 MiB of nested constructed OCTET STRINGs.
	in := deepMessage(t, 1<<19)
	_, err := Parse(bytes.NewReader(in), int64(len(in)))
	require.ErrorIs(t, err, ErrUnsupported)
	require.ErrorContains(t, err, "nested deeper than")

	// Recipients: 64 parse, 65 and far more are refused.
	in = manyRecipientsMessage(t, maxRecipients)
	m, err := Parse(bytes.NewReader(in), int64(len(in)))
	require.NoError(t, err)
	require.Len(t, m.Header.Recipients, maxRecipients)
	for _, n := range []int{maxRecipients + 1, 150000} {
		in = manyRecipientsMessage(t, n)
		_, err := Parse(bytes.NewReader(in), int64(len(in)))
		require.ErrorIs(t, err, ErrUnsupported)
		require.ErrorContains(t, err, "more than 64 recipients")
	}
}
